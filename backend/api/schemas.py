"""Pydantic schemas of the REST API (separate from the SQLAlchemy models)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from backend.core.fields import MAX_ID, MAX_ITEMS, Count, DbId, Name, PathText, SeqLength, ServerPath, Tiles
from backend.core.mixture import MixtureSpec


def _utc(value: datetime) -> datetime:
    # SQLite gives back naive datetimes (every one is UTC): the schema's date-time wants an offset
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


#: a moment in an answer, always with its UTC offset (RFC 3339, as the schema's date-time says)
UtcDateTime = Annotated[datetime, AfterValidator(_utc)]

__all__ = ["MAX_ID", "Count", "DbId", "Name", "PathText", "SeqLength", "ServerPath", "Tiles"]


class ORM(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class DatasetOut(ORM):
    id: int
    name: str
    num_samples: int
    num_images: int
    created_at: UtcDateTime
    report: dict[str, Any] = Field(default_factory=dict)
    num_val_samples: int = 0  # the held-out validation split (issue 8)
    status: str = "ready"  # issue 3: validating / ready / failed / cancelled
    progress: float = 1.0
    bundle: list[int] = Field(default_factory=list)  # ids registered from the same upload (several .jsonl)


class DatasetFromPath(BaseModel):
    """A dataset on shared storage (under ``VLSTUDIO_DATA_ROOTS``), registered where it is."""

    model_config = ConfigDict(allow_inf_nan=False)

    root: ServerPath
    annotation: PathText = Field(description="absolute, or relative to root")
    name: Name | None = None
    model_id: DbId | None = None
    preset: Name | None = Field(None, description="check with the tiling this training preset uses")
    max_dynamic_patch: Tiles | None = None
    max_seq_length: SeqLength | None = None
    truncation: Literal["error", "truncate"] = "error"
    drop_bad_lines: bool = False
    background: bool | None = None
    val_fraction: float = Field(0.0, ge=0, lt=1)


class MetaDataset(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)

    dataset_id: DbId
    name: Name | None = None
    repeat_time: float = 1
    data_augment: bool = False
    max_dynamic_patch: Tiles | None = None


class MetaRequest(BaseModel):
    datasets: list[MetaDataset] = Field(default_factory=list, max_length=MAX_ITEMS)
    mixture: dict[str, Any] | None = Field(None, description="a meta JSON in the seed's format to merge")
    on_conflict: Literal["error", "rename", "replace"] = "error"


class ModelOut(ORM):
    id: int
    name: str
    family: str
    template: str
    builtin: bool
    info: dict[str, Any]


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    dataset_id: DbId | None = Field(None, description="one registered dataset (the one-dataset mixture)")
    mixture: MixtureSpec | None = Field(None, description="several datasets with their own repeat_time, "
                                        "data_augment, max_dynamic_patch, and/or a meta file on shared storage")
    model_id: DbId
    preset: Name = "demo"
    hyperparameters: dict[str, Any] = Field(default_factory=dict, description="overrides of the preset")
    priority: int = Field(0, description="higher runs first (-100..100); equal priorities run in submission order")
    requeue_on_failure: bool = Field(False, description="if its worker dies, requeue it to resume from the last "
                                     "checkpoint")


class JobOut(ORM):
    id: int
    status: str
    dataset_id: int | None
    model_id: int
    preset: str
    hyper: dict[str, Any]
    step: int
    total_steps: int | None
    exit_code: int | None
    failure_reason: str | None
    run_dir: str | None
    worker: str | None
    created_at: UtcDateTime
    started_at: UtcDateTime | None
    finished_at: UtcDateTime | None
    heartbeat_at: UtcDateTime | None
    owner_id: int | None = None
    gpus: int = 0
    priority: int = 0
    requeue_on_failure: bool = False
    resume_from_checkpoint: str | None = None
    parent_job_id: int | None = None
    node: str | None = None
    gpu_ids: str | None = None
    rendezvous_port: int | None = None
    memory_estimate: dict[str, Any] | None = None
    command: str | None = Field(None, description="the exact launch command (set when the job starts)")
    last_checkpoint: str | None = None
    warnings: list[str] = Field(default_factory=list, description="a succeeded job with warnings (e.g. samples "
                                "dropped for missing images): the UI shows 'succeeded with warnings'")
    eta_seconds: float | None = Field(None, description="seconds left by the trainer's own ETA (running jobs)")
    eta_at: UtcDateTime | None = Field(None, description="when the run should finish by that ETA: the same "
                                       "instant for every viewer until the next step")
    phase: str | None = Field(None, description="what a started job does before its first step (its log's last "
                              "'phase:' line: preparing data, loading the model, compiling kernels...)")
    phase_since: UtcDateTime | None = Field(None, description="when that phase began")
    mixture: dict[str, Any] | None = Field(None, description="the resolved mixture: per dataset its paths, "
                                           "repeat_time, samples per epoch, and (once training started) "
                                           "`trained`: samples kept, dropped, tokens")


class LogLineOut(ORM):
    seq: int
    stream: str
    line: str
    created_at: UtcDateTime


class MetricOut(ORM):
    seq: int
    step: int
    loss: float | None
    values: dict[str, Any]


class Problem(BaseModel):
    """Every error answer (4xx, 5xx): what went wrong in words, and every problem found."""

    detail: str = Field(description="what went wrong, in words (a 422 names the first problems)")
    errors: list[dict[str, Any]] = Field(default_factory=list, description=(
        "every problem: `field` and `message` for invalid input; a dataset's problems also have `file`, "
        "`line`, `code` and `severity`"))
