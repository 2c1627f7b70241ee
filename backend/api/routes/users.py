from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from backend.api.auth import AdminUser
from backend.api.deps import DbRoute, SessionDep
from backend.api.routes.auth import UserOut
from backend.services import users as svc

router = APIRouter(prefix="/users", tags=["users"], route_class=DbRoute)


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(max_length=100)
    password: str = Field(max_length=1000)
    is_admin: bool = False


@router.post("", response_model=UserOut, status_code=201)
def create_user(body: UserCreate, admin: AdminUser, session: SessionDep):  # noqa: ANN201
    """Admins create accounts."""
    return svc.create_user(session, body.username, body.password, body.is_admin)


@router.get("", response_model=list[UserOut])
def list_users(admin: AdminUser, session: SessionDep) -> list:
    return svc.list_users(session)
