"""``vlstudio up`` stops everything it started (issue 17): SIGTERM (what a service manager
sends) while a job trains, and SIGINT (Ctrl-C) idle, leave no process behind. Processes are
found by scanning /proc, which fails loudly when it cannot be read (an empty answer from a
broken lookup would pass any "nothing left" check)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from backend.core.demo_data import write_zip
from tests.conftest import REPO, free_port, login

pytestmark = pytest.mark.slow


def processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process."""
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    out = {}
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited during the scan
        fields = stat.rsplit(")", 1)[1].split()
        out[pid] = (int(fields[1]), fields[0])
    assert os.getpid() in out and len(out) > 1, "the /proc scan does not see this process"
    return out


def descendants(root: int) -> set[int]:
    procs = processes()
    found, todo = set(), [root]
    while todo:
        parent = todo.pop()
        for pid, (ppid, _) in procs.items():
            if ppid == parent and pid not in found:
                found.add(pid)
                todo.append(pid)
    return found


def with_data_dir(data: Path) -> list[int]:
    """Live processes whose environment names this studio's data folder."""
    needle = f"VLSTUDIO_DATA_DIR={data}".encode()
    assert Path(f"/proc/{os.getpid()}/environ").read_bytes(), "cannot read environments from /proc"
    out = []
    for pid, (_, state) in processes().items():
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue
        except PermissionError:  # not ours (the sandbox's init): nothing this studio started
            continue
        if state != "Z" and needle in env.split(b"\0"):
            out.append(pid)
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return ""


def start_up(tmp_path: Path) -> tuple[subprocess.Popen, str, Path]:
    port, data = free_port(), tmp_path / "data"
    env = {**os.environ, "VLSTUDIO_DATA_DIR": str(data), "VLSTUDIO_PORT": str(port), "VLSTUDIO_HOST": "127.0.0.1",
           "PYTHONPATH": str(REPO)}
    for key in ("VLSTUDIO_DATABASE_URL", "VLSTUDIO_BROKER_URL"):
        env.pop(key, None)
    data.mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-m", "backend.cli", "up"], env=env, cwd=REPO, start_new_session=True,
                            stdout=open(tmp_path / "up.log", "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                return proc, url, data
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
        time.sleep(0.5)
    raise AssertionError("vlstudio up did not start:\n" + (tmp_path / "up.log").read_text()[-3000:])


def start_a_job(url: str, tmp_path: Path) -> int:
    headers = login(url)
    zpath = write_zip(tmp_path / "d.zip", n=8)
    with httpx.Client(base_url=url + "/api", headers=headers, timeout=60) as api, open(zpath, "rb") as f:
        ds = api.post("/datasets", files={"file": ("d.zip", f, "application/zip")}).json()
        job = api.post("/jobs", json={"dataset_id": ds["id"], "model_id": 1, "preset": "demo", "hyperparameters": {
            "nproc_per_node": 1, "zero_stage": 1, "per_device_batch_size": 2, "max_steps": 500}}).json()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            state = api.get(f"/jobs/{job['id']}").json()
            if state["step"] >= 1:
                return job["id"]
            assert state["status"] in ("queued", "starting", "running"), state
            time.sleep(1)
    raise AssertionError(f"job {job['id']} did not start training")


def stop_and_check(proc: subprocess.Popen, sig: int, data: Path, tmp_path: Path, expect: tuple[str, ...]) -> None:
    started = descendants(proc.pid)
    names = " | ".join(cmdline(p) for p in started)
    assert all(e in names for e in expect), names  # the lookup sees what is running
    proc.send_signal(sig)
    try:
        proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("vlstudio up did not exit:\n" + (tmp_path / "up.log").read_text()[-3000:]) from None
    left = {p for p in started if p in processes() and processes()[p][1] != "Z"} | set(with_data_dir(data))
    assert not left, f"left running: {[cmdline(p) for p in left]}\n" + (tmp_path / "up.log").read_text()[-2000:]


def test_sigterm_while_a_job_trains_leaves_no_process(tmp_path):
    proc, url, data = start_up(tmp_path)
    start_a_job(url, tmp_path)
    stop_and_check(proc, signal.SIGTERM, data, tmp_path, expect=("celery", "worker.training.train"))


def test_sigint_leaves_no_process(tmp_path):
    proc, _, data = start_up(tmp_path)
    stop_and_check(proc, signal.SIGINT, data, tmp_path, expect=("celery",))


def test_sigkill_of_up_leaves_no_process(tmp_path):
    """No goodbye at all (a service manager's SIGKILL after its stop timeout): the embedded
    worker, in a process session of its own, still ends with it (PR_SET_PDEATHSIG)."""
    proc, _, data = start_up(tmp_path)
    started = descendants(proc.pid)
    assert any("celery" in cmdline(p) for p in started), [cmdline(p) for p in started]
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        left = {p for p in started if p in processes() and processes()[p][1] != "Z"} | set(with_data_dir(data))
        if not left:
            return
        time.sleep(0.5)
    for p in left:
        os.kill(p, signal.SIGKILL)
    raise AssertionError(f"left running after SIGKILL of vlstudio up: {[cmdline(p) for p in left]}")
