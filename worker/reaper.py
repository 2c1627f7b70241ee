"""Ends processes of runs that nobody supervises any more: the trainers of a worker killed with -9,
those of a job that a recovery sweep finished while its worker was frozen, an evaluation whose
worker went away. Each worker reaps its own node, from /proc (:mod:`worker.processes`): a run's
processes carry ``--spec DATA/runs/<job>/spec.json`` (or ``DATA/evaluations/<id>/spec.json``).

Only runs whose job or evaluation is finished in the database are touched: SIGTERM to the
trainers first (they save a checkpoint), SIGKILL of all of them after the cancel grace period.
"""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

from backend.db.session import session_scope
from backend.services import runs
from backend.settings import Settings
from worker import processes

log = logging.getLogger(__name__)


def kinds() -> dict[str, runs.RunKind]:
    """The kinds of run whose programs have a run folder, by its folder: DATA/<folder>/<id>."""
    return {k.program.folder: k for k in runs.ALL_KINDS.values() if k.program is not None}


def run_of(proc: processes.Proc, data: Path) -> tuple[str, int] | None:
    """("runs", 12) for a process of DATA/runs/12, None for anything else: by its ``--spec``, or
    by the run its environment names (a kernel build's compiler, whose trainer is gone)."""
    args = proc.argv
    specs = [Path(args[i + 1]) for i, a in enumerate(args[:-1]) if a == "--spec"]
    tag = None if specs else processes.run_tag(proc.pid)
    folders = kinds()
    for path in specs + ([Path(tag)] if tag else []):
        if path.name == "spec.json" and path.parent.parent.parent == data and path.parent.name.isdigit() \
                and path.parent.parent.name in folders:
            return path.parent.parent.name, int(path.parent.name)
    return None


class Reaper:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.data = settings.data_path.resolve()
        self.first_seen: dict[tuple[str, int], float] = {}

    def orphans(self) -> dict[tuple[str, int], list[processes.Proc]]:
        """This node's run processes whose job or evaluation is finished."""
        by_run: dict[tuple[str, int], list[processes.Proc]] = {}
        for p in processes.all_processes():
            key = run_of(p, self.data)
            if key is not None and processes.launched_by_worker(p):  # never a rerun by hand (issue 17)
                by_run.setdefault(key, []).append(p)
        if not by_run:
            return {}
        folders = kinds()
        with session_scope() as s:
            done = {key for key in by_run
                    if (row := s.get(folders[key[0]].table, key[1])) is None or row.status.finished}
        return {k: v for k, v in by_run.items() if k in done}

    def tick(self, followed: set[tuple[str, int]]) -> list[tuple[str, int]]:
        """SIGTERM on first sight, SIGKILL after the grace period; returns the runs acted on.
        ``followed``: the runs this worker supervises, as (folder, id): ("runs", 12)."""
        found = self.orphans()
        now = time.monotonic()
        for key, procs in found.items():
            if key in followed:
                continue  # its supervisor here is ending it
            first = self.first_seen.setdefault(key, now)
            if first == now:
                log.warning("%s %s is finished but %d of its processes still run: asking them to stop",
                            key[0], key[1], len(procs))
                processes.send([p.pid for p in processes.trainers(procs)], signal.SIGTERM)
            elif now - first > self.settings.cancel_grace_seconds:
                log.warning("%s %s: killing %d leftover processes", key[0], key[1], len(procs))
                processes.kill_groups(procs)
        for key in set(self.first_seen) - set(found):
            del self.first_seen[key]
        return list(found)
