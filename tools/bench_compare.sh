#!/usr/bin/env bash
# Per-step latency (1 thread and all threads) and batch throughput of a twin on tract (rig) and on
# onnxruntime, same model, same inputs, same run. Needs `pip install onnxruntime numpy`.
#
#   tools/bench_compare.sh [RIG] [MODEL] [STEPS] [BATCH]
set -euo pipefail
RIG=${1:-target/release/rig}
MODEL=${2:-onnx/reference_twin.onnx}
STEPS=${3:-500}
BATCH=${4:-32}
DIR=$(cd "$(dirname "$0")" && pwd)
"$RIG" twin bench "$MODEL" --steps "$STEPS" --batch "$BATCH" --json > /tmp/bench_tract.$$.json
python3 "$DIR/bench_ort.py" "$MODEL" --steps "$STEPS" --batch "$BATCH" > /tmp/bench_ort.$$.json
python3 - /tmp/bench_tract.$$.json /tmp/bench_ort.$$.json <<'PY'
import json, sys
t, o = (json.load(open(p)) for p in sys.argv[1:3])
print(f"{'':28}{'tract (rig)':>14}{'onnxruntime':>14}")
for a, b in zip(t["step"], o["step"]):
    for k in ("mean_us", "p50_us", "p99_us"):
        print(f"step {a['threads']} thread(s) {k:<10}{a[k]:>14.0f}{b[k]:>14.0f}")
print(f"batch {t['batch']} frames/s ({t['batch_threads']} thr){t['batch_frames_per_s']:>14.0f}{o['batch_frames_per_s']:>14.0f}")
PY
rm -f /tmp/bench_tract.$$.json /tmp/bench_ort.$$.json
