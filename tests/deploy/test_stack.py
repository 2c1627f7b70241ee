"""The production stack run for real on a Docker engine: docker-compose.yml with the
docker-compose.test.yml override (local images: Debian's PostgreSQL and Redis on a base built
with debootstrap, host networking, the CPU torch wheel), built and started with
``docker-compose up --build`` (deploy/compose-local.sh); a user's whole path through the REST API; restarts; teardown.

Needs a running engine (.ci/run starts one: deploy/start-engine.sh); fails, never skips, without
one. Image builds are cached by the engine between runs (a warm run rebuilds only the code layers).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3000)]

REPO = Path(__file__).resolve().parents[2]
PROJECT = "vlstudio-e2e"
API_PORT = int(os.environ.get("VLSTUDIO_TEST_API_PORT", "57860"))
PG_PORT = int(os.environ.get("VLSTUDIO_TEST_PG_PORT", "55432"))
REDIS_PORT = int(os.environ.get("VLSTUDIO_TEST_REDIS_PORT", "56379"))
API = f"http://127.0.0.1:{API_PORT}"
ADMIN_PASSWORD = "stack-admin-" + uuid.uuid4().hex[:12]
SECRET = uuid.uuid4().hex + uuid.uuid4().hex
STEPS = 4


def sh(*cmd: str, timeout: float = 600, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                         env={**os.environ, **(env or {})})
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {out.returncode}\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    return out


def project_containers() -> list[str]:
    return sh("docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}").stdout.split()


def project_volumes() -> list[str]:
    return sh("docker", "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}").stdout.split()


class Stack:
    """docker-compose.yml + docker-compose.test.yml through deploy/compose-local.sh (which drops
    the two keys Compose v1 cannot unset in an override: the API's port binding under host
    networking, the worker's GPU reservation without an NVIDIA runtime; tests/deploy/
    test_compose_config.py checks it drops nothing else)."""

    def __init__(self, shared: Path):
        self.env = {"VLSTUDIO_SECRET_KEY": SECRET, "VLSTUDIO_FIRST_ADMIN_PASSWORD": ADMIN_PASSWORD,
                    "VLSTUDIO_SHARED_DIR": str(shared)}
        self.headers: dict[str, str] = {}

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        return sh("bash", "deploy/compose-local.sh", "-p", PROJECT, *args, timeout=timeout, check=check, env=self.env)

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "80", check=False).stdout

    def wait_healthy(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            ids = self.compose("ps", "-q").stdout.split()
            states = {}
            for cid in ids:
                info = json.loads(sh("docker", "inspect", cid).stdout)[0]
                name = info["Config"]["Labels"]["com.docker.compose.service"]
                health = info["State"].get("Health", {}).get("Status", "none")
                states[name] = (info["State"]["Status"], health)
            last = str(states)
            if (set(states) == {"postgres", "redis", "api", "worker"}
                    and all(s == "running" for s, _ in states.values())
                    and all(h in ("healthy", "none") for _, h in states.values())):
                return
            time.sleep(2)
        raise AssertionError(f"the stack was not healthy in {timeout}s: {last}\n{self.logs()}")

    def login(self, password: str = ADMIN_PASSWORD) -> httpx.Response:
        return httpx.post(f"{API}/api/auth/login", json={"username": "admin", "password": password}, timeout=60)

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=f"{API}/api", headers=self.headers, timeout=60)


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Stack:
    info = subprocess.run(["docker", "info"], capture_output=True, text=True)
    assert info.returncode == 0, f"no Docker engine answers (bash deploy/start-engine.sh): {info.stderr}"
    assert shutil.which("docker-compose"), "docker-compose is missing (bash deploy/start-engine.sh installs it)"
    assert not project_containers(), f"containers of {PROJECT} are left from an earlier run: docker-compose -p " \
                                     f"{PROJECT} down -v"
    t0 = time.monotonic()
    sh("bash", "deploy/build-base.sh", timeout=900)
    sh("bash", "deploy/cpu-torch-wheel.sh", timeout=600, env={"PIP": f"{sys.executable} -m pip"})
    tmp = tmp_path_factory.mktemp("stack")
    shared = tmp / "shared"
    shared.mkdir()
    (shared / "note.txt").write_text("on shared storage\n")
    st = Stack(shared)
    try:
        t_build = time.monotonic()
        st.compose("up", "-d", "--build", timeout=2400)
        t_up = time.monotonic()
        st.wait_healthy()
        t_healthy = time.monotonic()
        print(f"\nstack: base + wheel {t_build - t0:.0f} s, up --build {t_up - t_build:.0f} s, "
              f"healthy after {t_healthy - t_up:.0f} s more")
        yield st
    finally:
        st.compose("down", "-v", "--remove-orphans", timeout=300, check=False)
    print(f"stack test: {time.monotonic() - t0:.0f} s in all")


def follow_sse(job_id: int, headers: dict) -> list[tuple[str, dict]]:
    events: list[tuple[str, dict]] = []
    with httpx.stream("GET", f"{API}/api/jobs/{job_id}/events", headers=headers,
                      timeout=httpx.Timeout(900, connect=10)) as r:
        assert r.status_code == 200, r.read()
        kind = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind:
                events.append((kind, json.loads(line[6:])))
                if kind == "end":
                    break
    return events


def test_the_stack_trains_a_job_and_keeps_it_across_restarts(stack: Stack):
    # The first admin, created by the API at its first start from the compose file's secret.
    assert stack.login("wrong-password").status_code == 401
    r = stack.login()
    assert r.status_code == 200, r.text
    stack.headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
    with stack.api() as api:
        health = api.get("/health").json()
        assert health == {"status": "ok", "database": "postgresql", "broker": "redis"}, health
        assert api.get("/auth/me").json()["is_admin"] is True
        assert httpx.get(f"{API}/api/jobs", timeout=30).status_code == 401  # login required

        r = api.post("/datasets/demo", params={"samples": 24})
        assert r.status_code == 201, r.text
        ds = r.json()
        assert ds["num_samples"] == 24
        demo = next(m for m in api.get("/models").json() if m["builtin"])
        r = api.post("/jobs", json={"dataset_id": ds["id"], "model_id": demo["id"], "preset": "demo",
                                    "hyperparameters": {"max_steps": STEPS, "nproc_per_node": 2, "zero_stage": 2,
                                                        "per_device_batch_size": 2, "learning_rate": 1e-3,
                                                        "logging_steps": 1}})
        assert r.status_code == 201, r.text
        job = r.json()

    events = follow_sse(job["id"], stack.headers)
    statuses = [d["status"] for k, d in events if k == "status"]
    assert statuses and statuses[-1] == "succeeded", "\n".join(
        [str(statuses), *(d["line"] for k, d in events if k == "log"), stack.logs()])
    assert "running" in statuses
    streamed_logs = [d for k, d in events if k == "log"]
    # DeepSpeed's CPU op was compiled into the image, not at the first job.
    assert not any("first DeepSpeed run" in d["line"] for d in streamed_logs)
    assert any(d["line"].startswith(f"step {STEPS}/{STEPS} | loss ") for d in streamed_logs), streamed_logs[-20:]

    with stack.api() as api:
        metrics = [m for m in api.get(f"/jobs/{job['id']}/metrics").json() if m["values"].get("kind") != "gpu"]
        losses = {m["step"]: m["loss"] for m in metrics if m["loss"] is not None}
        assert sorted(losses) == list(range(1, STEPS + 1)), metrics
        assert all(math.isfinite(v) and v > 0 for v in losses.values()), losses
        logs = api.get(f"/jobs/{job['id']}/logs", params={"after": 0, "limit": 10000}).json()
        assert [row["seq"] for row in logs] == list(range(1, len(logs) + 1))
        detail = api.get(f"/jobs/{job['id']}").json()
        assert detail["status"] == "succeeded" and detail["step"] == STEPS, detail

    # The data volume and the read-only shared mount, as the worker sees them.
    out = stack.compose("exec", "-T", "worker", "sh", "-c", "cat /shared/note.txt; touch /shared/x", check=False)
    assert "on shared storage" in out.stdout and out.returncode != 0 and "Read-only file system" in out.stderr, out
    out = stack.compose("exec", "-T", "worker", "ls", "/data")
    assert out.stdout.split(), out

    # Restart the API and the worker: everything was in PostgreSQL and on the volumes.
    stack.compose("restart", "api", "worker", timeout=300)
    stack.wait_healthy()
    r = stack.login()
    assert r.status_code == 200, r.text
    stack.headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
    with stack.api() as api:
        assert api.get(f"/jobs/{job['id']}").json()["status"] == "succeeded"
        assert api.get(f"/jobs/{job['id']}/logs", params={"after": 0, "limit": 10000}).json() == logs
        after = [m for m in api.get(f"/jobs/{job['id']}/metrics").json() if m["values"].get("kind") != "gpu"]
        assert after == metrics
        assert [d["id"] for d in api.get("/datasets").json()] == [ds["id"]]
        assert [u["username"] for u in api.get("/users").json()] == ["admin"]
    # The worker took the broker back after its restart: a second job trains too.
    with stack.api() as api:
        r = api.post("/jobs", json={"dataset_id": ds["id"], "model_id": demo["id"], "preset": "demo",
                                    "hyperparameters": {"max_steps": 2, "nproc_per_node": 1,
                                                        "per_device_batch_size": 2, "logging_steps": 1}})
        assert r.status_code == 201, r.text
    events = follow_sse(r.json()["id"], stack.headers)
    assert [d["status"] for k, d in events if k == "status"][-1] == "succeeded", stack.logs()


def test_the_api_container_refuses_the_default_secret(stack: Stack):
    """The README's promise: outside the embedded mode the API does not start with the public
    default secret, nor a short one, even with its database reachable."""
    db = f"postgresql+psycopg://vlstudio:vlstudio@127.0.0.1:{PG_PORT}/vlstudio"
    for secret, why in ((None, "must be set to a private value"), ("vlstudio-embedded-default-secret",
                                                                     "must be set to a private value"),
                        ("too-short", "must be at least")):
        cmd = ["docker", "run", "--rm", "--network", "host", "-e", f"VLSTUDIO_DATABASE_URL={db}",
               "-e", f"VLSTUDIO_BROKER_URL=redis://127.0.0.1:{REDIS_PORT}/0", "-e", "VLSTUDIO_HOST=127.0.0.1",
               "-e", "VLSTUDIO_PORT=57999"]
        if secret:
            cmd += ["-e", f"VLSTUDIO_SECRET_KEY={secret}"]
        out = sh(*cmd, "vlstudio:latest", "vlstudio", "api", timeout=180, check=False)
        assert out.returncode != 0, (secret, out.stdout[-2000:], out.stderr[-2000:])
        assert f"VLSTUDIO_SECRET_KEY {why}" in out.stderr, (secret, out.stderr[-3000:])


def test_down_leaves_nothing_running(stack: Stack):
    assert project_containers() and project_volumes()
    stack.compose("down", "-v", "--remove-orphans", timeout=300)
    assert project_containers() == [] and project_volumes() == []
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{API}/api/health", timeout=5)
