#!/usr/bin/env bash
# Put a CPU build of torch into deploy/wheels/, where the image build takes it from (Dockerfile:
# pip install --find-links /tmp/wheels "$TORCH_SPEC"), for images that run without a GPU, such
# as the test stack (docker-compose.test.yml: TORCH_SPEC=torch==2.13.0+cpu).
#
#   bash deploy/cpu-torch-wheel.sh                 # torch==2.13.0+cpu for CPython 3.11
#   TORCH_WHEEL=/path/to/torch-...whl bash deploy/cpu-torch-wheel.sh
#
# pip looks where it is configured to look (find-links, extra indexes: PIP_EXTRA_INDEX_URL may name
# PyTorch's CPU wheel index). The wheel must match the image's Python (3.11 on bookworm and
# python:3.11-slim).
set -euo pipefail
cd "$(dirname "$0")/.."
SPEC=${TORCH_SPEC:-torch==2.13.0+cpu}
dest=deploy/wheels
mkdir -p "$dest"
if [ -n "${TORCH_WHEEL:-}" ]; then
  cp -u "$TORCH_WHEEL" "$dest/"
  exit 0
fi
version=${SPEC#torch==}
if compgen -G "$dest/torch-${version}-cp311-*.whl" >/dev/null; then
  echo "torch wheel: $(ls "$dest"/torch-"${version}"-cp311-*.whl) present"
  exit 0
fi
PIP=${PIP:-python3 -m pip}
$PIP download -q --no-deps --only-binary=:all: --python-version 3.11 --platform manylinux_2_28_x86_64 \
  -d "$dest" "$SPEC"
ls "$dest"/torch-*.whl
