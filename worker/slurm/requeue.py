"""Run by the sbatch script when Slurm requeues a job (``SLURM_RESTART_COUNT`` > 0)::

    python -m worker.slurm.requeue RUN/spec.json

Writes ``RUN/spec.requeue.json``, the same spec resuming from the newest complete checkpoint under
``RUN/checkpoints`` (if any), and prints its path for the script to train from.
"""

from __future__ import annotations

import sys
from pathlib import Path

from backend.core.checkpoints import latest_complete
from backend.core.spec import TrainingSpec


def requeue_spec(spec_path: Path) -> Path:
    spec = TrainingSpec.read(spec_path)
    ckpt = latest_complete(Path(spec.output_dir) / "checkpoints")
    if ckpt is not None:
        spec.resume_from_checkpoint = str(ckpt)
    out = spec_path.with_name("spec.requeue.json")
    spec.write(out)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m worker.slurm.requeue RUN/spec.json")
    print(requeue_spec(Path(sys.argv[1])))
