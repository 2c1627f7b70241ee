from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from backend.api.auth import SESSION_COOKIE, CurrentUser, bearer_token
from backend.api.deps import DbRoute, SessionDep, SettingsDep
from backend.api.schemas import ORM, DbId
from backend.services import users as svc

router = APIRouter(prefix="/auth", tags=["auth"], route_class=DbRoute)


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(max_length=100)
    password: str = Field(max_length=1000)


class UserOut(ORM):
    id: int
    username: str
    is_admin: bool
    is_active: bool


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    user: UserOut


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100)


class ApiTokenOut(ORM):
    id: int
    name: str
    created_at: object
    last_used_at: object | None = None


class NewApiToken(ApiTokenOut):
    token: str = Field(description="shown once; only a keyed hash is stored")


class PasswordIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    current_password: str = Field(max_length=1000)
    password: str = Field(max_length=1000, description="the new password")


@router.post("/login", response_model=TokenOut, responses={401: {"description": "wrong username or password"},
                                                           429: {"description": "too many failed logins"}})
def login(body: LoginIn, request: Request, session: SessionDep, settings: SettingsDep) -> TokenOut:
    """Exchange a username and password for a bearer token (expires after VLSTUDIO_TOKEN_TTL_HOURS).
    After VLSTUDIO_LOGIN_ATTEMPTS_PER_MINUTE failures for a username or a client address: 429."""
    client = request.client.host if request.client else None
    token, user = svc.login(session, settings, body.username, body.password, client)
    return TokenOut(access_token=token, user=UserOut.model_validate(user))


@router.get("/me", response_model=UserOut)
def me(user: CurrentUser):  # noqa: ANN201
    return user


@router.post("/logout", status_code=204)
def logout(request: Request, response: Response, user: CurrentUser, session: SessionDep,
           settings: SettingsDep) -> None:
    token = bearer_token(request)
    if token:
        svc.revoke_token(session, settings, token)
    response.delete_cookie(SESSION_COOKIE, path="/")


class LinkIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(max_length=2000, description="an API path, e.g. /api/jobs/12/files/")


class LinkOut(BaseModel):
    sig: str = Field(description="append as ?sig=... to GETs under the same /api/<resource>/<id>/")
    expires_in: int


@router.post("/link", response_model=LinkOut)
def sign_link(body: LinkIn, user: CurrentUser, settings: SettingsDep) -> LinkOut:
    """A short-lived signature for plain links (downloads, images, EventSource) under one
    resource: links cannot send headers, and a bearer token never goes in a URL (it would end
    up in access logs, browser history and Referer headers)."""
    return LinkOut(sig=svc.sign_link(settings, user, body.path), expires_in=svc.LINK_TTL_S)


@router.post("/cookie", status_code=204)
def set_cookie(request: Request, response: Response, user: CurrentUser, settings: SettingsDep) -> None:
    """Store the caller's bearer token in an HttpOnly, SameSite=Strict cookie: what the mounted
    Gradio UI's own upload route (``/gradio_api/upload``) checks when login is required."""
    token = bearer_token(request)
    if token:
        response.set_cookie(SESSION_COOKIE, token, max_age=int(settings.token_ttl_hours * 3600), path="/",
                            httponly=True, samesite="strict", secure=request.url.scheme == "https")


@router.delete("/cookie", status_code=204)
def clear_cookie(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/")


@router.put("/password", status_code=204, responses={422: {"description": "wrong current password, or too short"}})
def change_password(body: PasswordIn, request: Request, user: CurrentUser, session: SessionDep,
                    settings: SettingsDep) -> None:
    """Change your password: the current one is checked, and your other login sessions end."""
    svc.change_password(session, settings, user, body.current_password, body.password, bearer_token(request))


@router.post("/tokens", response_model=NewApiToken, status_code=201)
def create_token(body: TokenIn, user: CurrentUser, session: SessionDep, settings: SettingsDep) -> NewApiToken:
    """An API token for scripts (``curl -H 'Authorization: Bearer vls_...'``); valid until deleted."""
    token = svc.issue_token(session, settings, user, body.name, kind="api")
    row = svc.list_tokens(session, user)[-1]
    return NewApiToken(id=row.id, name=row.name, created_at=row.created_at, token=token)


@router.get("/tokens", response_model=list[ApiTokenOut])
def list_tokens(user: CurrentUser, session: SessionDep) -> list:
    return svc.list_tokens(session, user)


@router.delete("/tokens/{token_id}", status_code=204)
def delete_token(token_id: DbId, user: CurrentUser, session: SessionDep) -> None:
    svc.delete_token(session, user, token_id)
