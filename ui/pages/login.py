"""Sign-in, when the API requires users (``POST /api/auth/login`` -> bearer token). The token is
kept per browser session in :class:`ui.session.Sessions` and in the browser's storage (so a
reload stays signed in); without users the studio opens directly."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from ui.client import ApiError
from ui.session import Sessions
from ui.widgets import esc, notice


@dataclass
class Gate:
    """What the page shows for one session: the app bar line, the sign-in panel or the studio."""

    user: dict | None  # signed-in user; None when no sign-in is needed or possible
    needs_login: bool
    error: str = ""


def check(sessions: Sessions, request: gr.Request) -> Gate:
    api = sessions.api(request)
    try:
        me = api.me()
    except ApiError as e:
        if e.status == 401:
            return Gate(None, True)
        if e.status == 404:  # an API without users
            return Gate(None, False)
        return Gate(None, False, str(e))
    return Gate(me if api is not sessions.anonymous else None, False)


def build_panel() -> tuple[gr.Column, gr.Textbox, gr.Textbox, gr.Button, gr.HTML]:
    with gr.Column(visible=False, elem_id="vl-login", elem_classes="vl-login") as panel:
        gr.HTML("<div class='vl-section'><h2>Sign in</h2><p class='vl-section-sub'>This studio has users. "
                "Ask an admin for an account.</p></div>")
        user = gr.Textbox(label="Username", elem_id="vl-login-user")
        password = gr.Textbox(label="Password", type="password", elem_id="vl-login-password")
        go = gr.Button("Sign in", variant="primary", elem_id="vl-login-btn")
        msg = gr.HTML(elem_id="vl-login-msg")
    return panel, user, password, go, msg


def sign_in(sessions: Sessions, request: gr.Request, username: str, password: str) -> tuple[str | None, str]:
    """(token, message HTML)."""
    if not username or not password:
        return None, notice("info", "Enter your username and password")
    try:
        token = sessions.anonymous.login(username, password)["access_token"]
    except ApiError as e:
        return None, notice("error", "Sign-in failed", f"<div>{esc(e)}</div>")
    sessions.sign_in(request, token)
    return token, ""
