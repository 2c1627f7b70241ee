from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from backend.api.auth import CurrentUser, bearer_token
from backend.api.deps import DbRoute, SessionDep, SettingsDep
from backend.api.schemas import ORM
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
    password: str = Field(max_length=1000)


@router.post("/login", response_model=TokenOut, responses={401: {"description": "wrong username or password"}})
def login(body: LoginIn, session: SessionDep, settings: SettingsDep) -> TokenOut:
    """Exchange a username and password for a bearer token (expires after VLSTUDIO_TOKEN_TTL_HOURS)."""
    token, user = svc.login(session, settings, body.username, body.password)
    return TokenOut(access_token=token, user=UserOut.model_validate(user))


@router.get("/me", response_model=UserOut)
def me(user: CurrentUser):  # noqa: ANN201
    return user


@router.post("/logout", status_code=204)
def logout(request: Request, user: CurrentUser, session: SessionDep, settings: SettingsDep) -> None:
    token = bearer_token(request)
    if token:
        svc.revoke_token(session, settings, token)


@router.put("/password", status_code=204)
def change_password(body: PasswordIn, user: CurrentUser, session: SessionDep) -> None:
    svc.set_password(session, user, body.password)


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
def delete_token(token_id: int, user: CurrentUser, session: SessionDep) -> None:
    svc.delete_token(session, user, token_id)
