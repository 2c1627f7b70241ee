"""Shared fixtures: real servers for the production path, a studio launched as real
processes (API + Celery worker) for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("VLSTUDIO_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("VLSTUDIO_TEST_REDIS", "redis://127.0.0.1:6379")
ADMIN = ("admin", "admin-password-for-tests")
# The production mode refuses the default secret and needs a first admin; studios started
# below and in-process APIs inherit these.
# Without a GPU, Triton kernels (liger-kernel's) run on CPU tensors through Triton's interpreter
# (tests/worker/triton_cpu.py). It must be on before triton is first imported (transformers'
# model modules import it): triton's own library functions are decorated at that import.
if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("VLSTUDIO_SECRET_KEY", "test-secret-" + uuid.uuid4().hex)
os.environ.setdefault("VLSTUDIO_FIRST_ADMIN_USERNAME", ADMIN[0])
os.environ.setdefault("VLSTUDIO_FIRST_ADMIN_PASSWORD", ADMIN[1])
# Every test logs in at least once: the production cost (scrypt N=2^17, ~1 s on a busy CI core)
# would dominate the suite. tests/hostile/test_auth_hardening.py checks the default and the upgrade.
os.environ.setdefault("VLSTUDIO_SCRYPT_LOG_N", "14")
# The training-data index cache of every trainer and studio of this session (not the user's
# ~/.cache): one per session, removed at its end.
if "VLSTUDIO_INDEX_CACHE" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["VLSTUDIO_INDEX_CACHE"] = tempfile.mkdtemp(prefix="vlstudio-test-index-")
    atexit.register(shutil.rmtree, os.environ["VLSTUDIO_INDEX_CACHE"], True)


def login(base_url: str, username: str = ADMIN[0], password: str = ADMIN[1]) -> dict[str, str]:
    """Authorization headers for a user of a running API."""
    r = httpx.post(base_url.rstrip("/") + "/api/auth/login", json={"username": username, "password": password},
                   timeout=30)
    r.raise_for_status()
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database; the test fails (never skips) if the server is down."""
    import psycopg

    name = f"vlstudio_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    yield f"{base}/{name}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_broker() -> Iterator[str]:
    """A Redis database index of its own, flushed before and after (VLSTUDIO_TEST_REDIS_DB lets
    test runs from several checkouts share one server)."""
    import redis

    db = int(os.environ.get("VLSTUDIO_TEST_REDIS_DB", "9"))
    client = redis.Redis.from_url(f"{REDIS_URL}/{db}", socket_connect_timeout=5)
    client.flushdb()
    yield f"{REDIS_URL}/{db}"
    client.flushdb()


@dataclass
class Studio:
    url: str
    data_dir: Path
    env: dict[str, str]
    procs: list[subprocess.Popen]
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def api(self) -> httpx.Client:
        """A client logged in as the first admin."""
        return httpx.Client(base_url=self.url + "/api", timeout=60, headers=self.headers)

    def wait_job(self, job_id: int, timeout: float = 600) -> dict:
        deadline = time.monotonic() + timeout
        with self.api as c:
            while time.monotonic() < deadline:
                job = c.get(f"/jobs/{job_id}").json()
                if job["status"] in ("succeeded", "failed", "cancelled"):
                    return job
                time.sleep(1)
        raise AssertionError(f"job {job_id} did not finish in {timeout}s: {job}\n{self.worker_log()}")

    def wait_job_running(self, job_id: int, timeout: float = 600) -> dict:
        """The job once it runs and its run folder has its log (the worker reads it from then)."""
        deadline = time.monotonic() + timeout
        with self.api as c:
            while time.monotonic() < deadline:
                job = c.get(f"/jobs/{job_id}").json()
                if job["status"] == "running" and job.get("run_dir") and \
                        (Path(job["run_dir"]) / "training_log.txt").exists():
                    return job
                if job["status"] in ("succeeded", "failed", "cancelled"):
                    break
                time.sleep(0.5)
        raise AssertionError(f"job {job_id} is not running: {job}\n{self.worker_log()}")

    def worker_log(self) -> str:
        p = self.data_dir / "worker.log"
        return p.read_text()[-5000:] if p.exists() else ""


