"""Datasets: register an upload or a server-side path (stage, validate, and only then record it).

Every input becomes a *staging* folder under ``DATA/datasets`` plus a list of (annotation,
images root) pairs: a zip is extracted into it, uploaded files are written into it, a
server-side path is left where it is (the staging folder then only receives a cleaned
annotation or a split). One dataset row per annotation. Small inputs are validated in the
request; big ones (or ``background=True``) get rows with ``status="validating"`` at once and
are validated on a thread (see ``dataset_checks``). A failed or cancelled validation removes
every file it staged; a synchronous one also leaves no row.
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from backend.core.archive import ArchiveError, extract_zip, find_annotations
from backend.core.meta import MetaError, check_allowed, meta_hint, meta_names
from backend.core.report import Report
from backend.core.splits import VAL_NAME, SplitError, write_fraction_split
from backend.core.validation import ValidationCancelled, ValidationFailed, drop_bad_lines, validate_annotation
from backend.db.models import Dataset, User
from backend.db.session import get_sessionmaker
from backend.services import dataset_checks
from backend.services.dataset_checks import Checks
from backend.services.errors import Conflict, InvalidInput, NotFound
from backend.services.users import Forbidden, visible_to
from backend.settings import Settings

SYNC_MAX_BYTES = 2 << 20  # annotations larger than this (in all) are validated in the background
MAX_DETAILS = 1000
STATS_DIR = ".vlstudio"  # per-sample rows of the report; hidden, so never taken for an annotation


@dataclass
class Source:
    staging: Path
    pairs: list[tuple[Path, Path]]  # (annotation, images root)
    server_side: bool = False


@dataclass
class Options:
    checks: Checks
    drop_bad_lines: bool = False
    val_fraction: float = 0.0
    val_upload: Path | None = None
    background: bool | None = None  # None: by size


def new_staging(settings: Settings, create: bool = True) -> Path:
    d = settings.data_path / "datasets" / f".staging-{uuid.uuid4().hex}"
    if create:
        d.mkdir(parents=True)
    return d


def source_from_zip(settings: Settings, upload: Path, display_name: str | None = None) -> Source:
    staging = new_staging(settings, create=False)  # extract_zip creates it
    try:
        try:
            extract_zip(upload, staging, max_total_bytes=settings.unpacked_limit, max_files=settings.max_zip_entries,
                        display_name=display_name)
        except ArchiveError as e:
            if (names := meta_names(upload)) is not None:
                raise InvalidInput(meta_hint("the upload", names)) from None
            raise InvalidInput(str(e)) from None
        anns = find_annotations(staging)
        if not anns:
            raise InvalidInput("the archive holds no .jsonl annotation file")
        return Source(staging, [(a, a.parent) for a in anns])
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def source_from_folder(staging: Path) -> Source:
    """Uploaded files already written into ``staging``: exactly one ``.jsonl``."""
    anns = find_annotations(staging)
    metas = [(p, n) for p in staging.rglob("*.json") if (n := meta_names(p)) is not None]
    if metas and not anns:
        shutil.rmtree(staging, ignore_errors=True)
        raise InvalidInput(meta_hint(metas[0][0].name, metas[0][1]))
    if len(anns) != 1:
        shutil.rmtree(staging, ignore_errors=True)
        raise InvalidInput(f"upload images with exactly one .jsonl annotation ({len(anns)} given)",
                           [str(a.relative_to(staging)) for a in anns])
    return Source(staging, [(anns[0], anns[0].parent)])


def source_from_path(settings: Settings, root: str, annotation: str) -> Source:
    """A dataset on shared storage, allowed only under ``VLSTUDIO_DATA_ROOTS``."""
    try:
        root_p = check_allowed(Path(root), settings.data_roots)
        ann_p = check_allowed(Path(annotation) if Path(annotation).is_absolute() else root_p / annotation,
                              settings.data_roots)
    except MetaError as e:
        raise Forbidden(str(e)) from None
    if not root_p.is_dir():
        raise InvalidInput(f"root {root}: not a folder")
    if not ann_p.is_file():
        raise InvalidInput(f"annotation {annotation}: no such file")
    return Source(new_staging(settings), [(ann_p, root_p)], server_side=True)


def _errors(reports: list[Report], staging: Path) -> list[dict]:
    out = []
    for r in reports:
        for i in r.to_dict()["issues"]:
            if i["severity"] == "error":
                f = Path(i["file"]) if i.get("file") else None
                if f is not None and staging in f.parents:
                    i = {**i, "file": str(f.relative_to(staging))}
                out.append(i)
    return out[:MAX_DETAILS]


def _validate(src: Source, opts: Options, progress=None, cancel=None) -> list[Report]:  # noqa: ANN001
    reports = []
    stats = src.staging / STATS_DIR
    stats.mkdir(exist_ok=True)
    for k, (ann, root) in enumerate(src.pairs):
        try:
            reports.append(validate_annotation(ann, root, settings=opts.checks.settings, tokenizer=opts.checks.tokenizer,
                                               progress=progress, cancel=cancel,
                                               per_sample_out=stats / f"per_sample-{k}.jsonl"))
        except ValidationFailed as e:
            raise InvalidInput(f"{ann.name}: validation failed: {e}") from None
    return reports


def _accept(src: Source, reports: list[Report], opts: Options) -> list[tuple[Path, Path, int, Report]]:
    """(annotation to register, root, samples, report) per pair, after dropping bad lines when
    asked; raises ``InvalidInput`` with every error otherwise."""
    if not all(r.ok for r in reports) and not opts.drop_bad_lines:
        errs = _errors(reports, src.staging)
        total = sum(r.total("error") for r in reports)
        raise InvalidInput(f"{total} error(s) in {', '.join(a.name for a, _ in src.pairs)}; fix them, or register "
                           "the lines without errors (drop_bad_lines; in the studio: “Drop the lines with errors”)", errs)
    out = []
    for k, ((ann, root), r) in enumerate(zip(src.pairs, reports, strict=True)):
        if r.ok:
            out.append((ann, root, r.samples, r))
            continue
        dest = (src.staging if src.server_side else ann.parent) / f"{ann.stem}.clean-{k}.jsonl"
        n = drop_bad_lines(ann, r, dest)
        if n == 0:
            raise InvalidInput(f"{ann.name}: no line without errors is left", _errors([r], src.staging))
        out.append((dest, root, n, r))
    return out


def _hold_out(src: Source, annotation: Path, opts: Options) -> tuple[Path, Path, int, int] | None:
    """Issue 8: a held-out validation split, by ``fraction`` of the annotation (seeded) or from
    a second JSONL whose image paths are relative to the same root. ``None``: no split."""
    fraction, val_upload = opts.val_fraction, opts.val_upload
    if fraction and val_upload is not None:
        raise InvalidInput("give either a validation fraction or a validation JSONL, not both")
    if not fraction and val_upload is None:
        return None
    if len(src.pairs) > 1:
        raise InvalidInput("a validation split needs an upload with a single .jsonl annotation")
    if src.server_side and src.staging not in annotation.parents:  # never write beside shared data
        copy = src.staging / annotation.name
        shutil.copyfile(annotation, copy)
        annotation = copy
    if val_upload is not None:
        val_path = annotation.parent / VAL_NAME
        shutil.copyfile(val_upload, val_path)
        report = validate_annotation(val_path, src.pairs[0][1])
        if not report.ok:
            raise InvalidInput(f"{report.total('error')} error(s) in the validation JSONL", _errors([report], src.staging))
        if report.samples == 0:
            raise InvalidInput("the validation JSONL holds no samples")
        with open(annotation, encoding="utf-8-sig") as f:
            n_train = sum(1 for line in f if line.strip())
        return annotation, val_path, n_train, report.samples
    try:
        return write_fraction_split(annotation, fraction)
    except SplitError as e:
        raise InvalidInput(str(e)) from None


def _moved(path: Path, staging: Path, final: Path) -> Path:
    return final / path.relative_to(staging) if path == staging or staging in path.parents else path


def _relocate(rows: list[Dataset], staging: Path, final: Path) -> None:
    for ds in rows:
        ds.root = str(_moved(Path(ds.root), staging, final))
        ds.annotation = str(_moved(Path(ds.annotation), staging, final))
        if ds.val_annotation:
            ds.val_annotation = str(_moved(Path(ds.val_annotation), staging, final))


def _fill(rows: list[Dataset], src: Source, accepted: list, opts: Options) -> None:
    """Write the validated outcome into the rows."""
    for ds, (ann, root, n, r) in zip(rows, accepted, strict=True):
        report = r.to_dict()
        if not r.ok:
            report["dropped_lines"] = r.lines - n
            report["clean_annotation"] = ann.name
        report["notes"] = opts.checks.notes or []
        val = _hold_out(src, ann, opts)
        ds.root, ds.annotation = str(root), str(ann)
        ds.num_samples, ds.num_images, ds.report = n, r.images, report
        if val is not None:
            ds.annotation, ds.val_annotation = str(val[0]), str(val[1])
            ds.num_samples, ds.num_val_samples = val[2], val[3]
        ds.status, ds.progress = "ready", 1.0


def _new_rows(session: Session, src: Source, name: str, owner_id: int | None, status: str) -> list[Dataset]:
    rows = []
    for ann, root in src.pairs:
        label = name if len(src.pairs) == 1 else f"{name}/{ann.relative_to(src.staging).with_suffix('')}"
        ds = Dataset(name=label[:200], owner_id=owner_id, root=str(root), annotation=str(ann), status=status,
                     progress=0.0 if status == "validating" else 1.0, report={})
        session.add(ds)
        rows.append(ds)
    session.flush()
    return rows


def _place(settings: Settings, src: Source, first_id: int) -> Path:
    target = settings.data_path / "datasets" / str(first_id)
    if target.exists():  # left over from a database that was reset
        shutil.rmtree(target)
    src.staging.rename(target)
    return target


def register(session: Session, settings: Settings, src: Source, name: str, opts: Options,
             owner_id: int | None = None) -> list[Dataset]:
    """Validate ``src`` and record one dataset per annotation; see the module docstring."""
    final: Path | None = None
    try:
        for ann, _ in src.pairs:  # a meta file given as an annotation would fail on every line as bad JSON
            if (names := meta_names(ann)) is not None:
                raise InvalidInput(meta_hint(ann.name, names))
        size = sum(a.stat().st_size for a, _ in src.pairs)
        background = opts.background if opts.background is not None else size > SYNC_MAX_BYTES
        if not background:  # small: list every error, not just the first 20 of each kind
            opts.checks.settings = dataclasses.replace(opts.checks.settings, max_examples=MAX_DETAILS)
        rows = _new_rows(session, src, name, owner_id, "validating" if background else "ready")
        if background:
            final = _place(settings, src, rows[0].id)
            _relocate(rows, src.staging, final)
            session.commit()
            moved = Source(final, [(_moved(a, src.staging, final), _moved(r, src.staging, final))
                                   for a, r in src.pairs], src.server_side)
            if opts.val_upload is not None:
                opts.val_upload = _moved(opts.val_upload, src.staging, final)
            ids = [ds.id for ds in rows]
            dataset_checks.start(ids, lambda cancel: _background(ids, moved, opts, cancel))
            return rows
        _fill(rows, src, _accept(src, _validate(src, opts), opts), opts)
        final = _place(settings, src, rows[0].id)
        _relocate(rows, src.staging, final)
        session.commit()
        return rows
    except BaseException:
        session.rollback()
        shutil.rmtree(src.staging, ignore_errors=True)
        if final is not None:
            shutil.rmtree(final, ignore_errors=True)
        raise


def _background(ids: list[int], src: Source, opts: Options, cancel: threading.Event) -> None:
    """The thread's work: validate, then mark the rows ready, failed or cancelled. A failed or
    cancelled validation removes the staged files; the rows stay with the report."""
    make = get_sessionmaker()
    status, report = "ready", {}
    try:
        reports = _validate(src, opts, dataset_checks.Progress(make, ids, cancel), cancel)
        accepted = _accept(src, reports, opts)
    except ValidationCancelled:
        status, report = "cancelled", {"ok": False, "message": "validation cancelled"}
    except InvalidInput as e:
        status, report = "failed", {"ok": False, "message": e.message, "errors": e.details}
    except Exception as e:  # noqa: BLE001 - recorded on the rows: a thread has nobody else to tell
        status, report = "failed", {"ok": False, "message": f"validation crashed: {type(e).__name__}: {e}"}
    with make() as s:
        # Claim the rows (progress 1.0 while still validating): a cancel from now on gets 409;
        # one that landed before left them 'cancelled', which the claim then skips.
        claimed = s.execute(update(Dataset).where(Dataset.id.in_(ids), Dataset.status == "validating",
                                                  Dataset.progress < 1.0).values(progress=1.0)).rowcount
        s.commit()
        if claimed != len(ids):
            status, report = "cancelled", {"ok": False, "message": "validation cancelled"}
        live = [r for r in (s.get(Dataset, i) for i in ids) if r is not None]
        if status == "ready":
            try:
                _fill(live, src, accepted, opts)
            except InvalidInput as e:
                status, report = "failed", {"ok": False, "message": e.message, "errors": e.details}
            except Exception as e:  # noqa: BLE001 - as above
                status, report = "failed", {"ok": False, "message": f"registration crashed: {type(e).__name__}: {e}"}
        if status != "ready":
            for r in live:
                r.status, r.report, r.num_samples, r.num_images = status, report, 0, 0
            shutil.rmtree(src.staging, ignore_errors=True)
        s.commit()


def cancel_validation(session: Session, dataset_id: int, user: User | None) -> Dataset:
    ds = get_dataset(session, dataset_id, user)
    done = session.execute(update(Dataset).where(Dataset.id == dataset_id, Dataset.status == "validating",
                                                 Dataset.progress < 1.0).values(status="cancelled")).rowcount
    session.commit()
    session.refresh(ds)
    if not done:
        state = "finishing its validation" if ds.status == "validating" else ds.status
        raise Conflict(f"dataset {dataset_id} is {state}, not cancellable")
    dataset_checks.signal_cancel(dataset_id)
    return ds


def register_dataset(session: Session, settings: Settings, upload: Path, name: str,
                     owner_id: int | None = None, val_fraction: float = 0.0,
                     val_upload: Path | None = None) -> Dataset:
    """A zip with one annotation, validated in the request (the demo dataset, older callers)."""
    src = source_from_zip(settings, upload)
    opts = Options(Checks(dataset_checks.ValidationSettings()), val_fraction=val_fraction, val_upload=val_upload,
                   background=False)
    return register(session, settings, src, name, opts, owner_id)[0]


def get_dataset(session: Session, dataset_id: int, user: User | None = None, *, ready: bool = False) -> Dataset:
    """``user``: only if visible to them (404 otherwise, so ids of others' data do not leak).
    ``ready``: refuse (409) a dataset still validating, failed or cancelled - what training,
    evaluation and the meta file need."""
    ds = session.get(Dataset, dataset_id)
    if ds is None or not visible_to(user, ds.owner_id):
        raise NotFound(f"dataset {dataset_id} not found")
    if ready and ds.status != "ready":
        raise Conflict(f"dataset {dataset_id} is {ds.status}, not ready")
    return ds


def list_datasets(session: Session, user: User | None = None) -> list[Dataset]:
    q = select(Dataset).order_by(Dataset.id.desc())
    if user is not None and not user.is_admin:
        q = q.where((Dataset.owner_id == user.id) | Dataset.owner_id.is_(None))
    return list(session.scalars(q))
