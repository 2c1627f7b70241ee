"""The one clock of the studio: timezone-aware UTC, for every row and every comparison."""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    return datetime.now(UTC)
