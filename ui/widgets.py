"""Small HTML building blocks shared by the pages: badges, progress bars, stat cards,
tables and notices. Every value is escaped here, so pages can pass API data as is."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

#: job status -> (badge colour class, label)
STATUS = {
    "queued": ("grey", "Queued"), "starting": ("blue", "Starting"), "running": ("blue", "Running"),
    "stopping": ("amber", "Stopping"), "succeeded": ("green", "Succeeded"), "failed": ("red", "Failed"),
    "cancelled": ("grey", "Cancelled"), "paused": ("amber", "Paused"), "validating": ("blue", "Validating"),
    "valid": ("green", "Valid"), "invalid": ("red", "Invalid"), "error": ("red", "Error"),
    "warning": ("amber", "Warning"), "info": ("grey", "Info"),
}
ACTIVE = {"queued", "starting", "running", "stopping"}


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value))


def badge(status: str, label: str | None = None) -> str:
    colour, default = STATUS.get(status, ("grey", status.capitalize()))
    pulse = " vl-pulse" if status in ("running", "starting", "validating") else ""
    return f"<span class='vl-badge vl-{colour}{pulse}' data-status='{esc(status)}'>{esc(label or default)}</span>"


def progress_bar(fraction: float | None, caption: str = "", status: str = "running") -> str:
    pct = 0.0 if fraction is None else max(0.0, min(1.0, fraction)) * 100
    colour = {"succeeded": "green", "failed": "red", "cancelled": "grey"}.get(status, "blue")
    return (f"<div class='vl-progress' role='progressbar' aria-valuenow='{pct:.0f}' aria-valuemin='0' "
            f"aria-valuemax='100'><div class='vl-progress-fill vl-{colour}' style='width:{pct:.1f}%'></div></div>"
            + (f"<div class='vl-progress-caption'>{caption}</div>" if caption else ""))


def cards(items: Iterable[tuple[str, object, str]]) -> str:
    """Stat cards: (label, value, small print under the value)."""
    out = "".join(f"<div class='vl-card'><div class='vl-card-label'>{esc(label)}</div>"
                  f"<div class='vl-card-value'>{esc(value)}</div>"
                  f"<div class='vl-card-sub'>{esc(sub)}</div></div>" for label, value, sub in items)
    return f"<div class='vl-cards'>{out}</div>"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], empty: str = "Nothing yet.",
          row_attrs: Sequence[str] | None = None, cls: str = "") -> str:
    """A table whose cells are HTML already (escape values with :func:`esc`)."""
    rows = list(rows)
    if not rows:
        return f"<div class='vl-empty'>{esc(empty)}</div>"
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    attrs = row_attrs or [""] * len(rows)
    body = "".join(f"<tr {a}>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r, a in zip(rows, attrs,
                                                                                              strict=True))
    return f"<div class='vl-table-wrap'><table class='vl-table {cls}'><thead><tr>{head}</tr></thead>" \
           f"<tbody>{body}</tbody></table></div>"


def notice(kind: str, title: str, body: str = "") -> str:
    """A friendly message box; ``kind`` is ok, info, warn or error. ``body`` is HTML."""
    icon = {"ok": "✓", "info": "i", "warn": "!", "error": "✕"}.get(kind, "i")
    return (f"<div class='vl-notice vl-notice-{kind}' role='status'><span class='vl-notice-icon'>{icon}</span>"
            f"<div><div class='vl-notice-title'>{esc(title)}</div>{body}</div></div>")


def problems_notice(title: str, message: str, errors: Sequence = ()) -> str:
    """An error notice with every problem the API listed under its field (``{field, message}``)
    or its line (``{file, line, message}``)."""
    items = []
    for x in list(errors)[:20]:
        if isinstance(x, dict):
            where = x.get("field") or (f"{x.get('file', '')} line {x['line']}" if x.get("line") else "")
            items.append(f"<li>{f'<b>{esc(where)}</b>: ' if where else ''}{esc(x.get('message', ''))}</li>")
        else:
            items.append(f"<li>{esc(x)}</li>")
    more = f"<li>… and {len(errors) - 20} more</li>" if len(errors) > 20 else ""
    return notice("error", title, f"<div>{esc(message)}</div>" + (f"<ul>{''.join(items)}{more}</ul>" if items else ""))


def section(title: str, subtitle: str = "") -> str:
    sub = f"<p class='vl-section-sub'>{esc(subtitle)}</p>" if subtitle else ""
    return f"<div class='vl-section'><h2>{esc(title)}</h2>{sub}</div>"


def duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "–"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def ago(value: str | None) -> str:
    t = parse_time(value)
    if t is None:
        return "–"
    s = (datetime.now(UTC) - t).total_seconds()
    if s < 60:
        return "just now"
    if s < 3600:
        return f"{int(s // 60)} min ago"
    if s < 86400:
        return f"{int(s // 3600)} h ago"
    return t.strftime("%Y-%m-%d %H:%M")


def number(value: float | int | None, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 1:
        return f"{int(value):,}"
    return f"{value:.{digits}g}"


def histogram(title: str, bins: Sequence[tuple[str, int]], unit: str, empty: str) -> str:
    """Vertical bars in plain HTML (crisp, no chart library), each bar labelled with its count."""
    if not bins:
        return f"<div class='vl-hist'><div class='vl-hist-title'>{esc(title)}</div><div class='vl-muted' " \
               f"style='font-size:12px;padding:18px 0'>{esc(empty)}</div></div>"
    top = max(c for _, c in bins) or 1
    cols = "".join(f"<div class='vl-hist-col' title='{esc(label)}: {c:,} {esc(unit)}'>"
                   f"<div class='vl-hist-n'>{c:,}</div><div class='vl-hist-bar' style='height:{max(2, 100 * c / top):.0f}%'>"
                   f"</div><div class='vl-hist-label'>{esc(label)}</div></div>" for label, c in bins)
    return f"<div class='vl-hist'><div class='vl-hist-title'>{esc(title)}</div><div class='vl-hist-cols'>{cols}</div></div>"


# The page's URL carries where the user is: ``?tab=...`` and the open job and evaluation
# (``&job=N``, ``&evaluation=N``). Each move is a new history entry (pushState), so Back and
# Forward walk the user's own steps (ui/app.py applies the URL on load and on popstate); an
# entry is pushed only when the URL really changes, so applying a URL never pushes it again.
SET_URL_JS = """(changes) => { const u = new URL(window.location.href);
  for (const [key, value] of Object.entries(changes)) {
    if (value === null || value === undefined || value === '') { u.searchParams.delete(key); }
    else { u.searchParams.set(key, String(value)); } }
  if (u.href !== window.location.href) { window.history.pushState(null, '', u); } }"""
#: after an event that opened a job (its input: the Jobs page's hidden job id)
JOB_URL_JS = f"""(job) => {{ const set = {SET_URL_JS}; if (job) {{ set({{tab: 'jobs', job: job}}); }}
  return []; }}"""
#: after the Evaluate page's evaluation changed (its input: the evaluation picked)
EVALUATION_URL_JS = f"""(ev) => {{ const set = {SET_URL_JS}; set({{evaluation: ev}}); return []; }}"""
