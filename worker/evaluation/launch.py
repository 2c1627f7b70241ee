"""Run one evaluation the worker's scheduler claimed (from the evaluations table, on a leased
GPU, as a training job): write its run folder, launch the evaluation program through the launch
contract (:mod:`worker.runtime`) and supervise it with the one supervisor
(:mod:`worker.supervision`) and the one run record (:class:`backend.services.runs.RunRecord`)
that training uses: the same process control, cancel escalation, retried database writes,
recovery offsets and verdict.
"""

from __future__ import annotations

import traceback
from pathlib import Path

from backend.core.eval_spec import EvalModel, EvalPart, EvaluationSpec
from backend.core.tails import LogTail, MetricsTail
from backend.db.models import JobStatus
from backend.db.session import session_scope
from backend.services import evaluations as svc
from backend.services import suites
from backend.services.datasets import get_dataset
from backend.services.runs import EVALUATION, RunRecord
from backend.settings import get_settings
from worker.executors import make_executor
from worker.runtime import Executor, Launch
from worker.supervision import RunControl, Supervision

S = JobStatus
EVAL_MODULE = "worker.evaluation.run"
LOG_NAME = EVALUATION.program.log_file


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


def run_claimed(evaluation_id: int, control: RunControl) -> str:
    """Run an evaluation the scheduler claimed, on the GPUs of ``control`` (None: the cluster
    places it)."""
    run_dir = EVALUATION.run_dir(get_settings().data_path, evaluation_id)
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
    record = RunRecord(EVALUATION, evaluation_id, launch.run_dir)
    logs = LogTail(launch.log_path, record.offsets[0] if reattach else 0)
    outputs = MetricsTail(launch.run_dir / "outputs.jsonl", record.offsets[1] if reattach else 0)
    try:
        return Supervision(record, executor or make_executor(), control, logs, outputs).run(launch, reattach)
    finally:
        control.done.set()
