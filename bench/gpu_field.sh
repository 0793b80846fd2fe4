#!/usr/bin/env bash
# Searches packed on one GPU: one search worker per device versus 2-4 (BPFREE_GPU_SLOTS), on a slice
# of a field tier. PREPARED, NOT YET RUN ON A GPU: written on a machine without one. `bash -n` passes,
# its summary (bench/gpu_field_summary.py) is tested on the CPU (tests/test_bench.py), and the CPU
# smoke run below ran end to end (2026-12-07); nvidia-smi sampling and the CUDA path have not run
# anywhere. Budget: a few minutes on an H100 with the defaults.
#
# For each slot count S in SLOTS (default "1 2 4") it starts S search workers at once on GPU $GPU,
# each a study of its own (same spec, same sampler seed, so the same trials: equal work per worker),
# TRIALS trials each with at most MAX_EPOCHS epochs per trial, while nvidia-smi samples the device
# every 0.5 s. Then, per S: wall time, trials and worker jobs per hour, seconds per epoch (median
# over trials, contention included), GPU utilisation (mean), power (mean) and memory (max). The wall
# time includes each worker's start-up (imports, CUDA context): raise TRIALS for steadier rates.
#
# Run from the repository root:  bash bench/gpu_field.sh
# Environment: CONFIG (default config/field-tier1.yaml), ARCH (mlp-2x1000), ALG (bp), DATASET
#   (mnist), DATA_ROOT (folder with MNIST/; default ../shared/datasets or shared/datasets),
#   SLOTS ("1 2 4"), TRIALS (2), MAX_EPOCHS (3), GPU (0), OUT (/tmp/bpfree-gpu-field),
#   ARM_TIMEOUT (seconds per slot count, default 300), SPEC (a ready search spec from
#   `bpfree spec --kind search`, where Snakemake, which validates the config, is not installed).
# A CPU smoke run of the script's pieces (no nvidia-smi: utilisation n/a):
#   DEVICE=cpu DATASET=digits ARCH=mlp-2x256 CONFIG=config/config.yaml SLOTS="1 2" TRIALS=1 MAX_EPOCHS=1 bash bench/gpu_field.sh
set -euo pipefail
T0=$(date +%s)
CONFIG=${CONFIG:-config/field-tier1.yaml}
ARCH=${ARCH:-mlp-2x1000}
ALG=${ALG:-bp}
DATASET=${DATASET:-mnist}
SLOTS=${SLOTS:-1 2 4}
TRIALS=${TRIALS:-2}
MAX_EPOCHS=${MAX_EPOCHS:-3}
GPU=${GPU:-0}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-/tmp/bpfree-gpu-field}
ARM_TIMEOUT=${ARM_TIMEOUT:-300}
if [ -z "${DATA_ROOT:-}" ]; then
  for d in ../shared/datasets shared/datasets /work/shared/datasets; do
    if [ -d "$d/MNIST" ]; then DATA_ROOT=$d; break; fi
  done
fi
command -v bpfree >/dev/null || { echo "gpu_field: bpfree is not on PATH (pip install -e . in a venv)" >&2; exit 2; }
[ "$DEVICE" = cpu ] || python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
  echo "gpu_field: torch sees no CUDA device: nothing to measure on a GPU" >&2; exit 3; }
mkdir -p "$OUT"
export BPFREE_METERED_LOCK_DIR="$OUT/locks"  # apart from any study running on this machine
export CUDA_VISIBLE_DEVICES=$GPU             # every worker on one GPU (no pinning: it is set)

DATA="$OUT/$DATASET.pt"
if [ ! -f "$DATA" ]; then
  echo "== prepare $DATASET"
  bpfree prepare --dataset "$DATASET" --data-root "${DATA_ROOT:-}" --out "$DATA" >/dev/null
fi

# The tier's search spec of ARCH/ALG, on DEVICE, with TRIALS trials of at most MAX_EPOCHS epochs.
if [ -n "${SPEC:-}" ]; then cat "$SPEC"; else bpfree spec --config "$CONFIG" --architecture "$ARCH" \
  --algorithm "$ALG" --kind search; fi | DEVICE=$DEVICE TRIALS=$TRIALS MAX_EPOCHS=$MAX_EPOCHS python -c '
import json, os, sys
s = json.load(sys.stdin)
s["device"] = os.environ["DEVICE"]
s["search"]["n_trials"] = int(os.environ["TRIALS"])
for stopping in (s["stopping"], s["search"].get("stopping") or {}):
    if "max_epochs" in stopping:
        stopping["max_epochs"] = min(stopping["max_epochs"], int(os.environ["MAX_EPOCHS"]))
print(json.dumps(s))' > "$OUT/search-spec.json"

SMI=""
[ "$DEVICE" = cpu ] || ! command -v nvidia-smi >/dev/null || SMI=yes
[ -z "$SMI" ] || nvidia-smi -i "$GPU" --query-gpu=name,driver_version,power.limit,memory.total --format=csv
ARMS=()
for S in $SLOTS; do
  ARM="$OUT/slots$S"
  rm -rf "$ARM"
  mkdir -p "$ARM"
  ARMS+=("$ARM")
  echo "== $S search worker(s) on GPU $GPU: $ALG on $ARCH, $TRIALS trial(s) each"
  if [ -n "$SMI" ]; then
    nvidia-smi -i "$GPU" --query-gpu=utilization.gpu,power.draw,memory.used --format=csv,noheader,nounits \
      -lms 500 > "$ARM/smi.csv" &
    SMI_PID=$!
  fi
  START=$(date +%s.%N)
  PIDS=()
  for k in $(seq 1 "$S"); do
    timeout "$ARM_TIMEOUT" bpfree search --spec "@$OUT/search-spec.json" --data "$DATA" \
      --journal "$ARM/w$k.journal" --threads 1 > "$ARM/w$k.log" 2>&1 &
    PIDS+=($!)
  done
  FAILED=0
  for p in "${PIDS[@]}"; do wait "$p" || FAILED=$((FAILED + 1)); done
  python -c "import sys, time; print(time.time() - float(sys.argv[1]))" "$START" > "$ARM/wall_s"
  [ -z "$SMI" ] || kill "$SMI_PID" 2>/dev/null || true
  echo "$S" > "$ARM/slots"
  [ "$FAILED" = 0 ] || { echo "gpu_field: $FAILED worker(s) failed or exceeded ${ARM_TIMEOUT}s; tail of a log:" >&2
                         tail -5 "$ARM"/w*.log >&2; }
done

echo "== results (GPU $GPU, $ALG on $ARCH, $DATASET; contention included in every figure)"
python bench/gpu_field_summary.py "${ARMS[@]}"
echo "gpu_field: done in $(( $(date +%s) - T0 )) s"
