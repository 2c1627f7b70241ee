"""The training-job spec: the single source of truth for a run.

``TrainingSpec`` is validated at the API (every problem listed at once), written resolved
into the run folder as ``spec.json``, re-read by the training program and rendered by the
UI. Defaults live here and in :mod:`backend.core.presets`; nothing else repeats them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from backend.core.templates import TEMPLATES


class Hyperparameters(BaseModel):
    """What a user may set for a run. Every field has the default of the ``demo`` preset."""

    model_config = ConfigDict(extra="forbid")

    max_steps: int = Field(-1, description="stop after this many optimizer steps (-1: use epochs)")
    num_train_epochs: float = Field(1.0, gt=0)
    learning_rate: float = Field(2e-4, gt=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    lr_scheduler_type: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    per_device_batch_size: int = Field(2, ge=1, le=1024)
    global_batch_size: int | None = Field(
        None, ge=1, description="kept when the process count changes; gradient accumulation is derived")
    nproc_per_node: int = Field(1, ge=1, le=64, description="training processes per node (GPUs, or CPU ranks)")
    nnodes: int = Field(1, ge=1, le=128, description="nodes (more than one needs the Slurm backend)")
    gpus: int = Field(0, ge=0, le=64, description="GPUs per job; 0 trains on the CPU")
    zero_stage: Literal[0, 1, 2, 3] = 1
    max_seq_length: int = Field(4096, ge=64)
    max_dynamic_patch: int = Field(6, ge=1, le=40)
    min_dynamic_patch: int = Field(1, ge=1, le=40)
    use_thumbnail: bool = True
    dynamic_image_size: bool = True
    freeze_backbone: bool = False
    freeze_mlp: bool = False
    freeze_llm: bool = False
    grad_checkpoint: bool = False
    drop_path_rate: float = Field(0.0, ge=0, lt=1)
    logging_steps: int = Field(1, ge=1)
    save_steps: int = Field(0, ge=0, description="0: save only at the end")
    save_total_limit: int = Field(2, ge=1)
    seed: int = 42
    template: str | None = Field(None, description="conversation template; default: the model's")

    @model_validator(mode="after")
    def _check_combination(self) -> Hyperparameters:
        problems: list[str] = []
        if self.min_dynamic_patch > self.max_dynamic_patch:
            problems.append("min_dynamic_patch must not exceed max_dynamic_patch")
        if self.max_steps == 0 or self.max_steps < -1:
            problems.append("max_steps must be positive, or -1 to train by epochs")
        if self.gpus and self.gpus != self.nproc_per_node:
            problems.append("with GPUs, nproc_per_node must equal gpus (one process per GPU)")
        if self.global_batch_size is not None and self.global_batch_size % (
                self.per_device_batch_size * self.nproc_per_node):
            problems.append("global_batch_size must be a multiple of per_device_batch_size x nproc_per_node")
        if self.freeze_backbone and self.freeze_mlp and self.freeze_llm:
            problems.append("everything is frozen: nothing would train")
        if self.template is not None and self.template not in TEMPLATES:
            problems.append(f"unknown template {self.template!r}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def gradient_accumulation_steps(self) -> int:
        if self.global_batch_size is None:
            return 1
        return self.global_batch_size // (self.per_device_batch_size * self.nproc_per_node)


class DatasetEntry(BaseModel):
    """One entry of the meta file, in the seed's format."""

    model_config = ConfigDict(extra="allow")

    root: str
    annotation: str
    data_augment: bool = False
    repeat_time: float = 1
    length: int = 0
    max_dynamic_patch: int | None = None


class TrainingSpec(BaseModel):
    """Everything the training program needs, resolved to absolute paths."""

    model_config = ConfigDict(extra="forbid")

    job_id: int
    model_path: str
    template: str
    meta_path: str
    output_dir: str
    hyper: Hyperparameters
    resume_from_checkpoint: str | None = None

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2))

    @classmethod
    def read(cls, path: Path) -> TrainingSpec:
        return cls.model_validate_json(path.read_text())
