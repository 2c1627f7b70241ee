from tests.backend.conftest import api  # noqa: F401  # the in-process API on SQLite and PostgreSQL
