"""The meta file (seed format) from registered datasets, optionally merged with a mixture, and a
training job's mixture resolved (:mod:`backend.core.mixture`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from backend.core.meta import MetaEntry, MetaError, build_meta, merge_meta, parse_meta, summarize
from backend.core.mixture import MixtureSpec, meta_file_entries, row, summary
from backend.db.models import User
from backend.services.datasets import get_dataset
from backend.services.errors import Conflict, InvalidInput, NotFound


def _key(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "dataset"


def build(session: Session, user: User | None, datasets: list[dict[str, Any]], mixture: dict | None = None,
          on_conflict: str = "error") -> dict[str, Any]:
    """``{"meta": <the meta JSON>, "summary": per-dataset and total effective counts}``.

    ``datasets``: ``{dataset_id, name?, repeat_time, data_augment, max_dynamic_patch?}``; the
    mixture's entries (already in the seed's format) are checked and appended after them."""
    ours: dict[str, MetaEntry] = {}
    problems: list[str] = []
    for d in datasets:
        ds = get_dataset(session, d["dataset_id"], user, ready=True)
        name = d.get("name") or _key(ds.name)
        if name in ours:
            problems.append(f"dataset name {name!r} is used twice (give a distinct name)")
            continue
        ours[name] = MetaEntry(root=ds.root, annotation=ds.annotation, data_augment=bool(d.get("data_augment")),
                               repeat_time=d.get("repeat_time", 1), length=ds.num_samples,
                               max_dynamic_patch=d.get("max_dynamic_patch"))
    if problems:
        raise InvalidInput("; ".join(problems), problems)
    try:
        parts = [ours]
        if mixture is not None:
            parts.append(parse_meta(mixture))
        merged = merge_meta(*parts, on_conflict=on_conflict)  # type: ignore[arg-type]
        if not merged:
            raise InvalidInput("choose at least one dataset or upload a mixture")
        meta = build_meta(merged)
    except MetaError as e:
        raise InvalidInput(f"meta file: {e}", e.problems) from None
    return {"meta": meta, "summary": summarize(merged)}


def _registered(session: Session, user: User | None, spec: MixtureSpec) -> tuple[dict[str, MetaEntry], dict]:
    ours: dict[str, MetaEntry] = {}
    info: dict[str, dict[str, Any]] = {}
    problems: list[dict[str, Any]] = []
    for k, d in enumerate(spec.datasets):
        where = f"mixture.datasets.{k}"
        try:
            ds = get_dataset(session, d.dataset_id, user, ready=True)
        except (NotFound, Conflict) as e:
            problems.append({"field": f"{where}.dataset_id", "message": e.message})
            continue
        name = d.name or _key(ds.name)
        if name in ours:
            problems.append({"field": f"{where}.name", "message": f"dataset name {name!r} is used twice (give a "
                             "distinct name)"})
            continue
        ours[name] = MetaEntry(root=ds.root, annotation=ds.annotation, data_augment=d.data_augment,
                               repeat_time=d.repeat_time, length=ds.num_samples, max_dynamic_patch=d.max_dynamic_patch)
        info[name] = {"dataset_id": ds.id, "val_annotation": ds.val_annotation, "val_lines": ds.num_val_samples}
    if problems:
        raise InvalidInput("invalid mixture", problems)
    return ours, info


def resolve_mixture(session: Session, user: User | None, spec: MixtureSpec,
                    allowed_roots: list[Path]) -> dict[str, Any]:
    """The job's mixture resolved: one row per dataset (absolute paths, line counts, samples per
    epoch after ``repeat_time``). InvalidInput lists every problem with its field."""
    ours, info = _registered(session, user, spec)
    parts: list[dict[str, MetaEntry]] = [ours]
    if spec.meta_path:
        try:
            parts.append(meta_file_entries(Path(spec.meta_path), Path(spec.meta_base) if spec.meta_base else None,
                                           allowed_roots))
        except MetaError as e:
            raise InvalidInput(f"meta file {spec.meta_path}: {e}",
                               [{"field": "mixture.meta_path", "message": p} for p in e.problems]) from None
    try:
        merged = merge_meta(*parts, on_conflict=spec.on_conflict)
    except MetaError as e:
        raise InvalidInput(f"mixture: {e}", [{"field": "mixture", "message": p} for p in e.problems]) from None
    if not merged:
        raise InvalidInput("invalid mixture", [{"field": "mixture", "message": "choose at least one dataset or a "
                                                "meta file"}])
    rows = []
    for name, e in merged.items():
        mine = ours.get(name) is e  # a registered dataset (not replaced by the meta file's entry)
        rows.append(row(name, e, lines=e.length, source="dataset" if mine else "meta_file",
                        **(info[name] if mine else {})))
    return {**summary(rows), "meta_path": spec.meta_path, "meta_base": spec.meta_base}
