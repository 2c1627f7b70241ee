"""Jobs page: the list (status, progress, ETA, owner) and one job's live view: progress bar
with ETA, metric cards, plots, the log viewer, the spec, and cancel / resume / retry.

One timer drives the open job: each tick reads only what is new since the cursor in the
session state (``after=`` on logs and metrics), so a long run costs the same per tick as a
short one."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from ui.client import ApiError, StudioClient
from ui.logview import batch, log_viewer
from ui.pages import job_view as view
from ui.session import Sessions
from ui.widgets import ACTIVE, notice, section

PLOTS = [("loss", "Training loss (raw and smoothed)"), ("learning_rate", "Learning rate"),
         ("grad_norm", "Gradient norm"), ("tokens_per_second", "Throughput (tokens/s)"),
         ("gpu_memory_gib", "GPU memory (GiB)")]
Y_TITLES = {"loss": "loss", "learning_rate": "lr", "grad_norm": "norm", "tokens_per_second": "tokens/s",
            "gpu_memory_gib": "GiB"}
LOG_BATCH = 3000


@dataclass
class JobsPage:
    state: gr.State
    list_html: gr.HTML
    outputs: list
    open_job: object  # (request, job_id) -> dict of updates; used by the Train page
    refresh: object  # (state, request) -> the jobs table


def new_state(job_id: int | None = None) -> dict:
    return {"job": job_id, "log": 0, "metric": 0, "metrics": [], "status": None}


def _names(api: StudioClient) -> tuple[dict[int, str], dict[int, str]]:
    return ({m["id"]: m["name"] for m in api.models()}, {d["id"]: d["name"] for d in api.datasets()})


def build(sessions: Sessions) -> JobsPage:
    gr.HTML(section("Jobs", "Every fine-tune, newest first. Click a job to follow it live."))
    list_html = gr.HTML(elem_id="vl-jobs-list", js_on_load=(
        "element.addEventListener('click', (e) => { const r = e.target.closest('[data-job]');"
        " if (r) trigger('select', {index: parseInt(r.dataset.job), value: r.dataset.job}); });"))
    state = gr.State(new_state())
    with gr.Column(visible=False, elem_id="vl-job-detail") as detail:
        with gr.Row(equal_height=False, elem_classes="vl-jobbar"):
            header = gr.HTML(elem_id="vl-job-header", scale=4)
            cancel = gr.Button("Cancel", variant="stop", size="sm", elem_id="vl-job-cancel", scale=0, min_width=90)
            resume = gr.Button("Resume", size="sm", elem_id="vl-job-resume", scale=0, min_width=90)
            retry = gr.Button("Retry", size="sm", elem_id="vl-job-retry", scale=0, min_width=90)
        progress = gr.HTML(elem_id="vl-job-progress")
        action_msg = gr.HTML(elem_id="vl-job-action")
        cards = gr.HTML(elem_id="vl-job-cards")
        plots = {}
        with gr.Row():
            for key, title in PLOTS[:2]:
                plots[key] = _plot(key, title)
        with gr.Row():
            for key, title in PLOTS[2:]:
                plots[key] = _plot(key, title)
        logv = log_viewer(sessions, elem_id="vl-log")
        with gr.Accordion("Spec, command line and run folder", open=False):
            spec = gr.HTML(elem_id="vl-job-spec")
    buttons = [cancel, resume, retry]
    outputs = [state, detail, header, progress, cards, logv, spec, *plots.values(), *buttons]

    def render(api: StudioClient, st: dict, reset: bool, session: str | None) -> dict:
        return _render(api, st, reset, session, detail, header, progress, cards, logv, spec, plots, buttons)

    def open_job(request: gr.Request, job_id: int) -> dict:
        st = new_state(int(job_id))
        return {state: st, **render(sessions.api(request), st, True, request.session_hash)}

    def on_select(st: dict, evt: gr.SelectData, request: gr.Request) -> dict:
        return open_job(request, int(evt.index))

    def on_tick(st: dict, request: gr.Request) -> dict:
        if st.get("job") is None:
            return [gr.skip()] * len(outputs)
        return {state: st, **render(sessions.api(request), st, False, request.session_hash)}

    def refresh_list(st: dict, request: gr.Request) -> str:
        api = sessions.api(request)
        try:
            models, datasets = _names(api)
            return view.jobs_table(api.jobs(), models, datasets, st.get("job"))
        except ApiError as e:
            return notice("error", "Cannot load the jobs", str(e))

    def action(verb: str):  # noqa: ANN202
        def run(st: dict, request: gr.Request) -> str:
            try:
                job = getattr(sessions.api(request), verb)(st["job"])
            except ApiError as e:
                return notice("error", f"Could not {verb} job #{st['job']}", _errors(e))
            return notice("ok", f"{verb.capitalize()} requested for job #{job['id']}.")
        return run

    list_html.select(on_select, state, outputs)
    timer = gr.Timer(1.0)
    timer.tick(on_tick, state, outputs, show_progress="hidden")
    gr.Timer(2.5).tick(refresh_list, state, list_html, show_progress="hidden")
    for verb, btn in zip(("cancel", "resume", "retry"), buttons, strict=True):
        btn.click(action(verb), state, action_msg).then(refresh_list, state, list_html)
    return JobsPage(state, list_html, outputs, open_job, refresh_list)


def _errors(e: ApiError) -> str:
    items = "".join(f"<li>{view.esc(x.get('field', '') + ': ' if isinstance(x, dict) and x.get('field') else '')}"
                    f"{view.esc(x.get('message', x) if isinstance(x, dict) else x)}</li>" for x in e.errors[:10])
    return f"<div>{view.esc(str(e))}</div>" + (f"<ul>{items}</ul>" if items else "")


def _plot(key: str, title: str) -> gr.LinePlot:
    return gr.LinePlot(x="step", y=key, color="series" if key == "loss" else None, title=title,
                       x_title="step", y_title=Y_TITLES.get(key, key), height=220, elem_id=f"vl-plot-{key}",
                       label=title, show_label=False,
                       color_map={"loss": "#c7d2fe", "smoothed": "#4f46e5"} if key == "loss" else None)


def _render(api, st, reset, session, detail, header, progress, cards, logv, spec, plots, buttons) -> dict:  # noqa: ANN001
    """Read what is new for the open job and build the component updates."""
    job_id = st["job"]
    try:
        job = api.job(job_id)
        logs = api.logs(job_id, after=st["log"], limit=LOG_BATCH)
        new_metrics = api.metrics(job_id, after=st["metric"])
    except ApiError as e:
        return {header: notice("error", f"Cannot load job #{job_id}", str(e)), detail: gr.Column(visible=True)}
    if logs:
        st["log"] = logs[-1]["seq"]
    if new_metrics:
        st["metric"] = new_metrics[-1]["seq"]
        st["metrics"] = st["metrics"] + new_metrics
    if reset:
        models, datasets = _names(api)
        st["names"] = {"model": models.get(job["model_id"]), "dataset": datasets.get(job["dataset_id"])}
    metrics = st["metrics"]
    last = metrics[-1] if metrics else None
    out: dict = {progress: view.progress_html(job, last), cards: view.metric_cards(metrics)}
    if reset or logs:
        out[logv] = batch(job_id, [r["line"] for r in logs], reset, session)
    if reset or new_metrics:
        out.update({plots[k]: (view.loss_frame(metrics) if k == "loss" else view.series_frame(metrics, k, k))
                    for k in plots})
        gpu = out[plots["gpu_memory_gib"]]  # CPU runs record no GPU memory: no empty chart
        out[plots["gpu_memory_gib"]] = gr.LinePlot(value=gpu, visible=not gpu.empty)
    if reset or job["status"] != st.get("status") or job["status"] in ACTIVE:
        names = st.get("names") or {}
        out[header] = view.header_html(job, names.get("model", f"#{job['model_id']}"),
                                       names.get("dataset", f"#{job['dataset_id']}"))
        out[spec] = view.spec_html(job)
        cancel, resume, retry = buttons
        out[cancel] = gr.Button(interactive=job["status"] in ACTIVE)
        out[resume] = gr.Button(interactive=job["status"] in ("failed", "cancelled"))
        out[retry] = gr.Button(interactive=job["status"] in ("failed", "cancelled", "succeeded"))
    st["status"] = job["status"]
    if reset:
        out[detail] = gr.Column(visible=True)
    return out
