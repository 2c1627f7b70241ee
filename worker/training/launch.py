"""Run one training job: write its run folder, launch it (:mod:`worker.runtime`) on the job's
leased GPUs, and supervise it (:mod:`worker.supervision`) with the one run record
(:class:`backend.services.runs.RunRecord`) of the job kind."""

from __future__ import annotations

import json
import traceback
from pathlib import Path

from backend.core import mixture
from backend.core.data_index import CACHE_ENV
from backend.core.model_card import read_card
from backend.core.model_folder import ModelFolderError
from backend.core.spec import Hyperparameters, TrainingSpec
from backend.core.tails import LogTail, MetricsTail
from backend.db.models import Job, JobLog, JobStatus
from backend.db.session import session_scope
from backend.queue import wake_workers
from backend.services import jobs as jobs_svc
from backend.services.models import get_model
from backend.services.runs import JOB, RunRecord
from backend.services.scheduling import free_port as _free_port
from backend.settings import get_settings
from worker.executors import make_executor
from worker.reporting import make_reporters
from worker.runtime import Executor, Launch
from worker.supervision import RunControl, Supervision

S = JobStatus
TRAIN_MODULE = "worker.training.train"
LOG_NAME = JOB.program.log_file
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


def training_record(job_id: int, run_dir: Path) -> RunRecord:
    """The job's record, with its outside trackers (MLflow, W&B) and its requeue after a
    failure that was not the trainer's own (the worker shut down)."""
    with session_scope() as s:
        hyper = jobs_svc.get_job(s, job_id).hyper
    return RunRecord(JOB, job_id, run_dir, reporters=make_reporters(run_dir, job_id, hyper, get_settings()),
                     on_failed=jobs_svc.requeue_if_asked(wake_workers))


def run_claimed(job_id: int, worker_name: str, port: int | None, control: RunControl) -> str:
    settings = get_settings()
    run_dir = JOB.run_dir(settings.data_path, job_id)
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
    record = training_record(job_id, launch.run_dir)
    with session_scope() as s:
        jobs_svc.record_progress(s, job_id, command=" ".join(launch.local_command()))
    logs = LogTail(launch.log_path, record.offsets[0] if reattach else 0)
    rows = MetricsTail(launch.run_dir / "metrics.jsonl", record.offsets[1] if reattach else 0)
    sup = Supervision(record, executor or make_executor(), control, logs, rows)
    try:
        return sup.run(launch, reattach=reattach)
    finally:
        record.close(timeout=1)
        control.done.set()
