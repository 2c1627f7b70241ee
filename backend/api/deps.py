"""FastAPI dependency aliases, and the route class that ends each endpoint's database work."""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import Depends
from fastapi.routing import APIRoute
from sqlalchemy.orm import Session

from backend.db.session import get_sessionmaker
from backend.settings import Settings, get_settings


async def _session() -> AsyncIterator[Session]:
    # An async dependency: its teardown (returning the connection to the pool) runs on the
    # event loop. A sync one needs a free worker thread for that, and under a burst every
    # thread can be waiting for a connection that only such a teardown would free.
    session = get_sessionmaker()()
    try:
        yield session
    finally:
        session.close()


def _end_sessions(values: dict[str, Any]) -> None:
    for v in values.values():
        if isinstance(v, Session):
            v.commit()  # ends the transaction: the connection goes back to the pool now


def release_sessions(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    """``endpoint``, ending its sessions' transactions as soon as it returns, in the thread
    that ran it. FastAPI builds the response in a second thread hop and tears dependencies
    down only after that: without this, a burst leaves every pooled connection "idle in
    transaction" behind responses that wait for a thread, and the pool runs dry."""
    if getattr(endpoint, "_releases_sessions", False):
        return endpoint
    if inspect.iscoroutinefunction(endpoint):
        @functools.wraps(endpoint)
        async def wrapper(**values: Any) -> Any:
            out = await endpoint(**values)
            _end_sessions(values)
            return out
    else:
        @functools.wraps(endpoint)
        def wrapper(**values: Any) -> Any:
            out = endpoint(**values)
            _end_sessions(values)
            return out
    wrapper._releases_sessions = True  # type: ignore[attr-defined]
    return wrapper


class DbRoute(APIRoute):
    """The route class of every router: endpoints hold a database connection only while they run."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, release_sessions(endpoint), **kwargs)


SessionDep = Annotated[Session, Depends(_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
