"""Jobs page: the list (status, progress, ETA, owner) and one job's live view: progress bar
with ETA, metric cards, plots, the log viewer, the spec, and cancel / resume / retry.

One timer drives the open job: each tick reads only what is new since the cursor in the
session state (``after=`` on logs and metrics), so a long run costs the same per tick as a
short one."""

from __future__ import annotations

import time
from dataclasses import dataclass

import gradio as gr

from ui.client import ApiError, StudioClient
from ui.logview import batch, log_viewer
from ui.pages import job_view as view
from ui.pages.mixture_view import data_label
from ui.session import Sessions
from ui.widgets import ACTIVE, JOB_URL_JS, notice, section

PLOTS = [("loss", "Loss (raw, smoothed, validation)"), ("learning_rate", "Learning rate"),
         ("grad_norm", "Gradient norm"), ("tokens_per_second", "Throughput (tokens/s)"),
         ("gpu_memory_gib", "GPU memory (GiB)"), ("mfu", "Model FLOPs utilisation"),
         ("packing_efficiency", "Packing efficiency"),
         ("dataloader_wait_fraction", "Data-loader wait")]
Y_TITLES = {"loss": "loss", "learning_rate": "lr", "grad_norm": "norm", "tokens_per_second": "tokens/s",
            "gpu_memory_gib": "GiB", "mfu": "MFU", "packing_efficiency": "real tokens / slots",
            "dataloader_wait_fraction": "share of the time"}  # the titles stay short: a plot's width clips them
LOG_BATCH = 3000


@dataclass
class JobsPage:
    state: gr.State
    list_html: gr.HTML
    outputs: list
    open_job: object  # (request, job_id) -> dict of updates; used by the Train page
    refresh: object  # (state, request) -> the jobs table
    job_ref: gr.Textbox  # the open job's id, hidden: where the page's URL takes it from (JOB_URL_JS)


def new_state(job_id: int | None = None) -> dict:
    return {"job": job_id, "log": 0, "metric": 0, "metrics": [], "status": None}


def _users(api: StudioClient) -> dict[int, str]:
    """User names for the owner column; only admins may list users, others see ``user #id``."""
    try:
        return {u["id"]: u["username"] for u in api.users()}
    except ApiError as e:
        if e.status in (401, 403, 404):
            return {}
        raise


_NAMES: dict[int, tuple[float, tuple]] = {}  # id(client) -> (time, (models, datasets, users))
NAMES_TTL = 15.0


def _names(api: StudioClient) -> tuple[dict[int, str], dict[int, str], dict[int, str]]:
    """Model, dataset and user names for the tables; cached briefly per client, because the
    jobs list refreshes every few seconds and names rarely change."""
    hit = _NAMES.get(id(api))
    if hit and time.monotonic() - hit[0] < NAMES_TTL:
        return hit[1]
    names = ({m["id"]: m["name"] for m in api.models()}, {d["id"]: d["name"] for d in api.datasets()},
             _users(api))
    _NAMES[id(api)] = (time.monotonic(), names)
    return names


