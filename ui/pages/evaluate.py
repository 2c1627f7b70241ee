"""Evaluate page: compare base and fine-tuned models on a held-out split, per metric side by
side and sample by sample, live while the run goes. Everything goes through the REST API
(``ui/client.py``); the Playground is ``ui/pages/playground.py``."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from ui.client import ApiError
from ui.session import Sessions
from ui.widgets import badge, esc, notice, problems_notice, progress_bar, section, table

METRICS = ["exact_match", "vqa_accuracy", "anls", "relaxed_accuracy", "multiple_choice"]


def model_choices(api) -> list[tuple[str, str]]:  # noqa: ANN001
    """(label, value) for registered models and what succeeded jobs saved; the value is
    ``model:ID`` or ``job:ID:MODEL_ID``."""
    out = [(f"{m['name']} (base)", f"model:{m['id']}") for m in api.models()]
    out += [(f"job {j['id']} fine-tune", f"job:{j['id']}:{j['model_id']}") for j in api.jobs()
            if j["status"] == "succeeded"]
    return out


def data_choices(api) -> list[tuple[str, str]]:  # noqa: ANN001
    """(label, value) for the data to evaluate on: a dataset (``dataset:ID``) or the mixture a
    training job trained on (``mixture:JOB_ID``: every held-out part, per dataset and overall)."""
    out = [(f"{d['name']} #{d['id']} ({d.get('num_val_samples', 0)} held out)", f"dataset:{d['id']}")
           for d in api.datasets()]
    for j in api.jobs():
        rows = (j.get("mixture") or {}).get("datasets") or []
        if len(rows) > 1:
            names = ", ".join(r["name"] for r in rows[:4]) + (", …" if len(rows) > 4 else "")
            out.append((f"mixture of job {j['id']}: {names}", f"mixture:{j['id']}"))
    return out


def data_request(value: str) -> dict:
    """A data choice as the request's ``dataset_id`` or ``mixture``."""
    kind, _, ident = str(value).partition(":")
    return {"mixture": {"job_id": int(ident)}} if kind == "mixture" else {"dataset_id": int(ident or kind)}


def to_ref(value: str) -> dict:
    kind, *ids = value.split(":")
    return {"model_id": int(ids[0])} if kind == "model" else {"job_id": int(ids[0])}


ACTIVE = ("queued", "starting", "running", "stopping")


def _means(items: list[dict], k: int) -> tuple[int, dict[str, float]]:
    sums: dict[str, float] = {}
    n = 0
    for item in items:
        scores = (item.get("scores") or [None] * (k + 1))[k]
        if isinstance(scores, dict):
            n += 1
            for name, v in scores.items():
                if isinstance(v, int | float):
                    sums[name] = sums.get(name, 0.0) + v
    return n, ({m: v / n for m, v in sums.items()} if n else {})


def running_scores(res: dict) -> list[dict]:
    """Per model (and per dataset of a mixture), the mean of each metric over the samples scored
    so far (the final summary replaces it when the run ends)."""
    items = res.get("items") or []
    parts = list(dict.fromkeys(i["dataset"] for i in items if i.get("dataset")))
    out = []
    for k, label in enumerate(res.get("models") or []):
        n, metrics = _means(items, k)
        entry = {"label": label, "n": n, "metrics": metrics}
        if parts:
            entry["datasets"] = [{"name": p, **dict(zip(("n", "metrics"), _means(
                [i for i in items if i.get("dataset") == p], k), strict=True))} for p in parts]
        out.append(entry)
    return out


