"""Models: the registry of base checkpoints (the built-in demo model included)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.db.models import Model, User
from backend.services.errors import NotFound
from backend.services.users import visible_to
from backend.settings import Settings

DEMO_MODEL_NAME = "internvl-tiny-demo"


def ensure_builtin_models(session: Session, settings: Settings) -> None:
    """Register the demo model on a fresh install. Its files are built on first use by the
    worker (``worker.demo_model``), so the API never needs torch."""
    if session.scalar(select(Model).where(Model.name == DEMO_MODEL_NAME)) is None:
        session.add(Model(
            name=DEMO_MODEL_NAME, path=str(settings.data_path / "models" / DEMO_MODEL_NAME), family="llama",
            template="internlm2-chat", builtin=True,
            info={"description": "tiny random-weight InternVL (2-layer ViT, 2-layer Llama) for demos and tests",
                  "max_dynamic_patch": 6, "use_thumbnail": True}))
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
