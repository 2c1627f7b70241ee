"""Jobs page: the list (status, progress, ETA, owner) and one job's live view: progress bar
with ETA, metric cards, plots, the log viewer, the spec, and cancel / resume / retry.

The open job follows the API's event stream (``GET /api/jobs/{id}/events``, read by
:mod:`ui.events`): opening a job renders what is there (logs and metrics from the cursors in the
session state), then one streaming handler (``follow``) holds the job's stream from those
cursors and yields an update as events arrive, a burst in one render. No timer polls the job:
a line reaches the page as fast as the API's stream delivers it. Between events the handler
re-renders the progress once a second (the ETA counts down to the API's ``eta_at``, a phase's
elapsed time goes on), which is also how a closed page's handler learns it is gone. The job's
record (checkpoints, files, phase) is re-read on a ``status`` event, on a ``phase:`` line and
every few seconds; at ``end`` the final state is rendered and the handler returns."""

from __future__ import annotations

import asyncio
import time
import uuid
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
HEARTBEAT_S = 1.0  # the progress re-render between events (ETA, elapsed), and a closed page's end
RECORD_EVERY_S = 5.0
PLOT_EVERY_S = 2.0  # the loss plot's redraws at most this often (the log and the cards: at once)
OTHER_PLOTS_EVERY_S = 10.0  # the job's record re-read between status events (checkpoints, files)
PHASE_PREFIX = "phase: "  # a run's phase line (the API's phase comes from it)
#: session -> the job view it shows now; a follow handler of an older view stops at its next wake
_VIEWS: dict[str, str] = {}


@dataclass
class JobsPage:
    state: gr.State
    list_html: gr.HTML
    outputs: list
    open_job: object  # (request, job_id) -> dict of updates; used by the Train page
    refresh: object  # (state, request) -> the jobs table
    job_ref: gr.Textbox  # the open job's id, hidden: where the page's URL takes it from (JOB_URL_JS)
    follow: object  # the streaming handler: (state, request) -> updates as the job's events arrive
    close_job: object  # (request) -> updates closing the job view


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
        st["view"] = _VIEWS[request.session_hash or ""] = uuid.uuid4().hex  # an older view's handler stops
        return {state: st, job_ref: str(int(job_id)), **render(request, st, True)}

    def close_job(request: gr.Request) -> dict:
        """No job open (a URL without ``job``, e.g. after Back): the view goes, its handler stops."""
        _VIEWS[request.session_hash or ""] = uuid.uuid4().hex
        return {state: new_state(), job_ref: "", detail: gr.Column(visible=False)}

    def on_select(st: dict, evt: gr.SelectData, request: gr.Request) -> dict:
        return open_job(request, int(evt.index))

    async def follow(st: dict, request: gr.Request):  # noqa: ANN202 - an async generator of updates
        """The open job's live view: one update per burst of events, the progress once a second
        between them, until the job ends or another job (or page) takes the view."""
        key, view_id, job_id = request.session_hash or "", st.get("view"), st.get("job")
        if job_id is None or view_id is None or _VIEWS.get(key) != view_id:
            return
        api = sessions.api(request)
        views = dict(detail=detail, header=header, progress=progress, cards=cards, logv=logv, spec=spec,
                     artifacts=artifacts, plots=plots, buttons=buttons, action_msg=action_msg)
        job, read_at = st.get("record"), time.monotonic()
        async with api.job_feed(job_id, f"{st['log']}:{st['metric']}") as feed:
            while _VIEWS.get(key) == view_id:
                try:
                    events = await feed.batch(HEARTBEAT_S)
                except RuntimeError as e:
                    yield {header: notice("error", f"Cannot follow job #{job_id}", str(e))}
                    return
                if _VIEWS.get(key) != view_id:
                    return  # another job opened while this one waited
                logs = [e.data for e in events if e.name == "log"]
                metrics = [e.data for e in events if e.name == "metric"]
                reread = (feed.ended or job is None or any(e.name == "status" for e in events)
                          or any(r["line"].startswith(PHASE_PREFIX) for r in logs)
                          or time.monotonic() - read_at > RECORD_EVERY_S)
                out = await asyncio.to_thread(_update, sessions, request, st, views, logs, metrics,
                                              None if reread else job)
                job, read_at = st.get("record"), time.monotonic() if reread else read_at
                yield {state: st, **out}
                if feed.ended:
                    return

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
    # Every opening of a job sets job_ref (a click, a deep link, Train's start, Resume, Retry): its
    # change starts the job's follow handler. Side by side ("multiple"): an older view's handler
    # ends on its own at its next wake (_VIEWS), it must not hold back the new one.
    job_ref.change(follow, state, outputs, show_progress="hidden", trigger_mode="multiple",
                   concurrency_limit=None, api_name="follow_job")
    gr.Timer(2.5).tick(refresh_list, state, list_html, show_progress="hidden", api_name="jobs_list")
    for verb, btn in zip(("cancel", "resume", "retry"), buttons, strict=True):
        (btn.click(action(verb), state, [action_msg, *outputs]).then(refresh_list, state, list_html)
         .then(None, job_ref, None, js=JOB_URL_JS))
    return JobsPage(state, list_html, outputs, open_job, refresh_list, job_ref, follow, close_job)


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
    """Read what is there for the open job (from its cursors) and build the component updates."""
    api, job_id = sessions.api(request), st["job"]
    try:
        job = api.job(job_id)
        logs = api.logs(job_id, after=st["log"], limit=LOG_BATCH)
        new_metrics = api.metrics(job_id, after=st["metric"])
    except ApiError as e:
        return {v["header"]: notice("error", f"Cannot load job #{job_id}", str(e)), v["detail"]: gr.Column(visible=True)}
    if reset:
        _NAMES.pop(id(api), None)  # a job just opened may use a dataset registered seconds ago
        models, datasets, users = _names(api)
        st["names"] = {"model": models.get(job["model_id"]), "dataset": datasets.get(job["dataset_id"]),
                       "users": users}
    return _build(sessions, request, st, v, job, logs, new_metrics, reset)


