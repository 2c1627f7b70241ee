"""Run the training program once per spec file given, in this one torchrun launch.

A launch costs tens of seconds of start-up (imports, DeepSpeed ops, process group) on a busy
CPU machine, a tiny training step a second or two: tests that compare several configurations
of the same world size run them here in sequence. Each run goes through the program's own
``main`` (spec file in, metrics.jsonl out); between runs the process-wide state that
accelerate and transformers keep (accelerator state, the DeepSpeed config) is reset, so each
run starts as it would in a process of its own.

    torchrun --nproc_per_node N tests/worker/train_many.py RUN1/spec.json RUN2/spec.json ...
"""

from __future__ import annotations

import sys

from accelerate.state import AcceleratorState
from transformers.integrations.deepspeed import unset_hf_deepspeed_config

from worker.training import train


def main(specs: list[str]) -> int:
    for spec in specs:
        AcceleratorState._reset_state(reset_partial_state=True)
        unset_hf_deepspeed_config()
        rc = train.main(["--spec", spec])
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
