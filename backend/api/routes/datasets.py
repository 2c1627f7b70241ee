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
                   name: str | None = Form(None)):  # noqa: ANN201
    """Upload a zip of images + one ``.jsonl`` annotation in the seed's format."""
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
        return svc.register_dataset(session, settings, path, ds_name, owner_id=user.id)
    finally:
        path.unlink(missing_ok=True)


@router.post("/demo", response_model=DatasetOut, status_code=201)
def register_demo(session: SessionDep, settings: SettingsDep, user: CurrentUser, samples: int = 64):  # noqa: ANN201
    """Generate the coloured-shapes demo dataset and register it (one click in the UI)."""
    tmpdir = Path(tempfile.mkdtemp(dir=settings.data_path / "uploads"))
    try:
        zpath = demo_data.write_zip(tmpdir / "demo.zip", n=samples)
        return svc.register_dataset(session, settings, zpath, "shapes-demo", owner_id=user.id)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


@router.get("", response_model=list[DatasetOut])
def list_datasets(session: SessionDep, user: CurrentUser) -> list:
    return svc.list_datasets(session, user)


@router.get("/{dataset_id}", response_model=DatasetOut)
def get_dataset(dataset_id: int, session: SessionDep, user: CurrentUser):  # noqa: ANN201
    return svc.get_dataset(session, dataset_id, user)