def _update(sessions: Sessions, request: gr.Request, st: dict, v: dict, logs: list[dict], new_metrics: list[dict],
            job: dict | None) -> dict:
    """The updates for what the job's event stream brought; the job's record is read again
    when ``job`` is None (a status change, a phase line, now and then)."""
    if job is None:
        try:
            job = sessions.api(request).job(st["job"])
        except ApiError as e:
            return {v["header"]: notice("error", f"Cannot load job #{st['job']}", str(e))}
    return _build(sessions, request, st, v, job, logs, new_metrics, False)


def _build(sessions: Sessions, request: gr.Request, st: dict, v: dict, job: dict, logs: list[dict],
           new_metrics: list[dict], reset: bool) -> dict:
    job_id = st["job"]
    st["record"] = job
    if logs:
        st["log"] = logs[-1]["seq"]
    if new_metrics:
        st["metric"] = new_metrics[-1]["seq"]
        st["metrics"] = st["metrics"] + new_metrics
    metrics, plots = st["metrics"], v["plots"]
    # Only what changed goes to the browser: the live view redraws the progress every second,
    # and a page re-rendering unchanged components falls behind on a loaded machine.
    sent = st.setdefault("sent", {})
    out: dict = {}

    def emit(key: str, html: str) -> None:
        if reset or sent.get(key) != html:
            sent[key] = out[v[key]] = html

    emit("progress", view.progress_html(job, metrics[-1] if metrics else None))
    if reset or new_metrics:
        out[v["cards"]] = view.metric_cards(metrics)
    if reset or logs:
        out[v["logv"]] = batch(job_id, [r["line"] for r in logs], reset, request.session_hash)
    # A plot is drawn anew on each update (Vega embeds it again): the page's costliest work. The
    # loss plot is redrawn at most every PLOT_EVERY_S, the others every OTHER_PLOTS_EVERY_S, so
    # a busy browser is not kept from the log lines and cards queued behind them.
    # One of the other plots per update at most (the stalest first): seven redrawn together
    # would stall the page for seconds at once.
    drawn = st.setdefault("drawn", {})  # plot -> (rows drawn, when)
    now, final = time.monotonic(), job["status"] not in ACTIVE
    others = 0
    for k in sorted(plots, key=lambda k: (k != "loss", drawn.get(k, (-1, 0.0))[1])):
        rows, at = drawn.get(k, (-1, 0.0))
        every = PLOT_EVERY_S if k == "loss" else OTHER_PLOTS_EVERY_S
        if not (reset or (len(metrics) > rows and (final or (now - at >= every and not (k != "loss" and others))))):
            continue
        others += k != "loss"
        drawn[k] = (len(metrics), now)
        frame = view.loss_frame(metrics) if k == "loss" else view.series_frame(metrics, k, k)
        # None, not an empty frame: a plot first given an empty frame draws no coloured lines later.
        out[plots[k]] = None if frame.empty else frame
        if k in view.OPTIONAL_SERIES:  # CPU runs record no GPU memory, older runs no MFU: no empty chart
            out[plots[k]] = gr.LinePlot(value=out[plots[k]], visible=not frame.empty)
    changed = (job["status"], job.get("last_checkpoint"), len(job.get("run_files") or [])) != st.get("seen")
    names = st.get("names") or {}
    emit("header", view.header_html(job, names.get("model") or f"#{job['model_id']}",
                                    data_label(job, {job["dataset_id"]: names.get("dataset")}
                                               if names.get("dataset") else {}), names.get("users")))
    if reset or changed:
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
