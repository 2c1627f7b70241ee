"""Why a trainer failed, from its log: the first real error, not torchrun's banner.

When a rank raises, torchrun prints the rank's traceback and then, 30-50 lines later, its own
``ChildFailedError`` summary; the last lines of the log (what a failure reason used to show)
are that summary. :func:`first_error` finds the first traceback that is not torchrun's own and
returns its exception type, message and innermost frame; without one (a rank killed by a
signal) it falls back to torchrun's summary of the first failed rank. Pure: text in, facts out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

#: prefixes torchrun and DeepSpeed put before a rank's lines
_PREFIX = re.compile(r"^(?:\[(?:rank|default)\d+\]:\s?|\d+:\s)")
_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>.+)$')
_EXC = re.compile(r"^(?P<type>[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Failure|Fault))(?::\s?(?P<msg>.*))?$")
_LAUNCHER = ("torch.distributed.elastic", "torch/distributed/elastic", "torch/distributed/run.py")
_EXITCODE = re.compile(r"exitcode\s*:\s*(-?\d+)")
_SIGNAL = re.compile(r"traceback\s*:\s*(Signal \d+ \(\w+\) received by PID \d+)")


@dataclass(frozen=True)
class TrainerError:
    type: str
    message: str
    file: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = f" ({self.file}:{self.line})" if self.file else ""
        return f"{self.type}: {self.message}{where}" if self.message else f"{self.type}{where}"


def _strip(line: str) -> str:
    return _PREFIX.sub("", line.rstrip("\r\n"))


def _tracebacks(lines: list[str]) -> list[tuple[list[re.Match], str, str]]:
    """Every traceback as (frames, exception type, message), in log order."""
    out: list[tuple[list[re.Match], str, str]] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() != "Traceback (most recent call last):":
            i += 1
            continue
        frames: list[re.Match] = []
        i += 1
        while i < len(lines):
            m_frame, m_exc = _FRAME.match(lines[i]), _EXC.match(lines[i].strip())
            if m_frame:
                frames.append(m_frame)
            elif m_exc and not lines[i].startswith(" "):
                out.append((frames, m_exc["type"], (m_exc["msg"] or "").strip()))
                break
            i += 1
        i += 1
    return out


def first_error(log: str) -> TrainerError | None:
    """The first exception a rank raised in ``log`` (a trainer's combined output), or torchrun's
    summary of the first failed rank when no rank printed a traceback; None if neither."""
    lines = [_strip(x) for x in log.splitlines()]
    for frames, exc_type, msg in _tracebacks(lines):
        if exc_type.endswith("ChildFailedError") or any(p in f["file"] for f in frames for p in _LAUNCHER):
            continue  # torchrun's own report of a rank that failed
        inner = frames[-1] if frames else None
        return TrainerError(exc_type, msg, inner["file"] if inner else None, int(inner["line"]) if inner else None)
    refusal = _refusal(lines)
    if refusal:
        return refusal
    text = "\n".join(lines)
    if "ChildFailedError" in text or "Failures:" in text:
        root = text[text.rfind("Root Cause"):] if "Root Cause" in text else text  # the first rank that failed
        sig, code = _SIGNAL.search(root), _EXITCODE.search(root)
        if sig:
            return TrainerError("RankKilled", sig.group(1))
        if code:
            return TrainerError("RankFailed", f"a rank exited with code {code.group(1)} without a traceback")
    return None


def _refusal(lines: list[str]) -> TrainerError | None:
    """The training program's own refusal (worker/training/train.py ``fail``): a ``cannot train:``
    line and its ``  - problem`` lines, printed before it exits with code 2 and no traceback."""
    for k, line in enumerate(lines):
        if line.strip() == "cannot train:":
            problems = []
            for x in lines[k + 1:]:
                if not x.startswith("  - "):
                    break
                problems.append(x[4:])
            return TrainerError("CannotTrain", "; ".join(problems))
    return None


def describe(headline: str, log: str, tail: list[str]) -> str:
    """A failure reason: ``headline``, the first real error when the log shows one, then ``tail``."""
    err = first_error(log)
    first = f"{headline}: {err}" if err else headline
    return first + "\n" + "\n".join(tail)


def read_log(path: Path, max_bytes: int = 4 << 20) -> str:
    """The last ``max_bytes`` of a run's log (the error is near its end; the log may be huge)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - max_bytes))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
