#!/usr/bin/env bash
# Per-step latency (1 thread and all threads) and batch throughput of a twin on tract (rig), on
# tract without rig's speed rewrites (src/twin/passes.rs, TWINRIG_NO_SPEED_PASSES=1), and on
# onnxruntime: same model, same inputs, same run. Needs onnxruntime and numpy in $PYTHON.
#
#   [PYTHON=python3] tools/bench_compare.sh [RIG] [MODEL] [STEPS] [BATCH]
set -euo pipefail
RIG=${1:-target/release/rig}
MODEL=${2:-onnx/reference_twin.onnx}
STEPS=${3:-500}
BATCH=${4:-32}
PY=${PYTHON:-python3}
DIR=$(cd "$(dirname "$0")" && pwd)
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
"$RIG" twin bench "$MODEL" --steps "$STEPS" --batch "$BATCH" --json >"$T/tract.json"
TWINRIG_NO_SPEED_PASSES=1 "$RIG" twin bench "$MODEL" --steps "$STEPS" --batch "$BATCH" --json >"$T/raw.json"
"$PY" "$DIR/bench_ort.py" "$MODEL" --steps "$STEPS" --batch "$BATCH" >"$T/ort.json"
"$PY" - "$T/tract.json" "$T/raw.json" "$T/ort.json" "$MODEL" <<'PY'
import json, sys
t, r, o = (json.load(open(p)) for p in sys.argv[1:4])
print(f"{sys.argv[4]}")
print(f"{'':32}{'tract (rig)':>14}{'tract, no rewrite':>18}{'onnxruntime':>14}{'rig / ort':>11}")
for a, b, c in zip(t["step"], r["step"], o["step"]):
    for k in ("mean_us", "p50_us", "p99_us"):
        print(f"step {a['threads']} thread(s) {k:<14}{a[k]:>14.0f}{b[k]:>18.0f}{c[k]:>14.0f}{a[k] / c[k]:>10.2f}x")
print(f"batch {t['batch']} frames/s ({t['batch_threads']} thr){'':6}{t['batch_frames_per_s']:>14.0f}{r['batch_frames_per_s']:>18.0f}{o['batch_frames_per_s']:>14.0f}")
PY
