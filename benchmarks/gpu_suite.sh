#!/usr/bin/env bash
# GPU readiness check: on a machine with an NVIDIA driver and nothing else, install jaxseg from
# this checkout and print the side-by-side table (JAX vs PyTorch eager, channels_last, bf16
# autocast) for the paper U-Net and FCN-8s at 512 px in bf16 and f32, and the paper's valid U-Net
# at 572 px in bf16, with each run's share ("MFU") of the GPU's matmul peak for that dtype as
# measured in the same run. Budget: under 10 minutes on one GPU (5.5 on an H200).
#
#   bash benchmarks/gpu_suite.sh                  # from the repository root or anywhere
#
# PARTS picks what runs: "table" (default; the side-by-side above) and/or "loop": the training
# loop as users run it (train.py on folders written like the ISBI and VOC data, the config's
# automatic loader workers unless LOOP_WORKERS is set, one evaluation and checkpoint at the
# end) against its train step alone, for each batch of LOOP_BATCHES
# (`benchmarks/bench_train_loop.py`: is the GPU fed?). About 6 minutes on an H200 (estimated,
# not yet run on one), so run it as its own call: PARTS=loop bash benchmarks/gpu_suite.sh.
#
# Environment knobs (defaults are the issue's table): VENV (.venv-gpu), SIZE (512), UNET_BATCH (8),
# FCN_BATCH (8), DTYPES ("bfloat16 float32"), MODELS_VALID (unet_paper_valid; none to skip),
# VALID_SIZE (572), REPEATS (5), RUN_TIMEOUT (seconds per benchmark process, 240), OUT
# (runs/gpu_suite.jsonl); for the loop: LOOP_RECIPES ("isbi voc"), LOOP_BATCHES ("1 8"),
# LOOP_WORKERS (unset: the config's automatic count), LOOP_TIMEOUT (seconds per batch size,
# 240), LOOP_EXTRA (more arguments of bench_train_loop). For a CPU dry run of the plumbing (no
# install, no GPU; a python with jaxseg's dependencies and torch):
#   SKIP_INSTALL=1 ALLOW_CPU=1 PYTHON=python SIZE=32 UNET_BATCH=1 FCN_BATCH=1 REPEATS=1 \
#     DTYPES=bfloat16 MODELS_UNET=unet_paper MODELS_FCN=none MODELS_VALID=none bash benchmarks/gpu_suite.sh
# (unet_default would time JAX alone: the torch peer has no Dice loss.) And of the loop part:
#   SKIP_INSTALL=1 ALLOW_CPU=1 PYTHON=python PARTS=loop LOOP_RECIPES=isbi LOOP_BATCHES=1 \
#     LOOP_EXTRA="--steps 3 --log-every 1 --repeats 1 --override model.base_width=4" \
#     bash benchmarks/gpu_suite.sh
#
# Needs a package index for the install (PyPI, or a mirror through PIP_INDEX_URL). On a machine
# that has jax and torch but no index: SKIP_INSTALL=1 PYTHON=python3, with jaxseg's other
# dependencies (tensorflow-datasets, grain, array-record, ml-collections, ...) on PYTHONPATH.
# Writes one JSON line per measurement to $OUT and prints the Markdown table at the end. Target
# (issue 16): the paper U-Net at 512 px reaches >= 50% of the bf16 matmul peak.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${VENV:-.venv-gpu}"
SIZE="${SIZE:-512}"
UNET_BATCH="${UNET_BATCH:-8}"
FCN_BATCH="${FCN_BATCH:-8}"
REPEATS="${REPEATS:-5}"
RUN_TIMEOUT="${RUN_TIMEOUT:-240}"
OUT="${OUT:-runs/gpu_suite.jsonl}"
MODELS_UNET="${MODELS_UNET:-unet_paper}"
MODELS_FCN="${MODELS_FCN:-fcn8s}"
MODELS_VALID="${MODELS_VALID:-unet_paper_valid}"
VALID_SIZE="${VALID_SIZE:-572}"
DTYPES="${DTYPES:-bfloat16 float32}"
PARTS="${PARTS:-table}"
LOOP_RECIPES="${LOOP_RECIPES:-isbi voc}"
LOOP_BATCHES="${LOOP_BATCHES:-1 8}"
LOOP_WORKERS="${LOOP_WORKERS:-}"
LOOP_TIMEOUT="${LOOP_TIMEOUT:-240}"
LOOP_EXTRA="${LOOP_EXTRA:-}"
start=$(date +%s)
say() { echo "[gpu_suite +$(($(date +%s) - start))s] $*"; }

