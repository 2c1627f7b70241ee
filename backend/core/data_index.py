"""The training-data index of one annotation file: compact, cached on disk, shared.

Before training, every sample's tile counts (from the image headers, no decoding) and exact
token length are needed: they let a sample that cannot be trained be dropped *and counted*, and
give ``group_by_length`` and packing exact lengths. For the seed's 1.27M-line mixture that is an
hour of CPU, so it is computed once per (file content, tokenizer, template, tiling, length) and
kept as flat numpy arrays in a cache folder, memory-mapped by every rank, dataloader worker,
restart and later job on the same data:

- ``offsets.npy`` (int64): byte offset of each sample line (the non-blank lines, in order);
  the record itself is parsed only when the sample is read;
- ``length.npy`` (int32): token length after truncation to ``max_seq_length`` (0 if dropped);
- ``reason.npy`` (uint8): 0 kept, else 1 + the index of the drop reason in :data:`DROP_REASONS`;
- ``img_ptr.npy`` (int64) and ``img_tiles.npy`` (int16): the tile count of each image of row
  ``r`` is ``img_tiles[img_ptr[r]:img_ptr[r + 1]]``;
- ``index.json``: the key and its parts, counts, the first drops with their reasons.

About 23 bytes a line (29 MB for the seed's mixture), shared through the page cache. The entry
is written to a temporary folder and renamed into place; one process builds it under a file
lock while any other that needs it waits (several ranks, several jobs on the same data).

The file's content hash is part of the key; it is computed once per file version and remembered
by (path, size, mtime, ctime, inode) under ``files/``, with the offsets of every line (for the
dataset preview: one seek per line) under ``lines/``.

Pure Python + numpy + PIL; the tokenizer is duck-typed as in :mod:`backend.core.samples`.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from backend.core.samples import count_samples, image_paths
from backend.core.templates import Template
from backend.core.tiling import max_patches_per_image, plan_tiles

#: bump when the arrays' meaning changes: older entries are then rebuilt
INDEX_VERSION = 1
#: why a sample is left out, as written to the log and metrics.jsonl
DROP_REASONS = ("truncated_image", "empty_labels", "invalid", "unreadable_image")
#: where the index cache lives (the worker sets it to DATA/index-cache for its jobs)
CACHE_ENV = "VLSTUDIO_INDEX_CACHE"
#: records tokenized per batched tokenizer call (a cancel is seen between two batches)
BATCH = 256
#: rows a build worker process indexes at a time (a file of fewer than two is built in-process)
PIECE = 1024
#: processes that build an index (default: the CPUs this process may use)
WORKERS_ENV = "VLSTUDIO_INDEX_WORKERS"
#: drops whose reason is kept in index.json (the job log shows the first ten)
EXAMPLES = 10
#: seconds between two progress lines
PROGRESS_EVERY = 5.0
#: blank-line bytes (ASCII whitespace, as ``str.strip`` sees it)
_BLANK = np.zeros(256, dtype=bool)
_BLANK[[9, 10, 11, 12, 13, 28, 29, 30, 31, 32]] = True

Progress = Callable[[str], None]


class IndexCancelled(Exception):
    """The caller asked to stop while the index was being built or waited for."""


@dataclass(frozen=True)
class IndexSettings:
    """What a sample's tiles and length depend on, besides the file, tokenizer and template."""

    max_seq_length: int
    max_dynamic_patch: int
    min_dynamic_patch: int = 1
    use_thumbnail: bool = True
    dynamic_image_size: bool = True
    image_size: int = 448
    tokens_per_tile: int = 256


def default_cache_dir() -> Path:
    """``$VLSTUDIO_INDEX_CACHE``, else ``$XDG_CACHE_HOME/vlstudio/index`` (``~/.cache/...``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vlstudio" / "index"


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A digest of everything a tokenizer encodes with: the fast tokenizer's whole definition
    (vocabulary, merges, normalizer, pre-tokenizer, post-processor, added tokens), its class and
    its BOS behaviour; for another tokenizer, its vocabulary."""
    cached = getattr(tokenizer, "_vlstudio_fingerprint", None)
    if cached:
        return cached
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        vocab = tokenizer.get_vocab()
        h.update(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode())
    for attr in ("bos_token_id", "eos_token_id", "add_bos_token", "add_eos_token"):
        h.update(f"{attr}={getattr(tokenizer, attr, None)!r};".encode())
    fp = h.hexdigest()[:16]
    with contextlib.suppress(AttributeError):
        tokenizer._vlstudio_fingerprint = fp
    return fp


