"""The Gradio studio: a client of the REST API over HTTP only (see ``ui/client.py``).

``build_ui(api_url)`` assembles the pages (``ui/pages/``); ``mount`` serves them at ``/`` of
the API process (the embedded mode), ``launch`` as a service of their own (``vlstudio ui``)."""

from __future__ import annotations

import gradio as gr
from fastapi import FastAPI

from ui.client import ApiError
from ui.pages import compare, datasets, evaluate, jobs, login, models, playground, train
from ui.session import Sessions
from ui.theme import CSS, theme
from ui.widgets import SET_URL_JS, esc

TITLE = "vlstudio"
# The browser's own requests to Gradio's upload route need a login too: the sign-in hands its
# token to an HttpOnly cookie (POST /api/auth/cookie on the page's origin), checked on that
# route by the API when the UI is mounted in it, by ui/serve.py when it runs on its own.
SESSION_COOKIE_JS = """(t) => { if (t) { fetch('/api/auth/cookie', {method: 'POST',
  headers: {Authorization: 'Bearer ' + t}, credentials: 'same-origin'}).catch(() => {}); } return []; }"""
CLEAR_COOKIE_JS = """() => { fetch('/api/auth/cookie', {method: 'DELETE', credentials: 'same-origin'})
  .catch(() => {}); return []; }"""


# Deep links: the open tab and job live in the page's URL (?tab=jobs&job=12), so a reload or a
# pasted link lands where the user was. Written in the browser (replaceState: ui/widgets.py), read
# back by the page's load (``from_url``).
TAB_IDS = ("datasets", "models", "jobs", "train", "compare", "evaluate", "playground")


def tab_url_js(tab: str) -> str:
    """The Jobs tab keeps its place in the URL; any other tab clears it: Gradio's file uploads
    resolve their route against the page's current URL and fail under a query string (the
    Datasets, Models and Playground uploads broke with ?tab=datasets)."""
    if tab == "jobs":
        return f"() => {{ const set = {SET_URL_JS}; set('tab', 'jobs'); return []; }}"
    return f"() => {{ const set = {SET_URL_JS}; set('job', null); set('tab', null); return []; }}"


def appbar(health: dict | None, error: str = "", user: dict | None = None) -> str:
    if health:
        state = (f"<span class='vl-dot ok'></span>API connected · {esc(health.get('database'))} · "
                 f"{esc(health.get('broker'))} broker")
    else:
        state = f"<span class='vl-dot down'></span>API unreachable {esc(error)}"
    if user:
        state += f" · signed in as <b id='vl-user'>{esc(user.get('username'))}</b>"
    return ("<div class='vl-appbar'><div class='vl-logo'>V</div><div><div class='vl-brand'>vlstudio</div>"
            "<div class='vl-tagline'>Fine-tune InternVL vision-language models</div></div>"
            f"<div class='vl-appbar-right' id='vl-health'>{state}</div></div>")


