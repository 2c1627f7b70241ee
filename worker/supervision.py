"""The one supervisor of a launched run, training or evaluation: its log and rows into the
database in batches, cooperative cancel with escalation, and the verdict when it exits.

What differs between a training job and an evaluation is the kind of its :class:`Record`
(:class:`backend.services.runs.RunRecord`: which tables, which success rule); the loop is the same. A database error does not end a run: the batch that
failed stays pending and is retried with backoff, and nothing more is read from the run folder
meanwhile (the files are the buffer), so a blip of a few minutes loses no line and stores none
twice. The byte offsets are stored with the lines they cover, in one transaction, so a recovery
after a worker died continues from exactly there.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from backend.core.tails import LogTail, MetricsTail
from backend.db.models import JobStatus
from backend.db.session import session_scope
from backend.services.runs import Batch
from backend.settings import get_settings
from worker import gpus
from worker.build_locks import BuildWait
from worker.runtime import Executor, Launch, LaunchError

log = logging.getLogger(__name__)
S = JobStatus
TAIL_LINES = 20
MAX_BACKOFF = 10.0


@dataclass
class End:
    """What the supervisor knows about how the run ended, for the record's verdict."""

    rc: int
    killed: bool = False
    grace: float = 0.0
    drain_reason: str | None = None
    launch_error: str | None = None
    tail: list[str] = field(default_factory=list)


class Record(Protocol):
    """The database side of one run."""

    label: str  # "job 12", "evaluation 3"

    def store(self, s: Session, batch: Batch) -> JobStatus: ...

    def verdict(self, s: Session, end: End) -> str: ...

    def notes(self) -> list[str]: ...  # system lines to add to the next batch (reporter warnings)


class RunControl:
    """What the worker tells a running job from outside: stop because the worker is going away."""

    def __init__(self, gpu_ids: list[int] | None = None) -> None:
        self.gpu_ids = gpu_ids  # None: not leased here (cluster backend), leave the devices alone
        self.drain_reason: str | None = None
        self.done = threading.Event()


class Supervision:
    def __init__(self, record: Record, executor: Executor, control: RunControl, logs: LogTail,
                 rows: MetricsTail) -> None:
        self.record, self.executor, self.control = record, executor, control
        self.logs, self.rows = logs, rows
        self.settings = get_settings()
        self.tail: list[str] = []
        self.pending: Batch | None = None
        self.system: list[str] = []
        self.stop_sent_at: float | None = None
        self.killed = False
        self.failing_since: float | None = None
        self.failures = 0
        self.next_gpu_sample = time.monotonic()
        self.builds: BuildWait | None = None  # kernel-build locks: stale ones broken, waits said

    # ------------------------------------------------------------------------------ database
    def _db(self, fn):  # noqa: ANN001, ANN202 - fn(session) -> value
        """``fn`` in one transaction; None (and a backoff) on a database error."""
        try:
            with session_scope() as s:
                out = fn(s)
        except IntegrityError:
            raise  # not a blip: retrying would fail the same way
        except SQLAlchemyError as e:
            self.failures += 1
            if self.failing_since is None:
                self.failing_since = time.monotonic()
                log.warning("%s: database write failed (%s); retrying with backoff, nothing is lost",
                            self.record.label, str(e).splitlines()[0][:200])
            return None
        if self.failing_since is not None:
            log.warning("%s: database back after %.0fs (%d failed writes)", self.record.label,
                        time.monotonic() - self.failing_since, self.failures)
            self.failing_since, self.failures = None, 0
        return out

    def _backoff(self) -> float:
        if self.failing_since is None:
            return self.settings.stream_poll_seconds
        return min(MAX_BACKOFF, self.settings.stream_poll_seconds * 2 ** min(self.failures, 8))

    def _outage_too_long(self) -> bool:
        return self.failing_since is not None and \
            time.monotonic() - self.failing_since > self.settings.db_outage_seconds

    # ------------------------------------------------------------------------------ the loop
    def _gpu_rows(self) -> list[dict]:
        if not self.control.gpu_ids or time.monotonic() < self.next_gpu_sample:
            return []
        self.next_gpu_sample = time.monotonic() + self.settings.gpu_sample_seconds
        sample = gpus.sample(self.control.gpu_ids or [])
        return [{"kind": "gpu", **sample}] if sample else []

    def _read(self, final: bool) -> Batch:
        lines = self.logs.read(final=final)
        rows = self.rows.read() + self._gpu_rows()
        system, self.system = self.system + self.record.notes(), []
        self.tail = (self.tail + lines)[-TAIL_LINES:]
        return Batch(system, lines, rows, self.logs.offset, self.rows.offset)

    def _steer(self, status: JobStatus | None) -> None:
        if status is not None and status.finished and not self.killed:
            self.executor.kill()  # finished elsewhere (a sweep after a long stall): never two attempts
            self.killed = True
        elif ((status == S.stopping or self.control.drain_reason) and self.stop_sent_at is None):
            self.executor.terminate()  # every trainer saves a checkpoint and exits
            self.stop_sent_at = time.monotonic()
        elif (self.stop_sent_at is not None and not self.killed
              and time.monotonic() - self.stop_sent_at > self.settings.cancel_grace_seconds):
            self.executor.kill()
            self.killed = True

    def follow(self) -> int:
        read_after_exit = False  # the pending batch was read after the run ended: it is the last
        while True:
            rc = self.executor.poll()
            if self.pending is None:
                read_after_exit = rc is not None
                self.pending = self._read(final=read_after_exit)
            batch = self.pending
            status = self._db(lambda s, b=batch: self.record.store(s, b))
            if status is not None:
                self.pending = None
            elif rc is not None and self._outage_too_long():
                raise RuntimeError(f"{self.record.label}: database unreachable for "
                                   f"{self.settings.db_outage_seconds:.0f}s after the run ended")
            if rc is not None and self.pending is None and read_after_exit:
                return rc
            if rc is None:
                self._steer(status)
                if self.builds is not None:
                    self.system += self.builds.notes()
            time.sleep(self._backoff())

    def run(self, launch: Launch, reattach: bool = False) -> str:
        """Start (or follow again) ``launch`` and supervise it to its verdict."""
        self.builds = BuildWait(launch.environment())
        self.system += self.builds.notes()  # a lock left by a build killed earlier would hang this run
        try:
            if not (reattach and self.executor.reattach(launch)):
                self.executor.start(launch)  # the command line once, when it starts, not per worker that follows it
                self.system.append(f"$ {' '.join(launch.local_command())}")
            rc = self.follow()
            end = End(rc, self.killed, self.settings.cancel_grace_seconds, self.control.drain_reason,
                      tail=self.tail)
        except LaunchError as e:
            self.system.append(f"cannot launch: {e}")
            self.pending = self._read(final=True)
            while self._db(lambda s: self.record.store(s, self.pending)) is None and not self._outage_too_long():
                time.sleep(self._backoff())
            end = End(1, launch_error=str(e))
        while True:
            verdict = self._db(lambda s: self.record.verdict(s, end))
            if verdict is not None:
                return verdict
            if self._outage_too_long():
                raise RuntimeError(f"{self.record.label}: could not record the verdict (database unreachable)")
            time.sleep(self._backoff())
