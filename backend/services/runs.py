"""One lifecycle for every kind of run a worker does (training jobs, evaluations, model imports,
playground chats).

A :class:`RunKind` names what differs between kinds: the tables (the run, its log lines) and,
for a kind whose work is a program launched in a run folder (:class:`Program`: training,
evaluation), the files of that folder, how the rows its program writes are stored, its progress
fields and its success rule. A model import and a chat have no program: the worker converts an
import in a thread of its own (:mod:`worker.model_imports`) and generates a chat's reply in a
batch of its model server (:mod:`worker.serving`), so they have no run folder and no log table,
only their state, their output and their reason. Everything else is written once here and
serves every kind:

- the legal states and the one compare-and-set :func:`transition` (finishing releases the
  run's GPU leases in the same transaction), :func:`claim`, :func:`request_cancel`;
- the log store (:func:`next_seq`, :func:`append_logs`, :func:`logs_after`);
- :class:`RunRecord`, the database side of a supervised run: a batch of log lines and rows
  with the offsets they reach in one transaction, retried safely, and the verdict when the
  program exits;
- :func:`recover_lost` (a run whose worker went silent) and :func:`record_crash` (a run whose
  supervisor raised), which store what the run folder still holds with the record's own code.

The queue (which queued run a worker takes, on which GPUs) is :mod:`backend.services.scheduling`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from backend.core import checkpoints, failure, run_outcome
from backend.core.clock import now
from backend.core.eval_spec import EvaluationSpec
from backend.core.mixture import with_trained
from backend.core.tails import LogTail, MetricsTail
from backend.db.models import (
    ChatRequest,
    Evaluation,
    EvaluationLog,
    EvaluationSample,
    GpuLease,
    Job,
    JobLog,
    JobMetric,
    JobStatus,
    ModelImport,
)
from backend.services.errors import Conflict, NotFound

S = JobStatus
ACTIVE = (S.starting, S.running, S.stopping)
LEGAL: dict[JobStatus, set[JobStatus]] = {
    S.queued: {S.starting, S.cancelled, S.failed},
    S.starting: {S.running, S.stopping, S.failed, S.cancelled},
    S.running: {S.stopping, S.succeeded, S.failed},
    S.stopping: {S.cancelled, S.failed, S.succeeded},
    S.succeeded: set(),
    S.failed: set(),
    S.cancelled: set(),
}
# Written into the run folder by a cluster backend once the cluster accepted the run (the Slurm
# job id): the run goes on without its worker, so it is adopted, never failed for silence.
CLUSTER_JOB_FILE = "slurm_job_id"


@dataclass
class Batch:
    """What one tick of a supervisor read, with the offsets reached: stored in one transaction."""

    system: list[str]
    lines: list[str]
    rows: list[dict]
    log_offset: int
    rows_offset: int


@dataclass(frozen=True)
class Program:
    """What a kind whose work is a program launched in a run folder adds to its lifecycle."""

    folder: str  # DATA/<folder>/<id> is its run folder
    log_file: str  # the program's log in the run folder
    rows_file: str  # the program's rows (JSON lines) in the run folder
    rows_offset: str  # the run's column: bytes of rows_file stored
    name: str  # who runs: "trainer", "evaluation"
    result: str  # what a successful program leaves: for "exited without writing ..."
    result_note: str  # where the user finds it, once succeeded
    # the rows: (session, run id, first number, rows, step of a row without one) -> how many
    # stored; how many of ``rows`` it stores; the next free number
    add_rows: Callable[[Session, int, int, Sequence[dict], int], int]
    stored_rows: Callable[[Sequence[dict]], int]
    next_row: Callable[[Session, int], int]
    # the progress columns after ``rows`` (stored) moved the record on
    progress: Callable[[RunRecord, Sequence[dict]], dict[str, Any]]
    # the success rule: the columns to set when the run folder holds a finished run, else None
    success: Callable[[Path], dict[str, Any] | None]
    # what the run saved that a failure keeps (a checkpoint): (note for the reason, columns)
    saved: Callable[[Path], tuple[str, dict[str, Any]]] = lambda _run: ("", {})


@dataclass(frozen=True)
class RunKind:
    """What one kind of run is made of; the lifecycle is the same for all."""

    name: str  # "job", "evaluation", "import", "chat": the live channel, the scheduler's key
    table: type[Job] | type[Evaluation] | type[ModelImport] | type[ChatRequest]
    fk: str  # the log rows' (and GPU leases') column naming the run
    logs: type[JobLog] | type[EvaluationLog] | None = None  # None: the reason is its only record
    program: Program | None = None  # None: not a program in a run folder (a model import, a chat)
    noun: str = ""  # in messages, if not its name: "model import"

    @property
    def label(self) -> str:
        return self.noun or self.name

    def run_dir(self, data: Path, run_id: int) -> Path:
        assert self.program is not None, f"a {self.label} has no run folder"
        return data / self.program.folder / str(run_id)


Run = Job | Evaluation | ModelImport | ChatRequest
OnFailed = Callable[[Session, Any], object]  # after a failure that is not the program's own


# ------------------------------------------------------------------------------ state machine
def get(session: Session, kind: RunKind, run_id: int) -> Any:
    run = session.get(kind.table, run_id)
    if run is None:
        raise NotFound(f"{kind.label} {run_id} not found")
    return run


def transition(session: Session, kind: RunKind, run_id: int, new: JobStatus, **fields: Any) -> bool:
    """Move a run to ``new`` if that is legal from its current state (compare-and-set).
    Finishing releases its GPU leases in the same transaction."""
    run = get(session, kind, run_id)
    session.refresh(run)
    current = run.status
    if new not in LEGAL[current]:
        raise Conflict(f"{kind.label} {run_id} cannot go from {current.value} to {new.value}")
    values: dict[str, Any] = {"status": new, "updated_at": now(), **fields}
    if new.finished:
        values.setdefault("finished_at", now())
    t = kind.table
    res = session.execute(update(t).where(t.id == run_id, t.status == current).values(**values))
    if res.rowcount == 1 and new.finished and hasattr(GpuLease, kind.fk):  # a kind that leases GPUs
        session.execute(delete(GpuLease).where(getattr(GpuLease, kind.fk) == run_id))
    session.commit()
    session.refresh(run)
    return res.rowcount == 1


def claim(session: Session, kind: RunKind, run_id: int, worker: str) -> bool:
    """Atomically take one queued run. False if another worker (or a redelivered message)
    already took it, or if it was cancelled meanwhile."""
    t = kind.table
    res = session.execute(update(t).where(t.id == run_id, t.status == S.queued)
                          .values(status=S.starting, worker=worker, started_at=now(), heartbeat_at=now(),
                                  updated_at=now()))
    session.commit()
    return res.rowcount == 1


def mark_running(session: Session, kind: RunKind, run_id: int) -> None:
    """Starting -> running once its work shows, in the caller's transaction; a compare-and-set,
    so a cancel that came meanwhile (starting -> stopping) is kept."""
    t = kind.table
    session.execute(update(t).where(t.id == run_id, t.status == S.starting).values(status=S.running, updated_at=now()))


def request_cancel(session: Session, kind: RunKind, run: Run) -> None:
    """Queued: cancelled at once. Starting or running: stopping (its supervisor terminates the
    program, which saves and exits, and records the verdict)."""
    if run.status == S.queued:
        transition(session, kind, run.id, S.cancelled, failure_reason="cancelled before it started")
    elif run.status in (S.starting, S.running):
        transition(session, kind, run.id, S.stopping, failure_reason="cancel requested")
    elif run.status != S.stopping:
        raise Conflict(f"{kind.label} {run.id} is {run.status.value}; nothing to cancel")
    session.refresh(run)


def on_cluster(run: Run) -> bool:
    return bool(run.run_dir) and (Path(run.run_dir) / CLUSTER_JOB_FILE).exists()


# ---------------------------------------------------------------------------------- log store
def next_seq(session: Session, kind: RunKind, run_id: int) -> int:
    fk = getattr(kind.logs, kind.fk)
    return (session.scalar(select(func.max(kind.logs.seq)).where(fk == run_id)) or 0) + 1


def add_logs(session: Session, kind: RunKind, run_id: int, first_seq: int, lines: Sequence[tuple[str, str]]) -> None:
    """(stream, line) pairs with consecutive numbers, in the caller's transaction."""
    session.add_all(kind.logs(**{kind.fk: run_id}, seq=first_seq + i, stream=stream, line=line)
                    for i, (stream, line) in enumerate(lines))


