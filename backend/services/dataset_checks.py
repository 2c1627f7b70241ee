"""Validation settings and the background validation of datasets (issue 3).

``checks_for`` turns a model choice into the engine's settings and tokenizer; ``Background``
runs a validation on a thread, writes ``progress`` to the dataset row (throttled) and reads
the row's ``status`` back so a cancel from any API process stops it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from backend.core.model_folder import (
    ModelFolderError,
    load_tokenizer,
    read_model_settings,
    require_image_tokens,
)
from backend.core.templates import TemplateError
from backend.core.validation import ValidationSettings
from backend.db.models import Dataset, User
from backend.services import models as model_svc
from backend.services.errors import InvalidInput

PROGRESS_EVERY_S = 0.5  # the engine calls back after every chunk (up to ~100/s): throttle DB writes
_running: dict[int, threading.Event] = {}  # dataset id -> cancel event, for this process's validations


def running_ids() -> list[int]:
    """The datasets this process is validating now."""
    return list(_running)


@dataclass
class Checks:
    settings: ValidationSettings
    tokenizer: Any = None
    notes: list[dict] | None = None  # infos about what could not be checked (no tokenizer...)


def checks_for(session: Session, model_id: int | None, user: User | None, *, max_dynamic_patch: int | None = None,
               max_seq_length: int | None = None, truncation: str = "error") -> Checks:
    """The engine's settings for ``model_id``: its folder's template, tiling and tokenizer.

    A model whose folder is not built yet (the demo model is built lazily by the worker) or
    has no tokenizer gets its registered template and no token counts, with an info note."""
    base: dict[str, Any] = {}
    tokenizer = None
    notes: list[dict] = []
    if model_id is not None:
        m = model_svc.get_model(session, model_id, user)
        folder = Path(m.path)
        try:
            ms = read_model_settings(folder)
            base = {"template": ms.template, "max_dynamic_patch": ms.max_dynamic_patch,
                    "min_dynamic_patch": ms.min_dynamic_patch, "use_thumbnail": ms.use_thumbnail,
                    "dynamic_image_size": ms.dynamic_image_size, "image_size": ms.image_size,
                    "tokens_per_tile": ms.tokens_per_tile}
            tokenizer = _tokenizer(str(folder), _mtime(folder))
        except (ModelFolderError, OSError) as e:
            base.setdefault("template", m.template)
            tokenizer = None
            notes.append({"severity": "info", "code": "no_tokenizer", "file": str(folder), "line": 0,
                          "sample_id": None, "message": f"model {m.name!r}: no usable tokenizer ({e}); "
                                                       "text tokens and max_seq_length not checked"})
    if max_dynamic_patch is not None:
        base["max_dynamic_patch"] = max_dynamic_patch
    try:
        settings = ValidationSettings(**base, max_seq_length=max_seq_length, truncation=truncation)  # type: ignore[arg-type]
    except (TemplateError, ValueError) as e:
        raise InvalidInput(str(e)) from None
    return Checks(settings, tokenizer, notes)


def _mtime(folder: Path) -> float:
    files = [folder / "tokenizer.json", folder / "tokenizer_config.json"]
    return max((f.stat().st_mtime for f in files if f.is_file()), default=0.0)


@lru_cache(maxsize=4)
def _tokenizer(folder: str, mtime: float) -> Any:
    """Loading a real tokenizer takes up to a second; previews ask for it on every click.
    ``mtime`` in the key: a re-exported folder is loaded again."""
    del mtime
    tokenizer = load_tokenizer(Path(folder))
    require_image_tokens(tokenizer)
    return tokenizer


class Progress:
    """The engine's ``progress(done, total)``: writes the fraction to the dataset rows at most
    every ``PROGRESS_EVERY_S`` and turns a ``cancelled`` status (set by any process) into the
    cancel event the engine polls."""

    def __init__(self, make_session: Callable[[], Session], ids: list[int], cancel: threading.Event) -> None:
        self.make_session, self.ids, self.cancel = make_session, ids, cancel
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_EVERY_S:
            return
        self.last = now
        with self.make_session() as s:
            rows = [s.get(Dataset, i) for i in self.ids]
            if any(r is None or r.status == "cancelled" for r in rows):
                self.cancel.set()
                return
            for r in rows:
                r.progress = round(min(done / total, 0.999) if total else 0.0, 3)  # type: ignore[union-attr]
            s.commit()


def start(ids: list[int], work: Callable[[threading.Event], None]) -> threading.Thread:
    """Run ``work(cancel_event)`` on a daemon thread, registered under the dataset ids."""
    cancel = threading.Event()
    for i in ids:
        _running[i] = cancel

    def run() -> None:
        try:
            work(cancel)
        finally:
            for i in ids:
                _running.pop(i, None)

    t = threading.Thread(target=run, name=f"validate-datasets-{ids[0]}", daemon=True)
    t.start()
    return t


def signal_cancel(dataset_id: int) -> None:
    ev = _running.get(dataset_id)
    if ev is not None:
        ev.set()
