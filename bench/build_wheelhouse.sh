#!/usr/bin/env bash
# Build bench/wheelhouse/: what bench/gpu_session.sh installs, offline, on a bare lent GPU machine
# (Python 3.12, torch 2.11, transformers 5.17, triton, accelerate, peft, tokenizers, safetensors,
# pillow; no network). Run here, where the package index is reachable; the folder is ignored by
# git and carried to the machine beside the working tree (at most 64 MiB in all).
#
#   bash bench/build_wheelhouse.sh            # wheels for Python 3.12 (the device) and 3.11 (the dry run)
#
# What it holds, and why:
# - deepspeed, built as a pure-Python wheel (DS_BUILD_OPS=0: no op compiled in; the trainer's
#   default optimizer is torch's fused AdamW, so none is JIT-compiled either) and its small deps;
# - liger-kernel (the fused kernels of the tuned path and tests/gpu);
# - transformers 5.19 (the first release with Trainer.loss_is_scaled_for_ga, which the trainer
#   needs; the machine has 5.17) and a huggingface-hub it accepts;
# - pydantic (the trainer reads its spec through backend.core.spec's pydantic model: shipping it
#   keeps one validated spec for the API, the UI and the trainer);
# - pytest (+ pytest-timeout) for tests/gpu;
# - a copy of the shared anchor script (shared/baselines/gpu_trainer_anchor.py), for a machine
#   whose working tree has no shared/ beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WH=$REPO/bench/wheelhouse
PIP=${PIP:-$REPO/.venv/bin/pip}   # a pip whose Python has torch (deepspeed's setup.py imports it)
DEEPSPEED=0.19.8
LIGER=0.8.5
TRANSFORMERS=5.19.0
# pydantic and pydantic-core come as an exact pair: the one the project's environment has
PYDANTIC=$("$REPO/.venv/bin/python" -c 'import pydantic; print(pydantic.VERSION)')
PYDANTIC_CORE=$("$REPO/.venv/bin/python" -c 'import pydantic_core; print(pydantic_core.__version__)')
rm -rf "$WH"
mkdir -p "$WH/anchor"

echo "== deepspeed $DEEPSPEED as a pure-Python wheel"
DS_BUILD_OPS=0 "$PIP" wheel -q --no-deps --no-build-isolation "deepspeed==$DEEPSPEED" -w "$WH"

echo "== pure-Python wheels"
"$PIP" download -q --no-deps --only-binary=:all: -d "$WH" \
  "liger-kernel==$LIGER" "transformers==$TRANSFORMERS" "huggingface-hub>=1.31,<2" \
  "pydantic==$PYDANTIC" annotated-types typing-inspection "typing-extensions>=4.14" \
  hjson py-cpuinfo einops \
  pytest pluggy iniconfig pytest-timeout

echo "== compiled wheels for CPython 3.12 (the device) and 3.11 (the CPU dry run here)"
for py in 3.12 3.11; do
  abi=cp${py/./}
  "$PIP" download -q --no-deps --only-binary=:all: -d "$WH" --python-version "$py" --implementation cp \
    --abi "$abi" --abi abi3 --abi none --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 \
    "pydantic-core==$PYDANTIC_CORE" \
    msgpack ninja "hf-xet>=1.1.3,<2"
done

for anchor in "$REPO/shared/baselines/gpu_trainer_anchor.py" "$REPO/../shared/baselines/gpu_trainer_anchor.py" \
              /work/shared/baselines/gpu_trainer_anchor.py; do
  if [ -f "$anchor" ]; then cp "$anchor" "$WH/anchor/"; break; fi
done
[ -f "$WH/anchor/gpu_trainer_anchor.py" ] || echo "warning: no shared/baselines/gpu_trainer_anchor.py found: the speed table will have no anchor row" >&2

ls -la "$WH"
size=$(du -sb "$WH" | cut -f1)
echo "wheelhouse: $((size / 1024 / 1024)) MiB"
[ "$size" -le $((60 * 1024 * 1024)) ] || { echo "the wheelhouse is over 60 MiB: it must travel with the tree (64 MiB in all)" >&2; exit 1; }
