"""Run one evaluation job: claim it, write its run folder, launch the evaluation program through
the launch contract (:mod:`worker.runtime`) and supervise it with the one supervisor
(:mod:`worker.supervision`) that training uses, with an :class:`EvaluationRecord`: the same
process control, cancel escalation, retried database writes and recovery offsets.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from backend import live
from backend.core.eval_spec import EvalModel, EvalPart, EvaluationSpec
from backend.core.tails import LogTail, MetricsTail
from backend.db.models import Evaluation, EvaluationLog, JobStatus
from backend.db.session import session_scope
from backend.services import evaluations as svc
from backend.services import suites
from backend.services.datasets import get_dataset
from backend.settings import get_settings
from worker.runtime import Executor, Launch, make_executor
from worker.supervision import Batch, End, RunControl, Supervision

S = JobStatus
EVAL_MODULE = "worker.evaluation.run"
LOG_NAME = "evaluation_log.txt"


def prepare_run(evaluation_id: int, run_dir: Path, gpu_ids: list[int] | None = None) -> Launch:
    """Resolve models and data to paths and write ``spec.json`` and ``command.txt``."""
    settings = get_settings()
    with session_scope() as s:
        ev = svc.get_evaluation(s, evaluation_id)
        if ev.benchmarks:  # a benchmark suite: each benchmark with its settings, recorded at submission
            parts, annotation, root = suites.suite_parts(ev.benchmarks), "", ""
        elif ev.mixture:  # a mixture's held-out parts, resolved at submission
            parts = [EvalPart(name=p["name"], annotation=p["annotation"], root=p["root"],
                              max_dynamic_patch=p.get("max_dynamic_patch")) for p in ev.mixture["datasets"]]
            annotation = root = ""
        else:
            ds = get_dataset(s, ev.dataset_id)
            parts, annotation, root = [], svc.split_annotation(ds, ev.split), str(Path(ds.root))
        models = []
        for ref in ev.models:
            path, template, builtin = svc.model_location(s, ref)
            models.append((ref["label"], path, template, builtin, svc.training_tiling(s, ref)))
        metrics, params = list(ev.metrics), dict(ev.params)
    resolved = []
    for label, path, template, builtin, tiling in models:
        if builtin and not (path / "config.json").exists():
            from worker.demo_model import ensure_demo_model

            path = ensure_demo_model(settings.data_path / "models")
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{label}: no model at {path}")
        resolved.append(EvalModel(label=label, path=str(path), template=template, tiling=tiling))
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = EvaluationSpec(evaluation_id=evaluation_id, annotation=annotation, root=root, parts=parts,
                          output_dir=str(run_dir),
                          models=resolved, metrics=metrics, **{k: v for k, v in params.items() if v is not None})
    spec.write(run_dir / "spec.json")
    launch = evaluation_launch(evaluation_id, run_dir, gpu_ids)
    launch.write_command()
    return launch


def evaluation_launch(evaluation_id: int, run_dir: Path, gpu_ids: list[int] | None = None) -> Launch:
    """One plain process (no torchrun) on the leased GPU, or on one GPU the cluster places."""
    gpus = len(gpu_ids) if gpu_ids is not None else (1 if get_settings().slurm_gpus_per_node else 0)
    return Launch(name=f"vlstudio-eval-{evaluation_id}", module=EVAL_MODULE, spec_path=run_dir / "spec.json",
                  run_dir=run_dir, log_path=run_dir / LOG_NAME, distributed=False, nnodes=1, nproc_per_node=1,
                  gpus_per_node=gpus, gpu_ids=None if gpu_ids is None else tuple(gpu_ids))


def reattach_claimed(evaluation_id: int, control: RunControl) -> str:
    """Follow again an evaluation whose run an earlier worker process submitted to the cluster
    (the scheduler adopted it): same run folder, nothing submitted again, the log and outputs
    read on from the offsets stored with the last batch."""
    with session_scope() as s:
        run_dir = Path(svc.get_evaluation(s, evaluation_id).run_dir or "")
    return supervise(evaluation_id, evaluation_launch(evaluation_id, run_dir), control=control, reattach=True)


def _total(spec_path: Path) -> int | None:
    spec = EvaluationSpec.read(spec_path)
    n = 0
    for part in spec.data_parts():
        with open(part.annotation, encoding="utf-8-sig") as f:
            lines = sum(1 for line in f if line.strip())
        n += min(lines, spec.limit or lines)
    return n * len(spec.models)


class EvaluationRecord:
    """An evaluation's rows: ``evaluation_logs``, ``evaluation_samples``, progress, heartbeat,
    offsets, the verdict."""

    def __init__(self, evaluation_id: int, run_dir: Path) -> None:
        self.id, self.run_dir, self.label = evaluation_id, run_dir, f"evaluation {evaluation_id}"
        with session_scope() as s:
            ev = svc.get_evaluation(s, evaluation_id)
            self.seq = svc.next_log_seq(s, evaluation_id)
            self.done = ev.done or 0
            self.offsets = (ev.log_offset, ev.outputs_offset)
        self.total: int | None = None
        self.unsure = False  # the last attempt failed: its commit may have landed all the same

    def notes(self) -> list[str]:
        return []

    def store(self, s: Session, batch: Batch) -> JobStatus:
        lines = [("system", x) for x in batch.system] + [("stdout", x) for x in batch.lines]
        if self.unsure and (lines or batch.rows) and (svc.next_log_seq(s, self.id), svc.sample_count(s, self.id)) \
                == (self.seq + len(lines), self.done + len(batch.rows)):
            self._stored(len(lines), len(batch.rows))  # the failed attempt's commit had landed
            return s.scalar(select(Evaluation.status).where(Evaluation.id == self.id))
        self.unsure = True
        s.add_all(EvaluationLog(evaluation_id=self.id, seq=self.seq + i, stream=stream, line=line)
                  for i, (stream, line) in enumerate(lines))
        svc.add_samples(s, self.id, batch.rows)
        if self.total is None and (self.run_dir / "spec.json").exists():
            self.total = _total(self.run_dir / "spec.json")
        rate = next((r["samples_per_second"] for r in reversed(batch.rows) if "samples_per_second" in r), None)
        s.execute(update(Evaluation).where(Evaluation.id == self.id).values(
            done=self.done + len(batch.rows), total=self.total, heartbeat_at=svc.now(),
            log_offset=batch.log_offset, outputs_offset=batch.rows_offset,
            **({} if rate is None else {"samples_per_second": rate})))
        s.execute(update(Evaluation).where(Evaluation.id == self.id, Evaluation.status == S.starting)
                  .values(status=S.running))
        status = s.scalar(select(Evaluation.status).where(Evaluation.id == self.id))
        s.commit()  # nothing after it may fail the batch: a retry would store it twice
        self._stored(len(lines), len(batch.rows))
        return status

    def _stored(self, lines: int, rows: int) -> None:
        self.unsure = False
        self.seq += lines
        self.done += rows
        if lines or rows:
            live.publish(self.id, "evaluation")

    def verdict(self, s: Session, end: End) -> str:
        try:
            return self._verdict(s, end)
        finally:
            live.publish(self.id, "evaluation")

    def _verdict(self, s: Session, end: End) -> str:
        ev = svc.get_evaluation(s, self.id)
        s.refresh(ev)
        status = ev.status
        if status.finished:
            return "taken over (marked finished elsewhere)"
        escalated = f" (killed after {end.grace:.0f}s grace)" if end.killed else ""
        if end.launch_error:
            svc.transition(s, self.id, S.failed, exit_code=end.rc, failure_reason=end.launch_error)
            return "failed (launch refused)"
        if status == S.stopping:
            svc.transition(s, self.id, S.cancelled, exit_code=end.rc, failure_reason=f"cancelled by the user{escalated}")
            return "cancelled"
        if end.drain_reason:
            svc.transition(s, self.id, S.failed, exit_code=end.rc, failure_reason=f"{end.drain_reason}{escalated}")
            return "failed (worker shut down)"
        results = self.run_dir / "results.json"
        if end.rc == 0 and results.exists():
            summary = json.loads(results.read_text())["models"]
            svc.transition(s, self.id, S.succeeded, exit_code=0, summary=summary)
            return "succeeded"
        reason = f"evaluation exited with code {end.rc}" if end.rc else "evaluation exited without writing results.json"
        svc.transition(s, self.id, S.failed, exit_code=end.rc, failure_reason=reason + "\n" + "\n".join(end.tail))
        return "failed"


def run_evaluation_job(evaluation_id: int, worker_name: str,
                       lease: Callable[[int, RunControl], list[int] | None] | None = None) -> str:
    """Claim a queued evaluation by id, lease its GPU (``lease``: the worker scheduler's; without
    one the program sees the node's devices) and run it."""
    with session_scope() as s:
        if not svc.claim_evaluation(s, evaluation_id, worker_name):
            return "not claimed (already taken, finished or cancelled)"
    control = RunControl(None)
    if lease is not None:
        control.gpu_ids = lease(evaluation_id, control)
    return run_claimed(evaluation_id, control)


def run_claimed(evaluation_id: int, control: RunControl) -> str:
    run_dir = get_settings().data_path / "evaluations" / str(evaluation_id)
    with session_scope() as s:
        svc.heartbeat(s, evaluation_id, run_dir=str(run_dir))
    try:
        launch = prepare_run(evaluation_id, run_dir, control.gpu_ids)
    except Exception as e:  # noqa: BLE001 - recorded on the evaluation, with the traceback in its log
        with session_scope() as s:
            svc.append_logs(s, evaluation_id, svc.next_log_seq(s, evaluation_id),
                            traceback.format_exc().splitlines(), stream="system")
            svc.transition(s, evaluation_id, S.failed, failure_reason=f"could not prepare the evaluation: {e}")
        return "failed in preparation"
    return supervise(evaluation_id, launch, control=control)


def supervise(evaluation_id: int, launch: Launch, executor: Executor | None = None,
              control: RunControl | None = None, reattach: bool = False) -> str:
    control = control or RunControl()
    record = EvaluationRecord(evaluation_id, launch.run_dir)
    logs = LogTail(launch.log_path, record.offsets[0] if reattach else 0)
    outputs = MetricsTail(launch.run_dir / "outputs.jsonl", record.offsets[1] if reattach else 0)
    try:
        return Supervision(record, executor or make_executor(), control, logs, outputs).run(launch, reattach)
    finally:
        control.done.set()
