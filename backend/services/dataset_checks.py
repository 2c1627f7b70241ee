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

from backend.core.model_folder import ModelFolderError, load_tokenizer, require_image_tokens
from backend.core.presets import check_tiling
from backend.core.templates import TemplateError
from backend.core.validation import ValidationSettings, settings_for
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
               max_seq_length: int | None = None, truncation: str = "error", preset: str | None = None) -> Checks:
    """The engine's settings for ``model_id``: its model card's template, tile geometry and
    tiling, the tiling ``preset`` trains with over it, then ``max_dynamic_patch``; and its tokenizer.
    The settings say where the tile budget came from (the messages name it). Without a model:
    no template, vlstudio's default tiling (with the preset's and ``max_dynamic_patch`` over it).

    A model whose folder has no usable tokenizer (the demo model before the worker has built it)
    is checked with its card and no token counts, with an info note."""
    card = tokenizer = label = None
    notes: list[dict] = []
    if model_id is not None:
        m = model_svc.get_model(session, model_id, user)
        label, folder = m.name, Path(m.path)
        try:
            card = model_svc.card_of(m)
            tokenizer = _tokenizer(str(folder), _mtime(folder))
        except (ModelFolderError, OSError) as e:
            tokenizer = None
            notes.append({"severity": "info", "code": "no_tokenizer", "file": str(folder), "line": 0,
                          "sample_id": None, "message": f"model {m.name!r}: no usable tokenizer ({e}); "
                                                       "text tokens and max_seq_length not checked"})
            if card is None:
                raise InvalidInput(f"model {m.name!r}: {e}") from None
    try:
        tiling, source = check_tiling(card, preset, max_dynamic_patch, model=label)
        settings = settings_for(card, tiling=tiling, tiling_source=source, max_seq_length=max_seq_length,
                                truncation=truncation)  # type: ignore[arg-type]
    except KeyError as e:
        raise InvalidInput(str(e.args[0]), [{"field": "preset", "message": str(e.args[0])}]) from None
    except (TemplateError, ModelFolderError, ValueError) as e:
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