def append_logs(session: Session, kind: RunKind, run_id: int, first_seq: int, lines: Sequence[str],
                stream: str = "stdout") -> int:
    """Store lines with consecutive sequence numbers; returns the next free number."""
    add_logs(session, kind, run_id, first_seq, [(stream, line) for line in lines])
    session.commit()
    return first_seq + len(lines)


def system_line(session: Session, kind: RunKind, run_id: int, lines: Sequence[str]) -> None:
    """The studio's own lines in the run's log; a kind without a log table (an import, a chat)
    has its reason as its only record, which the caller has stored with the transition."""
    if kind.logs is None:
        return
    append_logs(session, kind, run_id, next_seq(session, kind, run_id), lines, stream="system")


def logs_after(session: Session, kind: RunKind, run_id: int, after: int = 0, limit: int = 1000) -> list:
    fk = getattr(kind.logs, kind.fk)
    return list(session.scalars(select(kind.logs).where(fk == run_id, kind.logs.seq > after)
                                .order_by(kind.logs.seq).limit(limit)))


# ------------------------------------------------------------------------------ the record
class Reporter(Protocol):
    """An outside tracker fed with a run's rows (MLflow, W&B: :mod:`worker.reporting`)."""

    def notes(self) -> list[str]: ...

    def log(self, rows: list[dict]) -> None: ...

    def close(self, timeout: float = 30.0) -> None: ...


