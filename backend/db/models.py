"""SQLAlchemy 2 typed models. Schema changes go through Alembic only."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, declared_attr, mapped_column

from backend.core.clock import now as utcnow


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


class JobStatus(str, enum.Enum):
    queued = "queued"
    starting = "starting"
    running = "running"
    stopping = "stopping"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


class RunColumns:
    """The columns every kind of run has (jobs, evaluations, model imports, chats: :mod:`backend.services.runs`):
    owner, state, where it runs, the verdict, its times and the log bytes already stored."""

    id: Mapped[int] = mapped_column(primary_key=True)

    @declared_attr
    def owner_id(cls) -> Mapped[int | None]:  # noqa: N805 - a declared attribute takes the class
        return mapped_column(ForeignKey("users.id"), default=None, index=True)

    status: Mapped[JobStatus] = mapped_column(
        Enum(JobStatus, native_enum=False, length=20), default=JobStatus.queued, index=True)
    run_dir: Mapped[str | None] = mapped_column(Text, default=None)
    celery_task_id: Mapped[str | None] = mapped_column(String(64), default=None)
    worker: Mapped[str | None] = mapped_column(String(200), default=None)
    exit_code: Mapped[int | None] = mapped_column(Integer, default=None)
    failure_reason: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # bytes of the run's log already stored (issue 13: recovery reads what a dead worker left
    # unread from here; the rows file has its own offset column per kind)
    log_offset: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class LogColumns:
    """A run's log line: numbered per run (``seq``), the program's (stdout) or the studio's (system)."""

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)
    stream: Mapped[str] = mapped_column(String(10), default="stdout")
    line: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(default=False)
    is_active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    """A bearer token. Only an HMAC of it is stored; ``kind`` is ``session`` (from a login,
    expires) or ``api`` (for scripts, until revoked)."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(10), default="api")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), default=None, index=True)
    name: Mapped[str] = mapped_column(String(200))
    root: Mapped[str] = mapped_column(Text)
    annotation: Mapped[str] = mapped_column(Text)
    num_samples: Mapped[int] = mapped_column(Integer, default=0)
    num_images: Mapped[int] = mapped_column(Integer, default=0)
    report: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Held-out validation split (migration 0003): eval loss in training, evaluation jobs.
    val_annotation: Mapped[str | None] = mapped_column(Text, default=None)
    num_val_samples: Mapped[int] = mapped_column(Integer, default=0)
    # Issue 3 (migration 0004): background validation of big inputs.
    status: Mapped[str] = mapped_column(String(20), default="ready", server_default="ready")
    progress: Mapped[float] = mapped_column(default=1.0, server_default="1")
    #: issue 18: beaten while a background validation runs; a stale one is swept
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)


class Model(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), default=None, index=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    path: Mapped[str] = mapped_column(Text)
    family: Mapped[str] = mapped_column(String(50))
    template: Mapped[str] = mapped_column(String(50))
    builtin: Mapped[bool] = mapped_column(default=False)
    info: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


_WITH_KEY = text("idempotency_key IS NOT NULL")
_RESUMES = text("resume_from_checkpoint IS NOT NULL")


class Job(RunColumns, Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_queue", "status", "priority", "id"),
        # Issue 18 (migration 0018): one job per Idempotency-Key and owner; one resume per job.
        Index("ux_jobs_idempotency", "owner_id", "idempotency_key", unique=True, postgresql_where=_WITH_KEY,
              sqlite_where=_WITH_KEY),
        Index("ux_jobs_one_resume", "parent_job_id", unique=True, postgresql_where=_RESUMES, sqlite_where=_RESUMES),
    )

    # The first registered dataset of the mixture; None when it is only a meta file (migration 0017).
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id"), default=None)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    preset: Mapped[str] = mapped_column(String(50))
    hyper: Mapped[dict[str, Any]] = mapped_column(default=dict)
    step: Mapped[int] = mapped_column(BigInteger, default=0)
    total_steps: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # Scheduling: GPUs asked for (0 = CPU), higher priority first, then submission order.
    gpus: Mapped[int] = mapped_column(Integer, default=0)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    requeue_on_failure: Mapped[bool] = mapped_column(default=False)
    resume_from_checkpoint: Mapped[str | None] = mapped_column(Text, default=None)
    parent_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), default=None)
    # Where it runs: node, leased GPU indices ("0,1"), torchrun's rendezvous port.
    node: Mapped[str | None] = mapped_column(String(200), default=None)
    gpu_ids: Mapped[str | None] = mapped_column(String(200), default=None)
    rendezvous_port: Mapped[int | None] = mapped_column(Integer, default=None)
    memory_estimate: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    command: Mapped[str | None] = mapped_column(Text, default=None)
    last_checkpoint: Mapped[str | None] = mapped_column(Text, default=None)
    # bytes of RUN/metrics.jsonl already stored (and of RUN/training_log.txt: log_offset)
    metrics_offset: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    idempotency_key: Mapped[str | None] = mapped_column(String(200), default=None)
    # Issue 17 (migration 0017): the resolved mixture (backend.core.mixture) and, once the trainer
    # has indexed it, what each dataset contributed (samples, tokens).
    mixture: Mapped[dict[str, Any] | None] = mapped_column(default=None)


class WorkerNode(Base):
    """A live worker process: its node, GPU count and heartbeat."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    node: Mapped[str] = mapped_column(String(200))
    gpus: Mapped[int] = mapped_column(Integer, default=0)
    gpu_memory_mib: Mapped[int | None] = mapped_column(Integer, default=None)
    cpus: Mapped[int | None] = mapped_column(Integer, default=None)  # the node's CPU count (issue 18)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)


