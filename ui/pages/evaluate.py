"""Evaluate page: compare base and fine-tuned models on a held-out split, a job's mixture or a
suite of registered benchmarks (one table: rows benchmark figures, columns models, CSV/JSON),
per metric side by side and sample by sample, live while the run goes. Everything goes through the REST API
(``ui/client.py``); the Playground is ``ui/pages/playground.py``."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from ui.client import ApiError
from ui.session import Sessions
from ui.widgets import EVALUATION_URL_JS, badge, esc, notice, problems_notice, progress_bar, section, table

METRICS = ["exact_match", "vqa_accuracy", "anls", "relaxed_accuracy", "multiple_choice"]
#: the data choice of a benchmark suite (the benchmarks are ticked apart)
SUITE = "suite"


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
    out.append(("Benchmark suite: the registered benchmarks ticked below", SUITE))
    return out


def benchmark_choices(api) -> list[tuple[str, str]]:  # noqa: ANN001
    """(label, name) of the registered benchmarks (a suite runs each with its own settings)."""
    return [(f"{b['title']} ({b['name']}, {b['samples']} samples)", b["name"]) for b in api.benchmarks()
            if b.get("registered")]


def data_request(value: str, benchmarks: list[str] | None = None) -> dict:
    """A data choice as the request's ``dataset_id``, ``mixture`` or ``benchmarks``."""
    if value == SUITE:
        return {"benchmarks": list(benchmarks or [])}
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


def _head(ev: dict) -> str:
    """The evaluation's badge and progress (outputs, and samples/s while it runs)."""
    done, total = ev.get("done", 0), ev.get("total")
    status = ev["status"]
    caption = f"{done:,} / {total:,} outputs" if total else f"{done:,} outputs"
    if status in ACTIVE and ev.get("samples_per_second"):
        caption += f" · {ev['samples_per_second']:.2f} samples/s"
    head = (f"<div class='vl-jobhead'><b>Evaluation #{ev['id']}</b> {badge(status)}</div>"
            + progress_bar(1.0 if status == "succeeded" else (done / total if total else None), caption, status))
    if status == "failed":
        head += notice("error", "The evaluation failed", f"<div>{esc(ev.get('failure_reason') or '')}</div>")
    return head


def _published(value: float | None, unit: str) -> str:
    if not isinstance(value, int | float):
        return "–"
    return f"{value:.0f}" if unit == "count" else f"{value:.1f}"


def suite_view(ev: dict, tab: dict | None) -> str:
    """A benchmark suite: one table, a row per benchmark figure (in the benchmarks' published
    units: percent, MME points, the OCRBench count), a column per model, and the change from the
    first model (the reference) to each other one."""
    head = _head(ev)
    names = ", ".join(b["name"] for b in (ev.get("benchmarks") or {}).get("benchmarks", []))
    head += f"<p class='vl-muted'>Benchmark suite: {esc(names)} (each with its own prompt, tiling and metrics).</p>"
    if not tab:
        return head + table(["Benchmark"], [], "The table appears when the run ends." if ev["status"] in ACTIVE
                            else "No results.")
    rows = []
    for r in tab["rows"]:
        vals, unit = r["published"], r["unit"]
        ref = vals[0]
        deltas = [_published(v - ref, unit) if isinstance(v, int | float) and isinstance(ref, int | float) else "–"
                  for v in vals[1:]]
        deltas = [d if d == "–" or d.startswith("-") else "+" + d for d in deltas]
        unit_label = {"percent": "%", "points": "points", "count": "right"}[unit]
        rows.append([f"<b>{esc(r.get('title') or r['benchmark'])}</b>", f"{esc(r['figure'])} ({unit_label})",
                     str(r["n"]), *(_published(v, unit) for v in vals), *deltas])
    models = tab["models"]  # table() escapes its headers
    return head + table(["Benchmark", "Figure", "Samples", *models, *(f"Δ {m}" for m in models[1:])], rows,
                        cls="vl-suite-table")


def summary_table(ev: dict, live: list[dict] | None = None) -> str:
    """Metrics as rows (for a mixture: overall, then per dataset), models as columns (base next
    to fine-tune), with the change from the first model (the reference) to each other one."""
    summary = ev.get("summary") or live or []
    status = ev["status"]
    head = _head(ev)
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
    picked: gr.Dropdown  # the open evaluation (in the page's URL: ``&evaluation=N``)
    open_evaluation: object  # (request, id or None) -> the picker's update (its change shows it)


def _eval_choices(api) -> list[tuple[str, int]]:  # noqa: ANN001
    return [(f"#{e['id']} {e['status']} · " + ", ".join(m["label"] for m in e["models"]), e["id"])
            for e in api.evaluations()]


