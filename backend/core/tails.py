"""Reading a run folder's growing files from a byte offset: only complete lines, never the
whole file again. The worker streams a run with them; recovery continues from the offset the
worker stored last (``jobs.log_offset``), so what a dead worker left unread is read once."""

from __future__ import annotations

import json
from pathlib import Path


class LogTail:
    """New complete lines of a text log; tqdm-style carriage returns keep only the last state
    of a line."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = path
        self.offset = offset

    def read(self, final: bool = False) -> list[str]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = len(data) if final else data.rfind(b"\n") + 1
        self.offset += end
        text = data[:end].decode("utf-8", errors="replace")
        return [line.split("\r")[-1] for line in text.splitlines()]


class MetricsTail:
    """New complete JSON lines (metrics.jsonl, outputs.jsonl)."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = path
        self.offset = offset

    def read(self, final: bool = False) -> list[dict]:  # noqa: ARG002 - a half-written JSON line is not a row
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        return [json.loads(x) for x in data[:end].splitlines() if x.strip()]
