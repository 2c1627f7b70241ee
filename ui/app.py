"""The Gradio studio: a client of the REST API over HTTP only (see ``ui/client.py``).

``build_ui(api_url)`` assembles the pages (``ui/pages/``); ``mount`` serves them at ``/`` of
the API process (the embedded mode), ``launch`` as a service of their own (``vlstudio ui``)."""

from __future__ import annotations

from urllib.parse import parse_qsl

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


# Deep links: the open tab, job and evaluation live in the page's URL
# (?tab=evaluate&job=12&evaluation=3), one history entry per move (pushState: ui/widgets.py), so a
# reload, a pasted link, Back and Forward land where the user was: the page applies its URL on
# load (``from_url``) and on the browser's popstate (the hidden router's ``select``).
TAB_IDS = ("datasets", "models", "jobs", "train", "compare", "evaluate", "playground")
# popstate -> the router's select event with the URL's query string
ROUTER_JS = "window.addEventListener('popstate', () => trigger('select', {index: 0, value: location.search}));"


# Gradio selects the first tab as the page starts, before the page's own URL was applied: a
# tab's select writes the URL only once it was (a pasted ?tab=jobs&job=3 would else gain a
# ?tab=datasets entry in the history first).
URL_APPLIED_JS = "() => { window.vlUrlApplied = true; return []; }"


def tab_url_js(tab: str) -> str:
    return (f"() => {{ if (window.vlUrlApplied) {{ const set = {SET_URL_JS}; set({{tab: '{tab}'}}); }} "
            "return []; }")


def url_id(params: dict, key: str) -> int | None:
    value = str(params.get(key) or "")
    return int(value) if value.isdigit() and int(value) > 0 else None


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
        router = gr.HTML("", js_on_load=ROUTER_JS, elem_id="vl-router", padding=False)
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

        def apply_url(params: dict, request: gr.Request, moved: bool, open_now: int | None = None) -> dict:
            """Where the URL says the user is: its tab, its job, its evaluation. ``moved``: the
            URL changed under the page (Back, Forward), so what it lacks is closed too."""
            # never an empty dict: Gradio takes {} for ONE output value, fails the event and every
            # .then() after it (the pages' first refresh) on a page opened without a query string
            out: dict = {tabs: gr.update()}
            if params.get("tab") in TAB_IDS:
                out[tabs] = gr.Tabs(selected=params["tab"])
            elif moved:
                out[tabs] = gr.Tabs(selected="datasets")
            if login.check(sessions, request).needs_login:
                return out  # after a sign-in, when one is needed
            job, ev = url_id(params, "job"), url_id(params, "evaluation")
            if job is not None and job != open_now:  # the job open already keeps its live view
                out.update(jobs_page.open_job(request, job))
            elif job is None and moved:
                out.update(jobs_page.close_job(request))
            if ev is not None or moved:
                out[eval_page.picked] = eval_page.open_evaluation(request, ev)
            return out

        def from_url(request: gr.Request) -> dict:
            """A reload, a pasted link."""
            return apply_url(dict(request.query_params) if request is not None else {}, request, False)

        def on_popstate(st: dict, evt: gr.SelectData, request: gr.Request) -> dict:
            """Back or Forward: the URL the browser went to (its query string)."""
            return apply_url(dict(parse_qsl(str(evt.value or "").lstrip("?"))), request, True, st.get("job"))

        url_outputs = [tabs, *jobs_page.outputs, eval_page.picked]

        def load_pages(event) -> None:  # noqa: ANN001
            (event.then(from_url, None, url_outputs).then(None, None, None, js=URL_APPLIED_JS)
             .then(ds_page.refresh, ds_page.selected, ds_page.list_html)
             .then(ds_page.fill, None, ds_page.pickers)
             .then(models_refresh, None, models_html).then(train_page.refresh, None, train_page.pickers))

        router.select(on_popstate, jobs_page.state, url_outputs)
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
