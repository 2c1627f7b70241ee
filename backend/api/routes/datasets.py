from __future__ import annotations

import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Literal

from fastapi import APIRouter, File, Form, Query, Response, UploadFile
from fastapi.responses import FileResponse

from backend.api import contract
from backend.api.auth import CurrentUser
from backend.api.deadline import Deadline
from backend.api.deps import DbRoute, SessionDep, SettingsDep
from backend.api.schemas import (
    Count,
    DatasetFromPath,
    DatasetOut,
    DbId,
    Name,
    PathText,
    SeqLength,
    ServerPath,
    Tiles,
)
from backend.core import demo_data
from backend.core.fields import file_name_problem
from backend.services import dataset_views as views
from backend.services import datasets as svc
from backend.services.dataset_checks import checks_for
from backend.services.errors import InvalidInput
from backend.settings import Settings

router = APIRouter(prefix="/datasets", tags=["datasets"], route_class=DbRoute)


def _save(upload: UploadFile, dest: Path, budget: list[int]) -> int:
    """Stream ``upload`` to ``dest``, counting against ``budget[0]`` bytes left."""
    size = 0
    with open(dest, "wb") as out:
        while chunk := upload.file.read(1 << 20):
            size += len(chunk)
            budget[0] -= len(chunk)
            if budget[0] < 0:
                raise InvalidInput("upload larger than the allowed size (VLSTUDIO_MAX_UPLOAD_BYTES)")
            out.write(chunk)
    return size


def _safe_name(filename: str | None, field: str = "files") -> PurePosixPath:
    name = (filename or "").replace("\\", "/")
    rel = PurePosixPath(name)
    problem = file_name_problem(name)
    if problem is None and (not filename or rel.is_absolute() or ".." in rel.parts
                            or any(p.startswith(".") for p in rel.parts)):
        problem = "is not a safe file name (relative, no '..', no hidden parts)"
    if problem:
        shown = f"{name[:60]}..." if len(name) > 60 else name
        message = f"file name {shown!r} {problem}"
        raise InvalidInput(message, [{"field": field, "message": message}])
    return rel


def _files_source(settings: Settings, files: list[UploadFile]) -> svc.Source:
    staging = svc.new_staging(settings)
    try:
        budget = [settings.max_upload_bytes]
        for f in files:
            rel = _safe_name(f.filename)
            dest = staging / rel
            if dest.exists():
                raise InvalidInput(f"{f.filename}: given twice")
            dest.parent.mkdir(parents=True, exist_ok=True)
            if _save(f, dest, budget) == 0:
                raise InvalidInput(f"{f.filename}: empty file")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return svc.source_from_folder(staging)


def _zip_source(settings: Settings, file: UploadFile) -> svc.Source:
    uploads = settings.data_path / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=uploads, suffix=".zip", delete=False) as tmp:
        path = Path(tmp.name)
    try:
        if _save(file, path, [settings.max_upload_bytes]) == 0:
            raise InvalidInput(f"{file.filename or 'upload'}: empty file")
        return svc.source_from_zip(settings, path, display_name=file.filename or "upload")
    finally:
        path.unlink(missing_ok=True)


def _out(rows: list, response: Response) -> dict:
    if rows[0].status == "validating":
        response.status_code = 202
    return {**DatasetOut.model_validate(rows[0]).model_dump(), "bundle": [r.id for r in rows]}


@router.post("", response_model=DatasetOut, status_code=201,
             responses={202: {"description": "accepted: validating in the background (poll `status`/`progress`)"},
                        403: {"description": "`root`/`annotation` outside VLSTUDIO_DATA_ROOTS"},
                        422: {"description": "not a valid dataset; `errors` lists every problem"}})
def upload_dataset(session: SessionDep, settings: SettingsDep, user: CurrentUser, response: Response,  # noqa: PLR0913
                   file: UploadFile | None = File(None), files: list[UploadFile] | None = File(None),
                   root: ServerPath | None = Form(None), annotation: PathText | None = Form(None),
                   name: Name | None = Form(None), val_fraction: float = Form(0.0, ge=0, lt=1),
                   validation: UploadFile | None = File(None), model_id: DbId | None = Form(None),
                   preset: Name | None = Form(None), max_dynamic_patch: Tiles | None = Form(None),
                   max_seq_length: SeqLength | None = Form(None),
                   truncation: Literal["error", "truncate"] = Form("error"), drop_bad_lines: bool = Form(False),
                   background: bool | None = Form(None)) -> dict:
    """Register a dataset from exactly one of: ``file`` (a zip of images and one or more
    ``.jsonl``: one dataset per annotation, the others' ids in ``bundle``); ``files`` (images
    plus one ``.jsonl``, names relative to the annotation's folder, e.g. ``images/a.png``);
    ``root`` + ``annotation`` (server-side, under VLSTUDIO_DATA_ROOTS).

    ``model_id``/``preset``/``max_dynamic_patch``/``max_seq_length``: tile and token-length checks
    with that model's template, tokenizer and tiling, the preset's tiling over it, then
    ``max_dynamic_patch`` (the messages say which one set the tile budget). ``drop_bad_lines``: register a cleaned copy of the
    annotation instead of refusing it. Annotations over 2 MiB (or ``background=true``) are
    validated in the background: 202, then poll ``status``/``progress``. Hold out a
    validation split with ``val_fraction`` or a second ``.jsonl`` as ``validation``."""
    given = [x for x in (file, files, root or annotation) if x]
    if len(given) != 1:
        raise InvalidInput("give exactly one of: file (a zip), files (images + one .jsonl), root + annotation")
    checks = checks_for(session, model_id, user, max_dynamic_patch=max_dynamic_patch,
                        max_seq_length=max_seq_length, truncation=truncation, preset=preset)
    if file is not None:
        src, default = _zip_source(settings, file), Path(file.filename or "dataset").stem
    elif files:
        src = _files_source(settings, files)
        default = src.pairs[0][0].stem
    else:
        if not (root and annotation):
            raise InvalidInput("a server-side dataset needs both root and annotation")
        src, default = svc.source_from_path(settings, root, annotation), Path(annotation).stem
    val_path = None
    try:
        if validation is not None:
            val_path = src.staging / ".vlstudio-val-upload.jsonl"
            if _save(validation, val_path, [settings.max_request_bytes * 64]) == 0:
                raise InvalidInput(f"{validation.filename or 'validation'}: empty validation JSONL")
        opts = svc.Options(checks, drop_bad_lines=drop_bad_lines, val_fraction=val_fraction, val_upload=val_path,
                           background=background)
    except BaseException:
        shutil.rmtree(src.staging, ignore_errors=True)
        raise
    return _out(svc.register(session, settings, src, name or default, opts, owner_id=user.id), response)