class RunRecord:
    """The database side of one supervised run: its log lines, rows, progress and offsets,
    stored a batch at a time, and its verdict. The same for every kind."""

    def __init__(self, kind: RunKind, run_id: int, run_dir: Path, reporters: Sequence[Reporter] = (),
                 on_failed: OnFailed | None = None, session: Session | None = None) -> None:
        assert kind.program is not None, f"a {kind.label} is no supervised program"
        self.kind, self.program, self.id, self.run_dir = kind, kind.program, run_id, run_dir
        self.label = f"{kind.name} {run_id}"
        if session is None:
            from backend.db.session import session_scope

            with session_scope() as s:
                self._read(s)
        else:
            self._read(session)
        self.total: int | None = None
        self.unsure = False  # the last attempt failed: its commit may have landed all the same
        self.reporters = list(reporters)
        self.on_failed = on_failed

    def _read(self, s: Session) -> None:
        run = get(s, self.kind, self.id)
        self.log_seq, self.row_seq = next_seq(s, self.kind, self.id), self.program.next_row(s, self.id)
        self.offsets = (run.log_offset, getattr(run, self.program.rows_offset))
        self.step = 0

    def notes(self) -> list[str]:
        return [n for r in self.reporters for n in r.notes()]

    def _status(self, s: Session) -> JobStatus | None:
        return s.scalar(select(self.kind.table.status).where(self.kind.table.id == self.id))

    def _landed(self, s: Session, batch: Batch) -> bool:
        """After a failed attempt: did its commit land anyway (the connection died after the
        server committed)? Only this supervisor numbers this run's rows, so the next free
        numbers tell."""
        n, m = len(batch.system) + len(batch.lines), self.program.stored_rows(batch.rows)
        return bool(n or m) and (next_seq(s, self.kind, self.id), self.program.next_row(s, self.id)) == \
            (self.log_seq + n, self.row_seq + m)

    def write(self, s: Session, batch: Batch) -> None:
        """The batch's lines and rows, its offsets and the progress they show, in the caller's
        transaction (the supervisor's tick, or a recovery storing what a dead worker left)."""
        k, p, t = self.kind, self.program, self.kind.table
        add_logs(s, k, self.id, self.log_seq, [("system", x) for x in batch.system]
                 + [("stdout", x) for x in batch.lines])
        p.add_rows(s, self.id, self.row_seq, batch.rows, self.step)
        values = {"log_offset": batch.log_offset, p.rows_offset: batch.rows_offset,
                  **p.progress(self, batch.rows)}
        s.execute(update(t).where(t.id == self.id).values(**values))

    def store(self, s: Session, batch: Batch) -> JobStatus:
        """One transaction: every line and row read since the last tick, and the offsets."""
        status = self._status(s)
        if status is not None and status.finished:
            return status  # finished elsewhere: the recovery stored the rest of the run folder
        if self.unsure and self._landed(s, batch):
            self._stored(batch)
            return status
        self.unsure = True
        self.write(s, batch)
        mark_running(s, self.kind, self.id)
        status = self._status(s)
        s.commit()  # nothing after it may fail the batch: a retry would store it twice
        self._stored(batch)
        return status

    def _stored(self, batch: Batch) -> None:
        """Counters move only once the transaction is in: a failed one is retried whole."""
        from backend import live

        self.unsure = False
        self.log_seq += len(batch.system) + len(batch.lines)
        self.row_seq += self.program.stored_rows(batch.rows)
        steps = [r for r in step_rows(batch.rows) if r.get("kind") != "gpu"]
        if steps:
            self.step = int(steps[-1].get("step", self.step))
            for r in self.reporters:
                r.log(steps)
        if batch.system or batch.lines or batch.rows:
            live.publish(self.id, self.kind.name)

    def close(self, timeout: float = 30.0) -> None:
        for r in self.reporters:
            r.close(timeout=timeout)
        self.reporters = []

    def verdict(self, s: Session, end: Any) -> str:
        """The run's final state from how its program ended (``end``: worker.supervision.End)."""
        from backend import live

        self.close()
        try:
            outcome, line = self._verdict(s, end)
            if line:
                system_line(s, self.kind, self.id, [line])
            return outcome
        finally:
            live.publish(self.id, self.kind.name)

    def _verdict(self, s: Session, end: Any) -> tuple[str, str | None]:
        k, p, name = self.kind, self.program, self.kind.name
        run = get(s, k, self.id)
        s.refresh(run)
        if run.status.finished:
            return "taken over (marked finished elsewhere)", None
        saved, fields = p.saved(self.run_dir)
        if fields:
            s.execute(update(k.table).where(k.table.id == self.id).values(**fields))
            s.commit()
        escalated = f" (killed after {end.grace:.0f}s grace)" if end.killed else ""
        if end.launch_error:
            transition(s, k, self.id, S.failed, exit_code=end.rc, failure_reason=end.launch_error)
            return "failed (launch refused)", None
        if run.status == S.stopping:
            reason = f"cancelled by the user{escalated}{saved}"
            transition(s, k, self.id, S.cancelled, exit_code=end.rc, failure_reason=reason)
            return "cancelled", f"{name} cancelled: {reason[len('cancelled '):]}"
        if end.drain_reason:
            reason = f"{end.drain_reason}{escalated}{saved}"
            transition(s, k, self.id, S.failed, exit_code=end.rc, failure_reason=reason)
            if self.on_failed is not None:
                self.on_failed(s, run)
            return "failed (worker shut down)", f"{name} failed: {reason}"
        done = p.success(self.run_dir) if end.rc == 0 else None
        if done is not None:
            transition(s, k, self.id, S.succeeded, exit_code=0, **done)
            return "succeeded", f"{name} succeeded: {p.result_note}"
        head = f"{p.name} exited with code {end.rc}" if end.rc else f"{p.name} exited without writing {p.result}"
        reason = failure.describe(head + saved, failure.read_log(self.run_dir / p.log_file), end.tail)
        transition(s, k, self.id, S.failed, exit_code=end.rc, failure_reason=reason)
        return "failed", f"{name} failed: {reason.splitlines()[0]}"


