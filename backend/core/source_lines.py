"""Line numbers are the uploaded file's, everywhere.

The validation report numbers the lines of the file as it was uploaded. What a dataset trains on
may be another file written from it: the lines without errors (``drop_bad_lines``, blank lines
left out too) and/or the training part of a validation split. Such a file gets a sidecar,
``<name>.lines``: for each of its lines, the line of the uploaded file it came from (one number a
line, composed when a derived file is derived again). The sample preview takes the uploaded file's
line number and finds it through the sidecars (or says that it was dropped, or which part holds
it); a file without a sidecar is the uploaded file itself.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path

SUFFIX = ".lines"


def sidecar(annotation: Path) -> Path:
    return annotation.with_name(annotation.name + SUFFIX)


def write(dest: Path, numbers: Iterable[int]) -> None:
    """The uploaded file's line of each line of ``dest`` (a derived annotation)."""
    sidecar(dest).write_text("".join(f"{n}\n" for n in numbers), encoding="ascii")


@lru_cache(maxsize=16)
def _read(path: str, stamp: float) -> tuple[int, ...]:  # noqa: ARG001 (mtime: a rewritten file is read again)
    return tuple(int(x) for x in Path(path).read_text(encoding="ascii").split())


def origins(annotation: Path) -> tuple[int, ...] | None:
    """Line of the uploaded file per line of ``annotation``; None: it is the uploaded file."""
    side = sidecar(Path(annotation))
    if not side.is_file():
        return None
    return _read(str(side), side.stat().st_mtime)


def origin(annotation: Path, k: int) -> int:
    """The uploaded file's line of 1-based line ``k`` of ``annotation``."""
    return to_upload(annotation)(k)


def to_upload(annotation: Path) -> Callable[[int], int]:
    """1-based line of ``annotation`` -> the uploaded file's line (read the sidecar once)."""
    lines = origins(annotation)
    return (lambda k: k) if lines is None else (lambda k: lines[k - 1])


def find(annotation: Path, line: int) -> int | None:
    """The line of ``annotation`` that holds line ``line`` of the uploaded file (None: not there)."""
    lines = origins(annotation)
    if lines is None:
        return line
    at = bisect.bisect_left(lines, line)  # derived files keep the uploaded file's order
    return at + 1 if at < len(lines) and lines[at] == line else None
