"""Models: the registry of base checkpoints (the built-in demo model included)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.core.demo_card import DEMO_MODEL_INFO, DEMO_MODEL_NAME, demo_card
from backend.core.model_card import ModelCard, read_card
from backend.db.models import Model, User
from backend.services.errors import NotFound
from backend.services.users import visible_to
from backend.settings import Settings

__all__ = ["DEMO_MODEL_INFO", "DEMO_MODEL_NAME", "card_of", "ensure_builtin_models", "get_model", "import_model",
           "list_models", "register_model"]


def ensure_builtin_models(session: Session, settings: Settings) -> None:
    """Register the demo model on a fresh install. Its files are built on first use by the
    worker (``worker.demo_model``), so the API never needs torch."""
    row = session.scalar(select(Model).where(Model.name == DEMO_MODEL_NAME))
    if row is None:
        card = demo_card()
        session.add(Model(
            name=DEMO_MODEL_NAME, path=str(settings.data_path / "models" / DEMO_MODEL_NAME), family=card.family,
            template=card.template, builtin=True, info=dict(DEMO_MODEL_INFO)))
        session.commit()
    elif row.builtin and row.info != DEMO_MODEL_INFO:  # an install from before the sizes were known
        row.info = dict(DEMO_MODEL_INFO)
        session.commit()


def list_models(session: Session, user: User | None = None) -> list[Model]:
    """Built-in models (no owner) are shared; others are their owner's (admins see all)."""
    q = select(Model).order_by(Model.id)
    if user is not None and not user.is_admin:
        q = q.where((Model.owner_id == user.id) | Model.owner_id.is_(None))
    return list(session.scalars(q))


def get_model(session: Session, model_id: int, user: User | None = None) -> Model:
    m = session.get(Model, model_id)
    if m is None or not visible_to(user, m.owner_id):
        raise NotFound(f"model {model_id} not found")
    return m


def card_of(m: Model) -> ModelCard:
    """A registered model's card: its folder's; the built-in demo model's own before the worker
    has built its folder. :class:`ModelFolderError` when the folder cannot be read."""
    if m.builtin and m.name == DEMO_MODEL_NAME and not (Path(m.path) / "config.json").is_file():
        return demo_card()
    return read_card(Path(m.path))


def register_model(session: Session, *, name: str, path: str, family: str, template: str, info: dict,
                   owner_id: int | None = None) -> Model:
    """Record a converted or native model folder. Names are unique."""
    from backend.services.errors import Conflict

    if session.scalar(select(Model).where(Model.name == name)) is not None:
        raise Conflict(f"a model named {name!r} is already registered")
    m = Model(name=name, path=path, family=family, template=template, builtin=False, info=info,
              owner_id=owner_id)
    session.add(m)
    session.commit()
    return m


MODEL_NAME_RE = r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}"


def check_import(session: Session, settings: Settings, src: Path, name: str | None) -> tuple[str, Path]:
    """(name, destination folder) of an import of ``src``, or the domain error that refuses it."""
    from backend.services.errors import Conflict, InvalidInput

    name = name or src.resolve().name
    if not re.fullmatch(MODEL_NAME_RE, name):
        raise InvalidInput(f"model name {name!r}: use letters, digits, '.', '_' and '-'",
                           [{"field": "name", "message": "invalid model name"}])
    if not src.is_dir():
        raise InvalidInput(f"{src} is not a folder", [{"field": "path", "message": "not a folder"}])
    if session.scalar(select(Model).where(Model.name == name)) is not None:
        raise Conflict(f"a model named {name!r} is already registered")
    dst = settings.data_path / "models" / name
    if dst.exists():
        raise Conflict(f"{dst} already exists")
    return name, dst


def import_model(session: Session, settings: Settings, src: Path, name: str | None, owner_id: int | None,
                 convert: Callable[..., Any], progress: Callable[[int, int, str], None] | None = None) -> Model:
    """Convert ``src`` (an original InternVL or a native -hf folder) into the data folder and
    register it. ``convert`` is :func:`worker.convert.import_checkpoint`, passed in so the
    backend needs torch only when a model is actually imported. On any error nothing is left
    behind: no row, no folder."""
    from backend.services.errors import InvalidInput

    name, dst = check_import(session, settings, src, name)
    try:
        info = convert(src, dst, progress)
    except ValueError as e:  # ConversionError: the message names the file, tensor or field
        raise InvalidInput(str(e), [{"field": "path", "message": str(e)}]) from None
    try:
        return register_model(session, name=name, path=str(dst), family=info.family, template=info.template,
                              info=info.to_dict(), owner_id=owner_id)
    except BaseException:
        shutil.rmtree(dst, ignore_errors=True)
        raise
