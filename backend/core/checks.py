"""Per-line checks of an annotation file, run on chunks of lines (in worker processes or
in-process). Everything a line can be judged on by itself is here; what needs the whole file
(duplicate ids, duplicate samples) is decided by :mod:`backend.core.validation` from the
hashes a chunk returns.

Issue kinds (``code``) and severities are listed in ``docs/datasets.md``.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from array import array
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from hashlib import blake2b
from typing import Any

from backend.core.images import DEFAULT_MAX_PIXELS, ImageProblem, check_image, resolve_image
from backend.core.model_card import DEFAULT_TILING
from backend.core.report import Stats
from backend.core.samples import (
    IMAGE_PLACEHOLDER,
    IMG_CONTEXT,
    IMG_END,
    IMG_START,
    SampleCounts,
    count_samples,
)
from backend.core.templates import Template
from backend.core.tiling import max_patches_per_image, plan_tiles

ROLES = ("human", "gpt")
#: strings that the tokenizer turns into the image special tokens: never allowed in text
RESERVED = (IMG_START, IMG_END, IMG_CONTEXT)
#: template markers that a tokenizer treats as special tokens: they break the turn structure
MARKERS = ("<|im_start|>", "<|im_end|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<s>", "</s>")


@dataclass(frozen=True)
class CheckConfig:
    """What a chunk needs to know about its file and the chosen settings (small, picklable)."""

    file: str
    root: str  # resolved
    template: Template | None = None  # picklable: a registered template, or a tokenizer's chat template as data
    check_images: bool = True
    full_decode: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_dynamic_patch: int = DEFAULT_TILING.max_dynamic_patch  # the engine passes the settings' tiling
    min_dynamic_patch: int = DEFAULT_TILING.min_dynamic_patch
    use_thumbnail: bool = DEFAULT_TILING.use_thumbnail
    dynamic: bool = DEFAULT_TILING.dynamic_image_size
    image_size: int = 448
    tokens_per_tile: int = 256
    max_seq_length: int | None = None
    truncation: str = "error"  # or "truncate"
    max_examples: int = 20
    per_sample: bool = False
    #: where max_dynamic_patch came from (the model, a preset, the dataset...), for the messages
    tiling_source: str = ""

    @property
    def tile_budget(self) -> str:
        """The tile budget in words: "max_dynamic_patch 6, from preset 'demo'"."""
        return f"max_dynamic_patch {self.max_dynamic_patch}" + (f", {self.tiling_source}" if self.tiling_source else "")


class WorkerState:
    """Per-process state: the tokenizer and a bounded cache of image check results."""

    def __init__(self, tokenizer: Any = None, cache_size: int = 65536) -> None:
        self.tokenizer = tokenizer
        self.cache: OrderedDict[tuple[str, str], tuple] = OrderedDict()
        self.cache_size = cache_size

    def image(self, cfg: CheckConfig, rel: str) -> tuple[int, int]:
        key = (cfg.root, rel)
        hit = self.cache.get(key)
        if hit is None:
            try:
                info = check_image(resolve_image(cfg.root, rel), rel, max_pixels=cfg.max_pixels,
                                   full_decode=cfg.full_decode)
                hit = (info.width, info.height)
            except ImageProblem as e:
                hit = (e.code, e.message)
            self.cache[key] = hit
            if len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
        else:
            self.cache.move_to_end(key)
        if isinstance(hit[0], str):
            raise LineError(hit[0], hit[1])
        return hit


class LineError(Exception):
    """A problem that stops the checks of one line."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class ChunkResult:
    """What a chunk of lines produced; merged in file order by the validator."""

    lines: int = 0
    crlf: int = 0
    counts: Counter = field(default_factory=Counter)
    examples: list[tuple] = field(default_factory=list)  # (severity, code, line, sample_id, message)
    error_lines: array = field(default_factory=lambda: array("I"))
    id_hash: array = field(default_factory=lambda: array("Q"))
    id_line: array = field(default_factory=lambda: array("I"))
    dup_hash: array = field(default_factory=lambda: array("Q"))
    dup_line: array = field(default_factory=lambda: array("I"))
    stats: Stats = field(default_factory=Stats)
    rows: bytes = b""

    def add(self, cfg: CheckConfig, severity: str, code: str, line: int, sid: str | None, msg: str) -> None:
        key = (severity, code)
        self.counts[key] += 1
        if self.counts[key] <= cfg.max_examples:
            self.examples.append((severity, code, line, sid, msg))