def build_evaluate(sessions: Sessions) -> EvaluatePage:
    gr.HTML(section("Evaluate", "Run base and fine-tuned models on a dataset's held-out split, on every "
                                "held-out part of a job's training mixture (scored per dataset and overall), "
                                "or on a suite of registered benchmarks (one table, as the benchmarks publish "
                                "their scores), and compare them per metric and sample by sample."))
    with gr.Row():
        dataset = gr.Dropdown(label="Dataset, a job's mixture or a benchmark suite", choices=[],
                              elem_id="vl-eval-dataset")
        split = gr.Radio(["validation", "train"], value="validation", label="Split", elem_id="vl-eval-split")
    benchmarks = gr.CheckboxGroup(label="Benchmarks of a suite (registered; each with its own prompt, tiling and "
                                  "metrics)", choices=[], elem_id="vl-eval-benchmarks")
    models = gr.CheckboxGroup(label="Models", choices=[], elem_id="vl-eval-models")
    metrics = gr.CheckboxGroup(METRICS, value=["exact_match", "vqa_accuracy"],
                               label="Metrics (a suite uses each benchmark's own)")
    with gr.Row():
        run = gr.Button("Run evaluation", variant="primary", elem_id="vl-eval-run")
        refresh = gr.Button("Refresh", elem_id="vl-eval-refresh")
    message = gr.HTML(elem_id="vl-eval-msg")
    picked = gr.Dropdown(label="Evaluation", choices=[], elem_id="vl-eval-pick")
    only_diff = gr.Checkbox(label="Only samples where the models differ", value=True)
    summary = gr.HTML(elem_id="vl-eval-summary")
    samples = gr.HTML(elem_id="vl-eval-samples")
    download = gr.File(label="Download (JSON lines)", interactive=False, visible=False, elem_id="vl-eval-download")
    table_files = gr.File(label="The table (CSV, JSON)", file_count="multiple", interactive=False, visible=False,
                          elem_id="vl-eval-table-files")
    timer = gr.Timer(1.5, active=False)

    def load(request: gr.Request):  # noqa: ANN202
        api = sessions.api(request)
        try:
            return (gr.update(choices=data_choices(api)), gr.update(choices=model_choices(api)),
                    gr.update(choices=_eval_choices(api)), gr.update(choices=benchmark_choices(api)))
        except ApiError:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()

    def start(ds_id, split_name, chosen, metric_names, bench_names, request: gr.Request):  # noqa: ANN001, ANN202
        suite = ds_id == SUITE
        if ds_id is None or not chosen or (suite and not bench_names):
            missing = ", ".join(w for w, ok in (("a dataset", ds_id is not None), ("at least one model", chosen),
                                                ("at least one registered benchmark", not suite or bench_names))
                                if not ok)
            return notice("error", "Cannot start the evaluation", f"<div>Choose {esc(missing)}.</div>"), gr.skip()
        api = sessions.api(request)
        try:
            data = data_request(ds_id, bench_names)
            ev = api.create_evaluation(data.get("dataset_id"), [to_ref(v) for v in chosen], split_name,
                                       [] if suite else metric_names, mixture=data.get("mixture"),
                                       benchmarks=data.get("benchmarks"))
        except ApiError as e:
            return error_html("Cannot start the evaluation", e), gr.skip()
        return (notice("ok", f"Evaluation #{ev['id']} queued",
                       "<div>It is selected below; results appear as the models answer.</div>"),
                gr.update(choices=_eval_choices(api), value=ev["id"]))

    def show(ev_id, only, request: gr.Request):  # noqa: ANN001, ANN202
        hidden = gr.File(value=None, visible=False)
        if ev_id is None:
            return "", "", hidden, gr.Timer(active=False), gr.skip(), hidden
        api = sessions.api(request)
        try:
            ev = api.evaluation(int(ev_id))
            res = api.evaluation_results(int(ev_id))
            live = ev["status"] in ACTIVE
            path, exports, tab = None, [], None
            if ev["status"] == "succeeded":
                folder = Path(tempfile.mkdtemp())
                path = folder / f"evaluation-{ev_id}.jsonl"
                path.write_text(api.evaluation_download(int(ev_id)))
                if ev.get("benchmarks"):
                    tab = api.evaluation_table(int(ev_id))
                    for fmt in ("csv", "json"):
                        exports.append(folder / f"evaluation-{ev_id}-table.{fmt}")
                        exports[-1].write_text(api.evaluation_table_export(int(ev_id), fmt))
            view = suite_view(ev, tab) if ev.get("benchmarks") else summary_table(ev, running_scores(res))
            return (view, samples_table(res, bool(only)),
                    gr.File(value=str(path) if path else None, visible=path is not None), gr.Timer(active=live),
                    gr.update(choices=_eval_choices(api)),
                    gr.File(value=[str(p) for p in exports] or None, visible=bool(exports)))
        except ApiError as e:
            return (notice("error", "Cannot load the evaluation", esc(e)), "", hidden, gr.Timer(active=False),
                    gr.skip(), hidden)

    shown = [summary, samples, download, timer, picked, table_files]
    run.click(start, [dataset, split, models, metrics, benchmarks], [message, picked])
    refresh.click(load, None, [dataset, models, picked, benchmarks]).then(show, [picked, only_diff], shown)
    picked.change(show, [picked, only_diff], shown)
    picked.change(None, picked, None, js=EVALUATION_URL_JS)  # the open evaluation in the URL
    only_diff.change(show, [picked, only_diff], shown)
    timer.tick(show, [picked, only_diff], shown)

    def open_evaluation(request: gr.Request, ev_id: int | None) -> dict:
        if ev_id is None:
            return gr.update(value=None)
        try:
            return gr.update(choices=_eval_choices(sessions.api(request)), value=int(ev_id))
        except ApiError:
            return gr.skip()

    return EvaluatePage(load, [dataset, models, picked, benchmarks], picked, open_evaluation)


def error_html(title: str, e: ApiError) -> str:
    """The API's refusal with every problem under its field."""
    return problems_notice(title, str(e), e.errors)
