#!/usr/bin/env bash
# One-go check of the meter on an NVIDIA machine (budget: under 8 minutes on an H100).
#   1. `bpfree doctor`: which methods this machine offers;
#   2. MF and BP on the MNIST 2x1000 MLP with the published hyperparameters (config/mnist-published.yaml,
#      n_trials 0), one seed each, on the GPU, with an idle-power baseline before each run;
#   3. per run: energy by component and method, idle power, dynamic energy, peak memory (process-local
#      and device-wide), GPU utilisation, the power trace's length and rate.
# Run from the repository root:  bash bench/gpu_check.sh
# Environment: DATA_ROOT (folder with MNIST/; default ../shared/datasets or shared/datasets),
#   OUT (default /tmp/bpfree-gpu-check), CONFIG (default config/mnist-published.yaml),
#   IDLE_SECONDS (default 10), MAX_EPOCHS (cap per stage, default: the config's), SEED (default 0),
#   RUN_TIMEOUT (seconds per training run, default 180), SPECS (a folder of ready specs <alg>-search.json and
#   <alg>-train.json from `bpfree spec`, where Snakemake, which validates the config, is not installed);
#   for a CPU dry run of the script's pieces:
#   DEVICE=cpu LIMIT_TRAIN=2000 MAX_EPOCHS=1 IDLE_SECONDS=1 bash bench/gpu_check.sh
set -euo pipefail
T0=$(date +%s)
OUT=${OUT:-/tmp/bpfree-gpu-check}
CONFIG=${CONFIG:-config/mnist-published.yaml}
IDLE_SECONDS=${IDLE_SECONDS:-10}
SEED=${SEED:-0}
RUN_TIMEOUT=${RUN_TIMEOUT:-180}
DEVICE=${DEVICE:-cuda}
ARCH=mlp-2x1000
if [ -z "${DATA_ROOT:-}" ]; then
  for d in ../shared/datasets shared/datasets /work/shared/datasets; do
    if [ -d "$d/MNIST" ]; then DATA_ROOT=$d; break; fi
  done
fi
mkdir -p "$OUT"
command -v bpfree >/dev/null || { echo "gpu_check: bpfree is not on PATH (pip install -e . in a venv)" >&2; exit 2; }

echo "== bpfree doctor"
bpfree doctor
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv || true
[ "$DEVICE" = cpu ] || python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
  echo "gpu_check: torch sees no CUDA device: nothing to check on a GPU" >&2; exit 3; }
CKPT=(--checkpoint-every -1)  # no checkpoint saves inside the metered window

[ -n "${SPECS:-}" ] || [ -f "$CONFIG" ] || { echo "gpu_check: $CONFIG not found" >&2; exit 2; }
if [ ! -f "$OUT/mnist.pt" ]; then
  [ -n "${DATA_ROOT:-}" ] || { echo "gpu_check: no MNIST/ found; set DATA_ROOT" >&2; exit 2; }
  echo "== prepare MNIST from $DATA_ROOT"
  bpfree prepare --dataset mnist --data-root "$DATA_ROOT" --out "$OUT/mnist.pt" >/dev/null
fi

for ALG in mf bp; do
  D="$OUT/$ALG"
  mkdir -p "$D"
  # The config's spec, on the GPU, with the idle baseline (and an optional epoch cap) of this check.
  for KIND in search train; do
    if [ -n "${SPECS:-}" ]; then cat "$SPECS/$ALG-$KIND.json"
    else bpfree spec --config "$CONFIG" --architecture $ARCH --algorithm $ALG --kind $KIND; fi | \
      DEVICE=$DEVICE IDLE_SECONDS=$IDLE_SECONDS MAX_EPOCHS=${MAX_EPOCHS:-} LIMIT_TRAIN=${LIMIT_TRAIN:-} python -c '
