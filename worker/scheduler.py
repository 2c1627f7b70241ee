"""The worker's scheduler: one per worker process. It registers the node and its GPUs, claims
queued jobs from the database while it has room (GPU leases, CPU slots), runs each in a
thread, heartbeats for itself and its jobs, and sweeps for jobs whose worker died.

Broker messages only wake it; it also polls, so no message needs to survive a broker restart.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import traceback

from backend.db.models import Evaluation
from backend.db.session import session_scope
from backend.queue import wake_workers
from backend.services import chat as chat_svc
from backend.services import evaluations as evals_svc
from backend.services import jobs as jobs_svc
from backend.services import model_imports as imports_svc
from backend.services import scheduling
from backend.settings import Settings, get_settings
from worker import gpus
from worker.evaluation.launch import reattach_claimed as reattach_evaluation
from worker.launcher import RunControl, reattach_claimed, run_claimed
from worker.reaper import Reaper

log = logging.getLogger(__name__)


def _record_crash(job_id: int, error: Exception) -> None:
    try:
        with session_scope() as s:
            jobs_svc.record_crash(s, job_id, error, traceback.format_exc())
    except Exception:  # the database is down too: recovery will find the job silent
        log.exception("job %s: could not record the crash", job_id)
POLL_SECONDS = 1.0


class Scheduler:
    def __init__(self, worker_name: str, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.name = worker_name
        self.node = self.settings.node_name or socket.gethostname()
        self.gpu_total, self.gpu_memory_mib = gpus.detect(self.settings)
        # With Slurm, the cluster places jobs on its GPUs: nothing is leased here, every job
        # takes one of the worker's slots, and the registered capacity is a Slurm node's.
        self.cluster = self.settings.backend != "local"
        if self.cluster:
            self.gpu_total = getattr(self.settings, "slurm_gpus_per_node", None) or self.settings.gpus_per_node or 0
            self.slots = max(self.settings.cpu_job_slots, self.settings.worker_concurrency)
        else:
            self.slots = self.settings.cpu_job_slots
        self.runs: dict[int, tuple[threading.Thread, RunControl, int]] = {}  # job id -> (thread, control, gpus)
        self.wakeup = threading.Event()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()
        self.evaluations: dict[int, RunControl] = {}  # evaluation id -> control (run in Celery tasks)
        self.reaper = Reaper(self.settings)
        self.db_failed_at: float | None = None

    def start(self) -> None:
        with session_scope() as s:
            scheduling.register_worker(s, self.name, self.node, self.gpu_total, self.gpu_memory_mib)
        log.info("scheduler %s on node %s: %d GPU(s), %d slot(s)%s", self.name, self.node, self.gpu_total,
                 self.slots, " (cluster backend: no local leases)" if self.cluster else "")
        self.thread = threading.Thread(target=self._loop, name="vlstudio-scheduler", daemon=True)
        self.thread.start()

    def wake(self) -> None:
        self.wakeup.set()

    def _reap(self) -> None:
        with self.lock:
            for job_id in [j for j, (t, _, _) in self.runs.items() if not t.is_alive()]:
                del self.runs[job_id]

    def _claim_all(self) -> None:
        while not self.stopping.is_set():
            with self.lock:
                running = len(self.runs) if self.cluster else sum(1 for _, _, g in self.runs.values() if g == 0)
            with session_scope() as s:
                claim = scheduling.claim_next(s, self.name, self.node, None if self.cluster else self.gpu_total,
                                              running, self.slots)
            if claim is None:
                return
            control = RunControl(None if self.cluster else claim.gpu_ids)
            t = threading.Thread(target=self._run, args=(claim, control), name=f"job-{claim.job_id}", daemon=True)
            with self.lock:
                self.runs[claim.job_id] = (t, control, len(claim.gpu_ids))
            t.start()

    def _adopt(self) -> None:
        """Cluster backend: follow again the runs the cluster still runs for a worker that is
        gone (this one before a restart, or another that went silent); nothing is resubmitted."""
        with self.lock:
            followed = set(self.runs)
        with session_scope() as s:
            ids = scheduling.adopt_cluster_jobs(s, self.name, self.settings.heartbeat_timeout_seconds, followed)
        for job_id in ids:
            log.warning("job %s: reattaching to its cluster job", job_id)
            control = RunControl(None)
            t = threading.Thread(target=self._follow, args=(job_id, control), name=f"job-{job_id}", daemon=True)
            with self.lock:
                self.runs[job_id] = (t, control, 0)
            t.start()
        # Evaluations the same way, through the same supervisor (worker.evaluation.launch)
        with self.lock:
            followed = set(self.evaluations)
        with session_scope() as s:
            ids = scheduling.adopt_cluster_jobs(s, self.name, self.settings.heartbeat_timeout_seconds, followed,
                                                table=Evaluation)
        for evaluation_id in ids:
            log.warning("evaluation %s: reattaching to its cluster job", evaluation_id)
            control = RunControl(None)
            with self.lock:
                self.evaluations[evaluation_id] = control  # heartbeats and drains it like a claimed one
            threading.Thread(target=self._follow_evaluation, args=(evaluation_id, control),
                             name=f"evaluation-{evaluation_id}", daemon=True).start()

    def _follow(self, job_id: int, control: RunControl) -> None:
        try:
            log.info("job %s: %s", job_id, reattach_claimed(job_id, control))
        except Exception:  # the job's heartbeat stops with this thread; another worker adopts it
            log.exception("job %s: supervisor crashed", job_id)
        finally:
            self.wake()

    def _follow_evaluation(self, evaluation_id: int, control: RunControl) -> None:
        try:
            log.info("evaluation %s: %s", evaluation_id, reattach_evaluation(evaluation_id, control))
        except Exception:  # as for a job: no heartbeat any more, adopted again
            log.exception("evaluation %s: supervisor crashed", evaluation_id)
        finally:
            self.evaluation_done(evaluation_id)

    def _run(self, claim: scheduling.Claim, control: RunControl) -> None:
        try:
            outcome = run_claimed(claim.job_id, self.name, claim.port, control)
            log.info("job %s: %s", claim.job_id, outcome)
        except Exception as e:  # recorded on the job as what it was (issue 18)
            log.exception("job %s: supervisor crashed", claim.job_id)
            _record_crash(claim.job_id, e)
        finally:
            self.wake()  # leases were released: maybe another job fits now

    def _tick(self, last_beat: float) -> float:
        if time.monotonic() - last_beat < self.settings.heartbeat_seconds:
            return last_beat
        timeout = self.settings.heartbeat_timeout_seconds
        with session_scope() as s:
            scheduling.heartbeat(s, self.name, list(self.runs))
            for evaluation_id in list(self.evaluations):
                evals_svc.heartbeat(s, evaluation_id)
            # Right after a database outage every heartbeat is old: give the other workers one
            # timeout to write theirs before calling anyone lost.
            if self.db_failed_at is None or time.monotonic() - self.db_failed_at > timeout:
                lost = jobs_svc.recover_lost_jobs(s, timeout, wake_workers)
                lost += [f"evaluation {i}" for i in evals_svc.recover_lost_evaluations(s, timeout)]
                lost += [f"chat {i}" for i in chat_svc.recover_stale(s, timeout)]
                lost += [f"model import {i}" for i in imports_svc.recover_stale(s, timeout)]
                if lost:
                    log.warning("recovered runs whose worker went silent: %s", lost)
        if self.cluster:
            self._adopt()
        with self.lock:
            followed = set(self.runs)
        self.reaper.tick(followed)
        return time.monotonic()

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

    def lease_for_evaluation(self, evaluation_id: int, control: RunControl) -> list[int] | None:
        """The GPU an evaluation runs on, leased like a training job's (waits while none is
        free, heartbeating the evaluation); [] on a node without GPUs; None when a cluster
        scheduler places the run. ``control`` is drained on shutdown like a job's."""
        with self.lock:
            self.evaluations[evaluation_id] = control
        if self.cluster:
            return None
        if not self.gpu_total:
            return []
        while not self.stopping.is_set():
            with session_scope() as s:
                got = scheduling.lease_for_evaluation(s, self.node, evaluation_id, self.gpu_total)
                if got is not None:
                    return got
                evals_svc.heartbeat(s, evaluation_id)
            self.wakeup.wait(POLL_SECONDS)
        raise RuntimeError(f"worker {self.name} is shutting down")

    def evaluation_done(self, evaluation_id: int) -> None:
        with self.lock:
            self.evaluations.pop(evaluation_id, None)
        self.wake()  # its GPU is free: maybe a job fits now

    def shutdown(self, reason: str | None = None) -> None:
        """Stop claiming; ask running jobs to checkpoint and stop, and wait for them (up to the
        cancel grace period plus a margin)."""
        self.stopping.set()
        self.wake()
        reason = reason or f"worker {self.name} shut down"
        with self.lock:
            runs = list(self.runs.values())
            evaluations = list(self.evaluations.values())
        for _, control, _ in runs:
            control.drain_reason = reason
        for control in evaluations:
            control.drain_reason = reason
        deadline = time.monotonic() + self.settings.cancel_grace_seconds + 30
        for t, _, _ in runs:
            t.join(max(0.0, deadline - time.monotonic()))
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
