"""Dataset validation: one engine for the API, the UI and the CLI.

The annotation file is streamed in chunks of lines; each chunk is checked by
:func:`backend.core.checks.check_chunk` in a pool of worker processes (or in-process for
small files), results are merged in file order, so memory stays bounded whatever the line
count (the duplicate-id and duplicate-sample hashes go to a temporary file). Every
problem is reported with its file, line number, sample id and a one-line reason.

Typical use::

    report = validate_annotation(Path("train.jsonl"), Path("images_root"),
                                 settings=settings_for(read_card(model_dir), max_seq_length=4096),
                                 tokenizer=load_tokenizer(model_dir), progress=cb, cancel=event)
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

from backend.core import source_lines
from backend.core.checks import (
    CheckConfig,
    ChunkResult,
    WorkerState,
    check_chunk,
    init_worker,
    pool_check_chunk,
)
from backend.core.dedup import DuplicateFinder
from backend.core.images import DEFAULT_MAX_PIXELS, ImageProblem, resolve_image
from backend.core.model_card import DEFAULT_TILING, ModelCard, Tiling
from backend.core.report import BundleReport, Issue, Report, Severity, Stats
from backend.core.samples import SampleError
from backend.core.templates import Template, get_template

__all__ = ["BundleReport", "Issue", "Report", "Severity", "Stats", "ValidationCancelled", "ValidationFailed",
           "ValidationSettings", "Validator", "drop_bad_lines", "resolve_inside", "settings_for", "validate_annotation"]

ProgressFn = Callable[[int, int], None]
#: below this size a file is checked in-process: starting worker processes costs more
PARALLEL_MIN_BYTES = 1 << 20
CHUNK_LINES = 1000
CHUNK_BYTES = 1 << 20


class ValidationCancelled(Exception):
    """The caller's cancel event was set. ``report``: what the file being checked had shown so
    far (its lines up to the last chunk merged; duplicates not looked for), or None."""

    report: Report | None = None


class ValidationFailed(RuntimeError):
    """The engine itself failed (a worker process died); the data may be fine."""


@dataclass(frozen=True)
class ValidationSettings:
    """The model and training settings a dataset is checked against; built from the model's
    card by :func:`settings_for` (the defaults are :data:`DEFAULT_TILING`'s, for no model).

    ``template`` (a registered name, or the card's :class:`Template`, which may be the tokenizer's
    own chat template) None skips token counting (there is no tokenizer without a model);
    ``tiling_source`` says where ``max_dynamic_patch`` came from, in messages;
    ``max_seq_length`` None skips the length rule; ``truncation="truncate"`` turns an
    over-long sample into a warning when cutting it keeps every image span whole. Hashable:
    with the tokenizer, it is everything a line's result depends on.
    """

    template: Template | str | None = None
    max_dynamic_patch: int = DEFAULT_TILING.max_dynamic_patch
    min_dynamic_patch: int = DEFAULT_TILING.min_dynamic_patch
    use_thumbnail: bool = DEFAULT_TILING.use_thumbnail
    dynamic_image_size: bool = DEFAULT_TILING.dynamic_image_size
    image_size: int = 448
    tokens_per_tile: int = 256
    tiling_source: str = ""
    max_seq_length: int | None = None
    truncation: Literal["error", "truncate"] = "error"
    check_images: bool = True
    full_decode: bool = False
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    max_line_bytes: int = 4 << 20
    max_examples: int = 20

    def __post_init__(self) -> None:
        if isinstance(self.template, str):
            object.__setattr__(self, "template", get_template(self.template))  # TemplateError for an unknown name
        if self.truncation not in ("error", "truncate"):
            raise ValueError(f"truncation must be 'error' or 'truncate', not {self.truncation!r}")
        if self.max_dynamic_patch < 1 or self.min_dynamic_patch < 1:
            raise ValueError("max_dynamic_patch and min_dynamic_patch must be at least 1")


    @property
    def template_name(self) -> str | None:
        return self.template.name if isinstance(self.template, Template) else None

    @property
    def tiling(self) -> Tiling:
        return Tiling(self.max_dynamic_patch, self.min_dynamic_patch, self.use_thumbnail, self.dynamic_image_size)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (the template by name), for reports and the preview."""
        return {f.name: (self.template_name if f.name == "template" else getattr(self, f.name)) for f in fields(self)}


def settings_for(card: ModelCard | None, *, template: str | None = None, tiling: Tiling | None = None,
                 tiling_source: str | None = None, **more: Any) -> ValidationSettings:
    """The settings a dataset is checked against for the model of ``card`` (None: no model, no
    template): its template (or ``template`` by name), its tile geometry, and ``tiling`` (its own
    when not given; see :func:`backend.core.model_card.layered_tiling`); ``more``: the other fields."""
    if card is None:
        t = tiling or DEFAULT_TILING
        chosen = get_template(template) if template else None
        return ValidationSettings(template=chosen, **t.to_dict(), tiling_source=tiling_source or "", **more)
    t = tiling or card.tiling
    return ValidationSettings(template=card.conversation_template(template), **t.to_dict(),
                              image_size=card.image_size, tokens_per_tile=card.tokens_per_tile,
                              tiling_source=tiling_source or "", **more)


def resolve_inside(root: Path, rel: str) -> Path:
    """``root/rel``, refusing anything that escapes ``root`` (``..``, absolute, symlinks)."""
    try:
        return Path(resolve_image(os.path.realpath(root), rel))
    except ImageProblem as e:
        raise SampleError(e.message) from None


def _read_chunks(f: BinaryIO, max_line_bytes: int) -> Iterator[tuple[int, list, list[tuple[int, int]], int]]:
    """(first line number, lines, [(line, size) of lines over the limit], bytes read so far).

    Lines are read with a size limit, so a 50 MB line costs 1 MB of memory, not 50.
    """
    line_no, lines, oversize, size = 1, [], [], 0
    first = 1
    while True:
        raw = f.readline(max_line_bytes + 1)
        if not raw:
            break
        if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
            n = len(raw)
            while raw and not raw.endswith(b"\n"):
                raw = f.readline(1 << 20)
                n += len(raw)
            oversize.append((line_no, n))
            lines.append(None)
        else:
            lines.append(raw)
            size += len(raw)
        line_no += 1
        if len(lines) >= CHUNK_LINES or size >= CHUNK_BYTES:
            yield first, lines, oversize, f.tell()
            first, lines, oversize, size = line_no, [], [], 0
    if lines:
        yield first, lines, oversize, f.tell()


def _read_lines(path: Path, wanted: set[int], max_line_bytes: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    with open(path, "rb") as f:
        for first, lines, _, _ in _read_chunks(f, max_line_bytes):
            for k, raw in enumerate(lines):
                if first + k in wanted and raw is not None:
                    out[first + k] = raw
            if len(out) == len(wanted):
                break
    return out


class Validator:
    """Validates one or more annotation files with one worker pool.

    ``progress(done, total)`` is called after each chunk with bytes of annotation read so far
    and in all (``expect_bytes`` raises the total when several files are checked);
    ``cancel`` is polled between chunks and raises :class:`ValidationCancelled`.
    """

    def __init__(self, settings: ValidationSettings | None = None, *, tokenizer: Any = None,
                 workers: int | None = None, progress: ProgressFn | None = None,
                 cancel: threading.Event | None = None) -> None:
        self.settings = settings or ValidationSettings()
        self.tokenizer = tokenizer if self.settings.template else None
        self.workers = workers
        self.progress = progress
        self.cancel = cancel
        self.total_bytes = 0
        self.done_bytes = 0
        self._state = WorkerState(self.tokenizer)
        self._pool: ProcessPoolExecutor | None = None
        self._pool_size = 1

    def __enter__(self) -> Validator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            if self.cancel is not None and self.cancel.is_set():
                # Cancelled: the chunks in flight are discarded, so their workers are stopped now
                # rather than waited for (seconds each with a tokenizer).
                for proc in list(getattr(self._pool, "_processes", {}).values()):
                    proc.terminate()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _result(self, fut) -> ChunkResult:
        """A chunk's result, polling ``cancel`` while it is computed."""
        while True:
            try:
                return fut.result(timeout=0.1)
            except FuturesTimeout:
                self._check_cancel()

    def expect_bytes(self, n: int) -> None:
        self.total_bytes += n

    def _pool_for(self, size: int) -> ProcessPoolExecutor | None:
        if self._pool is not None:
            return self._pool
        n = self.workers
        if n is None:
            # Celery's prefork children are daemons, which may not have children of their own.
            if size < PARALLEL_MIN_BYTES or multiprocessing.current_process().daemon:
                return None
            n = os.cpu_count() or 1
        # spawn re-runs the parent's main script in each worker: impossible for `python -`.
        main_file = getattr(sys.modules.get("__main__"), "__file__", None)
        if n <= 1 or (main_file is not None and not os.path.exists(main_file)):
            return None
        # spawn, not fork: the API server has threads, and forking a threaded process can deadlock.
        self._pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=init_worker, initargs=(self.tokenizer,))
        self._pool_size = n
        return self._pool

    def _check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise ValidationCancelled("validation cancelled")

    def _results(self, f: BinaryIO, cfg: CheckConfig, size: int) -> Iterator[tuple[list, int, ChunkResult]]:
        pool = self._pool_for(size)
        chunks = _read_chunks(f, self.settings.max_line_bytes)
        if pool is None:
            for first, lines, oversize, pos in chunks:
                self._check_cancel()
                yield oversize, pos, check_chunk(lines, first, cfg, self._state)
            return
        pending: deque = deque()
        try:
            for first, lines, oversize, pos in chunks:
                self._check_cancel()
                pending.append((oversize, pos, pool.submit(pool_check_chunk, lines, first, cfg)))
                while len(pending) > 2 * self._pool_size + 1:
                    oversize0, pos0, fut = pending.popleft()
                    yield oversize0, pos0, self._result(fut)
            while pending:
                self._check_cancel()
                oversize0, pos0, fut = pending.popleft()
                yield oversize0, pos0, self._result(fut)
        except BrokenProcessPool as e:
            self._pool = None
            raise ValidationFailed(f"a validation worker process died ({e})") from None
        finally:
            for _, _, fut in pending:
                fut.cancel()

    def validate(self, annotation: Path, root: Path | None = None, *, name: str | None = None,
                 max_dynamic_patch: int | None = None, per_sample_out: Path | None = None) -> Report:
        """Check one annotation file; images are relative to ``root`` (default: its folder)."""
        annotation = Path(annotation)
        root = Path(root) if root is not None else annotation.parent
        s = self.settings
        if max_dynamic_patch is not None:  # the dataset's own, as training takes it (over the job's)
            s = replace(s, max_dynamic_patch=max_dynamic_patch, tiling_source="the dataset's own, in the meta file")
        fname = name or annotation.name
        report = Report(annotation=fname, root=str(root), max_examples=s.max_examples,
                        settings={**s.to_dict(), "tokenizer": self.tokenizer is not None})
        if not annotation.is_file():
            why = "is a directory" if annotation.is_dir() else "not found"
            report.add(Issue("error", "file", fname, 0, None, f"annotation file {why}"))
            return report
        if s.check_images and not root.is_dir():
            report.add(Issue("error", "root", fname, 0, None, f"dataset root {root} is not a folder"))
        cfg = CheckConfig(
            file=fname, root=os.path.realpath(root), template=s.template if self.tokenizer is not None else None,
            check_images=s.check_images, full_decode=s.full_decode, max_pixels=s.max_image_pixels,
            max_dynamic_patch=s.max_dynamic_patch, min_dynamic_patch=s.min_dynamic_patch,
            use_thumbnail=s.use_thumbnail, dynamic=s.dynamic_image_size, image_size=s.image_size,
            tokens_per_tile=s.tokens_per_tile, max_seq_length=s.max_seq_length, truncation=s.truncation,
            max_examples=s.max_examples, per_sample=per_sample_out is not None, tiling_source=s.tiling_source)
        if s.template and self.tokenizer is None:
            report.add(Issue("info", "no_tokenizer", fname, 0, None,
                             "no tokenizer given: text token counts and max_seq_length are not checked"))
        size = annotation.stat().st_size
        if self.total_bytes < self.done_bytes + size:
            self.total_bytes = self.done_bytes + size
        try:
            self._run(annotation, cfg, report, size, per_sample_out)
        except ValidationCancelled as e:
            report.sort_issues()
            e.report = report
            raise
        except OSError as e:
            report.add(Issue("error", "file", fname, 0, None, f"cannot read the annotation file ({e.strerror})"))
        report.sort_issues()
        return report

    def _run(self, annotation: Path, cfg: CheckConfig, report: Report, size: int, rows_out: Path | None) -> None:
        kept: Counter = Counter()
        ids, same = DuplicateFinder(), DuplicateFinder()
        crlf = 0
        start = self.done_bytes
        out = open(rows_out, "wb") if rows_out is not None else None  # noqa: SIM115 (closed below)
        try:
            with open(annotation, "rb") as f:
                if f.read(3) == b"\xef\xbb\xbf":
                    report.add(Issue("warning", "bom", cfg.file, 1, None, "the file starts with a UTF-8 byte-order "
                                     "mark: vlstudio ignores it, the reference scripts fail on it"))
                else:
                    f.seek(0)
                for oversize, pos, res in self._results(f, cfg, size):
                    for line, n in oversize:
                        report.add(Issue("error", "line_too_long", cfg.file, line, None, f"the line is {n:,} "
                                         f"bytes, over the {self.settings.max_line_bytes:,}-byte limit"))
                        report.error_lines.append(line)
                        report.lines += 1
                    self._merge(report, res, kept)
                    ids.add(res.id_hash, res.id_line)
                    same.add(res.dup_hash, res.dup_line)
                    crlf += res.crlf
                    if out is not None:
                        out.write(res.rows)
                    self.done_bytes = start + pos
                    if self.progress is not None:
                        self.progress(self.done_bytes, self.total_bytes)
            self._dedup(annotation, cfg, report, ids, same)
        finally:
            ids.close()
            same.close()
            if out is not None:
                out.close()
        self.done_bytes = start + size
        if crlf:
            report.add(Issue("info", "crlf", cfg.file, 0, None, f"{crlf:,} line(s) end with CRLF; accepted"))
        if report.samples == 0 and report.ok:
            report.add(Issue("error", "empty", cfg.file, 0, None,
                             "empty file" if size == 0 else "no samples in the annotation file"))

    def _merge(self, report: Report, res: ChunkResult, kept: Counter) -> None:
        report.lines += res.lines
        report.counts.update(res.counts)
        for sev, code, line, sid, msg in res.examples:
            if kept[(sev, code)] < report.max_examples:
                kept[(sev, code)] += 1
                report.issues.append(Issue(sev, code, report.annotation, line, sid, msg))
        report.error_lines.extend(res.error_lines)
        report.stats.merge(res.stats)
        report.samples = report.stats.samples
        report.images = report.stats.images

    def _dedup(self, annotation: Path, cfg: CheckConfig, report: Report, id_finder: DuplicateFinder,
               same_finder: DuplicateFinder) -> None:
        ids, id_first = id_finder.duplicates()
        same, same_first = same_finder.duplicates()
        if not len(ids) and not len(same):
            return
        n = report.max_examples
        wanted = {int(x) for x in np.concatenate((ids[:n], id_first[:n], same[:n], same_first[:n]))}
        text = _read_lines(annotation, wanted, self.settings.max_line_bytes)

        def rec(line: int) -> dict:
            try:
                return json.loads(text[line].decode("utf-8"))
            except (KeyError, ValueError):
                return {}

        errors = np.sort(np.frombuffer(report.error_lines, dtype=np.uint32))
        newly_bad = ids[~np.isin(ids, errors)]
        report.samples -= len(newly_bad)
        report.error_lines.extend(int(x) for x in newly_bad)
        if len(ids):
            report.counts[("error", "duplicate_id")] += len(ids)
        for line, first in zip(ids[:n].tolist(), id_first[:n].tolist(), strict=True):
            sid = str(rec(line).get("id"))
            report.issues.append(Issue("error", "duplicate_id", cfg.file, line, sid,
                                       f"duplicate id {sid!r} (first used on line {first})"))
        if len(same):
            report.counts[("warning", "duplicate_sample")] += len(same)
        for line, first in zip(same[:n].tolist(), same_first[:n].tolist(), strict=True):
            sid = rec(line).get("id")
            report.issues.append(Issue("warning", "duplicate_sample", cfg.file, line, None if sid is None else str(sid),
                                       f"exact duplicate of the sample on line {first} (same images and turns)"))


def validate_annotation(annotation: Path, root: Path | None = None, *, settings: ValidationSettings | None = None,
                        tokenizer: Any = None, workers: int | None = None, progress: ProgressFn | None = None,
                        cancel: threading.Event | None = None, per_sample_out: Path | None = None,
                        max_dynamic_patch: int | None = None) -> Report:
    """Check one JSONL annotation file; images resolve inside ``root`` (default: its folder)."""
    with Validator(settings, tokenizer=tokenizer, workers=workers, progress=progress, cancel=cancel) as v:
        return v.validate(annotation, root, max_dynamic_patch=max_dynamic_patch, per_sample_out=per_sample_out)


def drop_bad_lines(annotation: Path, report: Report, dest: Path) -> int:
    """Write the lines of ``annotation`` without errors (and without blank lines, BOM and CR)
    to the new file ``dest``; the original is never touched. Returns the lines written."""
    annotation, dest = Path(annotation), Path(dest)
    if dest.exists() or dest.resolve() == annotation.resolve():
        raise FileExistsError(f"{dest} exists; the cleaned copy must be a new file")
    bad = set(report.error_lines)
    limit = int(report.settings.get("max_line_bytes", 4 << 20))
    tmp = dest.with_name(dest.name + ".partial")
    kept: list[int] = []
    upload_line = source_lines.to_upload(annotation)
    try:
        with open(annotation, "rb") as f, open(tmp, "wb") as out:
            if f.read(3) != b"\xef\xbb\xbf":
                f.seek(0)
            for first, lines, _, _ in _read_chunks(f, limit):
                for k, raw in enumerate(lines):
                    if first + k in bad or not raw.strip():
                        continue
                    out.write(raw.rstrip(b"\r\n") + b"\n")
                    kept.append(upload_line(first + k))
        # each kept line's number in the uploaded file, for the preview (backend/core/source_lines.py)
        source_lines.write(dest, kept)
        tmp.rename(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return len(kept)
