"""Datasets: register an upload (unzip, validate, and only then record it)."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.core.archive import ArchiveError, extract_zip
from backend.core.splits import VAL_NAME, SplitError, write_fraction_split
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
                     owner_id: int | None = None, val_fraction: float = 0.0,
                     val_upload: Path | None = None) -> Dataset:
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
        val = _hold_out(annotation, val_fraction, val_upload)  # issue 8: validation split
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
        if val is not None:
            ds.annotation = str(final / val[0].relative_to(staging))
            ds.val_annotation = str(final / val[1].relative_to(staging))
            ds.num_samples, ds.num_val_samples = val[2], val[3]
        session.commit()
        return ds
    except BaseException:
        session.rollback()
        shutil.rmtree(staging, ignore_errors=True)
        if final is not None:
            shutil.rmtree(final, ignore_errors=True)
        raise


def _hold_out(annotation: Path, fraction: float, val_upload: Path | None) -> tuple[Path, Path, int, int] | None:
    """Issue 8: a held-out validation split, by ``fraction`` of the annotation (seeded) or
    from a second JSONL whose image paths are relative to the same root. ``None``: no split."""
    if fraction and val_upload is not None:
        raise InvalidInput("give either a validation fraction or a validation JSONL, not both")
    if val_upload is not None:
        val_path = annotation.parent / VAL_NAME
        shutil.copyfile(val_upload, val_path)
        report = validate_annotation(val_path, annotation.parent)
        if not report.ok:
            errors = [i for i in report.to_dict()["issues"] if i["severity"] == "error"]
            raise InvalidInput(f"{len(errors)} error(s) in the validation JSONL", errors[:100])
        if report.samples == 0:
            raise InvalidInput("the validation JSONL holds no samples")
        with open(annotation, encoding="utf-8-sig") as f:
            n_train = sum(1 for line in f if line.strip())
        return annotation, val_path, n_train, report.samples
    if not fraction:
        return None
    try:
        return write_fraction_split(annotation, fraction)
    except SplitError as e:
        raise InvalidInput(str(e)) from None


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