import json, os, sys
s = json.load(sys.stdin)
s["device"] = os.environ["DEVICE"]
if os.environ["LIMIT_TRAIN"]:
    s["limit_train"] = int(os.environ["LIMIT_TRAIN"])
if "metering" in s:
    s["metering"]["idle_seconds"] = float(os.environ["IDLE_SECONDS"])
if os.environ["MAX_EPOCHS"]:
    s["stopping"]["max_epochs"] = int(os.environ["MAX_EPOCHS"])
print(json.dumps(s))' > "$D/$KIND-spec.json"
  done
  echo "== $ALG: published hyperparameters (n_trials 0)"
  bpfree search --spec "@$D/search-spec.json" --data "$OUT/mnist.pt" --journal "$D/study.journal" \
    --best "$D/best.json" --trials "$D/trials.csv"
  echo "== $ALG: final run, seed $SEED (idle baseline ${IDLE_SECONDS}s first)"
  rm -f "$D/run/metrics.json"
  timeout "$RUN_TIMEOUT" bpfree train --spec "@$D/train-spec.json" --data "$OUT/mnist.pt" --best "$D/best.json" \
    --seed "$SEED" --out-dir "$D/run" "${CKPT[@]}" > "$D/train.log" 2>&1 \
    || { echo "gpu_check: $ALG run failed or exceeded ${RUN_TIMEOUT}s; tail of $D/train.log:" >&2; tail -20 "$D/train.log" >&2; }
  tail -2 "$D/train.log"
done

echo "== results"
python - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
import pandas as pd
out = Path(sys.argv[1])
def f(v, fmt=".1f"):
    return "n/a" if v is None else format(v, fmt)
for alg in ("mf", "bp"):
    p = out / alg / "run" / "metrics.json"
    if not p.exists():
        print(f"{alg}: no metrics.json (run failed)")
        continue
    m = json.loads(p.read_text())
    print(f"\n{alg}: test acc {m['test_accuracy']:.2f} %, {m['epochs']} epochs, training {m['train_time_s']:.1f} s on {m['device']}")
    print(f"  energy {f(m['energy_j'])} J  [{m['energy_method']}]")
    for c, v in m["energy_components"].items():
        print(f"    {c:>4}: {f(v['j'])} J  [{v['method']}]  idle {f(v['idle_w'])} W  dynamic {f(v['dynamic_j'])} J")
    print(f"  idle power {f(m['idle_power_w'])} W over {f(m['idle_seconds'])} s; dynamic energy {f(m['energy_dynamic_j'])} J")
    print(f"  emissions {f(m['emissions_kg'], '.2e')} kg  ({m['emissions_method']})")
    print(f"  peak memory (process) {f(m['peak_memory_mib'])} MiB  [{m['peak_memory_method']}]")
    print(f"  peak memory (device-wide) {f(m.get('gpu_device_memory_peak_mib'))} MiB  [{m.get('gpu_device_memory_method')}]")
    print(f"  GPU utilisation mean {f(m.get('gpu_util_mean_pct'))} %")
    ep = pd.read_csv(p.parent / "epochs.csv")
    print(f"  per epoch: {ep['window_s'].median():.2f} s and {f(ep['energy_j'].median())} J (medians)")
    tr = p.parent / "power_trace.csv"
    if tr.exists():
        t = pd.read_csv(tr)
        train = t[t.phase == "train"]
        rate = (len(t) - 1) / (t.t_s.iloc[-1] - t.t_s.iloc[0]) if len(t) > 1 else float("nan")
        print(f"  power trace: {len(t)} samples at {rate:.1f} Hz; GPU power while training "
              f"mean {train.gpu_w.mean():.1f} W, max {train.gpu_w.max():.1f} W; while idle {t[t.phase == 'idle'].gpu_w.mean():.1f} W")
    else:
        print(f"  power trace: none ({m.get('power_trace_note')})")
EOF
echo "gpu_check: done in $(( $(date +%s) - T0 )) s"
