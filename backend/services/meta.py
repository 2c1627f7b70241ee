"""The meta file (seed format) from registered datasets, optionally merged with a mixture."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy.orm import Session

from backend.core.meta import MetaEntry, MetaError, build_meta, merge_meta, parse_meta, summarize
from backend.db.models import User
from backend.services.datasets import get_dataset
from backend.services.errors import InvalidInput


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
