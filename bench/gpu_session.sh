#!/usr/bin/env bash
# One call on a lent GPU machine proves the GPU path (issue 22), offline, in about 8 minutes:
#
#   1. installs bench/wheelhouse/ (bash bench/build_wheelhouse.sh, run beforehand where the package
#      index is reachable) into a venv over the machine's own packages (--system-site-packages:
#      its CUDA torch, triton, accelerate... stay), with no index;
#   2. runs tests/gpu (fused loss backward vs plain, varlen/flex vs SDPA on packs in bf16, the bf16
#      loss-invariance check, serving dtype and memory);
#   3. runs the speed table: bench/train_speed.py with the shared anchor, naive and tuned
#      (tokens/s, MFU, peak GiB), each path bounded so that a hang cannot eat the session;
#   4. writes everything to $OUT in 8 files at most: summary.md (the table and each step's
#      verdict), session.log, env.txt, tests_gpu.txt, tests_gpu.xml, speed.txt, speed.json,
#      logs.tar.gz (training logs of every path and of the invariance runs).
#
#   OUT=/tmp/out bash bench/gpu_session.sh                                 # on the GPU machine
#   OUT=/tmp/out VLSTUDIO_GPU_DRY_RUN=1 PYTHON=.venv-device/bin/python bash bench/gpu_session.sh
#                                                   # CPU dry run here, in a venv with the device's packages
#
# SESSION_SECONDS (default 470) is the time budget; each step gets what is left of it (tests/gpu at
# most TESTS_SECONDS, default 200).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
: "${OUT:?set OUT to the folder whose files come back}"
mkdir -p "$OUT"
PY=${PYTHON:-python3}
WH=$REPO/bench/wheelhouse
DRY=${VLSTUDIO_GPU_DRY_RUN:-0}
BUDGET=${SESSION_SECONDS:-470}
WORK=${GPU_SESSION_WORK:-$(mktemp -d /tmp/vlstudio-gpu-session.XXXXXX)}
START=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - START))); }
exec > >(tee -a "$OUT/session.log") 2>&1
verdicts=()
say() { echo "[$(($(date +%s) - START)) s] $*"; }
verdict() { verdicts+=("- $1"); say "$1"; }

say "gpu session: repo $REPO, work $WORK, budget ${BUDGET} s, dry run $DRY"

# ------------------------------------------------------------------ 0. the machine
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  nvidia-smi 2>&1 || echo "nvidia-smi: not available"
  "$PY" -c 'import sys, torch; print("python", sys.version.split()[0]); print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available()); print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")'
  command -v gcc cc nvcc ninja 2>&1 || true
  "$PY" -m pip list 2>/dev/null || "$PY" -m pip --version
} > "$OUT/env.txt" 2>&1
say "machine: $(grep -m1 '^device' "$OUT/env.txt")"

# ------------------------------------------------------------------ 1. the wheelhouse, offline
VENV=$WORK/venv
NEEDED=(deepspeed liger-kernel pydantic pydantic-core annotated-types typing-inspection "typing-extensions>=4.14"
        "transformers>=5.19,<6" "huggingface-hub>=1.31" hf-xet hjson py-cpuinfo einops msgpack ninja
        pytest pluggy iniconfig pytest-timeout)
IMPORTS="import deepspeed, liger_kernel, pydantic, transformers, pytest, worker.training.train"
if [ ! -d "$WH" ]; then
  verdict "install: FAILED, no bench/wheelhouse (run bash bench/build_wheelhouse.sh and carry bench/wheelhouse)"
elif "$PY" -m venv $("$PY" -c 'import sys; print("" if sys.prefix != sys.base_prefix else "--system-site-packages")') \
       "$VENV" >/dev/null 2>&1 && [ -x "$VENV/bin/python" ]; then
  # the packages of the Python it came from, after the venv's own: the machine's site-packages
  # (--system-site-packages), or, when that Python is itself a venv (the CPU dry run's
  # .venv-device), that venv's packages alone, not its base interpreter's
  "$PY" -c 'import site; print("\n".join(site.getsitepackages()))' \
    > "$("$VENV/bin/python" -c 'import site; print(site.getsitepackages()[0])')/zz_parent_site.pth"
  # --no-deps: what the machine has stays as it is (the resolver would otherwise want to upgrade
  # its torch's own requirements, which are not ours to ship); each package we need, with the
  # floor we need, is installed from the wheelhouse only where it is missing or too old
  if PIP_CONFIG_FILE=/dev/null "$VENV/bin/python" -m pip install -q --no-index --no-deps --find-links "$WH" \
       "${NEEDED[@]}" && "$VENV/bin/python" -c "$IMPORTS"; then
    PY=$VENV/bin/python
    verdict "install: ok ($("$PY" -c 'import importlib.metadata as m; print(", ".join(f"{p} {m.version(p)}" for p in ("deepspeed", "liger-kernel", "pydantic", "transformers", "torch", "triton")))' 2>/dev/null))"
  else
    verdict "install: FAILED (pip install from the wheelhouse; see session.log)"
  fi
