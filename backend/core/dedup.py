"""Repeated 64-bit hashes among (hash, line) records, in memory that does not grow with the
line count.

Records are appended to an anonymous temporary file (12 bytes a line, removed by the OS
even if the process dies). At the end the file is read in ``passes`` rounds; round ``p``
keeps the records whose ``hash % passes == p``, so equal hashes meet in the same round and
each round holds at most about ``budget`` records.
"""

from __future__ import annotations

import math
import tempfile
from array import array
from pathlib import Path

import numpy as np

RECORD = np.dtype([("h", "<u8"), ("l", "<u4")])


class DuplicateFinder:
    def __init__(self, tmpdir: Path | None = None, budget: int = 1 << 17) -> None:
        self._file = tempfile.TemporaryFile(dir=tmpdir, prefix="vlstudio-dedup-")  # noqa: SIM115 (closed in close())
        self.count = 0
        self.budget = budget

    def add(self, hashes: array, lines: array) -> None:
        """Append records; lines must arrive in ascending order (file order)."""
        if not len(hashes):
            return
        rec = np.empty(len(hashes), RECORD)
        rec["h"] = np.frombuffer(hashes, dtype=np.uint64)
        rec["l"] = np.frombuffer(lines, dtype=np.uint32)
        self._file.write(rec.tobytes())
        self.count += len(rec)

    def _round(self, passes: int, p: int) -> np.ndarray:
        self._file.seek(0)
        parts = []
        while block := self._file.read(RECORD.itemsize * (1 << 16)):
            rec = np.frombuffer(block, dtype=RECORD)
            parts.append(rec[rec["h"] % np.uint64(passes) == p] if passes > 1 else rec.copy())
        return np.concatenate(parts) if parts else np.zeros(0, RECORD)

    def duplicates(self) -> tuple[np.ndarray, np.ndarray]:
        """(line, first line with the same hash) of every repeated hash, in line order."""
        dups, firsts = [], []
        passes = max(1, math.ceil(self.count / self.budget))
        for p in range(passes if self.count > 1 else 0):
            rec = self._round(passes, p)
            order = np.argsort(rec["h"], kind="stable")  # stable: within a group, lines stay ascending
            hs, ls = rec["h"][order], rec["l"][order]
            del rec, order
            new_group = np.concatenate(([True], hs[1:] != hs[:-1]))
            if new_group.all():
                continue
            first = ls[np.flatnonzero(new_group)][np.cumsum(new_group) - 1]
            dups.append(ls[~new_group])
            firsts.append(first[~new_group])
        if not dups:
            return np.zeros(0, np.uint32), np.zeros(0, np.uint32)
        d, f = np.concatenate(dups), np.concatenate(firsts)
        by_line = np.argsort(d, kind="stable")
        return d[by_line], f[by_line]

    def close(self) -> None:
        self._file.close()
