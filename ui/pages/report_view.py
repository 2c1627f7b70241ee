"""Rendering of a dataset validation report (the API's ``report`` JSON) for the Datasets page:
summary cards, the problems with file and line, statistics, and histogram frames."""

from __future__ import annotations

from ui.widgets import badge, cards, esc, histogram, notice, number, table


def _totals(report: dict) -> dict:
    if "totals" in report:
        return report["totals"]
    counts = report.get("counts") or {}
    return {"error": sum(v for k, v in counts.items() if k.startswith("error")),
            "warning": sum(v for k, v in counts.items() if k.startswith("warning"))}


def issues_table(issues: list[dict], limit: int = 200) -> str:
    rows = []
    for i in issues[:limit]:
        sev = i.get("severity", "error")
        where = f"line {i['line']}" if i.get("line") else "whole file"
        rows.append([badge(sev), f"<span class='vl-mono'>{esc(i.get('file') or '')}</span>",
                     f"<b class='vl-line-no'>{esc(where)}</b>", esc(i.get("sample_id") or ""),
                     f"<span class='vl-mono vl-muted'>{esc(i.get('code') or '')}</span> {esc(i.get('message', ''))}"])
    return table(["Severity", "File", "Where", "Sample", "Problem"], rows, "No problems found.", cls="vl-issues")


def summary_html(ds: dict) -> str:
    report = ds.get("report") or {}
    totals = _totals(report)
    stats = report.get("stats") or {}
    tokens = stats.get("tokens") or {}
    items = [("Samples", number(ds.get("num_samples", report.get("samples"))), f"{number(report.get('lines'))} lines"
              if report.get("lines") else ""),
             ("Images", number(ds.get("num_images", report.get("images"))), ""),
             ("Errors", number(totals.get("error", 0)), "lines left out" if totals.get("error") else ""),
             ("Warnings", number(totals.get("warning", 0)), "")]
    if stats.get("tiles_total") is not None:
        items.append(("Tiles", number(stats["tiles_total"]), "448×448 each"))
    if tokens:
        items.append(("Tokens p95", number((tokens.get("percentiles") or {}).get("p95")),
                      f"max {number(tokens.get('max'))}"))
    return cards(items)


def stats_html(report: dict) -> str:
    stats = report.get("stats") or {}
    if not stats:
        return ""
    parts = []
    tokens = stats.get("tokens") or {}
    if tokens:
        pct = tokens.get("percentiles") or {}
        parts.append(table(["", "text / sample", "image / sample", "min", *pct.keys(), "max"],
                           [["tokens", number(tokens.get("mean_text")), number(tokens.get("mean_image")),
                             number(tokens.get("min")), *(number(v) for v in pct.values()),
                             number(tokens.get("max"))]]))
    sizes = stats.get("image_sizes") or {}
    rows = [["text-only samples", number(stats.get("text_only_samples"))],
            ["multi-image samples", number(stats.get("multi_image_samples"))],
            ["turns per sample", esc(", ".join(f"{k}: {v}" for k, v in (stats.get("turns") or {}).items()))],
            ["smallest image", esc("×".join(map(str, sizes["smallest"])) if sizes.get("smallest") else "–")],
            ["largest image", esc("×".join(map(str, sizes["largest"])) if sizes.get("largest") else "–")],
            ["aspect ratios", esc(", ".join(f"{k}: {v}" for k, v in (sizes.get("aspect_ratio") or {}).items()))]]
    parts.append(table(["Statistic", "Value"], rows))
    return "<div class='vl-h3'>Statistics</div>" + "".join(parts)


