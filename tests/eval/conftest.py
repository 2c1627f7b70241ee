"""The in-process API fixture (SQLite and PostgreSQL) of the backend tests."""

from tests.backend.conftest import api  # noqa: F401