# ----------------------------------------------------------------------------- lines of a file
def scan_lines(path: Path) -> tuple[str, np.ndarray, np.ndarray]:
    """One pass over a file: its sha256, the byte offset of every line start and whether each
    line holds anything but whitespace. A UTF-8 byte-order mark is skipped (line 1 starts after it)."""
    h = hashlib.sha256()
    starts: list[np.ndarray] = []
    nonblank: list[np.ndarray] = []
    pos = 0
    carry_start, carry_nonblank = 0, False  # the line running over the block boundary
    with open(path, "rb") as f:
        first = True
        while block := f.read(1 << 22):
            h.update(block)
            b = np.frombuffer(block, dtype=np.uint8)
            skip = 3 if first and block.startswith(b"\xef\xbb\xbf") else 0
            if first:
                carry_start = skip
            first = False
            nl = np.flatnonzero(b == 10)
            content = ~_BLANK[b]
            if skip:
                content[:skip] = False
            cs = np.concatenate(([0], np.cumsum(content, dtype=np.int64)))
            ends = nl + 1  # exclusive, block-relative
            begins = np.concatenate(([0], ends[:-1]))
            counts = cs[ends] - cs[begins]
            if len(nl):
                counts[0] += carry_nonblank
                starts.append(np.concatenate(([carry_start], ends[:-1] + pos)))
                nonblank.append(counts > 0)
                carry_start = int(ends[-1]) + pos
                carry_nonblank = bool(cs[-1] - cs[ends[-1]] > 0)
            else:
                carry_nonblank = carry_nonblank or bool(cs[-1] > 0)
            pos += len(block)
    if pos > carry_start:  # a last line without a newline
        starts.append(np.array([carry_start], dtype=np.int64))
        nonblank.append(np.array([carry_nonblank]))
    if not starts:
        return h.hexdigest(), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    return h.hexdigest(), np.concatenate(starts).astype(np.int64), np.concatenate(nonblank)


@dataclass
class FileLines:
    """A file version's content hash and line offsets (every line, blank ones included)."""

    sha256: str
    starts: np.ndarray  # int64, one per line
    nonblank: np.ndarray  # bool, one per line
    size: int

    @property
    def rows(self) -> np.ndarray:
        """Offsets of the sample lines (the non-blank ones), as the trainer numbers them."""
        return self.starts[self.nonblank]

    def line_bytes(self, f, line: int) -> bytes:
        """The raw 1-based ``line`` of the open file ``f``: one seek, one read of that line only."""
        start = int(self.starts[line - 1])
        end = int(self.starts[line]) if line < len(self.starts) else self.size
        f.seek(start)
        return f.read(end - start)


def _stat_key(path: Path) -> dict:
    st = os.stat(path)
    return {"path": os.path.realpath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns, "ino": st.st_ino, "dev": st.st_dev}


