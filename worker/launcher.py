"""Run one training job: write its run folder, launch it (:mod:`worker.runtime`) on the job's
leased GPUs, and supervise it (:mod:`worker.supervision`) with the job's :class:`TrainingRecord`."""

from __future__ import annotations

import json
import traceback
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from backend.core import failure, mixture, run_outcome
from backend.core.data_index import CACHE_ENV
from backend.core.model_card import read_card
from backend.core.model_folder import ModelFolderError
from backend.core.spec import Hyperparameters, TrainingSpec
from backend.core.tails import LogTail, MetricsTail
from backend.db.models import Job, JobLog, JobMetric, JobStatus
from backend.db.session import session_scope
from backend.queue import wake_workers
from backend.services import jobs as jobs_svc
from backend.services.models import get_model
from backend.services.scheduling import free_port as _free_port
from backend.settings import get_settings
from worker.reporting import make_reporters
from worker.runtime import Executor, Launch, make_executor
from worker.supervision import Batch, End, RunControl, Supervision

S = JobStatus
TRAIN_MODULE = "worker.training.train"
LOG_NAME = "training_log.txt"
__all__ = ["RunControl", "prepare_run", "run_claimed", "supervise"]


def free_port() -> int:
    return _free_port(set())


def _write_deepspeed_config(spec: TrainingSpec, run_dir: Path) -> None:
    # The trainer builds the same dict at start; a copy in the run folder makes a rerun by hand
    # (or with another launcher) reproducible.
    if not spec.hyper.zero_stage:
        return
    from worker.training.train import deepspeed_config

    cfg = deepspeed_config(spec.hyper, spec.hyper.gpus > 0)
    (run_dir / "ds_config.json").write_text(json.dumps(cfg, indent=2))