def _score_rows(summary: list[dict]) -> list[tuple[str, list]]:
    """(row label HTML, value per model): per metric the overall score, then (a mixture) each
    dataset's."""
    names = list(dict.fromkeys(m for s in summary for m in s.get("metrics", {})))
    parts = list(dict.fromkeys(d["name"] for s in summary for d in s.get("datasets") or []))
    out = []
    for name in names:
        label = f"<b>{esc(name)}</b>" + (" <span class='vl-muted'>overall (every sample once)</span>" if parts else "")
        out.append((label, [s.get("metrics", {}).get(name) for s in summary]))
        for p in parts:
            vals = []
            for s in summary:
                d = next((d for d in s.get("datasets") or [] if d["name"] == p), {})
                vals.append(d.get("metrics", {}).get(name))
            n = next((d.get("n") for s in summary for d in s.get("datasets") or [] if d["name"] == p), None)
            out.append((f"&nbsp;&nbsp;{esc(name)} · {esc(p)} <span class='vl-muted'>(n={n})</span>", vals))
    return out


def summary_table(ev: dict, live: list[dict] | None = None) -> str:
    """Metrics as rows (for a mixture: overall, then per dataset), models as columns (base next
    to fine-tune), with the change from the first model (the reference) to each other one."""
    summary = ev.get("summary") or live or []
    done, total = ev.get("done", 0), ev.get("total")
    status = ev["status"]
    caption = f"{done:,} / {total:,} outputs" if total else f"{done:,} outputs"
    head = (f"<div class='vl-jobhead'><b>Evaluation #{ev['id']}</b> {badge(status)}</div>"
            + progress_bar(1.0 if status == "succeeded" else (done / total if total else None), caption, status))
    if status == "failed":
        head += notice("error", "The evaluation failed", f"<div>{esc(ev.get('failure_reason') or '')}</div>")
    if not summary:
        return head + table(["Metric"], [], "No results yet." if status in ACTIVE else "No results.")
    models = [f"{s['label']} (n={s['n']})" for s in summary]
    rows = []
    for label, vals in _score_rows(summary):
        cells = [f"{v:.3f}" if isinstance(v, int | float) else "–" for v in vals]
        ref = vals[0]
        deltas = [f"{v - ref:+.3f}" if isinstance(v, int | float) and isinstance(ref, int | float) else "–"
                  for v in vals[1:]]
        rows.append([label, *cells, *deltas])
    delta_heads = [f"Δ {s['label']}" for s in summary[1:]]
    note = "" if ev.get("summary") else "<p class='vl-muted'>Scores so far (final when the run ends).</p>"
    return head + note + table(["Metric", *models, *delta_heads], rows)


def samples_table(res: dict, only_differences: bool = True) -> str:
    items = [i for i in res["items"] if i.get("differ")] if only_differences else res["items"]
    mixed = any(i.get("dataset") for i in res["items"])
    rows = [[esc(i["id"])] + ([esc(i.get("dataset") or "")] if mixed else [])
            + [esc(i["question"]), esc(" | ".join(i["answers"]))]
            + [esc(p if p is not None else "–") for p in i["predictions"]] for i in items[:200]]
    head = f"<p>{res['differing']} of {res['samples']} samples differ between the models.</p>"
    cols = ["Sample", *(["Dataset"] if mixed else []), "Question", "Answer", *res["models"]]
    return head + table(cols, rows, "No samples.")


@dataclass
class EvaluatePage:
    load: object  # (request) -> pickers
    pickers: list  # dataset, models, evaluation


def _eval_choices(api) -> list[tuple[str, int]]:  # noqa: ANN001
    return [(f"#{e['id']} {e['status']} · " + ", ".join(m["label"] for m in e["models"]), e["id"])
            for e in api.evaluations()]