def file_lines(path: Path, cache_dir: Path | None = None) -> FileLines:
    """The file's :class:`FileLines`, from the cache when this version of the file (same path,
    size, mtime, ctime and inode) was scanned before, else scanned (and remembered)."""
    path = Path(path)
    stat = _stat_key(path)
    if cache_dir is not None:
        memo = cache_dir / "files" / (hashlib.sha1(stat["path"].encode()).hexdigest() + ".json")
        try:
            known = json.loads(memo.read_text())
            if {k: known.get(k) for k in stat} == stat:
                base = cache_dir / "lines" / known["sha256"]
                return FileLines(known["sha256"], np.load(base / "starts.npy", mmap_mode="r"),
                                 np.load(base / "nonblank.npy", mmap_mode="r"), stat["size"])
        except (OSError, ValueError, KeyError):
            pass
    sha, starts, nonblank = scan_lines(path)
    if _stat_key(path) != stat:
        raise RuntimeError(f"{path} changed while it was read; try again when it is complete")
    lines = FileLines(sha, starts, nonblank, stat["size"])
    if cache_dir is not None:
        try:
            base = cache_dir / "lines" / sha
            if not (base / "nonblank.npy").exists():
                _write_dir(base, {"starts.npy": starts, "nonblank.npy": nonblank})
            memo.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(memo, json.dumps({**stat, "sha256": sha}))
        except OSError:  # a read-only or full cache: the offsets are still right, only not kept
            pass
    return lines


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_dir(final: Path, arrays: dict[str, np.ndarray], meta: dict | None = None) -> None:
    """Write the arrays (and index.json) to a fresh folder and rename it to ``final`` (another
    process that got there first wins; its content is the same)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for name, arr in arrays.items():
            np.save(tmp / name, arr)
        if meta is not None:
            (tmp / "index.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False))
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -------------------------------------------------------------------------- the sample index
@dataclass
class AnnotationIndex:
    """The index of one annotation file for one setting (arrays: see the module docstring)."""

    annotation: Path
    root: Path
    offsets: np.ndarray
    length: np.ndarray
    reason: np.ndarray
    img_ptr: np.ndarray
    img_tiles: np.ndarray
    meta: dict

    @property
    def rows(self) -> int:
        return len(self.offsets)

    @property
    def key(self) -> str:
        return self.meta["key"]

    def tiles(self, row: int) -> list[int]:
        return self.img_tiles[self.img_ptr[row]:self.img_ptr[row + 1]].tolist()

    def tile_sums(self) -> np.ndarray:
        """Tiles of each row (all its images)."""
        c = np.concatenate(([0], np.cumsum(self.img_tiles, dtype=np.int64)))
        return c[self.img_ptr[1:]] - c[self.img_ptr[:-1]]

    def image_counts(self) -> np.ndarray:
        return np.diff(self.img_ptr)

    def read(self, row: int, f=None) -> dict:
        """The record of sample line ``row`` (0-based among the non-blank lines): one seek."""
        if f is None:
            with open(self.annotation, "rb") as fh:
                return self.read(row, fh)
        f.seek(int(self.offsets[row]))
        return json.loads(f.readline())

    def examples(self) -> dict[int, dict]:
        """The first drops, by row: ``{"id", "has_id", "why"}``."""
        return {int(e["row"]): e for e in self.meta.get("examples", [])}


def index_key(lines: FileLines, root: Path, tokenizer: Any, template: Template,
              settings: IndexSettings) -> tuple[str | None, dict]:
    """The cache key of an index and what it is made of; None when the template has no
    fingerprint (rendered by a function): such an index is built for the run and not kept."""
    parts: dict[str, Any] = {"version": INDEX_VERSION, "sha256": lines.sha256, "root": os.path.realpath(root),
                             "tokenizer": tokenizer_fingerprint(tokenizer), "template": template.name,
                             **asdict(settings)}
    try:
        parts["template_fingerprint"] = template.fingerprint()
    except ValueError:
        return None, parts
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24], parts


def load_index(annotation: Path, root: Path, tokenizer: Any, template: Template, settings: IndexSettings, *,
               cache_dir: Path | None, name: str | None = None, progress: Progress | None = None,
               cancel: Callable[[], bool] | None = None) -> AnnotationIndex:
    """The index of ``annotation`` for these settings: opened from the cache when it is there,
    else built (and cached) by this process, or waited for while another process builds it.

    ``progress`` gets the progress lines (``indexing NAME: N/M lines, rate, eta``); ``cancel``
    is polled between batches and while waiting: True raises :class:`IndexCancelled`."""
    annotation, root = Path(annotation), Path(root)
    name = name or annotation.name
    lines = file_lines(annotation, cache_dir)
    key, parts = index_key(lines, root, tokenizer, template, settings)
    if cache_dir is None or key is None:
        if key is None and progress is not None:
            progress(f"index {name}: the template renders with a function, so its index is not cached")
        return _build(annotation, root, lines, tokenizer, template, settings, key or "", parts, name, progress,
                      cancel)
    entry = cache_dir / key
    if (entry / "index.json").exists():
        return _open(entry, annotation, root, built=False)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f"{key}.lock", "a+") as lock:
        waited = _acquire(lock, name, progress, cancel)
        if (entry / "index.json").exists():  # built by the process we waited for
            return _open(entry, annotation, root, built=False, waited=waited)
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()} {annotation}\n")
        lock.flush()
        idx = _build(annotation, root, lines, tokenizer, template, settings, key, parts, name, progress, cancel)
        _write_dir(entry, {"offsets.npy": idx.offsets, "length.npy": idx.length, "reason.npy": idx.reason,
                           "img_ptr.npy": idx.img_ptr, "img_tiles.npy": idx.img_tiles}, idx.meta)
    return _open(entry, annotation, root, built=True, seconds=idx.meta["build_seconds"])


def _acquire(lock, name: str, progress: Progress | None, cancel: Callable[[], bool] | None) -> float:
    """Take the build lock, polling ``cancel`` while another process holds it; seconds waited."""
    t0 = time.monotonic()
    said = False
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return time.monotonic() - t0
        except BlockingIOError:
            if cancel is not None and cancel():
                raise IndexCancelled(f"cancelled while waiting for the index of {name}") from None
            if not said and progress is not None:
                lock.seek(0)
                holder = lock.read().split(" ")[0] or "?"
                progress(f"index {name}: waiting for process {holder}, which is building it")
                said = True
            time.sleep(0.1)


def _open(entry: Path, annotation: Path, root: Path, *, built: bool, waited: float = 0.0,
          seconds: float = 0.0) -> AnnotationIndex:
    meta = json.loads((entry / "index.json").read_text())
    meta.update(reused=not built, waited_seconds=round(waited, 3), path=str(entry))
    if built:
        meta["build_seconds"] = seconds
    arr = {n: np.load(entry / f"{n}.npy", mmap_mode="r") for n in ("offsets", "length", "reason", "img_ptr",
                                                                   "img_tiles")}
    return AnnotationIndex(annotation, root, meta=meta, **arr)


class _ImageSizes:
    """Image sizes by path (header reads; an image used by several lines is opened once)."""

    def __init__(self, root: Path, limit: int = 1 << 16) -> None:
        self.root = root
        self.sizes: dict[str, tuple[int, int] | Exception] = {}
        self.limit = limit

    def size(self, rel: str) -> tuple[int, int]:
        hit = self.sizes.get(rel)
        if hit is None:
            try:
                with Image.open(self.root / rel) as im:  # reads the header only
                    hit = im.size
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                hit = e
            if len(self.sizes) >= self.limit:
                self.sizes.clear()
            self.sizes[rel] = hit
        if isinstance(hit, Exception):
            raise hit
        return hit


@dataclass
class _Part:
    """The index of consecutive rows (a piece of the file): merged in file order."""

    length: np.ndarray  # int32
    reason: np.ndarray  # uint8
    n_images: np.ndarray  # int64, images of each kept row
    tiles: list[int]  # tiles of each image of the kept rows, in order
    examples: list[dict]  # the piece's first drops
    tokenized: int


def _index_rows(f, offsets: np.ndarray, end: int, line_no: np.ndarray, first_row: int, tokenizer: Any,
                template: Template, settings: IndexSettings, sizes: _ImageSizes) -> _Part:
    """The index of the rows starting at ``offsets`` (the last one ends at byte ``end``) of the
    open file ``f``; ``first_row`` is the first one's row in the file (for the drop examples)."""
    n = len(offsets)
    length = np.zeros(n, dtype=np.int32)
    reason = np.zeros(n, dtype=np.uint8)
    n_images = np.zeros(n, dtype=np.int64)
    tiles_flat: list[int] = []
    examples: list[dict] = []
    s = settings

    def drop(row: int, code: str, rec: Any, why: str) -> None:
        reason[row] = 1 + DROP_REASONS.index(code)
        if len(examples) < EXAMPLES:
            has_id = isinstance(rec, dict) and "id" in rec
            examples.append({"row": first_row + row, "line": int(line_no[row]), "has_id": has_id,
                             "id": rec.get("id") if has_id else None, "why": why})

    base = int(offsets[0]) if n else 0
    f.seek(base)
    block = f.read(end - base)
    todo: list[tuple[int, dict, list[int]]] = []
    for row in range(n):
        a = int(offsets[row]) - base
        b = int(offsets[row + 1]) - base if row + 1 < n else len(block)
        try:
            rec = json.loads(block[a:b])
        except ValueError as e:  # not JSON, not UTF-8
            drop(row, "invalid", None, f"line {line_no[row]}: {type(e).__name__}: {e}")
            continue
        if not isinstance(rec, dict):
            drop(row, "invalid", rec, f"line {line_no[row]}: a JSON {type(rec).__name__}, not an object")
            continue
        try:
            paths = image_paths(rec)
            per_image = max_patches_per_image(s.max_dynamic_patch, len(paths))
            tiles = []
            for rel in paths:
                w, h = sizes.size(rel)
                tiles.append(plan_tiles(w, h, dynamic=s.dynamic_image_size, min_num=s.min_dynamic_patch,
                                        max_num=per_image, use_thumbnail=s.use_thumbnail,
                                        image_size=s.image_size).num_tiles)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            drop(row, "unreadable_image", rec, f"{type(e).__name__}: {e}")
            continue
        except (TypeError, AttributeError) as e:
            drop(row, "invalid", rec, f"{type(e).__name__}: {e}")
            continue
        todo.append((row, rec, tiles))
    counted = count_samples([(rec, tiles) for _, rec, tiles in todo], template, tokenizer,
                            s.tokens_per_tile, limit=s.max_seq_length)
    for (row, rec, tiles), c in zip(todo, counted, strict=True):
        if isinstance(c, Exception):
            drop(row, "invalid", rec, f"{type(c).__name__}: {c}")
            continue
        limit = s.max_seq_length
        if any(e > limit for _, e in c.image_spans):
            drop(row, "truncated_image", rec, f"{c.total_tokens} tokens, max_seq_length {limit}")
        elif c.trained_in_limit == 0:
            drop(row, "empty_labels", rec, f"{c.total_tokens} tokens, max_seq_length {limit}")
        else:
            length[row] = min(c.total_tokens, limit)
            n_images[row] = len(tiles)
            tiles_flat += tiles
    return _Part(length, reason, n_images, tiles_flat, examples, len(todo))


