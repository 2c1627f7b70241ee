"""The ``vlstudio`` command line."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable

import typer

from backend.cli.benchmarks import benchmarks_app
from backend.cli.datasets import datasets_app
from backend.cli.models import models_app
from backend.settings import get_settings

PR_SET_PDEATHSIG = 1

app = typer.Typer(help="vlstudio: fine-tune InternVL vision-language models.", no_args_is_help=True,
                  add_completion=False)
app.add_typer(datasets_app, name="datasets")
app.add_typer(models_app, name="models")
app.add_typer(benchmarks_app, name="benchmarks")


def worker_command(concurrency: int | None = None, hostname: str | None = None) -> list[str]:
    s = get_settings()
    cmd = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", "gpu", "--pool", "threads",
           "--concurrency", str(concurrency or s.worker_concurrency), "--loglevel", "INFO"]
    if hostname:
        cmd += ["--hostname", hostname]
    return cmd


@app.command()
def migrate() -> None:
    """Apply database migrations (done automatically at start too)."""
    from backend.db.migrate import upgrade_to_head

    get_settings().ensure_dirs()
    upgrade_to_head()
    typer.echo(f"database at head: {get_settings().db_url.split('@')[-1]}")


@app.command()
def api(host: str = typer.Option(None, help="default VLSTUDIO_HOST"),
        port: int = typer.Option(None, help="default VLSTUDIO_PORT"),
        with_ui: bool = typer.Option(False, "--with-ui", help="also serve the Gradio UI at /")) -> None:
    """Run the REST API (OpenAPI at /docs)."""
    import uvicorn

    s = get_settings()
    uvicorn.run(_build_app(with_ui), host=host or s.host, port=port or s.port, log_level="info")


def _build_app(with_ui: bool):  # noqa: ANN202
    from backend.api.app import create_app

    app_ = create_app()
    if with_ui:
        from ui.app import mount

        app_ = mount(app_, get_settings().api_base_url)
    return app_


@app.command()
def worker(concurrency: int = typer.Option(None, help="Celery threads for wake-up messages"),
           hostname: str = typer.Option(None),
           gpus: int = typer.Option(None, help="GPUs this worker may lease; default VLSTUDIO_GPUS_PER_NODE or "
                                               "nvidia-smi"),
           node: str = typer.Option(None, help="node name for GPU leases; default the host name"),
           cpu_slots: int = typer.Option(None, help="CPU-only jobs at once; default VLSTUDIO_CPU_JOB_SLOTS")) -> None:
    """Run a worker: it takes queued jobs (priority, then submission order) while it has free
    GPUs (one CUDA_VISIBLE_DEVICES set per job) or CPU slots; see docs/jobs.md."""
    for key, val in (("VLSTUDIO_GPUS_PER_NODE", gpus), ("VLSTUDIO_NODE_NAME", node),
                     ("VLSTUDIO_CPU_JOB_SLOTS", cpu_slots)):
        if val is not None:
            os.environ[key] = str(val)
    get_settings.cache_clear()
    get_settings().ensure_dirs()
    os.execv(sys.executable, worker_command(concurrency, hostname))


@app.command()
def ui(host: str = typer.Option("127.0.0.1"), port: int = typer.Option(7861)) -> None:
    """Run the Gradio UI alone, talking to the API at VLSTUDIO_API_URL."""
    from ui.serve import launch

    launch(get_settings().api_base_url, host, port)


def _exit_on_sigterm(signum: int, frame: object) -> None:  # noqa: ARG001
    # uvicorn handles SIGTERM itself, then restores this handler and raises the signal again:
    # with the default handler the process would die there, before stopping the worker.
    raise SystemExit(128 + signum)


def stop_worker(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM: the worker's scheduler asks running jobs to checkpoint and stop, and waits for
    them; after ``grace`` seconds, SIGKILL to its whole process group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        typer.echo(f"vlstudio: the worker did not stop in {grace:.0f} s; killing it", err=True)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _end_with(parent: int) -> Callable[[], None]:
    """``preexec_fn`` of a child that must end with ``parent`` however it ends (SIGKILL too): the
    kernel sends it SIGTERM when the parent dies (PR_SET_PDEATHSIG; a Celery worker then stops
    as on any SIGTERM: its jobs checkpoint). A parent already gone before the call: exit."""
    def preexec() -> None:
        if sys.platform == "linux":
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(1)
    return preexec


@app.command()
def up(host: str = typer.Option(None), port: int = typer.Option(None)) -> None:
    """The embedded all-in-one mode: API + UI + one worker, SQLite and a filesystem broker.
    SIGTERM and SIGINT (Ctrl-C) stop the worker (its jobs checkpoint first), then the server."""
    import uvicorn

    s = get_settings()
    s.ensure_dirs()
    from backend.db.migrate import upgrade_to_head

    upgrade_to_head()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    env = {**os.environ, "VLSTUDIO_DATA_DIR": str(s.data_path)}
    # A session of its own: a terminal's Ctrl-C reaches this process only, which stops the
    # worker in order (and a leftover of the worker's group can be killed as a whole).
    # And it ends with this process even when this one is SIGKILLed (issue 26: the worker of a
    # `vlstudio up` killed while its API hung on shutdown ran on, orphaned, for 50 minutes).
    worker_proc = subprocess.Popen(worker_command(hostname="embedded@%h"), env=env, start_new_session=True,
                                   stdout=open(s.data_path / "worker.log", "a"), stderr=subprocess.STDOUT,
                                   preexec_fn=_end_with(os.getpid()))
    typer.echo(f"vlstudio: data in {s.data_path}; worker log {s.data_path / 'worker.log'}")
    typer.echo(f"vlstudio: open http://{host or s.host}:{port or s.port}/  (API docs at /docs)")
    try:
        uvicorn.run(_build_app(True), host=host or s.host, port=port or s.port, log_level="info")
    finally:
        stop_worker(worker_proc, s.cancel_grace_seconds + 60)


def main() -> None:  # pragma: no cover
    app()


__all__ = ["app"]
