"""Pure rendering of a job's mixture (``GET /api/jobs/{id}`` ``mixture``): what each dataset
was asked to contribute (the recipe's count after ``repeat_time``) and, once the trainer has
indexed the data, what it did contribute (kept samples, tokens)."""

from __future__ import annotations

from ui.widgets import esc, number, table


def data_label(job: dict, dataset_names: dict[int, str]) -> str:
    """The job's data in a few words: its dataset, or ``mixture of N: a, b, …``."""
    rows = (job.get("mixture") or {}).get("datasets") or []
    if len(rows) > 1 or (rows and rows[0].get("source") == "meta_file"):
        names = ", ".join(r["name"] for r in rows[:3]) + (", …" if len(rows) > 3 else "")
        return f"mixture of {len(rows)}: {names}"
    did = job.get("dataset_id")
    return str(dataset_names.get(did, f"#{did}"))


def mixture_html(job: dict) -> str:
    mix = job.get("mixture") or {}
    rows = mix.get("datasets") or []
    if not rows:
        return ""
    body = []
    for r in rows:
        t = r.get("trained") or {}
        body.append([f"<b>{esc(r['name'])}</b>" + (" <span class='vl-muted'>(meta file)</span>"
                                                   if r.get("source") == "meta_file" else ""),
                     number(r.get("lines")), esc(r.get("repeat_time")), "yes" if r.get("data_augment") else "–",
                     esc(r.get("max_dynamic_patch") or "job's"), f"<b>{number(r.get('samples'))}</b>",
                     number(t.get("kept")) if t else "–", number(t.get("tokens")) if t else "–"])
    total = mix.get("trained") or {}
    body.append(["<b>total</b>", number(mix.get("lines")), "", "", "", f"<b>{number(mix.get('samples'))}</b>",
                 number(total.get("kept")) if total else "–", number(total.get("tokens")) if total else "–"])
    head = ["Dataset", "Lines", "repeat_time", "Augment", "Max tiles", "Samples per epoch", "Trained (kept)",
            "Tokens"]
    return "<div class='vl-h3'>Training mixture</div><div id='vl-job-mixture'>" + table(head, body) + "</div>"