else
  # no venv module: the wheels' files on PYTHONPATH, no dependency resolution
  SITE=$WORK/site
  tag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
  wheels=$(ls "$WH"/*.whl | grep -E "py3-none|abi3|$tag-$tag")
  if PIP_CONFIG_FILE=/dev/null "$PY" -m pip install -q --no-index --no-deps --target "$SITE" $wheels \
     && PYTHONPATH=$SITE:$REPO "$PY" -c "$IMPORTS"; then
    export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
    verdict "install: ok (no venv module: --target $SITE on PYTHONPATH)"
  else
    verdict "install: FAILED (pip --target; see session.log)"
  fi
fi
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
export TOKENIZERS_PARALLELISM=false
EXT=()
if [ "$DRY" != 1 ]; then  # private: a killed build's lock cannot hang anyone else (the dry run keeps the shared cache)
  export TORCH_EXTENSIONS_DIR=$WORK/torch_extensions
  EXT=(--torch-extensions "$TORCH_EXTENSIONS_DIR")
fi

stop_all() {  # whatever a step left running (trainers in their own sessions), found by its folder
  "$PY" -c "import sys; sys.path.insert(0, '$REPO'); from bench.train_speed import stop_everything_of; k = stop_everything_of('$1'); print('killed', k) if k else None" 2>/dev/null || true
}

# ------------------------------------------------------------------ 2. tests/gpu
cap=${TESTS_SECONDS:-200}   # on a GPU the suite takes about a minute; the CPU dry run needs far more
t=$(( $(left) / 2 - 10 )); [ $t -gt $cap ] && t=$cap; [ $t -lt 60 ] && t=60
say "tests/gpu (at most $t s)"
# -v: a line per test as it ends; SIGINT at the limit: pytest stops, summarises and writes its XML
timeout -s INT -k 30 $t "$PY" -m pytest tests/gpu -v -rA -p no:cacheprovider -o addopts="" --basetemp "$WORK/tests_gpu" \
  --junitxml "$OUT/tests_gpu.xml" > "$OUT/tests_gpu.txt" 2>&1
rc=$?
stop_all "$WORK/tests_gpu"
summary=$(grep -E "^(=+ )?[0-9]+ (passed|failed)|(passed|failed|error).* in [0-9.]+s" "$OUT/tests_gpu.txt" | tail -1)
if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
  verdict "tests/gpu: TIMED OUT after $t s ($summary)"
elif [ $rc -eq 0 ]; then
  verdict "tests/gpu: passed ($summary)"
else
  verdict "tests/gpu: FAILED, exit $rc ($summary)"
fi

# ------------------------------------------------------------------ 3. the speed table
ANCHOR=""
for a in "$REPO/shared/baselines/gpu_trainer_anchor.py" "$REPO/../shared/baselines/gpu_trainer_anchor.py" \
         "$WH/anchor/gpu_trainer_anchor.py"; do
  [ -f "$a" ] && { ANCHOR=$a; break; }
done
t=$(( $(left) - 25 ))
per=$(( (t - 60) / 3 )); [ $per -lt 45 ] && per=45
if [ "$DRY" = 1 ]; then size=(--cpu --samples 12); else size=(--samples 128); fi
say "speed table (at most $t s, $per s per path; anchor: ${ANCHOR:-none})"
timeout -k 10 $t "$PY" bench/train_speed.py --out "$WORK/speed" "${size[@]}" --timeout $per \
  "${EXT[@]}" --json-out "$OUT/speed.json" ${ANCHOR:+--anchor "$ANCHOR"} \
  > "$OUT/speed.txt" 2>&1
rc=$?
stop_all "$WORK/speed"
if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
  verdict "speed table: TIMED OUT after $t s (what finished is in speed.txt)"
elif [ $rc -eq 0 ]; then
  verdict "speed table: every path ran"
else
  verdict "speed table: exit $rc (a FAILED row says which path and why; speed.txt has its log tail)"
fi

# ------------------------------------------------------------------ 4. what comes back
(cd "$WORK" && find . \( -name training_log.txt -o -name anchor_log.txt -o -name 'launch*.txt' \) -print0 \
   | tar -czf "$OUT/logs.tar.gz" --null -T - 2>/dev/null) || true
{
  echo "# GPU session $(date -u +%Y-%m-%d) on $(grep -m1 '^device' "$OUT/env.txt" | cut -d' ' -f2-)"
  echo
  [ "$DRY" = 1 ] && echo "**CPU dry run** (VLSTUDIO_GPU_DRY_RUN=1): plumbing only, no GPU figure." && echo
  printf '%s\n' "${verdicts[@]}"
  echo
  echo "## Speed (bench/train_speed.py)"
  echo
  grep -E '^\||^tuned / naive|^matmul peak|^data path' "$OUT/speed.txt" || echo "(no table)"
  echo
  echo "## tests/gpu"
  echo
  echo '```'
  grep -E "^(PASSED|FAILED|ERROR|SKIPPED) " "$OUT/tests_gpu.txt" | cut -c1-200
  echo '```'
  echo
  echo "wall: $(($(date +%s) - START)) s of a ${BUDGET} s budget"
} > "$OUT/summary.md"
say "done in $(($(date +%s) - START)) s; files: $(ls "$OUT" | tr '\n' ' ')"
