"""Prometheus ``/metrics``: jobs by state, queue length, GPU leases and workers."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from backend.api.deps import DbRoute, SessionDep
from backend.services.scheduling import queue_stats

router = APIRouter(tags=["metrics"], route_class=DbRoute)


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(session: SessionDep) -> str:
    stats = queue_stats(session)
    out = ["# HELP vlstudio_jobs Jobs by state.", "# TYPE vlstudio_jobs gauge"]
    out += [f'vlstudio_jobs{{state="{k}"}} {v}' for k, v in stats["by_state"].items()]  # type: ignore[union-attr]
    out += ["# HELP vlstudio_queue_length Jobs waiting for a worker.", "# TYPE vlstudio_queue_length gauge",
            f"vlstudio_queue_length {stats['by_state']['queued']}"]  # type: ignore[index]
    out += ["# HELP vlstudio_gpu_leases GPUs leased to running jobs, by node.", "# TYPE vlstudio_gpu_leases gauge"]
    out += [f'vlstudio_gpu_leases{{node="{n}"}} {c}' for n, c in stats["leases"].items()]  # type: ignore[union-attr]
    out += ["# HELP vlstudio_worker_gpus GPUs of each registered worker.", "# TYPE vlstudio_worker_gpus gauge",
            "# HELP vlstudio_worker_heartbeat_age_seconds Seconds since a worker's last heartbeat.",
            "# TYPE vlstudio_worker_heartbeat_age_seconds gauge"]
    now = datetime.now(UTC)
    for name, node, gpus, beat in stats["workers"]:  # type: ignore[union-attr]
        beat = beat if beat.tzinfo else beat.replace(tzinfo=UTC)
        out.append(f'vlstudio_worker_gpus{{worker="{name}",node="{node}"}} {gpus}')
        out.append(f'vlstudio_worker_heartbeat_age_seconds{{worker="{name}"}} {(now - beat).total_seconds():.1f}')
    return "\n".join(out) + "\n"
