"""Run one training job: write its run folder, launch torchrun on the job's leased GPUs,
stream its output into the database, and record how it ended."""

from __future__ import annotations

import ctypes
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import traceback
from pathlib import Path
from typing import Protocol

from backend.core.spec import Hyperparameters, TrainingSpec
from backend.db.models import Job, JobLog, JobStatus
from backend.db.session import session_scope
from backend.queue import wake_workers
from backend.services import jobs as jobs_svc
from backend.services.datasets import get_dataset
from backend.services.models import get_model
from backend.services.scheduling import free_port as _free_port
from backend.settings import get_settings

S = JobStatus
TAIL_LINES = 20
PR_SET_PDEATHSIG = 1


def free_port() -> int:
    return _free_port(set())


def build_command(spec_path: Path, nproc: int, port: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(port),
            "-m", "worker.training.train", "--spec", str(spec_path)]


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


def prepare_run(job: Job, run_dir: Path, port: int | None = None) -> tuple[Path, list[str]]:
    """Write everything needed to rerun the job by hand into ``run_dir``: spec.json,
    meta.json, ds_config.json and command.txt."""
    settings = get_settings()
    with session_scope() as s:
        ds = get_dataset(s, job.dataset_id)
        model = get_model(s, job.model_id)
        model_path, model_template, builtin = Path(model.path), model.template, model.builtin
        ds_name, ds_root, ds_ann, ds_len = ds.name, ds.root, ds.annotation, ds.num_samples
        val_ann, val_len = ds.val_annotation, ds.num_val_samples
    if builtin and not (model_path / "config.json").exists():
        model_path = _build_demo_model_once(settings.data_path / "models")
    hyper = Hyperparameters.model_validate(job.hyper)
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = {f"{ds_name}-{job.dataset_id}": {"root": ds_root, "annotation": ds_ann, "data_augment": False,
                                            "repeat_time": 1, "length": ds_len}}
    (run_dir / "meta.json").write_text(json.dumps(meta, indent=2))
    eval_meta = None
    if hyper.eval_steps and val_ann:  # issue 8: eval loss on the held-out validation split
        eval_meta = run_dir / "eval_meta.json"
        eval_meta.write_text(json.dumps({f"{ds_name}-{job.dataset_id}-val": {
            "root": ds_root, "annotation": val_ann, "data_augment": False, "repeat_time": 1, "length": val_len}}))
    spec = TrainingSpec(job_id=job.id, model_path=str(model_path), template=hyper.template or model_template,
                        meta_path=str(run_dir / "meta.json"), output_dir=str(run_dir), hyper=hyper,
                        eval_meta_path=str(eval_meta) if eval_meta else None,
                        resume_from_checkpoint=job.resume_from_checkpoint)
    spec_path = run_dir / "spec.json"
    spec.write(spec_path)
    _write_deepspeed_config(spec, run_dir)
    cmd = build_command(spec_path, hyper.nproc_per_node, port or free_port())
    (run_dir / "command.txt").write_text(shlex.join(cmd) + "\n")
    return spec_path, cmd


class Executor(Protocol):
    """Where a training command runs. The local one is torchrun on this node; other
    backends (Slurm) implement the same four calls. Output must go to ``log_path``."""

    def start(self, cmd: list[str], run_dir: Path, log_path: Path, env: dict[str, str]) -> None: ...

    def poll(self) -> int | None: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


def _die_with_parent() -> None:
    # If the worker is killed (even with -9) torchrun gets SIGTERM, forwards it to the trainers,
    # and they checkpoint and exit instead of training on unsupervised. The signal is tied to
    # the thread that forked, which supervises the job until it ends.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _process_group(pgid: int) -> list[int]:
    """Live processes of a process group (Linux /proc; empty elsewhere)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


class LocalExecutor:
    """torchrun as a child in its own process session, so the whole group can be signalled."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def start(self, cmd: list[str], run_dir: Path, log_path: Path, env: dict[str, str]) -> None:
        with open(log_path, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, env=env, cwd=run_dir,
                                         preexec_fn=_die_with_parent if sys.platform == "linux" else None)

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
        # SIGTERM to the trainers only: torchrun's agent, given SIGTERM, would SIGKILL its
        # workers 30 s later, cutting a checkpoint that takes longer to save. Without the agent
        # signalled, the cancel grace period alone decides when to escalate.
        assert self.proc is not None
        trainers = [pid for pid in _process_group(self.proc.pid) if pid != self.proc.pid]
        if not trainers:
            self._signal(signal.SIGTERM)
        for pid in trainers:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

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


class RunControl:
    """What the worker tells a running job from outside: stop because the worker is going away."""

    def __init__(self, gpu_ids: list[int] | None = None) -> None:
        self.gpu_ids = gpu_ids  # None: not leased here (cluster backend), leave the devices alone
        self.drain_reason: str | None = None
        self.done = threading.Event()


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
        spec_path, cmd = prepare_run(job, run_dir, port)
    except Exception as e:  # noqa: BLE001 - recorded on the job, with the traceback in its log
        with session_scope() as s:
            jobs_svc.append_logs(s, job_id, jobs_svc.next_seq(s, JobLog, job_id), traceback.format_exc().splitlines(),
                                 stream="system")
            jobs_svc.transition(s, job_id, S.failed, failure_reason=f"could not prepare the run: {e}")
        return "failed in preparation"
    return supervise(job_id, run_dir, cmd, control=control)


def make_executor() -> Executor:
    """The executor of the configured backend (``VLSTUDIO_BACKEND``)."""
    if get_settings().backend == "slurm":
        from worker.slurm import SlurmExecutor  # type: ignore[import-not-found]

        return SlurmExecutor()
    return LocalExecutor()


REPO_ROOT = Path(__file__).resolve().parents[1]


def job_env(gpu_ids: list[int] | None) -> dict[str, str]:
    # The leased GPUs; an empty CUDA_VISIBLE_DEVICES hides every GPU from a CPU job. None: a
    # cluster scheduler places the job and sets the devices itself. PYTHONPATH: the trainer
    # runs the same code as this worker, whatever an installed copy of the package says.
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": path}
    if gpu_ids is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpu_ids))
    return env


def supervise(job_id: int, run_dir: Path, cmd: list[str], executor: Executor | None = None,
              control: RunControl | None = None) -> str:
    """Start ``cmd`` and stream its log and metrics into the database until it ends."""
    from worker.supervision import Supervision

    control = control or RunControl()
    executor = executor or make_executor()
    log_path = run_dir / "training_log.txt"
    executor.start(cmd, run_dir, log_path, job_env(control.gpu_ids))
    with session_scope() as s:
        jobs_svc.record_progress(s, job_id, command=shlex.join(cmd))
        jobs_svc.append_logs(s, job_id, jobs_svc.next_seq(s, JobLog, job_id), [f"$ {shlex.join(cmd)}"],
                             stream="system")
        if jobs_svc.get_job(s, job_id).status == S.starting:  # if stopping, the loop sends SIGTERM at once
            jobs_svc.transition(s, job_id, S.running)
    sup = Supervision(job_id, run_dir, executor, control, LogTail(log_path), MetricsTail(run_dir / "metrics.jsonl"))
    try:
        rc = sup.follow()
        return sup.finish(rc, wake_workers)
    finally:
        control.done.set()