def build_ui(api_url: str, browser_api_url: str | None = None) -> gr.Blocks:
    """``browser_api_url``: where browsers reach the API for download links ("" = same origin)."""
    sessions = Sessions(api_url, browser_api_url)
    with gr.Blocks(title=TITLE) as demo:
        token = gr.BrowserState(None, storage_key="vlstudio-token")
        with gr.Row(elem_classes="vl-top"):
            bar = gr.HTML(appbar(None, "(connecting…)"), elem_id="vl-appbar", scale=8)
            sign_out = gr.Button("Sign out", size="sm", visible=False, scale=0, min_width=90, elem_id="vl-signout")
        panel, user, password, go, login_msg = login.build_panel()
        with gr.Column(visible=False, elem_id="vl-main") as main:
            with gr.Tabs(selected="datasets", elem_id="vl-tabs") as tabs:
                with gr.Tab("Datasets", id="datasets", elem_id="vl-tab-datasets") as ds_tab:
                    ds_page = datasets.build(sessions)
                with gr.Tab("Models", id="models", elem_id="vl-tab-models") as models_tab:
                    models_html, models_refresh = models.build(sessions)
                with gr.Tab("Jobs", id="jobs", elem_id="vl-tab-jobs") as jobs_tab:
                    jobs_page = jobs.build(sessions)
                with gr.Tab("Train", id="train", elem_id="vl-tab-train") as train_tab:
                    train_page = train.build(sessions, jobs_page, tabs, mixture_grid=ds_page.pickers[1])
                with gr.Tab("Compare", id="compare", elem_id="vl-tab-compare") as compare_tab:
                    compare_load, compare_pick = compare.build(sessions)
                with gr.Tab("Evaluate", id="evaluate", elem_id="vl-tab-evaluate") as eval_tab:
                    eval_page = evaluate.build_evaluate(sessions)
                with gr.Tab("Playground", id="playground", elem_id="vl-tab-playground") as chat_tab:
                    chat_load, chat_model = playground.build(sessions)

        def gate(request: gr.Request) -> list:
            g = login.check(sessions, request)
            try:
                health = sessions.anonymous.health()
                bar_html = appbar(health, user=g.user)
            except ApiError as e:
                bar_html = appbar(None, str(e))
            return [bar_html, gr.Column(visible=g.needs_login), gr.Column(visible=not g.needs_login),
                    gr.Button(visible=g.user is not None)]

        def restore(saved: str | None, request: gr.Request) -> list:
            sessions.sign_in(request, saved)
            return gate(request)

        def on_sign_in(name: str, pw: str, request: gr.Request) -> list:
            tok, msg = login.sign_in(sessions, request, name, pw)
            return [tok, msg, ""]

        def on_sign_out(request: gr.Request) -> list:
            sessions.sign_in(request, None)
            return [None, *gate(request)]

        gated = [bar, panel, main, sign_out]

        def from_url(request: gr.Request) -> dict:
            """The tab and the job the page's URL names (a reload, a pasted link)."""
            params = dict(request.query_params) if request is not None else {}
            # never an empty dict: Gradio takes {} for ONE output value, fails the event and every
            # .then() after it (the pages' first refresh) on a page opened without a query string
            out: dict = {tabs: gr.update()}
            if params.get("tab") in TAB_IDS:
                out[tabs] = gr.Tabs(selected=params["tab"])
            job = params.get("job", "")
            if job.isdigit() and int(job) > 0 and not login.check(sessions, request).needs_login:
                out.update(jobs_page.open_job(request, int(job)))  # after a sign-in, when one is needed
            return out

        def load_pages(event) -> None:  # noqa: ANN001
            (event.then(from_url, None, [tabs, *jobs_page.outputs])
             .then(ds_page.refresh, ds_page.selected, ds_page.list_html)
             .then(ds_page.fill, None, ds_page.pickers)
             .then(models_refresh, None, models_html).then(train_page.refresh, None, train_page.pickers))

        load_pages(demo.load(restore, token, gated))
        demo.load(None, token, None, js=SESSION_COOKIE_JS)
        signed_in = gr.on([go.click, password.submit], on_sign_in, [user, password], [token, login_msg, password])
        signed_in.then(None, token, None, js=SESSION_COOKIE_JS)
        load_pages(signed_in.then(gate, None, gated))
        sign_out.click(on_sign_out, None, [token, *gated]).then(None, None, None, js=CLEAR_COOKIE_JS)
        ds_tab.select(ds_page.refresh, ds_page.selected, ds_page.list_html)
        models_tab.select(models_refresh, None, models_html)
        train_tab.select(train_page.refresh, None, train_page.pickers)
        jobs_tab.select(jobs_page.refresh, jobs_page.state, jobs_page.list_html)
        compare_tab.select(compare_load, compare_pick, compare_pick)
        eval_tab.select(eval_page.load, None, eval_page.pickers)
        chat_tab.select(chat_load, None, chat_model)
        for tab, tab_id in ((ds_tab, "datasets"), (models_tab, "models"), (jobs_tab, "jobs"), (train_tab, "train"),
                            (compare_tab, "compare"), (eval_tab, "evaluate"), (chat_tab, "playground")):
            tab.select(None, None, None, js=tab_url_js(tab_id))
    # Handlers wait on the API (I/O), not the CPU: let sessions' timers and uploads run side by
    # side instead of Gradio's default of one at a time per event.
    demo.queue(default_concurrency_limit=16)
    return demo


def mount(app: FastAPI, api_url: str) -> FastAPI:
    """Serve the studio at ``/`` of the API app (the embedded mode)."""
    return gr.mount_gradio_app(app, build_ui(api_url, browser_api_url=""), path="/", css=CSS, theme=theme(),
                               footer_links=["api"])