# ---------------------------------------------------------------------------------- recovery
def recover_output(session: Session, kind: RunKind, run: Run) -> int:
    """Store what a dead worker left unread in the run folder: the log and rows from the
    offsets it stored with its last batch (no gap, no duplicate), with the supervisor's own
    code. Returns the lines stored."""
    p = kind.program
    if p is None or not run.run_dir:
        return 0
    folder = Path(run.run_dir)
    logs = LogTail(folder / p.log_file, run.log_offset)
    rows = MetricsTail(folder / p.rows_file, getattr(run, p.rows_offset))
    try:
        lines, found = logs.read(final=True), rows.read()
    except (OSError, ValueError) as e:  # unreadable from here (another node's disk): say so
        lines, found = [f"could not recover the rest of the run's log from {folder}: {e}"], []
    record = RunRecord(kind, run.id, folder, session=session)
    record.write(session, Batch([], lines, found, logs.offset, rows.offset))
    session.commit()
    return len(lines)


def stale(session: Session, kind: RunKind, timeout_s: float) -> list[Run]:
    cutoff = now() - timedelta(seconds=timeout_s)
    t = kind.table
    return list(session.scalars(select(t).where(t.status.in_(ACTIVE), t.heartbeat_at < cutoff)))


def recover_lost(session: Session, kind: RunKind, timeout_s: float, on_failed: OnFailed | None = None) -> list[int]:
    """End runs whose worker stopped sending heartbeats (killed, node rebooted): succeeded when
    the program had finished, else failed (cancelled if a cancel was asked), after storing
    what the run folder still holds. ``on_failed`` then (a job's requeue)."""
    recovered = []
    for run in stale(session, kind, timeout_s):
        if on_cluster(run):
            continue  # it runs on without its worker: a worker of the cluster backend adopts it
        was, p = run.status, kind.program
        reason = (f"worker {run.worker} stopped sending heartbeats (last at {run.heartbeat_at:%Y-%m-%d %H:%M:%S} "
                  "UTC): it was killed or its node went down")
        done = p.success(Path(run.run_dir)) if p is not None and was == S.running and run.run_dir else None
        if done is not None:  # the program finished before the worker was lost: nothing to redo
            target, line, fields = S.succeeded, f"{reason}, after the {p.name} had finished; " \
                f"{p.result_note}", done
        else:
            target, line, fields = S.cancelled if was == S.stopping else S.failed, reason, {"failure_reason": reason}
        try:
            if not transition(session, kind, run.id, target, **fields):
                continue  # another sweeper got there first
        except Conflict:
            continue
        recover_output(session, kind, run)
        system_line(session, kind, run.id, [line])
        recovered.append(run.id)
        if target == S.failed and on_failed is not None:
            on_failed(session, run)
    return recovered