class GpuLease(Base):
    """One GPU of one node held by one job; the primary key makes a double lease impossible
    even with several worker processes on the same node."""

    __tablename__ = "gpu_leases"
    __table_args__ = (PrimaryKeyConstraint("node", "gpu_index"),)

    node: Mapped[str] = mapped_column(String(200))
    gpu_index: Mapped[int] = mapped_column(Integer)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True, default=None)
    # an evaluation holds its GPU the same way (issue 13); exactly one of job_id, evaluation_id
    evaluation_id: Mapped[int | None] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), index=True,
                                                      default=None)
    # or the model server of a worker ("serve:<worker>"), which keeps models loaded for chats
    holder: Mapped[str | None] = mapped_column(String(200), default=None, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobLog(LogColumns, Base):
    __tablename__ = "job_logs"
    __table_args__ = (Index("ix_job_logs_job_seq", "job_id", "seq", unique=True),)

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))


class JobMetric(Base):
    __tablename__ = "job_metrics"
    __table_args__ = (Index("ix_job_metrics_job_seq", "job_id", "seq", unique=True),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer)
    loss: Mapped[float | None] = mapped_column(Float, default=None)
    values: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Evaluation(RunColumns, Base):
    """An evaluation job: one or more models generating on one dataset split (issue 8), or on
    the held-out parts of a mixture, per dataset and overall (issue 17)."""

    __tablename__ = "evaluations"

    #: None for a mixture evaluation (its datasets are in ``mixture``)
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id"), default=None)
    split: Mapped[str] = mapped_column(String(20), default="validation")
    #: a mixture evaluation's resolved parts: {request, datasets: [{name, dataset_id, root,
    #: annotation, lines, max_dynamic_patch}], lines}
    mixture: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    #: a benchmark suite's registered benchmarks, resolved at submission: {request, benchmarks:
    #: [{name, title, folder, annotation, samples, dynamic, max_num, max_new_tokens,
    #: min_new_tokens, metrics}], lines}
    benchmarks: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    #: resolved model references: [{label, model_id, job_id, checkpoint}]
    models: Mapped[list[Any]] = mapped_column(JSON, default=list)
    metrics: Mapped[list[Any]] = mapped_column(JSON, default=list)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: per model: {label, n, metrics: {name: value}}
    summary: Mapped[list[Any]] = mapped_column(JSON, default=list)
    done: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int | None] = mapped_column(Integer, default=None)
    #: the generation rate of the model and part being evaluated (the program's own measure)
    samples_per_second: Mapped[float | None] = mapped_column(Float, default=None)
    # bytes of RUN/outputs.jsonl already stored (and of RUN/evaluation_log.txt: log_offset)
    outputs_offset: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class EvaluationLog(LogColumns, Base):
    __tablename__ = "evaluation_logs"
    __table_args__ = (Index("ix_evaluation_logs_eval_seq", "evaluation_id", "seq", unique=True),)

    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"))


class EvaluationSample(Base):
    """One model's output on one sample, with its per-metric scores."""

    __tablename__ = "evaluation_samples"
    __table_args__ = (Index("ix_evaluation_samples_key", "evaluation_id", "model_index", "sample_index",
                            unique=True),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"))
    model_index: Mapped[int] = mapped_column(Integer)
    sample_index: Mapped[int] = mapped_column(Integer)
    sample_id: Mapped[str] = mapped_column(String(200))
    #: its dataset's name in a mixture evaluation (None: one split)
    dataset: Mapped[str | None] = mapped_column(String(200), default=None)
    question: Mapped[str] = mapped_column(Text)
    answers: Mapped[list[Any]] = mapped_column(JSON, default=list)
    prediction: Mapped[str] = mapped_column(Text)
    scores: Mapped[dict[str, Any]] = mapped_column(default=dict)


class ChatRequest(RunColumns, Base):
    """One playground reply to generate (issue 13): the table is the queue of the workers' model
    servers; the reply's pieces stream back as ``chat_tokens`` rows (the path logs take). A kind
    of run (:data:`backend.services.runs.CHAT`, migration 0022): the lifecycle's states and
    columns (``failure_reason`` is why it failed)."""

    __tablename__ = "chat_requests"

    model_path: Mapped[str] = mapped_column(Text)
    builtin: Mapped[bool] = mapped_column(default=False)  # the demo model: the server builds it if absent
    template: Mapped[str] = mapped_column(String(50))
    tiling: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    conversation: Mapped[list[Any]] = mapped_column(JSON, default=list)
    image: Mapped[str | None] = mapped_column(Text, default=None)  # base64, as sent
    max_new_tokens: Mapped[int] = mapped_column(Integer, default=256)
    temperature: Mapped[float] = mapped_column(Float, default=0.0)
    batch_size: Mapped[int | None] = mapped_column(Integer, default=None)  # chats generated together
    reply: Mapped[str | None] = mapped_column(Text, default=None)


class ChatToken(Base):
    __tablename__ = "chat_tokens"
    __table_args__ = (Index("ix_chat_tokens_chat_seq", "chat_id", "seq", unique=True),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    chat_id: Mapped[int] = mapped_column(ForeignKey("chat_requests.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)


class ModelImport(RunColumns, Base):
    """One model import (checkpoint conversion) as a background job done by a worker (issue 13):
    progress, cancel, and the registered model or the reason when it ends. A kind of run
    (:data:`backend.services.runs.MODEL_IMPORT`, migration 0021): the lifecycle's states and
    columns; the API speaks its own words for them (``backend.services.model_imports``)."""

    __tablename__ = "model_imports"

    src: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(String(200))
    progress: Mapped[float] = mapped_column(Float, default=0.0)  # 0..1, bytes of weights written
    message: Mapped[str | None] = mapped_column(Text, default=None)
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"), default=None)
    error_status: Mapped[int | None] = mapped_column(Integer, default=None)  # the HTTP status it means
