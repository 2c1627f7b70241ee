"""A real Slurm cluster on this machine (``.ci/slurm-setup.sh``) and studios whose worker submits
to it. The tests fail, never skip, when Slurm cannot be started."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # plain `pytest` (not `python -m pytest`) leaves the repository off the path
    sys.path.insert(0, str(REPO))

from tests.conftest import Studio, start_studio, stop_studio  # noqa: E402

SETUP = REPO / ".ci" / "slurm-setup.sh"


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """Starts (or checks) munged, slurmctld and the slurmd of partitions debug and twonode."""
    out = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        pytest.fail(
            f"could not start Slurm with {SETUP} (exit {out.returncode}):\n"
            f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        )
    return out.stdout


def slurm_env(partition: str, **more: str) -> dict[str, str]:
    return {
        "VLSTUDIO_BACKEND": "slurm",
        "VLSTUDIO_SLURM_PARTITION": partition,
        "VLSTUDIO_SLURM_POLL_SECONDS": "1",
        "VLSTUDIO_SLURM_TIME_LIMIT": "30:00",
        **more,
    }


def studio_on(
    tmp_path: Path, database_url: str, broker_url: str, partition: str, **more: str
) -> Iterator[Studio]:
    studio = start_studio(
        tmp_path, database_url=database_url, broker_url=broker_url, extra_env=slurm_env(partition, **more)
    )
    yield studio
    stop_studio(studio)
    # A test that failed half-way must not leave its training running on the cluster.
    ids = [p.read_text().strip() for p in (studio.data_dir / "runs").glob("*/slurm_job_id")]
    if ids:
        subprocess.run(["scancel", *ids], check=False, capture_output=True)


# The production mode (PostgreSQL + Redis), as on a login node: see docs/deploy-slurm.md.
@pytest.fixture
def slurm_studio(slurm_cluster: str, tmp_path: Path, pg_database: str, redis_broker: str) -> Iterator[Studio]:
    """A studio with the Slurm backend on the one-node partition."""
    yield from studio_on(tmp_path, pg_database, redis_broker, "debug")


@pytest.fixture
def twonode_studio(
    slurm_cluster: str, tmp_path: Path, pg_database: str, redis_broker: str
) -> Iterator[Studio]:
    """A studio whose jobs go to the partition of two slurmd "hosts" in network namespaces, and
    which lets Slurm requeue a job after a node failure."""
    yield from studio_on(tmp_path, pg_database, redis_broker, "twonode", VLSTUDIO_SLURM_REQUEUE="true")
