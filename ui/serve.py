"""``vlstudio ui``: the studio as a service of its own, in front of the API at ``api_url``.

The browser uploads files to Gradio's own route (``/gradio_api/upload``) on this server, not
to the API. As when the UI is mounted in the API (``backend/api/auth.py``), that route takes
only signed-in users: the sign-in hands its token to an HttpOnly, SameSite=Strict cookie
(``POST /api/auth/cookie`` on this server, the path the page uses in both modes), and every
upload's cookie or bearer token must be accepted by the API's ``GET /api/auth/me``. The API
is the one judge (this server has no database): an API that requires no login accepts a
request without a token, so uploads then need none either. Accepted tokens are remembered for
:data:`REMEMBER_S` seconds (an upload is one request per file); a refusal is never cached.
"""

from __future__ import annotations

import threading
import time

import httpx
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

SESSION_COOKIE = "vlstudio_session"  # the API's name (backend/api/auth.py), one cookie per host
UPLOAD_PATHS = ("/gradio_api/upload",)
REMEMBER_S = 30.0


class ApiJudge:
    """Whether the API accepts a token (or no token), asked over HTTP and briefly remembered."""

    def __init__(self, api_url: str) -> None:
        self.url = api_url.rstrip("/") + "/api/auth/me"
        self.ok: dict[str | None, float] = {}
        self.lock = threading.Lock()

    def accepts(self, token: str | None) -> bool:
        with self.lock:
            if self.ok.get(token, 0.0) > time.monotonic():
                return True
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            r = httpx.get(self.url, headers=headers, timeout=10)
        except httpx.HTTPError:
            return False  # the API is unreachable: nobody can be told apart, so nobody uploads
        if r.status_code != 200:
            return False
        with self.lock:
            self.ok[token] = time.monotonic() + REMEMBER_S
        return True


def _token(headers: dict[bytes, bytes]) -> str | None:
    auth = headers.get(b"authorization", b"").decode("latin-1")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    for part in headers.get(b"cookie", b"").decode("latin-1").split(";"):
        key, _, val = part.strip().partition("=")
        if key == SESSION_COOKIE:
            return val or None
    return None


class UploadLogin:
    """Gradio's upload route only for requests the API accepts, refused before the body is read."""

    def __init__(self, app: ASGIApp, judge: ApiJudge) -> None:
        self.app, self.judge = app, judge

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path", "").startswith(UPLOAD_PATHS):
            token = _token(dict(scope.get("headers", [])))
            if not await run_in_threadpool(self.judge.accepts, token):
                detail = "sign in to upload files" if token is None else "your sign-in is not valid any more"
                await JSONResponse({"detail": detail, "errors": []}, status_code=401,
                                   headers={"connection": "close"})(scope, receive, send)
                return
        await self.app(scope, receive, send)


def standalone_app(api_url: str, max_file_size: int | None = None) -> FastAPI:
    """The UI's own server: the cookie routes, the upload guard, and the Gradio pages at ``/``."""
    import gradio as gr

    from ui.app import CSS, build_ui, theme

    judge = ApiJudge(api_url)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/api/auth/cookie", status_code=204)
    def set_cookie(request: Request, response: Response) -> Response:
        token = _token({b"authorization": request.headers.get("authorization", "").encode("latin-1")})
        if not token or not judge.accepts(token):
            return JSONResponse({"detail": "a valid bearer token is needed", "errors": []}, status_code=401)
        response.set_cookie(SESSION_COOKIE, token, path="/", httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        response.status_code = 204
        return response

    @app.delete("/api/auth/cookie", status_code=204)
    def clear_cookie(response: Response) -> Response:
        response.delete_cookie(SESSION_COOKIE, path="/")
        response.status_code = 204
        return response

    app.add_middleware(UploadLogin, judge=judge)
    return gr.mount_gradio_app(app, build_ui(api_url), path="/", css=CSS, theme=theme(), footer_links=["api"],
                               max_file_size=max_file_size)


def launch(api_url: str, host: str, port: int) -> None:
    """Serve the studio on its own, talking to the API at ``api_url``; its upload route takes
    only users the API accepts, files up to VLSTUDIO_MAX_UPLOAD_BYTES."""
    import os

    import uvicorn

    limit = int(os.environ.get("VLSTUDIO_MAX_UPLOAD_BYTES", 20 * 2**30))
    uvicorn.run(standalone_app(api_url, max_file_size=limit), host=host, port=port, log_level="warning")