@router.post("/from-path", response_model=DatasetOut, status_code=201,
             responses={202: {"description": "validating in the background"},
                        403: {"description": "outside VLSTUDIO_DATA_ROOTS"}, 422: {"description": "invalid"}})
def register_from_path(body: DatasetFromPath, session: SessionDep, settings: SettingsDep, user: CurrentUser,
                       response: Response) -> dict:
    """The JSON form of a server-side dataset (``root`` + ``annotation`` on shared storage)."""
    checks = checks_for(session, body.model_id, user, max_dynamic_patch=body.max_dynamic_patch,
                        max_seq_length=body.max_seq_length, truncation=body.truncation, preset=body.preset)
    src = svc.source_from_path(settings, body.root, body.annotation)
    opts = svc.Options(checks, drop_bad_lines=body.drop_bad_lines, val_fraction=body.val_fraction,
                       background=body.background)
    rows = svc.register(session, settings, src, body.name or Path(body.annotation).stem, opts, owner_id=user.id)
    return _out(rows, response)


@router.post("/demo", response_model=DatasetOut, status_code=201)
def register_demo(session: SessionDep, settings: SettingsDep, user: CurrentUser, deadline: Deadline,  # noqa: PLR0913
                  samples: int = Query(64, ge=1, le=10_000), val_fraction: float = Query(0.0, ge=0, lt=1)):  # noqa: ANN201
    """Generate the coloured-shapes demo dataset and register it (one click in the UI);
    ``val_fraction`` holds out that part of it as the validation split. The generation stops
    (503, nothing registered) at VLSTUDIO_REQUEST_DEADLINE_SECONDS or when the client goes away."""
    tmpdir = Path(tempfile.mkdtemp(dir=settings.data_path / "uploads"))
    try:
        with deadline.bound():
            zpath = demo_data.write_zip(tmpdir / "demo.zip", n=samples)
        return svc.register_dataset(session, settings, zpath, "shapes-demo", owner_id=user.id,
                                    val_fraction=val_fraction)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


@router.get("", response_model=list[DatasetOut])
def list_datasets(session: SessionDep, user: CurrentUser) -> list:
    return svc.list_datasets(session, user)


@router.get("/{dataset_id}", response_model=DatasetOut)
def get_dataset(dataset_id: DbId, session: SessionDep, user: CurrentUser):  # noqa: ANN201
    return svc.get_dataset(session, dataset_id, user)


@router.post("/{dataset_id}/cancel-validation", response_model=DatasetOut,
             responses={409: {"description": "not validating"}})
def cancel_validation(dataset_id: DbId, session: SessionDep, user: CurrentUser):  # noqa: ANN201
    """Stop a background validation; its staged files are removed, the row stays ``cancelled``."""
    return svc.cancel_validation(session, dataset_id, user)


@router.get("/{dataset_id}/report")
def get_report(dataset_id: DbId, session: SessionDep, user: CurrentUser, deadline: Deadline,
               per_sample_offset: Count = 0, per_sample_limit: Count = 0) -> dict:
    """The full validation report (counts by kind, first examples, statistics); with
    ``per_sample_limit`` also that many per-sample rows (tiles, token counts) from the offset."""
    with deadline.bound():
        return views.report(session, dataset_id, user, per_sample_offset, min(per_sample_limit, 10000))


@router.get("/{dataset_id}/samples/{line}")
def get_sample(dataset_id: DbId, line: DbId, session: SessionDep, user: CurrentUser,  # noqa: PLR0913
               deadline: Deadline, model_id: DbId | None = None,
               max_dynamic_patch: Tiles | None = None, max_seq_length: SeqLength | None = None,
               tiles: bool = False, preset: Name | None = None) -> dict:
    """Preview line ``line`` (1-based) of the dataset's annotation as the model sees it: images
    (``url``; ``tiles=true`` adds the tiles as base64 JPEGs), tile grid, the prompt rendered by
    the template with the trained spans, and token counts (``model_id``: default the built-in;
    ``preset``: its tiling over the model's). Stopped (503) at VLSTUDIO_REQUEST_DEADLINE_SECONDS or
    when the client goes away."""
    with deadline.bound():
        return views.sample(session, dataset_id, line, user, model_id, max_dynamic_patch, max_seq_length, tiles,
                            preset=preset)


@router.get("/{dataset_id}/files/{path:path}", response_class=FileResponse, openapi_extra=contract.answers("image/*"))
def get_file(dataset_id: DbId, path: PathText, session: SessionDep, user: CurrentUser) -> FileResponse:
    """An image of the dataset (only inside its root)."""
    return FileResponse(views.image_file(session, dataset_id, path, user))
