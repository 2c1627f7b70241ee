"""The worker's scheduler: one per worker process. It registers the node and its GPUs, claims
queued runs (training jobs and evaluations, :mod:`backend.services.runs`) from the database
while it has room (GPU leases, CPU slots), runs each in a thread, heartbeats for itself and its
runs, and sweeps for runs whose worker died.

Broker messages only wake it; it also polls, so no message needs to survive a broker restart.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import traceback

from sqlalchemy.orm import Session

from backend.db.session import session_scope
from backend.queue import wake_workers
from backend.services import chat as chat_svc
from backend.services import jobs as jobs_svc
from backend.services import model_imports as imports_svc
from backend.services import runs, scheduling
from backend.settings import Settings, get_settings
from worker import gpus
from worker.evaluation.launch import reattach_claimed as reattach_evaluation
from worker.evaluation.launch import run_claimed as run_evaluation
from worker.reaper import Reaper
from worker.training.launch import RunControl, reattach_claimed, run_claimed

log = logging.getLogger(__name__)
POLL_SECONDS = 1.0
Key = tuple[str, int]  # (kind, id): ("job", 12), ("evaluation", 3)


def _record_crash(kind: runs.RunKind, run_id: int, error: Exception) -> None:
    try:
        with session_scope() as s:
            runs.record_crash(s, kind, run_id, error, traceback.format_exc())
    except Exception:  # the database is down too: recovery will find the run silent
        log.exception("%s %s: could not record the crash", kind.name, run_id)


class Scheduler:
    def __init__(self, worker_name: str, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.name = worker_name
        self.node = self.settings.node_name or socket.gethostname()
        self.gpu_total, self.gpu_memory_mib = gpus.detect(self.settings)
        # With Slurm, the cluster places jobs on its GPUs: nothing is leased here, every job
        # takes one of the worker's slots, and the registered capacity is a Slurm node's.
        self.cluster = self.settings.backend != "local"
        # Evaluations have slots of their own: as many as the worker's Celery concurrency, in
        # which they used to run (a training job and an evaluation still run side by side).
        if self.cluster:
            self.gpu_total = getattr(self.settings, "slurm_gpus_per_node", None) or self.settings.gpus_per_node or 0
            jobs = max(self.settings.cpu_job_slots, self.settings.worker_concurrency)
        else:
            jobs = self.settings.cpu_job_slots
        self.slots = {runs.JOB.name: jobs, runs.EVALUATION.name: self.settings.worker_concurrency}
        self.runs: dict[Key, tuple[threading.Thread, RunControl, int]] = {}  # -> (thread, control, gpus)
        self.wakeup = threading.Event()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()
        self.reaper = Reaper(self.settings)
        self.db_failed_at: float | None = None

    def start(self) -> None:
        with session_scope() as s:
            scheduling.register_worker(s, self.name, self.node, self.gpu_total, self.gpu_memory_mib)
        log.info("scheduler %s on node %s: %d GPU(s), slots %s%s", self.name, self.node, self.gpu_total,
                 self.slots, " (cluster backend: no local leases)" if self.cluster else "")
        self.thread = threading.Thread(target=self._loop, name="vlstudio-scheduler", daemon=True)
        self.thread.start()

    def wake(self) -> None:
        self.wakeup.set()

    def _reap(self) -> None:
        with self.lock:
            for key in [k for k, (t, _, _) in self.runs.items() if not t.is_alive()]:
                del self.runs[key]

    def _claim_all(self) -> None:
        while not self.stopping.is_set():
            with self.lock:  # the runs that take a slot: all on a cluster, CPU runs here
                running = {k: sum(1 for (kind, _), (_, _, g) in self.runs.items()
                                  if kind == k and (self.cluster or g == 0)) for k in runs.KINDS}
            with session_scope() as s:
                claim = scheduling.claim_next(s, self.name, self.node, None if self.cluster else self.gpu_total,
                                              running, self.slots)
            if claim is None:
                return
            control = RunControl(None if self.cluster else claim.gpu_ids)
            t = threading.Thread(target=self._run, args=(claim, control), name=f"{claim.kind}-{claim.run_id}",
                                 daemon=True)
            with self.lock:
                self.runs[(claim.kind, claim.run_id)] = (t, control, len(claim.gpu_ids))
            t.start()

    def _adopt(self) -> None:
        """Cluster backend: follow again the runs the cluster still runs for a worker that is
        gone (this one before a restart, or another that went silent); nothing is resubmitted."""
        for kind in runs.KINDS.values():
            with self.lock:
                followed = {i for k, i in self.runs if k == kind.name}
            with session_scope() as s:
                ids = scheduling.adopt_cluster_jobs(s, self.name, self.settings.heartbeat_timeout_seconds, followed,
                                                    kind)
            for run_id in ids:
                log.warning("%s %s: reattaching to its cluster job", kind.name, run_id)
                control = RunControl(None)
                t = threading.Thread(target=self._follow, args=(kind, run_id, control), name=f"{kind.name}-{run_id}",
                                     daemon=True)
                with self.lock:
                    self.runs[(kind.name, run_id)] = (t, control, 0)
                t.start()

    def _follow(self, kind: runs.RunKind, run_id: int, control: RunControl) -> None:
        try:
            follow = reattach_claimed if kind is runs.JOB else reattach_evaluation
            log.info("%s %s: %s", kind.name, run_id, follow(run_id, control))
        except Exception:  # the run's heartbeat stops with this thread; another worker adopts it
            log.exception("%s %s: supervisor crashed", kind.name, run_id)
        finally:
            self.wake()

    def _run(self, claim: scheduling.Claim, control: RunControl) -> None:
        kind = runs.KINDS[claim.kind]
        try:
            if kind is runs.JOB:
                outcome = run_claimed(claim.run_id, self.name, claim.port, control)
            else:
                outcome = run_evaluation(claim.run_id, control)
            log.info("%s %s: %s", kind.name, claim.run_id, outcome)
        except Exception as e:  # recorded on the run as what it was (issue 18)
            log.exception("%s %s: supervisor crashed", kind.name, claim.run_id)
            _record_crash(kind, claim.run_id, e)
        finally:
            self.wake()  # leases were released: maybe another run fits now

    def _tick(self, last_beat: float) -> float:
        if time.monotonic() - last_beat < self.settings.heartbeat_seconds:
            return last_beat
        timeout = self.settings.heartbeat_timeout_seconds
        with session_scope() as s:
            self._beat(s)
            # Right after a database outage every heartbeat is old: give the other workers one
            # timeout to write theirs before calling anyone lost.
            if self.db_failed_at is None or time.monotonic() - self.db_failed_at > timeout:
                lost: list = jobs_svc.recover_lost_jobs(s, timeout, wake_workers)
                lost += [f"evaluation {i}" for i in runs.recover_lost(s, runs.EVALUATION, timeout)]
                lost += [f"chat {i}" for i in chat_svc.recover_lost(s, timeout)]
                lost += [f"model import {i}" for i in imports_svc.recover_lost(s, timeout)]
                if lost:
                    log.warning("recovered runs whose worker went silent: %s", lost)
        if self.cluster:
            self._adopt()
        with self.lock:
            folders = {(runs.KINDS[k].program.folder, i) for k, i in self.runs}
        self.reaper.tick(folders)
        return time.monotonic()

    def _beat(self, s: Session) -> None:
        """The heartbeat of this worker and of every run it follows."""
        with self.lock:
            followed = [k for k, (t, _, _) in self.runs.items() if t.is_alive()]
        scheduling.heartbeat(s, self.name, [i for k, i in followed if k == runs.JOB.name],
                             [i for k, i in followed if k == runs.EVALUATION.name])

    def _loop(self) -> None:
        last_beat = 0.0
        while not self.stopping.is_set():
            try:
                self._reap()
                last_beat = self._tick(last_beat)
                self._claim_all()
            except Exception:  # a database outage must not end the scheduler; it retries
                self.db_failed_at = time.monotonic()
                log.exception("scheduler tick failed; retrying")
            self.wakeup.wait(min(POLL_SECONDS, self.settings.heartbeat_seconds))
            self.wakeup.clear()

    def shutdown(self, reason: str | None = None) -> None:
        """Stop claiming; ask running jobs to checkpoint and stop, and wait for them (up to the
        cancel grace period plus a margin)."""
        self.stopping.set()
        self.wake()
        reason = reason or f"worker {self.name} shut down"
        with self.lock:
            followed = list(self.runs.values())
        for _, control, _ in followed:
            control.drain_reason = reason
        deadline = time.monotonic() + self.settings.cancel_grace_seconds + 30
        # The runs' heartbeats go on while they checkpoint and stop (the scheduler's loop has
        # ended): a drain longer than the heartbeat timeout was swept as a lost worker ("stopped
        # sending heartbeats... killed") while this worker was alive and recording "shut down".
        while (alive := [t for t, _, _ in followed if t.is_alive()]) and time.monotonic() < deadline:
            alive[0].join(max(0.0, min(self.settings.heartbeat_seconds, deadline - time.monotonic())))
            try:
                with session_scope() as s:
                    self._beat(s)
            except Exception:  # a database outage: the runs record their own verdict when it is back
                log.exception("heartbeat during shutdown failed")
        try:
            with session_scope() as s:
                scheduling.unregister_worker(s, self.name)
        except Exception:
            log.exception("could not unregister worker %s", self.name)


_scheduler: Scheduler | None = None
_lock = threading.Lock()


def get_scheduler(worker_name: str) -> Scheduler:
    """The process' scheduler, started on first use."""
    global _scheduler
    with _lock:
        if _scheduler is None:
            _scheduler = Scheduler(worker_name)
            _scheduler.start()
        return _scheduler


def current() -> Scheduler | None:
    return _scheduler
