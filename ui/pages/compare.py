"""Compare page: several runs side by side (``GET /api/jobs/compare``): their loss, eval loss,
learning rate and throughput curves overlaid, the hyperparameters whose values differ, and
their evaluation scores next to each other (with the base models those evaluations ran)."""

from __future__ import annotations

import json

import gradio as gr
import pandas as pd

from ui.client import ApiError
from ui.pages.evaluate import error_html
from ui.session import Sessions
from ui.widgets import badge, esc, notice, section, table

#: (series key, title) of the overlaid plots
CURVES = [("loss", "Training loss"), ("eval_loss", "Validation loss"), ("learning_rate", "Learning rate"),
          ("tokens_per_second", "Throughput (tokens/s)")]


def curve_frame(series: dict[str, list[dict]], key: str) -> pd.DataFrame:
    """One long frame per curve, a ``job`` column telling the runs apart."""
    rows = [{"step": p["step"], key: float(p[key]), "job": f"job {jid}"}
            for jid, points in series.items() for p in points if isinstance(p.get(key), int | float)]
    return pd.DataFrame(rows, columns=["step", key, "job"]).astype({"step": int, key: float})


def _value(v: object) -> str:
    return esc(json.dumps(v) if isinstance(v, dict | list) or v is None else v)


def differing_table(cmp: dict) -> str:
    jobs = [f"job {j['id']}" for j in cmp["jobs"]]
    rows = [[f"<span class='vl-mono'>{esc(d['field'])}</span>", *(_value(v) for v in d["values"])]
            for d in cmp["differing"]]
    return table(["Setting", *jobs], rows, "The runs use the same settings.", cls="vl-compare-diff")


def scores_table(cmp: dict) -> str:
    """One block per evaluation: metrics as rows, the models it ran as columns."""
    parts = []
    for ev in cmp["evaluations"]:
        models = ev["models"]
        names = list(dict.fromkeys(m for x in models for m in x["metrics"]))
        rows = [[f"<b>{esc(n)}</b>", *(f"{x['metrics'][n]:.3f}" if isinstance(x["metrics"].get(n), int | float)
                                       else "–" for x in models)] for n in names]
        data = (f"mixture of {esc(', '.join(ev['mixture']))} (held-out parts, overall)" if ev.get("mixture")
                else f"benchmark suite: {esc(', '.join(ev['benchmarks']))}" if ev.get("benchmarks")
                else f"dataset #{ev['dataset_id']} · {esc(ev['split'])} split")
        parts.append(f"<div class='vl-h3'>Evaluation #{ev['evaluation_id']} · {data}</div>"
                     + table(["Metric", *(f"{x['label']} (n={x['n']})" for x in models)], rows))
    return "".join(parts) or ("<div class='vl-empty'>No evaluation has scored these runs yet: run one on the "
                              "Evaluate page.</div>")


def jobs_line(cmp: dict) -> str:
    return " ".join(f"<span class='vl-chip'><b>job {j['id']}</b> {badge(j['status'])} {esc(j['preset'])} · "
                    f"step {j['step']}/{j['total_steps'] or '?'}</span>" for j in cmp["jobs"])


def build(sessions: Sessions):  # noqa: ANN201
    gr.HTML(section("Compare runs", "Pick two or more jobs: their curves overlaid, the settings that differ, "
                                    "and their evaluation scores side by side."))
    with gr.Row():
        pick = gr.Dropdown(label="Jobs", choices=[], multiselect=True, elem_id="vl-cmp-pick", scale=4)
        go = gr.Button("Compare", variant="primary", elem_id="vl-cmp-btn", scale=1)
    message = gr.HTML(elem_id="vl-cmp-msg")
    header = gr.HTML(elem_id="vl-cmp-jobs")
    plots = {}
    with gr.Row():
        for key, title in CURVES[:2]:
            plots[key] = gr.LinePlot(x="step", y=key, color="job", title=title, height=240,
                                     elem_id=f"vl-cmp-{key}", show_label=False)
    with gr.Row():
        for key, title in CURVES[2:]:
            plots[key] = gr.LinePlot(x="step", y=key, color="job", title=title, height=240,
                                     elem_id=f"vl-cmp-{key}", show_label=False)
    gr.HTML("<div class='vl-h3'>Settings that differ</div>")
    diff = gr.HTML(elem_id="vl-cmp-diff")
    gr.HTML("<div class='vl-h3'>Evaluation scores</div>")
    scores = gr.HTML(elem_id="vl-cmp-scores")

    def load(chosen, request: gr.Request):  # noqa: ANN001, ANN202
        try:
            jobs = sessions.api(request).jobs()
        except ApiError:
            return gr.skip()
        return gr.update(choices=[(f"job {j['id']} · {j['status']} · {j['preset']}", j["id"]) for j in jobs],
                         value=chosen or [])

    def run(chosen, request: gr.Request):  # noqa: ANN001, ANN202
        outputs = [message, header, diff, scores, *plots.values()]
        if len(chosen or []) < 2:
            return {message: notice("error", "Pick at least two jobs", "<div>A comparison needs two to eight "
                                                                       "jobs.</div>")}
        try:
            cmp = sessions.api(request).compare_jobs([int(i) for i in chosen])
        except ApiError as e:
            return {message: error_html("Cannot compare these jobs", e)}
        out = dict.fromkeys(outputs, "")
        out.update({header: jobs_line(cmp), diff: differing_table(cmp), scores: scores_table(cmp)})
        for key, plot in plots.items():
            frame = curve_frame(cmp["series"], key)
            out[plot] = gr.LinePlot(value=frame if not frame.empty else None, visible=not frame.empty)
        return out

    go.click(run, pick, [message, header, diff, scores, *plots.values()])
    return load, pick
