"""The trainer's last word in its run folder: ``RUN/outcome.json``.

Rank 0 writes it (atomically: a temporary file renamed into place) as the very last thing it
does: ``{"outcome": "done", "step": N}`` once ``final/`` is completely written, or
``{"outcome": "stopped", "step": N}`` after the checkpoint it saved on SIGTERM. It removes an
earlier one when a run starts in the same folder (a Slurm requeue continues in place).

So whoever looks at the folder afterwards can tell a finished run from one that died, without
the trainer's exit code: the worker's verdict (``final/`` written but no ``done``: the save was
cut, the job fails) and the lost-job sweep (a worker killed after its trainer finished: the job
succeeded, nothing is retrained).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from backend.core.checkpoints import write_marker

OUTCOME_NAME = "outcome.json"
DONE, STOPPED = "done", "stopped"


def write(run: Path, outcome: str, step: int) -> None:
    write_marker(run / OUTCOME_NAME, {"outcome": outcome, "step": step, "time": time.time()})


def clear(run: Path) -> None:
    (run / OUTCOME_NAME).unlink(missing_ok=True)


def read(run: str | Path | None) -> dict | None:
    """The outcome the trainer wrote, or None (none yet, or the folder is unreadable here)."""
    if not run:
        return None
    try:
        found = json.loads((Path(run) / OUTCOME_NAME).read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def finished(run: str | Path | None) -> bool:
    """The trainer wrote its final model completely."""
    found = read(run)
    return found is not None and found.get("outcome") == DONE
