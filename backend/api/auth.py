"""Who is calling: a bearer token (``Authorization: Bearer ...``), never one in a URL. Plain
links (downloads, images, EventSource) carry a short-lived signature instead (``?sig=``, from
``POST /api/auth/link``); the mounted Gradio UI's upload route takes the HttpOnly session
cookie the UI sets at sign-in. Without auth (the embedded default) every request acts as the
local admin."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from backend.api.deps import SessionDep, SettingsDep
from backend.api.guards import send_json
from backend.db.models import User
from backend.db.session import get_sessionmaker
from backend.services import users as users_svc
from backend.services.errors import DomainError
from backend.services.users import Forbidden, Unauthorized
from backend.settings import get_settings

#: the HttpOnly cookie of the UI's sign-in; accepted only by the mounted Gradio upload route
SESSION_COOKIE = "vlstudio_session"


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return None


#: declares the bearer token in the OpenAPI document (every route that needs a user lists it);
#: the token itself is read by :func:`current_user`, which also takes a signed link
_BEARER = HTTPBearer(auto_error=False, description="a token from POST /api/auth/login or POST /api/auth/tokens")


def current_user(request: Request, session: SessionDep, settings: SettingsDep,
                 _: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)] = None) -> User:
    token = bearer_token(request)
    sig = request.query_params.get("sig") if request.method in ("GET", "HEAD") else None
    if not settings.auth_required and not token and not sig:
        user = users_svc.local_owner(session)
    elif token:
        user = users_svc.authenticate(session, settings, token)
    elif sig:
        user = users_svc.verify_link(session, settings, sig, request.url.path)
    else:
        raise Unauthorized("log in first: send 'Authorization: Bearer <token>' (POST /api/auth/login)")
    # End the read transaction so the connection goes back to the pool while the request
    # waits for a thread to run its endpoint; under a burst, held connections starve the pool.
    session.commit()
    return user


def admin_user(user: Annotated[User, Depends(current_user)]) -> User:
    if not user.is_admin:
        raise Forbidden("admins only")
    return user


CurrentUser = Annotated[User, Depends(current_user)]
AdminUser = Annotated[User, Depends(admin_user)]


def _cookie(scope: Scope, name: str) -> str | None:
    for k, v in scope.get("headers", []):
        if k == b"cookie":
            for part in v.decode("latin-1").split(";"):
                key, _, val = part.strip().partition("=")
                if key == name:
                    return val
    return None


def _token_user(token: str) -> None:
    with get_sessionmaker()() as s:
        users_svc.authenticate(s, get_settings(), token)


class UiUploadLogin:
    """The mounted Gradio UI's upload route (``/gradio_api/upload``) only for signed-in users
    when login is required: its session cookie (or a bearer token) must be valid."""

    PATHS = ("/gradio_api/upload",)

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path", "").startswith(self.PATHS) and get_settings().auth_required:
            headers = dict(scope.get("headers", []))
            auth = headers.get(b"authorization", b"").decode("latin-1")
            token = auth[7:].strip() if auth.lower().startswith("bearer ") else _cookie(scope, SESSION_COOKIE)
            try:
                if not token:
                    raise Unauthorized("sign in to upload files")
                await run_in_threadpool(_token_user, token)
            except DomainError as e:
                await send_json(send, 401, e.message, {"connection": "close"})
                return
        await self.app(scope, receive, send)
