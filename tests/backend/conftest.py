from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient


def reset_caches() -> None:
    from backend.db import session
    from backend.settings import get_settings

    get_settings.cache_clear()
    session.get_engine.cache_clear()
    session.get_sessionmaker.cache_clear()


@pytest.fixture(params=["sqlite", "postgresql"])
def api(request, tmp_path, monkeypatch) -> Iterator[TestClient]:
    """The API in-process against SQLite + filesystem broker, or PostgreSQL + Redis."""
    monkeypatch.setenv("VLSTUDIO_DATA_DIR", str(tmp_path / "data"))
    if request.param == "postgresql":
        monkeypatch.setenv("VLSTUDIO_DATABASE_URL", request.getfixturevalue("pg_database"))
        monkeypatch.setenv("VLSTUDIO_BROKER_URL", request.getfixturevalue("redis_broker"))
    else:
        monkeypatch.delenv("VLSTUDIO_DATABASE_URL", raising=False)
        monkeypatch.delenv("VLSTUDIO_BROKER_URL", raising=False)
    reset_caches()
    from backend.api.app import create_app

    with TestClient(create_app()) as client:
        from tests.conftest import ADMIN

        r = client.post("/api/auth/login", json={"username": ADMIN[0], "password": ADMIN[1]})
        client.headers["Authorization"] = f"Bearer {r.json()['access_token']}"
        yield client
    from backend.db.session import get_engine

    get_engine().dispose()
    reset_caches()
