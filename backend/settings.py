"""Deployment settings: one pydantic-settings object read from ``VLSTUDIO_*`` variables.

The defaults give the embedded mode (SQLite + filesystem broker under the data folder);
``VLSTUDIO_DATABASE_URL=postgresql+psycopg://...`` and ``VLSTUDIO_BROKER_URL=redis://...``
give the production mode.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_SECRET = "vlstudio-embedded-default-secret"
MIN_SECRET = 32


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VLSTUDIO_", env_file=None, extra="ignore")

    data_dir: Path = Field(Path("./data"), description="datasets, models, run folders, SQLite and broker")
    database_url: str | None = Field(None, description="default: SQLite at DATA/vlstudio.db")
    broker_url: str | None = Field(None, description="default: Celery filesystem broker under DATA/broker")
    host: str = "127.0.0.1"
    port: int = 7860
    api_url: str | None = Field(None, description="where the UI reaches the API; default http://host:port")
    worker_concurrency: int = 1
    backend: Literal["local", "slurm"] = Field("local", description="where training commands run")
    # Slurm backend (docs/deploy-slurm.md): used when backend == "slurm".
    slurm_partition: str | None = Field(None, description="sbatch --partition; default: the cluster's")
    slurm_account: str | None = Field(None, description="sbatch --account")
    slurm_qos: str | None = Field(None, description="sbatch --qos")
    slurm_time_limit: str | None = Field(None, description="sbatch --time, e.g. 2-00:00:00")
    slurm_gpus_per_node: int | None = Field(
        None, ge=0, description="GPUs on one node of the partition; a job asking for more per node is refused")
    slurm_cpus_per_task: int | None = Field(None, ge=1, description="sbatch --cpus-per-task (one task per node)")
    slurm_extra_options: str = Field("", description="more sbatch options, shell-quoted, e.g. '--exclusive'")
    slurm_shared_dir: Path | None = Field(
        None, description="shared folder every node sees; the data folder (datasets, runs) must be inside it")
    slurm_python: str | None = Field(None, description="Python on the nodes; default: the worker's own")
    slurm_setup: str = Field("", description="shell lines run on the nodes first, e.g. module load, venv")
    slurm_requeue: bool = Field(False, description="let Slurm requeue after node failure; resumes from the "
                                                   "last checkpoint")
    slurm_signal_seconds: int = Field(
        120, ge=0, description="stop the trainer (it saves a checkpoint) this long before the time limit")
    slurm_poll_seconds: float = Field(5.0, gt=0, description="how often the worker asks squeue")
    max_upload_bytes: int = 20 * 2**30
    # Issue 3: server-side datasets (root + annotation on shared storage) only under these.
    data_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, description="folders server-side dataset paths may be in, ':'- or ','-separated")
    index_cache: Path | None = Field(None, description="cache of the training-data indexes, shared by every job "
                                     "(default: DATA/index-cache; on Slurm it must be on the shared folder)")
    log_batch_lines: int = 200
    stream_poll_seconds: float = 0.25
    # Job service (docs/jobs.md): users, scheduling, recovery.
    secret_key: str = Field(DEFAULT_SECRET, description="HMAC key of API tokens; must be set outside embedded mode")
    auth_enabled: bool | None = Field(None, description="require login; default: on unless embedded mode")
    first_admin_username: str = "admin"
    first_admin_password: str | None = Field(None, description="creates the first admin at first start")
    token_ttl_hours: float = 24 * 7
    max_request_bytes: int = Field(1 << 20, description="largest JSON request body")
    # Load and hostile input (issue 18, docs/security.md).
    api_threads: int = Field(40, ge=1, description="worker threads of the API process; the database pool is "
                                                  "sized from it")
    db_pool_timeout_seconds: float = Field(10.0, gt=0, description="wait for a pooled connection, then 503")
    max_inflight_requests: int = Field(128, ge=1, description="API requests served at once; more get 503 + "
                                                             "Retry-After instead of piling up")
    max_event_streams: int = Field(256, ge=1, description="open SSE streams at once; more get 503")
    request_deadline_seconds: float = Field(
        30.0, gt=0, description="a submission still waiting this long is not recorded (its client gave up); "
        "work that grows with its input (a sample preview, a report, a comparison) is stopped (503)")
    max_zip_entries: int = Field(100_000, ge=1, description="files in an uploaded zip")
    max_unpacked_bytes: int | None = Field(None, description="bytes an uploaded zip may unpack to; default: "
                                           "4 x VLSTUDIO_MAX_UPLOAD_BYTES")
    scrypt_log_n: int = Field(17, ge=14, le=20, description="password hashes use scrypt N = 2^this (OWASP: 17); "
                                                        "weaker stored hashes are upgraded at login")
    login_attempts_per_minute: int = Field(10, ge=1, description="failed logins per username and per client "
                                           "address before 429")
    node_name: str | None = Field(None, description="this worker's node; default: the host name")
    gpus_per_node: int | None = Field(None, ge=0, description="GPUs the worker may lease; default: nvidia-smi")
    gpu_memory_gib: float | None = Field(None, description="per-GPU memory when gpus_per_node is set by hand")
    cpu_job_slots: int = Field(1, ge=1, description="CPU-only jobs a worker runs at once")
    heartbeat_seconds: float = 5.0
    heartbeat_timeout_seconds: float = Field(60.0, description="a job silent this long is failed (lost worker)")
    cancel_grace_seconds: float = Field(60.0, description="SIGTERM to SIGKILL on cancel")
    serve_models: bool = Field(True, description="a worker serves playground chats (its model server)")
    serve_idle_seconds: float = Field(300.0, description="a model server unloads its models and gives its GPU "
                                      "back after this long without chats")
    db_outage_seconds: float = Field(600.0, description="a supervisor retries database writes this long "
                                     "after its run ended before it gives up (recovery then reads the run folder)")
    gpu_sample_seconds: float = 10.0
    mlflow_tracking_uri: str | None = None
    wandb_project: str | None = None

    @field_validator("data_roots", mode="before")
    @classmethod
    def _split_roots(cls, v: object) -> object:
        if isinstance(v, str):
            return [p for p in re.split(r"[,:]", v) if p.strip()]
        return v

    @property
    def data_path(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_path / 'vlstudio.db'}"

    @property
    def embedded(self) -> bool:
        """The all-in-one mode: SQLite and the filesystem broker, one machine."""
        return not self.database_url and not self.broker_url

    @property
    def auth_required(self) -> bool:
        return self.embedded is False if self.auth_enabled is None else self.auth_enabled

    def check_secret(self) -> None:
        """Fail fast: outside the embedded mode, tokens signed with a public default (or a short,
        guessable key) are forgeable."""
        if self.embedded:
            return
        if self.secret_key == DEFAULT_SECRET:
            raise RuntimeError("VLSTUDIO_SECRET_KEY must be set to a private value outside the embedded mode")
        if len(self.secret_key.strip()) < MIN_SECRET:
            raise RuntimeError(f"VLSTUDIO_SECRET_KEY must be at least {MIN_SECRET} characters outside the embedded "
                               "mode (e.g. openssl rand -hex 32)")

    @property
    def unpacked_limit(self) -> int:
        return self.max_unpacked_bytes or 4 * self.max_upload_bytes

    @property
    def embedded_broker(self) -> bool:
        return not self.broker_url

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or "vlfs://"  # backend.queue_fs: the filesystem transport, atomic writes

    @property
    def index_cache_path(self) -> Path:
        return (self.index_cache or self.data_path / "index-cache").expanduser().resolve()

    @property
    def broker_dir(self) -> Path:
        return self.data_path / "broker"

    @property
    def api_base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return (self.api_url or f"http://{host}:{self.port}").rstrip("/")

    def ensure_dirs(self) -> None:
        for sub in ("datasets", "models", "runs", "uploads", "broker/in", "broker/processed", "broker/control"):
            (self.data_path / sub).mkdir(parents=True, exist_ok=True)


@lru_cache
def get_settings() -> Settings:
    return Settings()