if [[ -z "${ALLOW_CPU:-}" ]]; then
  command -v nvidia-smi >/dev/null || { echo "nvidia-smi not found: no NVIDIA driver" >&2; exit 1; }
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
fi

if [[ -z "${SKIP_INSTALL:-}" ]]; then
  say "installing jaxseg[cuda12,bench] into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  # The project's own pins: jax[cuda12] and the [bench] torch (PyPI's default CUDA build).
  "$VENV/bin/pip" install -q -e ".[cuda12,bench]"
  PYTHON="$VENV/bin/python"
fi
PYTHON="${PYTHON:-$VENV/bin/python}"

say "checking the frameworks see the GPU (PyTorch only for the table)"
PARTS="$PARTS" "$PYTHON" - <<'EOF'
import os

import jax

allow_cpu = bool(os.environ.get("ALLOW_CPU"))
print("jax", jax.__version__, jax.devices())
if not allow_cpu:
    assert jax.default_backend() == "gpu", f"jax runs on {jax.default_backend()}, not the GPU"
if "table" in os.environ["PARTS"].split():
    import torch

    print("torch", torch.__version__, "cuda", torch.cuda.is_available())
    if not allow_cpu:
        assert torch.cuda.is_available(), "torch does not see the GPU (too old a driver?)"
EOF

if [[ " $PARTS " == *" table "* ]]; then
say "bf16 matmul peak (bf16 inputs, f32 accumulation; the table's MFU denominator)"
"$PYTHON" - <<'EOF'
from benchmarks import common  # stdin scripts import from the working directory: the root

for dtype in ("bfloat16", "float32"):
    print(f"jax {dtype} matmul peak: {common.jax_matmul_peak(dtype):.0f} GFLOP/s", flush=True)
EOF

mkdir -p "$(dirname "$OUT")"
: > "$OUT"
run_table() {  # model, size, batch, dtype
  [[ "$1" == none ]] && return 0
  say "side by side: $1 ${2}px batch $3 $4"
  "$PYTHON" -m benchmarks.side_by_side --models "$1" --sizes "$2" --batch "$3" \
    --dtypes "$4" --torch-modes eager --repeats "$REPEATS" --timeout "$RUN_TIMEOUT" \
    --out "$OUT"
}
# DTYPES in order (bf16 first: the rows a GPU user trains with come back even if a later run is
# cut short); the valid U-Net, the paper's own network, in bf16 only.
for dtype in $DTYPES; do
  run_table "$MODELS_UNET" "$SIZE" "$UNET_BATCH" "$dtype"
  run_table "$MODELS_FCN" "$SIZE" "$FCN_BATCH" "$dtype"
  if [[ "$dtype" == bfloat16 ]]; then run_table "$MODELS_VALID" "$VALID_SIZE" "$UNET_BATCH" "$dtype"; fi
done

say "table of $OUT"
"$PYTHON" -m benchmarks.side_by_side --table "$OUT"
fi

if [[ " $PARTS " == *" loop "* ]]; then
  for batch in $LOOP_BATCHES; do
    # Steps: 2000 at the recipes' batch 1 (a few ms each on an H200), 800 at larger batches;
    # ten log windows, the first of which (warm-up) is left out.
    steps=$(( batch == 1 ? 2000 : 800 ))
    say "loop against the step alone: $LOOP_RECIPES, batch $batch, workers ${LOOP_WORKERS:-auto}"
    # SIGINT, not timeout's SIGTERM: on SIGINT the benchmark kills its train.py child before it
    # exits; on SIGTERM it would die alone and leave train.py holding the device.
    # shellcheck disable=SC2086
    timeout -s INT "$LOOP_TIMEOUT" "$PYTHON" -m benchmarks.bench_train_loop \
      --recipes $LOOP_RECIPES --batch "$batch" ${LOOP_WORKERS:+--workers "$LOOP_WORKERS"} \
      --steps "$steps" --log-every $(( steps / 10 )) --timeout "$LOOP_TIMEOUT" $LOOP_EXTRA \
      || say "loop benchmark at batch $batch failed or timed out"
  done
fi

say "done"
