"""Models: the registry of base checkpoints (the built-in demo model included)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.db.models import Model
from backend.services.errors import NotFound
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


def list_models(session: Session) -> list[Model]:
    return list(session.scalars(select(Model).order_by(Model.id)))


def get_model(session: Session, model_id: int) -> Model:
    m = session.get(Model, model_id)
    if m is None:
        raise NotFound(f"model {model_id} not found")
    return m
