"""Pydantic schemas of the REST API (separate from the SQLAlchemy models)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ORM(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class DatasetOut(ORM):
    id: int
    name: str
    num_samples: int
    num_images: int
    created_at: datetime
    report: dict[str, Any] = Field(default_factory=dict)


class ModelOut(ORM):
    id: int
    name: str
    family: str
    template: str
    builtin: bool
    info: dict[str, Any]


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_id: int
    model_id: int
    preset: str = "demo"
    hyperparameters: dict[str, Any] = Field(default_factory=dict, description="overrides of the preset")


class JobOut(ORM):
    id: int
    status: str
    dataset_id: int
    model_id: int
    preset: str
    hyper: dict[str, Any]
    step: int
    total_steps: int | None
    exit_code: int | None
    failure_reason: str | None
    run_dir: str | None
    worker: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None


class LogLineOut(ORM):
    seq: int
    stream: str
    line: str
    created_at: datetime


class MetricOut(ORM):
    seq: int
    step: int
    loss: float | None
    values: dict[str, Any]


class Problem(BaseModel):
    detail: str
    errors: list[Any] = Field(default_factory=list)