def histograms_html(report: dict) -> str:
    """Tokens per sample and tiles per image, side by side."""
    stats = report.get("stats") or {}
    hist = (stats.get("tokens") or {}).get("histogram") or []
    tokens = [(f"{h['start']:,}", h["count"]) for h in hist]
    tiles = [(str(k), v) for k, v in sorted((stats.get("tiles_per_image") or {}).items(), key=lambda kv: int(kv[0]))]
    return ("<div class='vl-hist-row'>"
            + histogram("Tokens per sample", tokens, "samples",
                        "Token lengths are counted when the dataset is validated against a model's tokenizer.")
            + histogram("Tiles per image", tiles, "images", "No images.") + "</div>")


def registered_html(ds: dict) -> str:
    report = ds.get("report") or {}
    warnings = _totals(report).get("warning", 0)
    body = (f"<div>{number(ds['num_samples'])} samples and {number(ds['num_images'])} images passed validation"
            + (f"; {number(warnings)} warning(s) below." if warnings else ", with no warnings.") + "</div>"
            + held_out_html(ds))
    return notice("ok", f"Dataset “{ds['name']}” registered as #{ds['id']}", body)


def length_warning(ds: dict) -> str:
    """The samples training would truncate, by line, right under the upload's result."""
    issues = [i for i in (ds.get("report") or {}).get("issues") or [] if i.get("code") == "truncated"]
    if not issues:
        return ""
    lines = ", ".join(str(i["line"]) for i in issues[:30]) + (" …" if len(issues) > 30 else "")
    return notice("warn", f"{len(issues)} sample(s) are longer than max_seq_length: training truncates them",
                  f"<div>{'Line' if len(issues) == 1 else 'Lines'} {esc(lines)} (details in the problems below). Raise max_seq_length on the "
                  "Train page to keep them whole.</div>")


def held_out_html(ds: dict) -> str:
    n = ds.get("num_val_samples") or 0
    return f"<div>{number(n)} sample(s) held out as the validation split.</div>" if n else ""


def unsettled_html(ds: dict) -> str:
    """A background validation that did not end in ``ready``."""
    report = ds.get("report") or {}
    if ds.get("status") == "cancelled":
        return notice("warn", f"Validation of “{ds['name']}” was cancelled", "<div>Nothing was registered.</div>")
    issues = [i for i in report.get("issues") or [] if i.get("severity") == "error"]
    return rejected_html(report.get("error") or f"{len(issues)} error(s)", issues)


def rejected_html(message: str, errors: list) -> str:
    issues = [e for e in errors if isinstance(e, dict) and ("line" in e or "severity" in e)]
    other = [e for e in errors if e not in issues]
    body = "<div>Nothing was registered. Fix these problems and upload again.</div>"
    if other:
        body += "<ul>" + "".join(f"<li>{esc(e.get('message', e) if isinstance(e, dict) else e)}</li>"
                                 for e in other[:20]) + "</ul>"
    return notice("error", f"The dataset was rejected: {message}", body) + (
        "<div class='vl-h3'>Problems</div>" + issues_table(issues) if issues else "")


def _state(d: dict) -> str:
    status = d.get("status", "ready")
    if status == "validating":
        return badge("validating", f"Validating {float(d.get('progress') or 0):.0%}")
    if status != "ready":
        return badge({"failed": "invalid", "cancelled": "cancelled"}.get(status, status), status.capitalize())
    warnings = _totals(d.get("report") or {}).get("warning", 0)
    return badge("warning", f"{warnings} warnings") if warnings else badge("valid", "Valid")


def datasets_table(datasets: list[dict], selected: int | None) -> str:
    rows, attrs = [], []
    for d in datasets:
        rows.append([f"<b>#{d['id']}</b>", esc(d["name"]), _state(d), number(d["num_samples"]), number(d["num_images"]),
                     esc(d.get("created_at", "")[:16].replace("T", " "))])
        attrs.append(f"data-ds='{d['id']}'" + (" class='vl-selected'" if d["id"] == selected else ""))
    return table(["ID", "Name", "Validation", "Samples", "Images", "Created"], rows,
                 "No datasets yet. Upload one above, or start with the demo dataset.", attrs, cls="vl-clickable")
