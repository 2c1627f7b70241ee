from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine


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


@pytest.fixture
def shared(tmp_path, monkeypatch) -> Path:
    """An empty data root the administrator allows (VLSTUDIO_DATA_ROOTS); a test module that needs
    one holding data defines its own."""
    root = tmp_path / "shared"
    root.mkdir()
    monkeypatch.setenv("VLSTUDIO_DATA_ROOTS", str(root))
    return root


@pytest.fixture(params=["sqlite", "postgresql"])
def migration_db(request, tmp_path) -> Iterator[tuple[Engine, Callable[..., None]]]:
    """An empty database (an SQLite file, or a PostgreSQL database of its own) and
    ``migrate(revision, down=False)``, which moves it to that Alembic revision."""
    from alembic import command

    from backend.db.migrate import alembic_config
    from backend.db.session import make_engine

    url = request.getfixturevalue("pg_database") if request.param == "postgresql" else f"sqlite:///{tmp_path / 'm.db'}"
    engine, cfg = make_engine(url), alembic_config()

    def migrate(revision: str, down: bool = False) -> None:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            (command.downgrade if down else command.upgrade)(cfg, revision)

    yield engine, migrate
    engine.dispose()
