"""Run one evaluation job: claim it, write its run folder, launch the evaluation program,
stream its log and per-sample outputs into the database, and record how it ended.

Reuses the training launcher's executor and tails (:mod:`worker.launcher`), so evaluations
get the same process handling (own session, cooperative cancel) and the same live logs.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
import traceback
from pathlib import Path

from backend.core.eval_spec import EvalModel, EvaluationSpec
from backend.db.models import JobStatus
from backend.db.session import session_scope
from backend.services import evaluations as svc
from backend.services.datasets import get_dataset
from backend.settings import get_settings
from worker.launcher import REPO_ROOT, LogTail, MetricsTail, make_executor

S = JobStatus
CANCEL_GRACE_SECONDS = 30.0
TAIL_LINES = 20


def build_command(spec_path: Path) -> list[str]:
    return [sys.executable, "-m", "worker.evaluation.run", "--spec", str(spec_path)]


def prepare_run(evaluation_id: int, run_dir: Path) -> list[str]:
    """Resolve models and data to paths and write ``spec.json`` and ``command.txt``."""
    settings = get_settings()
    with session_scope() as s:
        ev = svc.get_evaluation(s, evaluation_id)
        ds = get_dataset(s, ev.dataset_id)
        annotation = svc.split_annotation(ds, ev.split)
        root = str(Path(ds.root))
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
    spec = EvaluationSpec(evaluation_id=evaluation_id, annotation=annotation, root=root, output_dir=str(run_dir),
                          models=resolved, metrics=metrics, **{k: v for k, v in params.items() if v is not None})
    spec_path = run_dir / "spec.json"
    spec.write(spec_path)
    cmd = build_command(spec_path)
    (run_dir / "command.txt").write_text(shlex.join(cmd) + "\n")
    return cmd


def run_evaluation_job(evaluation_id: int, worker_name: str) -> str:
    settings = get_settings()
    with session_scope() as s:
        if not svc.claim_evaluation(s, evaluation_id, worker_name):
            return "not claimed (already taken, finished or cancelled)"
        run_dir = settings.data_path / "evaluations" / str(evaluation_id)
        svc.heartbeat(s, evaluation_id, run_dir=str(run_dir))
    try:
        cmd = prepare_run(evaluation_id, run_dir)
    except Exception as e:
        with session_scope() as s:
            svc.append_logs(s, evaluation_id, svc.next_log_seq(s, evaluation_id),
                            traceback.format_exc().splitlines(), stream="system")
            svc.transition(s, evaluation_id, S.failed, failure_reason=f"could not prepare the evaluation: {e}")
        return "failed in preparation"
    return supervise(evaluation_id, run_dir, cmd)


def supervise(evaluation_id: int, run_dir: Path, cmd: list[str]) -> str:
    """Start ``cmd``; stream its log and outputs into the database until it ends."""
    settings = get_settings()
    executor = make_executor()
    # PYTHONPATH: the program runs the same code as this worker, whatever an installed copy
    # of the package says (as for training, see worker.launcher.job_env).
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": path}
    executor.start(cmd, run_dir, run_dir / "evaluation_log.txt", env)
    logs = LogTail(run_dir / "evaluation_log.txt")
    outputs = MetricsTail(run_dir / "outputs.jsonl")
    with session_scope() as s:
        seq = svc.append_logs(s, evaluation_id, svc.next_log_seq(s, evaluation_id), [f"$ {shlex.join(cmd)}"],
                              stream="system")
        svc.transition(s, evaluation_id, S.running)
        total = None
    tail: list[str] = []
    done = 0
    stop_sent_at: float | None = None
    while True:
        rc = executor.poll()
        lines = logs.read(final=rc is not None)
        rows = outputs.read()
        with session_scope() as s:
            if lines:
                seq = svc.append_logs(s, evaluation_id, seq, lines)
                tail = (tail + lines)[-TAIL_LINES:]
            if rows:
                svc.append_samples(s, evaluation_id, rows)
                done += len(rows)
            if total is None and (run_dir / "spec.json").exists():
                total = _total(run_dir)
            svc.heartbeat(s, evaluation_id, done=done, total=total)
            status = svc.get_evaluation(s, evaluation_id).status
        if rc is not None:
            break
        if status == S.stopping and stop_sent_at is None:
            executor.terminate()
            stop_sent_at = time.monotonic()
        elif stop_sent_at is not None and time.monotonic() - stop_sent_at > CANCEL_GRACE_SECONDS:
            executor.kill()
        time.sleep(settings.stream_poll_seconds)
    return _finish(evaluation_id, run_dir, rc, tail)


def _total(run_dir: Path) -> int | None:
    spec = EvaluationSpec.read(run_dir / "spec.json")
    with open(spec.annotation, encoding="utf-8-sig") as f:
        n = sum(1 for line in f if line.strip())
    return min(n, spec.limit or n) * len(spec.models)


def _finish(evaluation_id: int, run_dir: Path, rc: int | None, tail: list[str]) -> str:
    with session_scope() as s:
        status = svc.get_evaluation(s, evaluation_id).status
        if status == S.stopping:
            svc.transition(s, evaluation_id, S.cancelled, exit_code=rc, failure_reason="cancelled by the user")
            return "cancelled"
        results = run_dir / "results.json"
        if rc == 0 and results.exists():
            summary = json.loads(results.read_text())["models"]
            svc.transition(s, evaluation_id, S.succeeded, exit_code=0, summary=summary)
            return "succeeded"
        reason = f"evaluation exited with code {rc}" if rc else "evaluation exited without writing results.json"
        svc.transition(s, evaluation_id, S.failed, exit_code=rc, failure_reason=reason + "\n" + "\n".join(tail))
        return "failed"
