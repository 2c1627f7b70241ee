"""docker-compose.yml against the Compose schema (Debian's docker-compose validates it
without a Docker engine) and the Dockerfile it builds from."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def compose_config() -> dict:
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose is not installed (.ci/run installs Debian's package)"
    out = subprocess.run([exe, "-f", str(REPO / "docker-compose.yml"), "config"], capture_output=True, text=True,
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


def test_compose_refuses_to_start_without_a_secret():
    out = subprocess.run(["docker-compose", "-f", str(REPO / "docker-compose.yml"), "config", "-q"],
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode != 0 and "VLSTUDIO_SECRET_KEY" in out.stderr


def test_dockerfile_copies_existing_paths_and_runs_the_cli():
    text = (REPO / "Dockerfile").read_text()
    for src in re.findall(r"^COPY (.+) \S+$", text, flags=re.M):
        for part in src.split():
            assert (REPO / part).exists(), f"Dockerfile copies missing path {part}"
    assert 'CMD ["vlstudio"' in text