def record_crash(session: Session, kind: RunKind, run_id: int, error: BaseException, trace: str) -> bool:
    """The worker's supervisor of a run raised: fail the run saying so (not "worker killed"
    minutes later, when its heartbeat is found stale), with the traceback in its log. Never
    requeued: a crash of the supervisor would likely repeat. False if it had finished already, or
    if it runs on a cluster (left running there, to be adopted: never failed nor submitted twice)."""
    run = get(session, kind, run_id)
    session.refresh(run)
    if run.status.finished:
        return False
    reason = f"the worker's supervisor crashed: {type(error).__name__}: {error}"
    if on_cluster(run):
        # The cluster runs it on: failing it would leave that run unfollowed (and a job's
        # requeue_on_failure submit a second one). A worker adopts it again (this one, next tick).
        system_line(session, kind, run_id,
                    [f"{reason}; its cluster job runs on and a worker reattaches to it", *trace.splitlines()[-40:]])
        return False
    system_line(session, kind, run_id, [reason, *trace.splitlines()[-40:]])
    return transition(session, kind, run_id, S.failed, failure_reason=reason)


# ----------------------------------------------------------------------- training job rows
def finite(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and math.isfinite(x) else None


def step_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl`` that become ``job_metrics`` rows: all but the data report."""
    return [r for r in rows if r.get("kind") != "data"]


def take_data_rows(session: Session, job_id: int, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trainer's ``kind: "data"`` row (what each dataset of the mixture contributed:
    samples, kept, tokens) goes into the job's ``mixture`` (in the caller's transaction), not
    into its metrics: it describes the run, not a step. Returns the other rows, in order (the
    caller numbers them consecutively)."""
    for r in rows:
        if r.get("kind") == "data":
            job = session.get(Job, job_id)
            if job is not None:
                base = job.mixture or {"datasets": [{"name": n} for n in r.get("datasets") or {}]}
                job.mixture = with_trained(base, r.get("datasets") or {})
    return step_rows(rows)


def add_metrics(session: Session, job_id: int, first_seq: int, rows: Sequence[dict[str, Any]], step: int = 0) -> int:
    """Metrics rows (the data report goes to the job, :func:`take_data_rows`), in the caller's
    transaction; ``step`` for a row without one (a GPU sample: the last step stored)."""
    steps = take_data_rows(session, job_id, rows)
    session.add_all(JobMetric(job_id=job_id, seq=first_seq + i, step=int(r.get("step", step)),
                              loss=finite(r.get("loss")), values=r) for i, r in enumerate(steps))
    return len(steps)


def _next_metric(session: Session, job_id: int) -> int:
    return (session.scalar(select(func.max(JobMetric.seq)).where(JobMetric.job_id == job_id)) or 0) + 1


def _job_progress(record: RunRecord, rows: Sequence[dict]) -> dict[str, Any]:
    train = [r for r in step_rows(rows) if r.get("kind") != "gpu"]
    if not train:
        return {}
    return {"step": int(train[-1].get("step", record.step)), "total_steps": train[-1].get("total_steps")}


def _job_saved(run: Path) -> tuple[str, dict[str, Any]]:
    ckpt = checkpoints.latest_complete(run / "checkpoints")
    return (f"; last checkpoint {ckpt.name}" if ckpt else "; no checkpoint"), \
        {"last_checkpoint": str(ckpt) if ckpt else None}


def _job_success(run: Path) -> dict[str, Any] | None:
    # The trainer's last act is RUN/outcome.json "done", once final/ is whole (a full model, or
    # a LoRA adapter saved without merging): a save that was cut is a failure.
    return {} if run_outcome.finished(run) else None


# ------------------------------------------------------------------------ evaluation rows
def _samples(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if "model" in r]  # not the supervisor's GPU samples


def add_samples(session: Session, evaluation_id: int, first: int, rows: Sequence[dict[str, Any]],
                step: int = 0) -> int:  # noqa: ARG001 - a sample is keyed by model and index
    """Per-sample outputs as the evaluation program writes them (``outputs.jsonl``), in the
    caller's transaction."""
    samples = _samples(rows)
    session.add_all(EvaluationSample(
        evaluation_id=evaluation_id, model_index=int(r["model"]), sample_index=int(r["index"]),
        sample_id=str(r.get("id", r["index"]))[:200], dataset=r.get("dataset"), question=r.get("question", ""),
        answers=list(r.get("answers", [])), prediction=r.get("prediction", ""), scores=r.get("scores", {}))
        for r in samples)
    return len(samples)


def sample_count(session: Session, evaluation_id: int) -> int:
    return session.scalar(select(func.count()).select_from(EvaluationSample)
                          .where(EvaluationSample.evaluation_id == evaluation_id)) or 0


def _eval_total(run: Path) -> int | None:
    spec_path = run / "spec.json"
    if not spec_path.exists():
        return None
    spec = EvaluationSpec.read(spec_path)
    n = 0
    for part in spec.data_parts():
        with open(part.annotation, encoding="utf-8-sig") as f:
            lines = sum(1 for line in f if line.strip())
        n += min(lines, spec.limit or lines)
    return n * len(spec.models)


def _eval_progress(record: RunRecord, rows: Sequence[dict]) -> dict[str, Any]:
    if record.total is None:
        record.total = _eval_total(record.run_dir)
    # the program's rate for the model and part being run, from its last row that has one
    rate = next((r["samples_per_second"] for r in reversed(rows) if "samples_per_second" in r), None)
    return {"done": record.row_seq + len(_samples(rows)), "total": record.total, "heartbeat_at": now(),
            **({} if rate is None else {"samples_per_second": rate})}


def _eval_success(run: Path) -> dict[str, Any] | None:
    results = run / "results.json"
    return {"summary": json.loads(results.read_text())["models"]} if results.exists() else None


JOB = RunKind(name="job", table=Job, fk="job_id", logs=JobLog, program=Program(
    folder="runs", log_file="training_log.txt", rows_file="metrics.jsonl", rows_offset="metrics_offset",
    name="trainer", result="the final model", result_note="the final model is in final/", add_rows=add_metrics,
    stored_rows=lambda rows: len(step_rows(rows)), next_row=_next_metric, progress=_job_progress,
    success=_job_success, saved=_job_saved))
EVALUATION = RunKind(name="evaluation", table=Evaluation, fk="evaluation_id", logs=EvaluationLog, program=Program(
    folder="evaluations", log_file="evaluation_log.txt", rows_file="outputs.jsonl", rows_offset="outputs_offset",
    name="evaluation", result="results.json", result_note="the results are in results.json", add_rows=add_samples,
    stored_rows=lambda rows: len(_samples(rows)), next_row=sample_count, progress=_eval_progress,
    success=_eval_success))
# converted in the worker's import runner (worker/model_imports.py), on no GPU: no program, no log
MODEL_IMPORT = RunKind(name="import", table=ModelImport, fk="import_id", noun="model import")
# a playground reply, generated in a batch of the worker's model server (worker/serving.py, which
# holds the GPU lease for its loaded models): no program, no log; its pieces are chat_tokens rows
CHAT = RunKind(name="chat", table=ChatRequest, fk="chat_id")
# the kinds a worker's scheduler claims with GPU leases and supervises (worker/scheduler.py)
KINDS: dict[str, RunKind] = {k.name: k for k in (JOB, EVALUATION)}
# every kind of run, for what all share (the reaper's folders, the recovery sweep)
ALL_KINDS: dict[str, RunKind] = {k.name: k for k in (JOB, EVALUATION, MODEL_IMPORT, CHAT)}
