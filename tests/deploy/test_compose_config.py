"""docker-compose.yml against the Compose schema (Debian's docker-compose validates it
without a Docker engine) and the Dockerfile it builds from."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def compose_config(*overrides: str) -> dict:
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose is not installed (.ci/run installs Debian's package)"
    files = [arg for f in ("docker-compose.yml", *overrides) for arg in ("-f", str(REPO / f))]
    out = subprocess.run([exe, *files, "config"], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "VLSTUDIO_SECRET_KEY": "x" * 32,
                              "VLSTUDIO_FIRST_ADMIN_PASSWORD": "y" * 12})
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def test_compose_file_is_valid_and_complete():
    cfg = compose_config()
    services = cfg["services"]
    assert set(services) == {"postgres", "redis", "api", "worker"}
    for name in ("api", "worker"):
        svc = services[name]
        assert svc["build"]["context"] == str(REPO) and svc["image"] == "vlstudio:latest"
        env = svc["environment"]
        assert env["VLSTUDIO_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["VLSTUDIO_BROKER_URL"].startswith("redis://")
        assert any(v.startswith("vlstudio-data:") or v.get("source") == "vlstudio-data" if isinstance(v, dict)
                   else v.startswith("vlstudio-data:") for v in svc["volumes"])
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"] and gpu["driver"] == "nvidia"
    assert services["api"]["ports"]
    for name, svc in services.items():
        assert svc["restart"] == "unless-stopped", name
        assert name == "worker" or svc["healthcheck"]["test"], name
    assert services["worker"]["depends_on"]["api"]["condition"] == "service_healthy"
    assert services["api"]["build"]["args"]["BASE_IMAGE"] == "python:3.11-slim"


def test_the_test_override_changes_only_what_the_machine_forces():
    """docker-compose.test.yml: local images, host networking, other ports; production's secrets,
    first admin, volumes, shared mount, health checks, dependencies and restart policies."""
    prod = compose_config()["services"]
    test = compose_config("docker-compose.test.yml")["services"]
    assert set(test) == set(prod)
    allowed = {"postgres": {"image", "build", "network_mode", "environment", "command"},
               "redis": {"image", "build", "network_mode", "command", "healthcheck"},
               "api": {"build", "network_mode", "environment"},
               "worker": {"build", "network_mode", "environment"}}
    for name, svc in test.items():
        changed = {k for k in set(svc) | set(prod[name]) if svc.get(k) != prod[name].get(k)}
        assert changed <= allowed[name], (name, changed - allowed[name])
        assert svc["network_mode"] == "host"
        if name in ("api", "worker"):
            env, penv = svc["environment"], prod[name]["environment"]
            assert {k for k in env if env[k] != penv.get(k)} <= {
                "VLSTUDIO_DATABASE_URL", "VLSTUDIO_BROKER_URL", "VLSTUDIO_API_URL", "VLSTUDIO_HOST", "VLSTUDIO_PORT",
                "VLSTUDIO_GPUS_PER_NODE"}
            assert env["VLSTUDIO_SECRET_KEY"] == "x" * 32 and env["VLSTUDIO_FIRST_ADMIN_PASSWORD"] == "y" * 12
            assert "127.0.0.1:55432" in env["VLSTUDIO_DATABASE_URL"] and env["VLSTUDIO_HOST"] == "127.0.0.1"
            assert svc["build"]["args"]["BASE_IMAGE"] == "vlstudio-base:bookworm"
    assert test["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "-p", "56379", "ping"]
    assert {k: v for k, v in test["redis"]["healthcheck"].items() if k != "test"} == \
        {k: v for k, v in prod["redis"]["healthcheck"].items() if k != "test"}


def test_compose_refuses_to_start_without_a_secret():
    out = subprocess.run(["docker-compose", "-f", str(REPO / "docker-compose.yml"), "config", "-q"],
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode != 0 and "VLSTUDIO_SECRET_KEY" in out.stderr


def test_dockerfile_copies_existing_paths_and_runs_the_cli():
    """Every COPY from the build context names a path of the checkout (and .dockerignore lets it
    in); a COPY --from names a stage of this Dockerfile."""
    text = (REPO / "Dockerfile").read_text()
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", text, flags=re.M))
    ignore = (REPO / ".dockerignore").read_text().split()
    for src in re.findall(r"^COPY (.+) \S+$", text, flags=re.M):
        parts = src.split()
        if parts[0].startswith("--from="):
            assert parts[0].removeprefix("--from=") in stages, f"Dockerfile copies from no stage: {src}"
            continue
        for part in parts:
            assert (REPO / part).exists(), f"Dockerfile copies missing path {part}"
            assert "!" + part.rstrip("/") in ignore, f".dockerignore keeps {part} out of the build context"
    assert stages == {"requirements"}, stages
    assert 'CMD ["vlstudio"' in text


def test_compose_local_drops_only_what_compose_v1_cannot_unset():
    """deploy/compose-local.sh runs the merged configuration less the API's port binding (host
    networking) and, without an NVIDIA runtime, the worker's GPU reservation; nothing else."""
    env = {"PATH": "/usr/bin:/bin", "VLSTUDIO_SECRET_KEY": "x" * 32, "VLSTUDIO_FIRST_ADMIN_PASSWORD": "y" * 12,
           "DOCKER_HOST": "unix:///nonexistent.sock"}  # no engine: no NVIDIA runtime
    out = subprocess.run(["bash", str(REPO / "deploy/compose-local.sh"), "config"], capture_output=True, text=True,
                         env=env)
    assert out.returncode == 0, out.stderr
    local = yaml.safe_load(out.stdout)["services"]
    merged = compose_config("docker-compose.test.yml")["services"]
    assert merged["api"].pop("ports") and "ports" not in local["api"]
    assert merged["worker"]["deploy"]["resources"]["reservations"].pop("devices")[0]["driver"] == "nvidia"
    assert local == merged
