"""Who is calling: a bearer token (``Authorization: Bearer ...``, or ``?access_token=`` for
EventSource clients that cannot set headers). Without auth (the embedded default) every
request acts as the local admin."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from backend.api.deps import SessionDep, SettingsDep
from backend.db.models import User
from backend.services import users as users_svc
from backend.services.users import Forbidden, Unauthorized


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.query_params.get("access_token")


def current_user(request: Request, session: SessionDep, settings: SettingsDep) -> User:
    token = bearer_token(request)
    if not settings.auth_required and not token:
        user = users_svc.local_owner(session)
    elif not token:
        raise Unauthorized("log in first: send 'Authorization: Bearer <token>' (POST /api/auth/login)")
    else:
        user = users_svc.authenticate(session, settings, token)
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