def build_workers() -> int:
    """Processes that build an index: ``$VLSTUDIO_INDEX_WORKERS``, else every CPU this process
    may run on (the other ranks and jobs that need the same index wait and build nothing)."""
    env = os.environ.get(WORKERS_ENV, "").strip()
    if env:
        return max(1, int(env))
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


#: the state of a build worker process (set by :func:`_init_worker`)
_WORKER: dict[str, Any] = {}


def _init_worker(annotation: Path, root: Path, tokenizer: Any, template: Template, settings: IndexSettings) -> None:
    # The parent stops its workers with SIGTERM (Pool.terminate); a trainer's own SIGTERM handler
    # (inherited through fork) only sets a flag. A terminal's Ctrl-C is the parent's to handle.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):  # Linux: end with the parent, even on SIGKILL
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker; the pool is the parallelism
    _WORKER.update(file=open(annotation, "rb"), tokenizer=tokenizer, template=template, settings=settings,  # noqa: SIM115
                   sizes=_ImageSizes(root))


def _index_piece(offsets: np.ndarray, end: int, line_no: np.ndarray, first_row: int) -> _Part:
    """In a build worker: the piece's rows, :data:`BATCH` per tokenizer call."""
    w = _WORKER
    n = len(offsets)
    return _merge([_index_rows(w["file"], offsets[lo:lo + BATCH], int(offsets[lo + BATCH]) if lo + BATCH < n else end,
                               line_no[lo:lo + BATCH], first_row + lo, w["tokenizer"], w["template"], w["settings"],
                               w["sizes"]) for lo in range(0, n, BATCH)])


