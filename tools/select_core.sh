#!/usr/bin/env bash
# Chooses the reference core's hyper-parameters by held-out correlation on a simulated session.
#
#   tools/select_core.sh RIG SESSION.h5 WORKDIR
#
# For every combination of envelope width (sigma, degrees), temporal leak (a) and readout time
# constant (tau, s) it builds a core (`rig twin build-core`), adapts it to SESSION
# (`rig twin adapt`, 5-fold cross-validation over contiguous time blocks) and prints one line
# "mean_heldout_corr sigma a tau". The best line is the choice; onnx/README.md records the run.
set -euo pipefail
RIG=${1:?rig binary}
SESSION=${2:?training session}
WORK=${3:?work dir}
mkdir -p "$WORK"
for sigma in 4.5 6 8; do
  for a in 0.3 0.6; do
    "$RIG" twin build-core --out "$WORK/core_${sigma}_${a}.onnx" --sigma-deg "$sigma" --temporal-a "$a" >/dev/null
    for tau in 0.7 1.0; do
      r=$("$RIG" twin adapt --core "$WORK/core_${sigma}_${a}.onnx" --session "$SESSION" \
            --out "$WORK/twin.onnx" --tau "$tau" --json 2>/dev/null |
          python3 -c 'import json,sys; print("%.4f" % json.load(sys.stdin)["mean_heldout_corr"])')
      echo "$r sigma=$sigma a=$a tau=$tau"
    done
  done
done | sort -r
