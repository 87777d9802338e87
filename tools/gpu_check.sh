#!/usr/bin/env bash
# The CUDA path, checked in one run on a machine with an NVIDIA GPU; prints one JSON summary.
#
#   tools/gpu_check.sh [OUT_DIR]          (default target/gpu-check)
#
# 1. builds rig with `--features cuda` (tract's CUDA runtime; cudarc loads libcuda at run time);
# 2. checks CUDA against one CPU thread, frame by frame over 100 stepped frames with the state
#    carried, on the reference twin and on a foundation-scale twin (`rig twin check-backend`);
# 3. `rig twin bench --backend cuda` at batch 1, 16 and 64 on both, with the CPU beside them;
# 4. an in-silico search on CUDA (`rig insilico --backend cuda`) and its evaluations per second,
#    with the same search on the CPU;
# then writes OUT_DIR/gpu_check.json (also printed) with every figure, the GPU's name and the
# driver. Any failed step is recorded in the summary with its message, and the script exits
# non-zero. Without a GPU it stops at step 2 and says why (rig names the missing piece).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${1:-target/gpu-check}
mkdir -p "$OUT"
RIG=${CARGO_TARGET_DIR:-target}/release/rig
failed=0
log() { echo "gpu_check: $*" >&2; }
run_json() { # run_json NAME COMMAND... -> OUT/NAME.json (or OUT/NAME.err)
	local name=$1
	shift
	log "$name: $*"
	if "$@" >"$OUT/$name.json" 2>"$OUT/$name.err"; then
		return 0
	fi
	log "$name FAILED: $(tail -n 1 "$OUT/$name.err")"
	failed=1
	return 1
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$OUT/gpu.txt" 2>&1 ||
	log "nvidia-smi: $(cat "$OUT/gpu.txt")"
cargo build --release --features cuda >"$OUT/build.log" 2>&1 || {
	log "cargo build --features cuda failed: $(tail -n 3 "$OUT/build.log")"
	exit 1
}
"$RIG" twin build-core --preset foundation --neurons 8000 --out "$OUT/foundation.onnx" --overwrite >/dev/null

for m in reference:onnx/reference_twin.onnx foundation:"$OUT/foundation.onnx"; do
	name=${m%%:*} model=${m#*:}
	run_json "check_$name" "$RIG" twin check-backend "$model" --backend cuda --steps 100 --json
	for b in 1 16 64; do
		run_json "bench_${name}_cuda_b$b" "$RIG" twin bench "$model" --backend cuda --batch "$b" --steps 200 --json
	done
	run_json "bench_${name}_cpu" "$RIG" twin bench "$model" --backend cpu --batch 16 --steps 100 --json
done
# shellcheck disable=SC2054 # --targets takes a comma list
SEARCH=(--twin onnx/reference_twin.onnx --objective neuron --targets 133,65,74,22,177 --budget 4000 --seed 3 --json)
run_json insilico_cuda "$RIG" insilico "${SEARCH[@]}" --backend cuda --batch 64 --out "$OUT/plan_cuda.h5" --overwrite
run_json insilico_cpu "$RIG" insilico "${SEARCH[@]}" --backend cpu --out "$OUT/plan_cpu.h5" --overwrite

python3 - "$OUT" "$failed" <<'PY'
import glob, json, os, sys
out, failed = sys.argv[1], sys.argv[2] == "1"
summary = {"gpu": open(os.path.join(out, "gpu.txt")).read().strip(), "failed": failed}
for p in sorted(glob.glob(os.path.join(out, "*.json"))):
    name = os.path.basename(p)[:-5]
    if name == "gpu_check":
        continue
    try:
        d = json.load(open(p))
    except ValueError:
        err = os.path.join(out, name + ".err")
        summary[name] = {"error": open(err).read().strip().splitlines()[-1:] if os.path.exists(err) else "no output"}
        continue
    if name.startswith("insilico"):
        d = {k: d[k] for k in ("evaluations", "wall_s", "evaluations_per_s") if k in d}
    summary[name] = d
json.dump(summary, open(os.path.join(out, "gpu_check.json"), "w"), indent=1)
print(json.dumps(summary, indent=1))
PY
exit "$failed"