def _merge(parts: list[_Part]) -> _Part:
    """Consecutive pieces as one (their drop examples: the first :data:`EXAMPLES`)."""
    if not parts:
        return _Part(np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.uint8), np.zeros(0, dtype=np.int64), [], [], 0)
    return _Part(np.concatenate([p.length for p in parts]), np.concatenate([p.reason for p in parts]),
                 np.concatenate([p.n_images for p in parts]), [t for p in parts for t in p.tiles],
                 [e for p in parts for e in p.examples][:EXAMPLES], sum(p.tokenized for p in parts))


def _pool_context():
    """fork (the workers inherit the tokenizer, nothing is imported again; a trainer's DataLoader
    forks the same way) when this process runs no other thread, else spawn; None when this process
    may not have children (a daemon, as Celery's prefork workers are)."""
    import multiprocessing
    import threading

    if multiprocessing.current_process().daemon:
        return None
    return multiprocessing.get_context("fork" if threading.active_count() == 1 else "spawn")


def _build(annotation: Path, root: Path, lines: FileLines, tokenizer: Any, template: Template,
           settings: IndexSettings, key: str, parts: dict, name: str, progress: Progress | None,
           cancel: Callable[[], bool] | None) -> AnnotationIndex:
    t0, c0 = time.perf_counter(), _cpu_seconds()
    offsets = np.ascontiguousarray(lines.rows, dtype=np.int64)
    n = len(offsets)
    line_no = np.flatnonzero(np.asarray(lines.nonblank)) + 1  # file line of each row, for messages
    last = t0

    def report(done: int) -> None:
        nonlocal last
        now = time.perf_counter()
        if done and progress is not None and (now - last >= PROGRESS_EVERY or (done == n and now - t0 >= PROGRESS_EVERY)):
            last = now
            rate = done / max(now - t0, 1e-9)
            eta = f"eta {(n - done) / rate:,.0f} s" if rate > 0 else "eta unknown yet"
            progress(f"indexing {name}: {done:,}/{n:,} lines, {rate:,.0f} lines/s, {eta}")

    def end_of(hi: int) -> int:
        return int(offsets[hi]) if hi < n else lines.size

    workers = min(build_workers(), -(-n // PIECE))
    ctx = _pool_context() if workers > 1 else None
    pieces: list[_Part] = []
    if ctx is None:
        sizes = _ImageSizes(root)
        with open(annotation, "rb") as f:
            for lo in range(0, n, BATCH):
                if cancel is not None and cancel():
                    raise IndexCancelled(f"cancelled while indexing {name}")
                hi = min(lo + BATCH, n)
                pieces.append(_index_rows(f, offsets[lo:hi], end_of(hi), line_no[lo:hi], lo, tokenizer, template,
                                          settings, sizes))
                report(hi)
    else:
        if cancel is not None and cancel():  # asked to stop while it waited for the lock: start no pool
            raise IndexCancelled(f"cancelled while indexing {name}")
        pieces = _build_in_pool(ctx, workers, annotation, root, offsets, end_of, line_no, tokenizer, template,
                                settings, name, cancel, report, progress)
    whole = _merge(pieces)
    length, reason = whole.length, whole.reason
    tiles = np.asarray(whole.tiles, dtype=np.int16)
    img_ptr = np.concatenate(([0], np.cumsum(whole.n_images))).astype(np.int64)
    meta = {"key": key, "parts": parts, "annotation": str(annotation), "rows": n,
            "kept": int((reason == 0).sum()),
            "dropped": {r: int((reason == k + 1).sum()) for k, r in enumerate(DROP_REASONS)},
            "tokenized": whole.tokenized, "workers": workers if ctx is not None else 1,
            "examples": whole.examples, "built": time.time(),
            "build_seconds": round(time.perf_counter() - t0, 3),
            "build_cpu_seconds": round(_cpu_seconds() - c0, 3), "reused": False}
    return AnnotationIndex(annotation, root, offsets, length, reason, img_ptr, tiles, meta)


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its ended children (a build's pool workers, once reaped)."""
    import resource

    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def _build_in_pool(ctx, workers: int, annotation: Path, root: Path, offsets: np.ndarray, end_of, line_no,
                   tokenizer: Any, template: Template, settings: IndexSettings, name: str,
                   cancel: Callable[[], bool] | None, report: Callable[[int], None],
                   progress_start: Progress | None = None) -> list[_Part]:
    """The pieces of :data:`PIECE` rows indexed by ``workers`` processes, in file order; the
    caller's ``cancel`` is polled while they work (True: the workers are killed)."""
    n = len(offsets)
    los = list(range(0, n, PIECE))
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # no fork warning from tokenizers; each worker uses one core
    try:
        pool = ctx.Pool(workers, initializer=_init_worker, initargs=(annotation, root, tokenizer, template, settings))
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before
    out: list[_Part | None] = [None] * len(los)
    if progress_start is not None:
        progress_start(f"indexing {name}: 0/{n:,} lines, {workers} processes")
    try:
        results = [pool.apply_async(_index_piece, (offsets[lo:lo + PIECE], end_of(min(lo + PIECE, n)),
                                                   line_no[lo:lo + PIECE], lo)) for lo in los]
        done = 0
        pending = set(range(len(los)))
        while pending:
            if cancel is not None and cancel():
                raise IndexCancelled(f"cancelled while indexing {name}")
            for k in sorted(pending):
                r = results[k]
                if r.ready():
                    out[k] = r.get()
                    pending.discard(k)
                    done += len(out[k].length)
            report(done)
            if pending:
                results[min(pending)].wait(0.1)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
    return out  # type: ignore[return-value]
