from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from fastapi import APIRouter, File, Form, UploadFile

from backend.api.auth import CurrentUser
from backend.api.deps import SessionDep, SettingsDep
from backend.api.schemas import DatasetOut
from backend.core import demo_data
from backend.services import datasets as svc
from backend.services.errors import InvalidInput

router = APIRouter(prefix="/datasets", tags=["datasets"])


@router.post("", response_model=DatasetOut, status_code=201,
             responses={422: {"description": "the upload is not a valid dataset; `errors` lists every problem"}})
def upload_dataset(session: SessionDep, settings: SettingsDep, user: CurrentUser, file: UploadFile = File(...),
                   name: str | None = Form(None), val_fraction: float = Form(0.0),
                   validation: UploadFile | None = File(None)):  # noqa: ANN201
    """Upload a zip of images + one ``.jsonl`` annotation in the seed's format.

    Hold out a validation split with ``val_fraction`` (0-1, seeded) or a second ``.jsonl``
    as ``validation`` (image paths relative to the same root as the annotation)."""
    uploads = settings.data_path / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=uploads, suffix=".zip", delete=False) as tmp:
        size = 0
        while chunk := file.file.read(1 << 20):
            size += len(chunk)
            if size > settings.max_upload_bytes:
                tmp.close()
                Path(tmp.name).unlink(missing_ok=True)
                raise InvalidInput(f"upload larger than {settings.max_upload_bytes} bytes")
            tmp.write(chunk)
    path = Path(tmp.name)
    try:
        if size == 0:
            raise InvalidInput(f"{file.filename or 'upload'}: empty file")
        ds_name = name or Path(file.filename or "dataset").stem
        val_path = _save_validation(validation, uploads, settings.max_request_bytes * 64) if validation else None
        try:
            return svc.register_dataset(session, settings, path, ds_name, owner_id=user.id,
                                        val_fraction=val_fraction, val_upload=val_path)
        finally:
            if val_path is not None:
                val_path.unlink(missing_ok=True)
    finally:
        path.unlink(missing_ok=True)


def _save_validation(upload: UploadFile, folder: Path, max_bytes: int) -> Path:
    """Issue 8: the second JSONL (validation split) of an upload, to a temporary file."""
    data = upload.file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise InvalidInput(f"validation JSONL larger than {max_bytes} bytes")
    if not data.strip():
        raise InvalidInput(f"{upload.filename or 'validation'}: empty validation JSONL")
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".jsonl", delete=False) as tmp:
        tmp.write(data)
    return Path(tmp.name)


@router.post("/demo", response_model=DatasetOut, status_code=201)
def register_demo(session: SessionDep, settings: SettingsDep, user: CurrentUser, samples: int = 64,
                  val_fraction: float = 0.0):  # noqa: ANN201
    """Generate the coloured-shapes demo dataset and register it (one click in the UI);
    ``val_fraction`` holds out that part of it as the validation split."""
    tmpdir = Path(tempfile.mkdtemp(dir=settings.data_path / "uploads"))
    try:
        zpath = demo_data.write_zip(tmpdir / "demo.zip", n=samples)
        return svc.register_dataset(session, settings, zpath, "shapes-demo", owner_id=user.id,
                                    val_fraction=val_fraction)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


@router.get("", response_model=list[DatasetOut])
def list_datasets(session: SessionDep, user: CurrentUser) -> list:
    return svc.list_datasets(session, user)


@router.get("/{dataset_id}", response_model=DatasetOut)
def get_dataset(dataset_id: int, session: SessionDep, user: CurrentUser):  # noqa: ANN201
    return svc.get_dataset(session, dataset_id, user)
