"""Benchmarks: InternVL's evaluation-guide benchmarks registered from their release layouts on
shared storage (``VLSTUDIO_DATA_ROOTS``) into ``DATA/benchmarks/<name>/`` (the card and the
evaluation records the program reads; ``backend.core.benchmarks``). Shared by every user, like
the built-in models: registering one (or replacing it) is for administrators."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from backend.core.benchmarks import CATALOG, BenchmarkError, register_benchmark
from backend.core.meta import MetaError, check_allowed
from backend.db.models import User
from backend.services.errors import Conflict, InvalidInput, NotFound
from backend.services.users import Forbidden
from backend.settings import Settings

#: one registration at a time per process (a second of the same name would race on its folder)
_LOCK = threading.Lock()


def store(settings: Settings) -> Path:
    return settings.data_path / "benchmarks"


def card_of(settings: Settings, name: str) -> dict[str, Any] | None:
    path = store(settings) / name / "benchmark.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def list_benchmarks(settings: Settings) -> list[dict[str, Any]]:
    """Every benchmark of the catalogue, with ``registered`` (and its card's counts) when it is."""
    out = []
    for name, b in CATALOG.items():
        card = card_of(settings, name)
        out.append({**b.card(), "registered": card is not None,
                    "samples": card["samples"] if card else None, "source_dir": card["source_dir"] if card else None})
    return out


def get_registered(settings: Settings, name: str) -> dict[str, Any]:
    if name not in CATALOG:
        raise NotFound(f"unknown benchmark {name!r}; known: {', '.join(CATALOG)}")
    card = card_of(settings, name)
    if card is None:
        raise Conflict(f"benchmark {name!r} is not registered: register it from its release folder first "
                       "(POST /api/benchmarks or `vlstudio benchmarks register`)")
    return card


def register(settings: Settings, user: User | None, name: str, path: str, replace: bool = False) -> dict[str, Any]:
    if user is not None and not user.is_admin:
        raise Forbidden("registering a benchmark is for administrators (benchmarks are shared by every user)")
    if name not in CATALOG:
        raise InvalidInput("invalid benchmark", [{"field": "name", "message": f"unknown benchmark {name!r}; known: "
                                                  f"{', '.join(CATALOG)}"}])
    try:
        folder = check_allowed(Path(path), settings.data_roots)
    except MetaError as e:
        raise Forbidden(str(e)) from None
    with _LOCK:
        try:
            return register_benchmark(name, folder, store(settings), replace=replace)
        except BenchmarkError as e:
            if not e.problems:
                raise Conflict(str(e)) from None
            # errors[].field is the request's field; the layout's own field goes beside the file and line
            raise InvalidInput(str(e).splitlines()[0], [
                {"field": "path", "file": p["file"], "line": p["line"], "layout_field": p["field"],
                 "message": p["message"]} for p in e.problems]) from None
