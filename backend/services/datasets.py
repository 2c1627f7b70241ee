"""Datasets: register an upload (unzip, validate, and only then record it)."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.core.archive import ArchiveError, extract_zip
from backend.core.validation import validate_annotation
from backend.db.models import Dataset, User
from backend.services.errors import InvalidInput, NotFound
from backend.services.users import visible_to
from backend.settings import Settings


def _find_annotation(root: Path) -> Path:
    found = sorted(p for p in root.rglob("*.jsonl") if p.is_file())
    if not found:
        raise InvalidInput("the archive holds no .jsonl annotation file")
    if len(found) > 1:
        raise InvalidInput("the archive holds several .jsonl files; upload one annotation per dataset",
                           [str(p.relative_to(root)) for p in found])
    return found[0]


def register_dataset(session: Session, settings: Settings, upload: Path, name: str,
                     owner_id: int | None = None) -> Dataset:
    """Unpack ``upload`` (a zip) into the data folder, validate it, and record it.

    On any error the unpacked files are removed and nothing is written to the database.
    """
    staging = settings.data_path / "datasets" / f".staging-{uuid.uuid4().hex}"
    final: Path | None = None
    try:
        try:
            extract_zip(upload, staging, max_total_bytes=settings.max_upload_bytes * 20)
        except ArchiveError as e:
            raise InvalidInput(str(e)) from None
        annotation = _find_annotation(staging)
        report = validate_annotation(annotation, annotation.parent)
        if not report.ok:
            errors = [i for i in report.to_dict()["issues"] if i["severity"] == "error"]
            raise InvalidInput(f"{len(errors)} error(s) in {annotation.name}", errors[:100])
        ds = Dataset(name=name, owner_id=owner_id, root="", annotation="", num_samples=report.samples, num_images=report.images,
                     report=report.to_dict())
        session.add(ds)
        session.flush()
        target = settings.data_path / "datasets" / str(ds.id)
        if target.exists():  # left over from a database that was reset
            shutil.rmtree(target)
        staging.rename(target)
        final = target
        ann_final = final / annotation.relative_to(staging)
        ds.root = str(ann_final.parent)
        ds.annotation = str(ann_final)
        session.commit()
        return ds
    except BaseException:
        session.rollback()
        shutil.rmtree(staging, ignore_errors=True)
        if final is not None:
            shutil.rmtree(final, ignore_errors=True)
        raise


def get_dataset(session: Session, dataset_id: int, user: User | None = None) -> Dataset:
    """``user``: only if visible to them (404 otherwise, so ids of others' data do not leak)."""
    ds = session.get(Dataset, dataset_id)
    if ds is None or not visible_to(user, ds.owner_id):
        raise NotFound(f"dataset {dataset_id} not found")
    return ds


def list_datasets(session: Session, user: User | None = None) -> list[Dataset]:
    q = select(Dataset).order_by(Dataset.id.desc())
    if user is not None and not user.is_admin:
        q = q.where((Dataset.owner_id == user.id) | Dataset.owner_id.is_(None))
    return list(session.scalars(q))