def _build_demo_model_once(models_dir: Path) -> Path:
    # Several workers on one node may start their first demo job at the same moment; they
    # would build into the same temporary folder.
    import fcntl

    from worker.demo_model import ensure_demo_model

    models_dir.mkdir(parents=True, exist_ok=True)
    with open(models_dir / ".demo-model.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return ensure_demo_model(models_dir)


def _mixture_rows(job: Job) -> list[dict]:
    """The job's resolved mixture; a job recorded before mixtures existed is its one dataset."""
    if job.mixture and job.mixture.get("datasets"):
        return job.mixture["datasets"]
    from backend.core.mixture import MixtureDataset, MixtureSpec
    from backend.services.meta import resolve_mixture

    with session_scope() as s:
        spec = MixtureSpec(datasets=[MixtureDataset(dataset_id=job.dataset_id)])
        return resolve_mixture(s, None, spec, get_settings().data_roots)["datasets"]


def write_meta_files(job: Job, hyper: Hyperparameters, run_dir: Path) -> Path | None:
    """meta.json (every dataset of the mixture, absolute paths) and, when the job evaluates,
    eval_meta.json (their held-out validation parts); returns the latter's path or None."""
    rows = _mixture_rows(job)
    (run_dir / "meta.json").write_text(json.dumps(mixture.run_meta(rows), indent=2))
    held_out = mixture.eval_meta(rows)
    if not (hyper.eval_steps and held_out):  # issue 8: eval loss on the held-out validation splits
        return None
    (run_dir / "eval_meta.json").write_text(json.dumps(held_out, indent=2))
    return run_dir / "eval_meta.json"


def prepare_run(job: Job, run_dir: Path, port: int | None = None,
                gpu_ids: list[int] | None = None) -> Launch:
    """Write everything needed to rerun the job by hand into ``run_dir`` (spec.json, meta.json,
    ds_config.json, command.txt) and say how to launch it. The one place a run folder is
    prepared: what the training program reads comes from here only."""
    settings = get_settings()
    with session_scope() as s:
        model = get_model(s, job.model_id)
        model_path, builtin = Path(model.path), model.builtin
    if builtin and not (model_path / "config.json").exists():
        model_path = _build_demo_model_once(settings.data_path / "models")
    card = read_card(model_path)  # the template and tiling the job leaves to the model
    hyper = Hyperparameters.model_validate(job.hyper).with_tiling(card.tiling)
    run_dir.mkdir(parents=True, exist_ok=True)
    eval_meta = write_meta_files(job, hyper, run_dir)
    template = hyper.template or card.template
    if template is None:
        raise ModelFolderError(f"{model_path}: cannot tell the model's conversation template; name one "
                               "(hyperparameters.template)")
    spec = TrainingSpec(job_id=job.id, model_path=str(model_path), template=template,
                        meta_path=str(run_dir / "meta.json"), output_dir=str(run_dir), hyper=hyper,
                        eval_meta_path=str(eval_meta) if eval_meta else None,
                        resume_from_checkpoint=job.resume_from_checkpoint)
    spec_path = run_dir / "spec.json"
    spec.write(spec_path)
    _write_deepspeed_config(spec, run_dir)
    launch = training_launch(job.id, run_dir, hyper, port, gpu_ids)
    launch.write_command()
    return launch


def training_launch(job_id: int, run_dir: Path, hyper: Hyperparameters, port: int | None = None,
                    gpu_ids: list[int] | None = None) -> Launch:
    return Launch(name=f"vlstudio-job-{job_id}", module=TRAIN_MODULE, spec_path=run_dir / "spec.json",
                  run_dir=run_dir, log_path=run_dir / LOG_NAME, nnodes=hyper.nnodes,
                  nproc_per_node=hyper.nproc_per_node, gpus_per_node=hyper.gpus,
                  gpu_ids=None if gpu_ids is None else tuple(gpu_ids), port=port or free_port(), resumable=True,
                  env={CACHE_ENV: str(get_settings().index_cache_path)})  # the shared data index cache


def reattach_claimed(job_id: int, control: RunControl) -> str:
    """Follow again a job whose run an earlier worker process submitted to the cluster (the
    scheduler adopted it): same run folder, nothing submitted again."""
    with session_scope() as s:
        job = jobs_svc.get_job(s, job_id)
        run_dir, hyper = Path(job.run_dir or ""), Hyperparameters.model_validate(job.hyper)
    return supervise(job_id, training_launch(job_id, run_dir, hyper), control=control, reattach=True)


def failure_reason(end: End, saved: str, log_path: Path) -> str:
    """Why a trainer failed: the first real error of its log (type, message, file; not
    torchrun's banner, :mod:`backend.core.failure`), then its last lines."""
    head = f"trainer exited with code {end.rc}" if end.rc else "trainer exited without writing the final model"
    return failure.describe(head + saved, failure.read_log(log_path), end.tail)


class TrainingRecord:
    """A training job's rows: ``job_logs``, ``job_metrics``, progress, offsets, the verdict."""

    def __init__(self, job_id: int, run_dir: Path) -> None:
        self.job_id, self.run_dir, self.label = job_id, run_dir, f"job {job_id}"
        self.settings = get_settings()
        with session_scope() as s:
            job = jobs_svc.get_job(s, job_id)
            self.log_seq = jobs_svc.next_seq(s, JobLog, job_id)
            self.metric_seq = jobs_svc.next_seq(s, JobMetric, job_id)
            self.offsets = (job.log_offset, job.metrics_offset)
            hyper = job.hyper
        self.step = 0
        self.unsure = False  # the last attempt failed: its commit may have landed all the same
        self.reporters = make_reporters(run_dir, job_id, hyper, self.settings)

    def notes(self) -> list[str]:
        return [n for r in self.reporters for n in r.notes()]

    def _lines(self, s: Session, lines: list[tuple[str, str]]) -> None:
        s.add_all(JobLog(job_id=self.job_id, seq=self.log_seq + i, stream=stream, line=line)
                  for i, (stream, line) in enumerate(lines))

    def _landed(self, s: Session, batch: Batch) -> bool:
        """After a failed attempt: did its commit land anyway (the connection died after the
        server committed)? Only this supervisor numbers this job's rows, so the next free
        numbers tell."""
        n, m = len(batch.system) + len(batch.lines), len(jobs_svc.step_rows(batch.rows))
        return bool(n or m) and (jobs_svc.next_seq(s, JobLog, self.job_id),
                                 jobs_svc.next_seq(s, JobMetric, self.job_id)) == (self.log_seq + n, self.metric_seq + m)

    def store(self, s: Session, batch: Batch) -> JobStatus:
        """One transaction: every line and row read since the last tick, and the offsets."""
        status = s.scalar(select(Job.status).where(Job.id == self.job_id))
        if status is not None and status.finished:
            return status  # finished elsewhere: the recovery stored the rest of the run folder
        if self.unsure and self._landed(s, batch):
            self._stored(batch)
            return status
        self.unsure = True
        self._lines(s, [("system", x) for x in batch.system] + [("stdout", x) for x in batch.lines])
        steps = jobs_svc.take_data_rows(s, self.job_id, batch.rows)  # the data report goes to the job
        s.add_all(JobMetric(job_id=self.job_id, seq=self.metric_seq + i, step=int(r.get("step", self.step)),
                            loss=jobs_svc._finite(r.get("loss")), values=r) for i, r in enumerate(steps))
        train_rows = [r for r in steps if r.get("kind") != "gpu"]
        values: dict = {"log_offset": batch.log_offset, "metrics_offset": batch.rows_offset}
        if train_rows:
            values.update(step=int(train_rows[-1].get("step", self.step)),
                          total_steps=train_rows[-1].get("total_steps"))
        s.execute(update(Job).where(Job.id == self.job_id).values(**values))
        # compare-and-set: a cancel that came meanwhile (starting -> stopping) is kept
        s.execute(update(Job).where(Job.id == self.job_id, Job.status == S.starting).values(status=S.running))
        status = s.scalar(select(Job.status).where(Job.id == self.job_id))
        s.commit()  # nothing after it may fail the batch: a retry would store it twice
        self._stored(batch)
        return status

    def _stored(self, batch: Batch) -> None:
        """Counters move only once the transaction is in: a failed one is retried whole."""
        from backend import live

        self.unsure = False
        self.log_seq += len(batch.system) + len(batch.lines)
        steps = jobs_svc.step_rows(batch.rows)
        self.metric_seq += len(steps)
        train_rows = [r for r in steps if r.get("kind") != "gpu"]
        if train_rows:
            self.step = int(train_rows[-1].get("step", self.step))
            for r in self.reporters:
                r.log(train_rows)
        if batch.system or batch.lines or batch.rows:
            live.publish(self.job_id)

    def verdict(self, s: Session, end: End) -> str:
        from backend import live

        for r in self.reporters:
            r.close()
        self.reporters = []
        try:
            outcome, line = self._verdict(s, end)
            if line:
                jobs_svc.append_logs(s, self.job_id, jobs_svc.next_seq(s, JobLog, self.job_id), [line],
                                     stream="system")
            return outcome
        finally:
            live.publish(self.job_id)

    def _verdict(self, s: Session, end: End) -> tuple[str, str | None]:
        ckpt = jobs_svc.latest_checkpoint(str(self.run_dir))
        job = jobs_svc.get_job(s, self.job_id)
        s.refresh(job)
        if job.status.finished:
            return "taken over (marked finished elsewhere)", None
        jobs_svc.record_progress(s, self.job_id, last_checkpoint=str(ckpt) if ckpt else None)
        saved = f"; last checkpoint {ckpt.name}" if ckpt else "; no checkpoint"
        escalated = f" (killed after {end.grace:.0f}s grace)" if end.killed else ""
        if end.launch_error:
            jobs_svc.transition(s, self.job_id, S.failed, exit_code=end.rc, failure_reason=end.launch_error)
            return "failed (launch refused)", None
        if job.status == S.stopping:
            reason = f"cancelled by the user{escalated}{saved}"
            jobs_svc.transition(s, self.job_id, S.cancelled, exit_code=end.rc, failure_reason=reason)
            return "cancelled", f"job cancelled: {reason[len('cancelled '):]}"
        if end.drain_reason:
            reason = f"{end.drain_reason}{escalated}{saved}"
            jobs_svc.transition(s, self.job_id, S.failed, exit_code=end.rc, failure_reason=reason)
            if job.requeue_on_failure:
                jobs_svc.requeue(s, job, wake_workers)
            return "failed (worker shut down)", f"job failed: {reason}"
        # The trainer's last act is RUN/outcome.json "done", once final/ is whole (a full model,
        # or a LoRA adapter saved without merging): a save that was cut is a failure.
        if end.rc == 0 and run_outcome.finished(self.run_dir):
            jobs_svc.transition(s, self.job_id, S.succeeded, exit_code=0)
            return "succeeded", "job succeeded: the final model is in final/"
        reason = failure_reason(end, saved, self.run_dir / LOG_NAME)
        jobs_svc.transition(s, self.job_id, S.failed, exit_code=end.rc, failure_reason=reason)
        return "failed", f"job failed: {reason.splitlines()[0]}"


def run_training_job(job_id: int, worker_name: str) -> str:
    """Claim one queued job by id and run it (the scheduler's path is :func:`run_claimed`)."""
    with session_scope() as s:
        if not jobs_svc.claim_job(s, job_id, worker_name):
            return "not claimed (already taken, finished or cancelled)"
    return run_claimed(job_id, worker_name, None, RunControl(None if get_settings().backend != "local" else []))


def run_claimed(job_id: int, worker_name: str, port: int | None, control: RunControl) -> str:
    settings = get_settings()
    run_dir = settings.data_path / "runs" / str(job_id)
    with session_scope() as s:
        job = jobs_svc.get_job(s, job_id)
        job.run_dir = str(run_dir)
    try:
        launch = prepare_run(job, run_dir, port, control.gpu_ids)
    except Exception as e:  # noqa: BLE001 - recorded on the job, with the traceback in its log
        with session_scope() as s:
            jobs_svc.append_logs(s, job_id, jobs_svc.next_seq(s, JobLog, job_id), traceback.format_exc().splitlines(),
                                 stream="system")
            jobs_svc.transition(s, job_id, S.failed, failure_reason=f"could not prepare the run: {e}")
        return "failed in preparation"
    return supervise(job_id, launch, control=control)


def supervise(job_id: int, launch: Launch, executor: Executor | None = None, control: RunControl | None = None,
              reattach: bool = False) -> str:
    """Start ``launch`` (or follow it again) and stream its log and metrics into the job until it ends."""
    control = control or RunControl()
    record = TrainingRecord(job_id, launch.run_dir)
    with session_scope() as s:
        jobs_svc.record_progress(s, job_id, command=" ".join(launch.local_command()))
    logs = LogTail(launch.log_path, record.offsets[0] if reattach else 0)
    rows = MetricsTail(launch.run_dir / "metrics.jsonl", record.offsets[1] if reattach else 0)
    sup = Supervision(record, executor or make_executor(), control, logs, rows)
    try:
        return sup.run(launch, reattach=reattach)
    finally:
        for r in record.reporters:
            r.close(timeout=1)
        control.done.set()
