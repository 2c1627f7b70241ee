"""FastAPI dependency aliases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends
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


SessionDep = Annotated[Session, Depends(_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