def build(sessions: Sessions) -> JobsPage:
    gr.HTML(section("Jobs", "Every fine-tune, newest first. Click a job to follow it live."))
    list_html = gr.HTML(elem_id="vl-jobs-list", js_on_load=(
        "element.addEventListener('click', (e) => { const r = e.target.closest('[data-job]');"
        " if (r) trigger('select', {index: parseInt(r.dataset.job), value: r.dataset.job}); });"))
    state = gr.State(new_state())
    job_ref = gr.Textbox(visible=False, elem_id="vl-job-ref")  # a State is not in the browser; this is
    with gr.Column(visible=False, elem_id="vl-job-detail") as detail:
        with gr.Row(equal_height=False, elem_classes="vl-jobbar"):
            header = gr.HTML(elem_id="vl-job-header", scale=4)
            cancel = gr.Button("Cancel", variant="stop", size="sm", elem_id="vl-job-cancel", scale=0, min_width=90)
            resume = gr.Button("Resume", size="sm", elem_id="vl-job-resume", scale=0, min_width=90)
            retry = gr.Button("Retry", size="sm", elem_id="vl-job-retry", scale=0, min_width=90)
        progress = gr.HTML(elem_id="vl-job-progress")
        action_msg = gr.HTML(elem_id="vl-job-action", visible=False)  # shown with a message only
        cards = gr.HTML(elem_id="vl-job-cards")
        plots = {}
        with gr.Row():
            for key, title in PLOTS[:2]:
                plots[key] = _plot(key, title)
        with gr.Row():
            for key, title in PLOTS[2:5]:
                plots[key] = _plot(key, title)
        with gr.Row():  # the speed telemetry (issue 14)
            for key, title in PLOTS[5:]:
                plots[key] = _plot(key, title)
        logv = log_viewer(sessions, elem_id="vl-log")
        gr.HTML("<div class='vl-h3'>Artifacts</div>")
        artifacts = gr.HTML(elem_id="vl-job-artifacts")
        with gr.Accordion("Spec, command line and run folder", open=False):
            spec = gr.HTML(elem_id="vl-job-spec")
    buttons = [cancel, resume, retry]
    outputs = [state, detail, header, progress, cards, logv, spec, artifacts, *plots.values(), *buttons, action_msg,
               job_ref]

    def render(request: gr.Request, st: dict, reset: bool) -> dict:
        views = dict(detail=detail, header=header, progress=progress, cards=cards, logv=logv, spec=spec,
                     artifacts=artifacts, plots=plots, buttons=buttons, action_msg=action_msg)
        return _render(sessions, request, st, reset, views)

    def open_job(request: gr.Request, job_id: int) -> dict:
        st = new_state(int(job_id))
        return {state: st, job_ref: str(int(job_id)), **render(request, st, True)}

    def on_select(st: dict, evt: gr.SelectData, request: gr.Request) -> dict:
        return open_job(request, int(evt.index))

    def on_tick(st: dict, request: gr.Request) -> dict:
        if st.get("job") is None:
            return [gr.skip()] * len(outputs)
        return {state: st, **render(request, st, False)}

    def refresh_list(st: dict, request: gr.Request) -> str:
        api = sessions.api(request)
        try:
            jobs = api.jobs()
            models, datasets, users = _names(api)
            if any(j["model_id"] not in models or j["dataset_id"] not in (*datasets, None) for j in jobs):
                _NAMES.pop(id(api), None)  # something new since the names were read
                models, datasets, users = _names(api)
            return view.jobs_table(jobs, models, datasets, st.get("job"), users)
        except ApiError as e:
            return notice("error", "Cannot load the jobs", str(e))

    def action(verb: str):  # noqa: ANN202
        def run(st: dict, request: gr.Request) -> dict:
            try:
                job = getattr(sessions.api(request), verb)(st["job"])
            except ApiError as e:
                return {action_msg: gr.HTML(notice("error", f"Could not {verb} job #{st['job']}", _errors(e)),
                                            visible=True)}
            if verb == "cancel":
                st["notice_status"] = job["status"]  # the notice goes once the job moves on
                return {state: st, action_msg: gr.HTML(notice("ok", f"Cancel requested: job #{job['id']} saves "
                                                                    "a checkpoint and stops."), visible=True)}
            out = open_job(request, job["id"])
            out[state]["notice_status"] = job["status"]
            return {**out, action_msg: gr.HTML(notice("ok", f"Job #{job['id']} queued ({verb} of job "
                                                            f"#{st['job']})."), visible=True)}
        return run

    list_html.select(on_select, state, outputs).then(None, job_ref, None, js=JOB_URL_JS)  # the job in the URL
    timer = gr.Timer(1.0)
    timer.tick(on_tick, state, outputs, show_progress="hidden")
    gr.Timer(2.5).tick(refresh_list, state, list_html, show_progress="hidden")
    for verb, btn in zip(("cancel", "resume", "retry"), buttons, strict=True):
        (btn.click(action(verb), state, [action_msg, *outputs]).then(refresh_list, state, list_html)
         .then(None, job_ref, None, js=JOB_URL_JS))
    return JobsPage(state, list_html, outputs, open_job, refresh_list, job_ref)


