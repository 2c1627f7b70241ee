"""What a training job trains on: a *mixture* of datasets, the recipe's meta file.

A job names registered datasets, each with its own ``repeat_time``, ``data_augment`` and
``max_dynamic_patch``, and optionally a seed-style meta file on shared storage (such as the
released ``internvl_1_2_finetune.json``), merged after them. A plain ``dataset_id`` is the
one-dataset mixture. The request is resolved once, at submission, into *rows* (absolute paths,
real line counts, samples per epoch after ``repeat_time``) that are stored with the job: the
launcher writes ``meta.json`` from them, the trainer adds what each dataset really contributed
(kept samples, tokens), and the API and UI show both.

Pure: no database, no web, no torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from backend.core.fields import MAX_ITEMS, DbId, Name, ServerPath, Tiles
from backend.core.meta import (
    MetaEntry,
    MetaError,
    check_allowed,
    count_lines,
    effective_length,
    load_meta,
    locate_entry,
    meta_base,
    repeat_time_problem,
)

#: what the trainer reports per dataset (``kind: "data"`` row of metrics.jsonl)
TRAINED_KEYS = ("samples", "kept", "dropped", "tokens", "images", "tiles")


class MixtureDataset(BaseModel):
    """A registered dataset in a mixture, with its recipe knobs."""

    model_config = ConfigDict(extra="forbid")

    dataset_id: DbId
    name: Name | None = Field(None, description="its key in meta.json (default: the dataset's name)")
    repeat_time: float = Field(1, description="1: every line once; > 1 (whole): repeated; < 1: int(N x r) lines")
    data_augment: bool = Field(False, description="the recipe's JPEG re-encode augmentation on its images")
    max_dynamic_patch: Tiles | None = Field(None, description="its own tile budget (empty: the job's)")

    @field_validator("repeat_time")
    @classmethod
    def _repeat_time(cls, v: float) -> float:
        problem = repeat_time_problem(v)
        if problem:
            raise ValueError(problem)
        return v


class MixtureSpec(BaseModel):
    """A job's data: registered datasets, then (optionally) a meta file on shared storage."""

    model_config = ConfigDict(extra="forbid")

    datasets: list[MixtureDataset] = Field(default_factory=list, max_length=MAX_ITEMS)
    meta_path: ServerPath | None = Field(None, description="a seed-style meta JSON under VLSTUDIO_DATA_ROOTS")
    meta_base: ServerPath | None = Field(None, description="folder its relative paths resolve from (default: the "
                                  "meta file's folder; the reference's internvl_chat/ for the released files)")
    on_conflict: Literal["error", "rename", "replace"] = Field(
        "error", description="a dataset name used by both: refuse, rename the later one, or let it replace")


def row(name: str, entry: MetaEntry, *, lines: int, source: str, dataset_id: int | None = None,
        val_annotation: str | None = None, val_lines: int = 0) -> dict[str, Any]:
    """One resolved dataset of a mixture, as stored with the job."""
    return {"name": name, "source": source, "dataset_id": dataset_id, "root": entry.root,
            "annotation": entry.annotation, "repeat_time": entry.repeat_time, "data_augment": entry.data_augment,
            "max_dynamic_patch": entry.max_dynamic_patch, "lines": lines,
            "samples": effective_length(lines, entry.repeat_time), "val_annotation": val_annotation,
            "val_lines": val_lines}


def meta_file_entries(meta_path: Path, base: Path | None, allowed_roots: Iterable[Path]) -> dict[str, MetaEntry]:
    """The entries of a meta file on shared storage with absolute, checked paths and real line
    counts as ``length`` (the file's own ``length`` is informational in the recipe).

    The meta file, every root and every annotation must lie under ``allowed_roots``; relative
    paths resolve by :func:`meta_base`. Every problem is listed at once, each naming its entry."""
    roots = list(allowed_roots)
    path = check_allowed(Path(meta_path), roots)
    if not path.is_file():
        raise MetaError([f"{meta_path}: no such meta file"])
    folder = meta_base(path, Path(base) if base else None)
    problems: list[str] = []
    out: dict[str, MetaEntry] = {}
    for name, entry in load_meta(path).items():
        try:
            root, ann = locate_entry(name, entry, folder)
            root, ann = check_allowed(root, roots), check_allowed(ann, roots)
        except MetaError as e:
            problems += [p if p.startswith(f"{name}:") else f"{name}: {p}" for p in e.problems]
            continue
        out[name] = MetaEntry(root=str(root), annotation=str(ann), data_augment=entry.data_augment,
                              repeat_time=entry.repeat_time, length=count_lines(ann),
                              max_dynamic_patch=entry.max_dynamic_patch, extra=entry.extra)
    if problems:
        raise MetaError(problems)
    return out


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"datasets": rows, "lines": sum(r["lines"] for r in rows), "samples": sum(r["samples"] for r in rows)}


def run_meta(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``meta.json`` of the run folder (seed format, absolute paths)."""
    return {r["name"]: MetaEntry(root=r["root"], annotation=r["annotation"], data_augment=r["data_augment"],
                                 repeat_time=r["repeat_time"], length=r["lines"],
                                 max_dynamic_patch=r["max_dynamic_patch"]).to_json() for r in rows}


def eval_meta(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The held-out validation parts of a mixture, each once, with its dataset's tiling."""
    return {r["name"]: MetaEntry(root=r["root"], annotation=r["val_annotation"], length=r["val_lines"],
                                 max_dynamic_patch=r["max_dynamic_patch"]).to_json()
            for r in rows if r.get("val_annotation")}


def with_trained(mixture: dict[str, Any], report: Mapping[str, Mapping[str, int]]) -> dict[str, Any]:
    """The stored mixture with the trainer's per-dataset report merged into its rows."""
    rows = [{**r, "trained": {k: int(report[r["name"]].get(k, 0)) for k in TRAINED_KEYS}}
            if r["name"] in report else r for r in mixture.get("datasets", [])]
    totals = {k: sum(int(v.get(k, 0)) for v in report.values()) for k in TRAINED_KEYS}
    return {**mixture, "datasets": rows, "trained": totals}