def _hash(text: str) -> int:
    return int.from_bytes(blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


@lru_cache(maxsize=65536)
def tiles_for(width: int, height: int, max_num: int, min_num: int, use_thumbnail: bool, dynamic: bool,
              image_size: int) -> int:
    """Tiles of one image (the recipe's :func:`plan_tiles`, memoised: sizes repeat a lot)."""
    return plan_tiles(width, height, dynamic=dynamic, min_num=min_num, max_num=max_num,
                      use_thumbnail=use_thumbnail, image_size=image_size).num_tiles


def parse_line(raw: bytes) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LineError("encoding", f"invalid UTF-8 at byte {e.start} of the line") from None
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as e:
        # some of json's messages end in "at" ("Invalid control character at"): say it once
        raise LineError("json", f"invalid JSON: {e.msg.removesuffix(' at')} at column {e.colno}") from None
    except RecursionError:
        raise LineError("json", "invalid JSON: nested too deeply") from None
    if not isinstance(rec, dict):
        raise LineError("not_object", f"the line is a JSON {type(rec).__name__}, not an object")
    return rec


def sample_id(rec: dict) -> str:
    if "id" not in rec:
        raise LineError("missing_id", "missing field 'id'")
    value = rec["id"]
    if isinstance(value, bool) or not isinstance(value, str | int) or (isinstance(value, str) and not value.strip()):
        raise LineError("bad_id", f"field 'id' must be a non-empty string or an integer, got {value!r:.40}")
    return str(value)


def check_turns(convs: Any, allow_system: bool) -> int:
    """Structure and roles of ``conversations``; returns the number of human/gpt rounds."""
    if not isinstance(convs, list) or not convs:
        raise LineError("conversations", "field 'conversations' must be a non-empty list of turns")
    for k, t in enumerate(convs):
        if not isinstance(t, dict) or "from" not in t or "value" not in t:
            raise LineError("turn_format", f"conversations[{k}] must be an object with 'from' and 'value'")
        if not isinstance(t["value"], str):
            raise LineError("turn_format", f"conversations[{k}].value must be a string, "
                                           f"got {type(t['value']).__name__}")
    start = 0
    if convs[0]["from"] == "system":
        if not allow_system:
            raise LineError("role", "the template has no system turn; remove the leading 'system' turn")
        start = 1
    if start == len(convs):
        raise LineError("role", "the conversation has a system turn only")
    for k in range(start, len(convs)):
        role = convs[k]["from"]
        expected = ROLES[(k - start) % 2]
        if role != expected:
            if role not in ROLES:
                why = "a system turn is only allowed first" if role == "system" else "unknown role"
                raise LineError("role", f"conversations[{k}]: {why} {role!r:.30} (expected {expected!r})")
            raise LineError("role", f"conversations[{k}]: expected {expected!r}, got {role!r}; "
                                    "roles must alternate starting with 'human'")
    if convs[-1]["from"] != "gpt":
        raise LineError("role", "the last turn is from 'human'; a conversation must end with a 'gpt' reply")
    return (len(convs) - start) // 2


def image_list(rec: dict) -> tuple[list[str], str | None]:
    """The sample's image paths and, for an empty ``image`` field, a warning."""
    img = rec.get("image")
    if img is None:
        return [], None
    if isinstance(img, str):
        return ([img], None) if img else ([], "empty 'image' field; treated as a text-only sample")
    if isinstance(img, list):
        if not img:
            return [], "empty 'image' list; treated as a text-only sample"
        for k, x in enumerate(img):
            if not isinstance(x, str) or not x:
                raise LineError("image_field", f"image[{k}] must be a non-empty string")
        return list(img), None
    raise LineError("image_field", f"field 'image' must be a string or a list of strings, got {type(img).__name__}")


def check_text(convs: list[dict], n_images: int, res: ChunkResult, cfg: CheckConfig, line: int,
               sid: str) -> None:
    """``<image>`` tags, reserved strings, blank turns."""
    tags = 0
    for k, t in enumerate(convs):
        v = t["value"]
        if "<" in v:
            n = v.count(IMAGE_PLACEHOLDER)
            if n and t["from"] == "gpt":
                raise LineError("image_tags", f"conversations[{k}]: <image> tag inside a gpt reply")
            tags += n
            bad = [r for r in RESERVED if r in v]
            if bad:
                raise LineError("reserved_token", f"conversations[{k}] contains {bad[0]!r}, which the tokenizer "
                                                  "turns into an image token")
            marks = [m for m in MARKERS if m in v]
            if marks:
                res.add(cfg, "warning", "special_token", line, sid, f"conversations[{k}] contains the template "
                        f"marker {marks[0]!r}; it is tokenized as a special token")
        if not v.strip():
            if t["from"] == "gpt":
                res.add(cfg, "warning", "empty_answer", line, sid, f"conversations[{k}]: empty gpt reply")
            else:
                res.add(cfg, "warning", "blank_turn", line, sid, f"conversations[{k}]: empty or whitespace-only turn")
    if n_images == 0 and tags:
        raise LineError("image_tags", f"{tags} <image> tag(s) but the sample has no image")
    if n_images == 1 and tags == 0:
        res.add(cfg, "info", "image_tag_added", line, sid, "no <image> tag: '<image>\\n' is prepended to the first "
                "human turn, as the recipe does")
    elif n_images == 1 and tags > 1:
        raise LineError("image_tags", f"{tags} <image> tags for 1 image")
    elif n_images > 1 and tags != n_images:
        raise LineError("image_tags", f"{tags} <image> tag(s) for {n_images} images; multi-image samples need one "
                                      "tag per image")


def check_length(rec: dict, tiles: list[int], template: Template | None, state: WorkerState, cfg: CheckConfig,
                 res: ChunkResult, line: int, sid: str, counts: SampleCounts | Exception | None = None,
                 ) -> tuple[int | None, int, int | None]:
    """(text tokens, image tokens, total) of a sample and the ``max_seq_length`` rule; ``counts``:
    the sample's :func:`count_samples` result when the chunk counted its lines in one batch."""
    image_tokens = sum(cfg.tokens_per_tile * t + 2 for t in tiles)
    limit = cfg.max_seq_length
    if state.tokenizer is None or template is None:
        if limit and image_tokens > limit:
            raise LineError("too_long", f"the image tokens alone ({image_tokens}, {sum(tiles)} tiles at "
                                        f"{cfg.tile_budget}) exceed max_seq_length {limit}")
        return None, image_tokens, None
    if counts is None:
        counts = _count_one(rec, tiles, template, state, cfg)
    if isinstance(counts, Exception):  # a tokenizer can fail on pathological input; never crash the run
        raise LineError("tokenize", f"cannot tokenize the sample ({type(counts).__name__}: {counts})")
    total = counts.total_tokens
    if limit and total > limit:
        what = (f"{total} tokens ({counts.text_tokens} text + {counts.image_tokens} image, {sum(tiles)} tiles at "
                f"{cfg.tile_budget}) > max_seq_length {limit}")
        if cfg.truncation != "truncate":
            raise LineError("too_long", what)
        cut = next((k for k, (a, b) in enumerate(counts.image_spans) if a < limit < b), None)
        if cut is not None:
            raise LineError("too_long", f"{what}; truncation would cut through image {cut + 1}")
        if counts.trained_in_limit == 0:
            raise LineError("too_long", f"{what}; no trained token is left after truncation")
        lost = counts.trained_tokens - counts.trained_in_limit
        res.add(cfg, "warning", "truncated", line, sid, f"{what}; truncated, {lost} trained token(s) lost")
    return counts.text_tokens, counts.image_tokens, total


def _count_one(rec: dict, tiles: list[int], template: Template, state: WorkerState,
               cfg: CheckConfig) -> SampleCounts | Exception:
    try:
        return count_samples([(rec, tiles)], template, state.tokenizer, cfg.tokens_per_tile, cfg.max_seq_length)[0]
    except Exception as e:  # noqa: BLE001 (reported on the line, as tokenize_sample's errors)
        return e


def _count_batch(pending: list[Pending], template: Template, state: WorkerState,
                 cfg: CheckConfig) -> list[SampleCounts | Exception]:
    """The token counts of a chunk's samples in one batched tokenizer call (the training index's
    counting); line by line when the batch fails, so one pathological line fails alone."""
    items = [(p.rec, p.tiles) for p in pending]
    try:
        return count_samples(items, template, state.tokenizer, cfg.tokens_per_tile, cfg.max_seq_length)
    except Exception:  # noqa: BLE001 (each line is counted again by itself below)
        return [_count_one(rec, tiles, template, state, cfg) for rec, tiles in items]


@dataclass
class Pending:
    """A line that passed every check but its length: counted with the rest of its chunk."""

    rec: dict
    tiles: list[int]
    line: int
    sid: str
    rounds: int
    paths: list[str]
    sizes: list[tuple[int, int]]
    row: dict


def check_line(raw: bytes, line: int, cfg: CheckConfig, template: Template | None, state: WorkerState,
               res: ChunkResult, defer: list[Pending] | None = None) -> dict | None:
    """All per-line checks of one non-blank line; returns the per-sample row. With ``defer``, a
    line that passed every check but its length is appended there for :func:`finish_line`."""
    sid = None
    row: dict = {"line": line, "id": None, "ok": False}
    try:
        rec = parse_line(raw)
        sid = sample_id(rec)
        row["id"] = sid
        res.id_hash.append(_hash(sid))
        res.id_line.append(line)
        convs = rec.get("conversations")
        rounds = check_turns(convs, template is None or template.supports_system)
        paths, empty_warning = image_list(rec)
        if empty_warning:
            res.add(cfg, "warning", "empty_image", line, sid, empty_warning)
        check_text(convs, len(paths), res, cfg, line, sid)
        res.dup_hash.append(_hash(repr((paths, [(t["from"], t["value"]) for t in convs]))))
        res.dup_line.append(line)
        row["images"] = len(paths)
        if not cfg.check_images:
            res.stats.samples += 1
            res.stats.turns[rounds] += 1
            row["ok"] = True
            return row
        budget = max_patches_per_image(cfg.max_dynamic_patch, len(paths))
        sizes = [state.image(cfg, rel) for rel in paths]
        tiles = [tiles_for(w, h, budget, cfg.min_dynamic_patch, cfg.use_thumbnail, cfg.dynamic, cfg.image_size)
                 for w, h in sizes]
        row["tiles"] = tiles
    except LineError as e:
        res.add(cfg, "error", e.code, line, sid, e.message)
        res.error_lines.append(line)
        return row
    pending = Pending(rec, tiles, line, sid, rounds, paths, sizes, row)
    if defer is not None and state.tokenizer is not None and template is not None:
        defer.append(pending)
        return row
    finish_line(pending, cfg, template, state, res)
    return row


def finish_line(p: Pending, cfg: CheckConfig, template: Template | None, state: WorkerState, res: ChunkResult,
                counts: SampleCounts | Exception | None = None) -> None:
    """The length rule and the statistics of a line that passed every other check."""
    try:
        text_tokens, image_tokens, total = check_length(p.rec, p.tiles, template, state, cfg, res, p.line, p.sid,
                                                        counts)
    except LineError as e:
        res.add(cfg, "error", e.code, p.line, p.sid, e.message)
        res.error_lines.append(p.line)
        return
    p.row.update(text_tokens=text_tokens, image_tokens=image_tokens, tokens=total, ok=True)
    st = res.stats
    st.samples += 1
    st.turns[p.rounds] += 1
    st.text_only += not p.paths
    st.multi_image += len(p.paths) > 1
    for (w, h), t in zip(p.sizes, p.tiles, strict=True):
        st.add_image(w, h, t)
    if total is not None:
        st.tokens[total] += 1
        st.text_tokens += text_tokens
        st.image_tokens += image_tokens
        st.token_samples += 1


def check_chunk(lines: list[bytes], first_line: int, cfg: CheckConfig, state: WorkerState) -> ChunkResult:
    """Check consecutive lines (``first_line`` is the 1-based number of ``lines[0]``).

    An entry of ``None`` is a line the reader already rejected (too long); it is skipped. The
    token counts of the chunk's lines are computed in one batch, after their other checks.
    """
    res = ChunkResult()
    template = cfg.template
    rows: list[dict] = []
    pending: list[Pending] = []
    for k, raw in enumerate(lines):
        if raw is None:
            continue
        line = first_line + k
        res.lines += 1
        if raw.endswith(b"\r\n"):
            res.crlf += 1
        if not raw.strip():
            res.add(cfg, "warning", "blank_line", line, None, "blank line (skipped by vlstudio; the reference "
                    "scripts fail on it)")
            continue
        row = check_line(raw, line, cfg, template, state, res, pending)
        if cfg.per_sample and row is not None:
            rows.append(row)
    if pending:
        assert template is not None
        for p, counts in zip(pending, _count_batch(pending, template, state, cfg), strict=True):
            finish_line(p, cfg, template, state, res, counts)
    if rows:
        res.rows = ("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n").encode("utf-8", "surrogatepass")
    return res


# Worker-process side: one state per process, created by the pool initializer.
_STATE: WorkerState | None = None


def init_worker(tokenizer: Any) -> None:
    global _STATE
    _STATE = WorkerState(tokenizer)
    # Ctrl-C on a terminal reaches the whole process group: the parent decides (it stops between
    # chunks and prints what it has), a worker must not die with a traceback in the middle.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent()


def _exit_with_parent(every_s: float = 1.0) -> None:
    """A validation worker ends when the process that started it is gone (an API killed in the
    middle of a background validation), instead of living on as an orphan."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(every_s)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def pool_check_chunk(lines: list[bytes], first_line: int, cfg: CheckConfig) -> ChunkResult:
    assert _STATE is not None, "init_worker was not called"
    return check_chunk(lines, first_line, cfg, _STATE)