def _errors(e: ApiError) -> str:
    items = "".join(f"<li>{view.esc(x.get('field', '') + ': ' if isinstance(x, dict) and x.get('field') else '')}"
                    f"{view.esc(x.get('message', x) if isinstance(x, dict) else x)}</li>" for x in e.errors[:10])
    return f"<div>{view.esc(str(e))}</div>" + (f"<ul>{items}</ul>" if items else "")


def _plot(key: str, title: str) -> gr.LinePlot:
    return gr.LinePlot(x="step", y=key, color="series" if key == "loss" else None, title=title,
                       x_title="step", y_title=Y_TITLES.get(key, key), height=220, elem_id=f"vl-plot-{key}",
                       label=title, show_label=False,
                       color_map={"loss": "#c7d2fe", "smoothed": "#4f46e5", "validation": "#f59e0b"}
                       if key == "loss" else None)


def _render(sessions: Sessions, request: gr.Request, st: dict, reset: bool, v: dict) -> dict:
    """Read what is new for the open job and build the component updates."""
    api, job_id = sessions.api(request), st["job"]
    try:
        job = api.job(job_id)
        logs = api.logs(job_id, after=st["log"], limit=LOG_BATCH)
        new_metrics = api.metrics(job_id, after=st["metric"])
    except ApiError as e:
        return {v["header"]: notice("error", f"Cannot load job #{job_id}", str(e)), v["detail"]: gr.Column(visible=True)}
    if logs:
        st["log"] = logs[-1]["seq"]
    if new_metrics:
        st["metric"] = new_metrics[-1]["seq"]
        st["metrics"] = st["metrics"] + new_metrics
    if reset:
        _NAMES.pop(id(api), None)  # a job just opened may use a dataset registered seconds ago
        models, datasets, users = _names(api)
        st["names"] = {"model": models.get(job["model_id"]), "dataset": datasets.get(job["dataset_id"]),
                       "users": users}
    metrics, plots = st["metrics"], v["plots"]
    out: dict = {v["progress"]: view.progress_html(job, metrics[-1] if metrics else None),
                 v["cards"]: view.metric_cards(metrics)}
    if reset or logs:
        out[v["logv"]] = batch(job_id, [r["line"] for r in logs], reset, request.session_hash)
    if reset or new_metrics:
        frames = {k: view.loss_frame(metrics) if k == "loss" else view.series_frame(metrics, k, k) for k in plots}
        # None, not an empty frame: a plot first given an empty frame draws no coloured lines later.
        out.update({plots[k]: None if f.empty else f for k, f in frames.items()})
        # CPU runs record no GPU memory, older runs no MFU: no empty chart
        for key in view.OPTIONAL_SERIES:
            out[plots[key]] = gr.LinePlot(value=out[plots[key]], visible=not frames[key].empty)
    changed = (job["status"], job.get("last_checkpoint"), len(job.get("run_files") or [])) != st.get("seen")
    if reset or changed or job["status"] in ACTIVE:
        names = st.get("names") or {}
        out[v["header"]] = view.header_html(job, names.get("model") or f"#{job['model_id']}",
                                            data_label(job, {job["dataset_id"]: names.get("dataset")}
                                                       if names.get("dataset") else {}), names.get("users"))
        cancel, resume, retry = v["buttons"]
        out[cancel] = gr.Button(interactive=job["status"] in ACTIVE)
        out[resume] = gr.Button(interactive=view.resume_offered(job))
        out[retry] = gr.Button(interactive=job["status"] in ("failed", "cancelled", "succeeded"))
    if reset or changed:
        out[v["spec"]] = view.spec_html(job)
        out[v["artifacts"]] = view.artifacts_html(job, lambda path: sessions.link(request, path))
    st["seen"] = (job["status"], job.get("last_checkpoint"), len(job.get("run_files") or []))
    if reset:
        out[v["detail"]] = gr.Column(visible=True)
    if st.get("notice_status") not in (None, job["status"]):  # an action's notice is stale once the job moved on
        st.pop("notice_status")
        out[v["action_msg"]] = gr.HTML(visible=False)
    return out