def build_evaluate(sessions: Sessions) -> EvaluatePage:
    gr.HTML(section("Evaluate", "Run base and fine-tuned models on a dataset's held-out split, or on every "
                                "held-out part of a job's training mixture (scored per dataset and overall), "
                                "and compare them per metric and sample by sample."))
    with gr.Row():
        dataset = gr.Dropdown(label="Dataset or a job's mixture", choices=[], elem_id="vl-eval-dataset")
        split = gr.Radio(["validation", "train"], value="validation", label="Split", elem_id="vl-eval-split")
    models = gr.CheckboxGroup(label="Models", choices=[], elem_id="vl-eval-models")
    metrics = gr.CheckboxGroup(METRICS, value=["exact_match", "vqa_accuracy"], label="Metrics")
    with gr.Row():
        run = gr.Button("Run evaluation", variant="primary", elem_id="vl-eval-run")
        refresh = gr.Button("Refresh", elem_id="vl-eval-refresh")
    message = gr.HTML(elem_id="vl-eval-msg")
    picked = gr.Dropdown(label="Evaluation", choices=[], elem_id="vl-eval-pick")
    only_diff = gr.Checkbox(label="Only samples where the models differ", value=True)
    summary = gr.HTML(elem_id="vl-eval-summary")
    samples = gr.HTML(elem_id="vl-eval-samples")
    download = gr.File(label="Download (JSON lines)", interactive=False, visible=False, elem_id="vl-eval-download")
    timer = gr.Timer(1.5, active=False)

    def load(request: gr.Request):  # noqa: ANN202
        api = sessions.api(request)
        try:
            return gr.update(choices=data_choices(api)), gr.update(choices=model_choices(api)), gr.update(choices=_eval_choices(api))
        except ApiError:
            return gr.skip(), gr.skip(), gr.skip()

    def start(ds_id, split_name, chosen, metric_names, request: gr.Request):  # noqa: ANN001, ANN202
        if ds_id is None or not chosen:
            missing = ", ".join(w for w, ok in (("a dataset", ds_id is not None), ("at least one model", chosen))
                                if not ok)
            return notice("error", "Cannot start the evaluation", f"<div>Choose {esc(missing)}.</div>"), gr.skip()
        api = sessions.api(request)
        try:
            data = data_request(ds_id)
            ev = api.create_evaluation(data.get("dataset_id"), [to_ref(v) for v in chosen], split_name,
                                       metric_names, mixture=data.get("mixture"))
        except ApiError as e:
            return error_html("Cannot start the evaluation", e), gr.skip()
        return (notice("ok", f"Evaluation #{ev['id']} queued",
                       "<div>It is selected below; results appear as the models answer.</div>"),
                gr.update(choices=_eval_choices(api), value=ev["id"]))

    def show(ev_id, only, request: gr.Request):  # noqa: ANN001, ANN202
        if ev_id is None:
            return "", "", gr.File(value=None, visible=False), gr.Timer(active=False), gr.skip()
        api = sessions.api(request)
        try:
            ev = api.evaluation(int(ev_id))
            res = api.evaluation_results(int(ev_id))
            live = ev["status"] in ACTIVE
            path = None
            if ev["status"] == "succeeded":
                path = Path(tempfile.mkdtemp()) / f"evaluation-{ev_id}.jsonl"
                path.write_text(api.evaluation_download(int(ev_id)))
            return (summary_table(ev, running_scores(res)), samples_table(res, bool(only)),
                    gr.File(value=str(path) if path else None, visible=path is not None), gr.Timer(active=live),
                    gr.update(choices=_eval_choices(api)))
        except ApiError as e:
            return (notice("error", "Cannot load the evaluation", esc(e)), "", gr.File(value=None, visible=False),
                    gr.Timer(active=False), gr.skip())

    shown = [summary, samples, download, timer, picked]
    run.click(start, [dataset, split, models, metrics], [message, picked])
    refresh.click(load, None, [dataset, models, picked]).then(show, [picked, only_diff], shown)
    picked.change(show, [picked, only_diff], shown)
    only_diff.change(show, [picked, only_diff], shown)
    timer.tick(show, [picked, only_diff], shown)
    return EvaluatePage(load, [dataset, models, picked])


def error_html(title: str, e: ApiError) -> str:
    """The API's refusal with every problem under its field."""
    return problems_notice(title, str(e), e.errors)
