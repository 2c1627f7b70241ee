"""Run one training job: claim it, write its run folder, launch torchrun, stream its output
into the database, and record how it ended."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Protocol

from backend.core.spec import Hyperparameters, TrainingSpec
from backend.db.models import Job, JobLog, JobMetric, JobStatus
from backend.db.session import session_scope
from backend.services import jobs as jobs_svc
from backend.services.datasets import get_dataset
from backend.services.models import get_model
from backend.settings import get_settings

S = JobStatus
CANCEL_GRACE_SECONDS = 60.0
TAIL_LINES = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_command(spec_path: Path, nproc: int, port: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(port),
            "-m", "worker.training.train", "--spec", str(spec_path)]


def prepare_run(job: Job, run_dir: Path) -> tuple[Path, list[str]]:
    """Write everything needed to rerun the job by hand into ``run_dir``."""
    settings = get_settings()
    with session_scope() as s:
        ds = get_dataset(s, job.dataset_id)
        model = get_model(s, job.model_id)
        model_path, model_template, builtin = Path(model.path), model.template, model.builtin
        ds_name, ds_root, ds_ann, ds_len = ds.name, ds.root, ds.annotation, ds.num_samples
    if builtin and not (model_path / "config.json").exists():
        from worker.demo_model import ensure_demo_model

        model_path = ensure_demo_model(settings.data_path / "models")
    hyper = Hyperparameters.model_validate(job.hyper)
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = {f"{ds_name}-{job.dataset_id}": {"root": ds_root, "annotation": ds_ann, "data_augment": False,
                                            "repeat_time": 1, "length": ds_len}}
    (run_dir / "meta.json").write_text(json.dumps(meta, indent=2))
    spec = TrainingSpec(job_id=job.id, model_path=str(model_path), template=hyper.template or model_template,
                        meta_path=str(run_dir / "meta.json"), output_dir=str(run_dir), hyper=hyper)
    spec_path = run_dir / "spec.json"
    spec.write(spec_path)
    cmd = build_command(spec_path, hyper.nproc_per_node, free_port())
    (run_dir / "command.txt").write_text(shlex.join(cmd) + "\n")
    return spec_path, cmd


class Executor(Protocol):
    """Where a training command runs. The local one is torchrun on this node; other
    backends (Slurm) implement the same four calls. Output must go to ``log_path``."""

    def start(self, cmd: list[str], run_dir: Path, log_path: Path, env: dict[str, str]) -> None: ...

    def poll(self) -> int | None: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


class LocalExecutor:
    """torchrun as a child in its own process session, so the whole group can be signalled."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def start(self, cmd: list[str], run_dir: Path, log_path: Path, env: dict[str, str]) -> None:
        with open(log_path, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, env=env, cwd=run_dir)

    def poll(self) -> int | None:
        assert self.proc is not None
        return self.proc.poll()

    def _signal(self, sig: int) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)


class LogTail:
    """Reads new complete lines of a text log from a byte offset; tqdm-style carriage
    returns keep only the last state of a line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def read(self, final: bool = False) -> list[str]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = len(data) if final else data.rfind(b"\n") + 1
        self.offset += end
        text = data[:end].decode("utf-8", errors="replace")
        return [line.split("\r")[-1] for line in text.splitlines()]


class MetricsTail:
    """Reads new complete lines of metrics.jsonl from a byte offset."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        return [json.loads(x) for x in data[:end].splitlines() if x.strip()]


def run_training_job(job_id: int, worker_name: str) -> str:
    settings = get_settings()
    with session_scope() as s:
        if not jobs_svc.claim_job(s, job_id, worker_name):
            return "not claimed (already taken, finished or cancelled)"
        job = jobs_svc.get_job(s, job_id)
        run_dir = settings.data_path / "runs" / str(job_id)
        job.run_dir = str(run_dir)
    try:
        spec_path, cmd = prepare_run(job, run_dir)
    except Exception as e:
        with session_scope() as s:
            jobs_svc.append_logs(s, job_id, jobs_svc.next_seq(s, JobLog, job_id), traceback.format_exc().splitlines(),
                                 stream="system")
            jobs_svc.transition(s, job_id, S.failed, failure_reason=f"could not prepare the run: {e}")
        return "failed in preparation"
    return supervise(job_id, run_dir, cmd)


def make_executor() -> Executor:
    """The executor of the configured backend (``VLSTUDIO_BACKEND``)."""
    if get_settings().backend == "slurm":
        from worker.slurm import SlurmExecutor  # type: ignore[import-not-found]

        return SlurmExecutor()
    return LocalExecutor()


def supervise(job_id: int, run_dir: Path, cmd: list[str], executor: Executor | None = None) -> str:
    """Start ``cmd`` and stream its log and metrics into the database until it ends."""
    settings = get_settings()
    executor = executor or make_executor()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    log_path = run_dir / "training_log.txt"
    executor.start(cmd, run_dir, log_path, env)
    logs = LogTail(log_path)
    metrics = MetricsTail(run_dir / "metrics.jsonl")
    with session_scope() as s:
        log_seq = jobs_svc.next_seq(s, JobLog, job_id)
        metric_seq = jobs_svc.next_seq(s, JobMetric, job_id)
        jobs_svc.append_logs(s, job_id, log_seq, [f"$ {shlex.join(cmd)}"], stream="system")
        log_seq += 1
        jobs_svc.transition(s, job_id, S.running)
    tail: list[str] = []
    stop_sent_at: float | None = None
    killed = False
    while True:
        rc = executor.poll()
        lines = logs.read(final=rc is not None)
        rows = metrics.read()
        with session_scope() as s:
            if lines:
                log_seq = jobs_svc.append_logs(s, job_id, log_seq, lines)
                tail = (tail + lines)[-TAIL_LINES:]
            if rows:
                metric_seq = jobs_svc.append_metrics(s, job_id, metric_seq, rows)
                last = rows[-1]
                jobs_svc.heartbeat(s, job_id, step=int(last.get("step", 0)), total_steps=last.get("total_steps"))
            else:
                jobs_svc.heartbeat(s, job_id)
            status = jobs_svc.get_job(s, job_id).status
        if rc is not None:
            break
        if status == S.stopping and stop_sent_at is None:
            executor.terminate()
            stop_sent_at = time.monotonic()
        elif stop_sent_at is not None and not killed and time.monotonic() - stop_sent_at > CANCEL_GRACE_SECONDS:
            executor.kill()
            killed = True
        time.sleep(settings.stream_poll_seconds)
    with session_scope() as s:
        status = jobs_svc.get_job(s, job_id).status
        if status == S.stopping:
            jobs_svc.transition(s, job_id, S.cancelled, exit_code=rc,
                                failure_reason="cancelled by the user" + (" (killed after grace period)" if killed else ""))
            return "cancelled"
        if rc == 0 and (run_dir / "final" / "config.json").exists():
            jobs_svc.transition(s, job_id, S.succeeded, exit_code=0)
            return "succeeded"
        reason = f"trainer exited with code {rc}" if rc else "trainer exited without writing the final model"
        jobs_svc.transition(s, job_id, S.failed, exit_code=rc, failure_reason=reason + "\n" + "\n".join(tail))
        return "failed"