def start_studio(tmp_path: Path, database_url: str | None = None, broker_url: str | None = None,
                 with_ui: bool = False, workers: int = 1, extra_env: dict[str, str] | None = None) -> Studio:
    port = free_port()
    data = tmp_path / "data"
    env = {**os.environ, "VLSTUDIO_DATA_DIR": str(data), "VLSTUDIO_PORT": str(port), "VLSTUDIO_HOST": "127.0.0.1"}
    env.update(extra_env or {})  # e.g. VLSTUDIO_BACKEND=slurm
    for key, val in (("VLSTUDIO_DATABASE_URL", database_url), ("VLSTUDIO_BROKER_URL", broker_url)):
        if val:
            env[key] = val
        else:
            env.pop(key, None)
    data.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "backend.cli"]
    subprocess.run([*cli, "migrate"], env=env, check=True, cwd=REPO, capture_output=True)
    api_cmd = [*cli, "api"] + (["--with-ui"] if with_ui else [])
    procs = [subprocess.Popen(api_cmd, env=env, cwd=REPO, stdout=open(data / "api.log", "ab"),
                              stderr=subprocess.STDOUT)]
    for i in range(workers):
        procs.append(start_worker(env, data, f"w{i}-{port}"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                return Studio(url, data, env, procs, login(url))
        except httpx.HTTPError:
            pass
        if procs[0].poll() is not None:
            break
        time.sleep(0.5)
    stop_studio(Studio(url, data, env, procs))
    raise RuntimeError("the API did not start:\n" + (data / "api.log").read_text()[-3000:])


def restart_api(studio: Studio, sig: int = signal.SIGTERM) -> None:
    """Stop the API process (``sig``: SIGKILL for a crash, no goodbye) and start a new one on
    the same port (workers keep running)."""
    api = studio.procs[0]
    api.send_signal(sig)
    api.wait(timeout=30)
    studio.procs[0] = subprocess.Popen([sys.executable, "-m", "backend.cli", "api"], env=studio.env, cwd=REPO,
                                       stdout=open(studio.data_dir / "api.log", "ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(studio.url + "/api/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.5)
    raise RuntimeError("the API did not come back:\n" + (studio.data_dir / "api.log").read_text()[-3000:])


def start_worker(env: dict[str, str], data: Path, name: str) -> subprocess.Popen:
    """A Celery worker process (its own session, so a test can kill -9 it alone)."""
    return subprocess.Popen([sys.executable, "-m", "backend.cli", "worker", "--hostname", f"{name}@%h"], env=env,
                            cwd=REPO, stdout=open(data / "worker.log", "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def start_ui(studio: Studio) -> tuple[subprocess.Popen, str]:
    """``vlstudio ui`` as its own process in front of ``studio``'s API, once it answers; returns
    (process, its URL). The caller terminates the process."""
    port = free_port()
    log = open(studio.data_dir / "ui.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "backend.cli", "ui", "--host", "127.0.0.1", "--port", str(port)],
                            env={**studio.env, "VLSTUDIO_API_URL": studio.url}, cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("vlstudio ui did not start:\n" + (studio.data_dir / "ui.log").read_text()[-3000:])


def stop_studio(studio: Studio) -> None:
    for p in studio.procs:
        if p.poll() is None:
            p.terminate()
    for p in studio.procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


@pytest.fixture
def embedded_studio(tmp_path: Path) -> Iterator[Studio]:
    studio = start_studio(tmp_path)
    yield studio
    stop_studio(studio)


@pytest.fixture
def production_studio(tmp_path: Path, pg_database: str, redis_broker: str) -> Iterator[Studio]:
    studio = start_studio(tmp_path, database_url=pg_database, broker_url=redis_broker)
    yield studio
    stop_studio(studio)


def pytest_ignore_collect(collection_path, config):
    """tests/gpu (the GPU suite, tests/gpu/conftest.py) runs only when named: pytest tests/gpu."""
    gpu = REPO / "tests" / "gpu"
    path = Path(collection_path).resolve()
    if path != gpu and gpu not in path.parents:
        return None
    for arg in config.args:
        target = Path(arg.split("::")[0]).resolve()
        if target == gpu or gpu in target.parents:
            return None
    return True
