"""Which checkpoints of a run are complete: the one rule that resume, Slurm's requeue and the
trainer's own ``resume_from_checkpoint: latest`` share.

The Hugging Face Trainer writes ``checkpoint-N/`` piece by piece (weights, each rank's optimizer
shard and RNG state, then rank 0's ``trainer_state.json``) with no barrier before the last file,
so neither the folder nor ``trainer_state.json`` says that every rank finished. The trainer
(:class:`worker.training.callbacks.SealCallback`) writes :data:`COMPLETE` into the folder once
every rank has returned from the save; a folder without it (the run was killed mid-save) is
never resumed from.

Rotation (``save_total_limit``) is ours too, run right after a seal: the Trainer's own deletes
the older checkpoints *before* the new one is sealed, so with a limit of 1 a kill in between
would leave nothing to resume from.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

COMPLETE = "vlstudio_complete.json"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def is_complete(ckpt: Path) -> bool:
    return (ckpt / COMPLETE).is_file()


def latest_complete(checkpoints: Path) -> Path | None:
    """The highest ``checkpoint-N`` under ``checkpoints`` that was sealed; None if there is none."""
    if not checkpoints.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in checkpoints.iterdir()
             if (m := CHECKPOINT_RE.match(p.name)) and is_complete(p)]
    return max(found)[1] if found else None


def write_marker(path: Path, data: dict) -> None:
    """A small JSON file that a reader sees whole or not at all (written aside, synced, renamed
    into place): the checkpoint seal and the run's ``outcome.json``."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(data) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def seal(ckpt: Path, step: int) -> None:
    """Mark ``ckpt`` complete."""
    write_marker(ckpt / COMPLETE, {"step": step})


def rotate(checkpoints: Path, keep: int) -> list[Path]:
    """After a seal: keep the ``keep`` newest sealed checkpoints and delete the older ones, and
    any unsealed one older than the newest sealed (what a cut save left). A folder newer than
    the newest sealed one may still be being written and is never touched. Returns what was
    deleted, oldest first."""
    if not checkpoints.is_dir():
        return []
    found = sorted((int(m.group(1)), p) for p in checkpoints.iterdir() if (m := CHECKPOINT_RE.match(p.name)))
    sealed = [(n, p) for n, p in found if is_complete(p)]
    if not sealed:
        return []
    kept = {p for _, p in sealed[-max(keep, 1):]}
    newest = sealed[-1][0]
    gone = [p for n, p in found if n < newest and p not in kept]
    for p in gone:
        shutil.rmtree(p)
    return gone
