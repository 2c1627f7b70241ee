"""This node's GPUs: how many (``VLSTUDIO_GPUS_PER_NODE`` or nvidia-smi) and, during a run,
their utilisation and memory, sampled as metrics."""

from __future__ import annotations

import shutil
import subprocess

from backend.settings import Settings


def _smi(query: str) -> list[list[str]]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, f"--query-gpu={query}", "--format=csv,noheader,nounits"], capture_output=True,
                             text=True, timeout=10, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    return [[x.strip() for x in line.split(",")] for line in out.splitlines() if line.strip()]


def detect(settings: Settings) -> tuple[int, int | None]:
    """(GPU count, memory per GPU in MiB or None)."""
    if settings.gpus_per_node is not None:
        mem = int(settings.gpu_memory_gib * 1024) if settings.gpu_memory_gib else None
        return settings.gpus_per_node, mem
    rows = _smi("index,memory.total")
    return len(rows), min((int(float(r[1])) for r in rows), default=None)


def sample(gpu_ids: list[int]) -> dict[str, float]:
    """Utilisation (%) and memory used (MiB) of the given GPUs; empty without nvidia-smi."""
    out: dict[str, float] = {}
    for row in _smi("index,utilization.gpu,memory.used,memory.total"):
        try:
            idx, util, used, total = int(row[0]), float(row[1]), float(row[2]), float(row[3])
        except (ValueError, IndexError):
            continue
        if idx in gpu_ids:
            out[f"gpu{idx}_util_pct"] = util
            out[f"gpu{idx}_mem_used_mib"] = used
            out[f"gpu{idx}_mem_total_mib"] = total
    return out
