#!/usr/bin/env bash
# `make bench-slurm`: how the Slurm scale-out scales, on a real one-node cluster on this machine.
#
#   tools/bench_slurm.sh RIG_BINARY PYTHON_WITH_H5PY [--json] [--budget B] [--shards "1 2 4"]
#
# Runs the same search (reference twin, 5 targets, 1 s clips, seed 3; budget 2400 = about 70 s on
# one core) with tools/insilico_sbatch.sh at 1, 2 and 4 shards (as many optimiser parts, one CPU
# per task) and prints the wall time from submission to plan, split into screen, optimiser and
# merge by the times the files appeared, and the speed-up over one shard. The baseline, one shard,
# runs in the same invocation. Checks that every plan equals the one-shard plan byte for byte.
# A node runs as many tasks at once as it has CPUs, so the speed-up is bounded by min(shards, CPUs).
set -euo pipefail
cd "$(dirname "$0")/.."
RIG=$(realpath -e "${1:?rig binary}")
PY=${2:?python with h5py}
shift 2
JSON=0 BUDGET=2400 SHARDS="1 2 4"
while (($#)); do
	case $1 in
	--json) JSON=1 ;;
	--budget) BUDGET=$2 && shift ;;
	--shards) SHARDS=$2 && shift ;;
	*) echo "bench_slurm: unknown option $1" >&2 && exit 2 ;;
	esac
	shift
done
TWIN=$PWD/onnx/reference_twin.onnx
W=$(mktemp -d "${TMPDIR:-/tmp}/twinrig-slurm-bench.XXXXXX")
chmod 755 "$W"
STATE=$W/cluster
export SLURM_CONF=$STATE/slurm.conf
cleanup() {
	tools/slurm_local.sh stop "$STATE" >/dev/null 2>&1 || true
	rm -rf "$W"
}
trap cleanup EXIT
log() { echo "bench_slurm: $*" >&2; }

tools/slurm_local.sh install >&2
tools/slurm_local.sh start "$STATE" >&2
cpus=$(sinfo -h -o %c | head -n 1)
# shellcheck disable=SC2054 # --targets takes a comma list
SEARCH=(--objective neuron --targets 133,65,74,22,177 --budget "$BUDGET" --seed 3)

now() { date +%s.%N; }
mtime_max() { stat -c %.9Y "$@" | sort -n | tail -n 1; }
rows=()
base=''
for s in $SHARDS; do
	out=$W/s$s
	t0=$(now)
	bash tools/insilico_sbatch.sh --shards "$s" --opt-parts "$s" --cpus 1 --rig "$RIG" "$TWIN" "$out" -- \
		"${SEARCH[@]}" >"$W/submit_$s.log" 2>&1 || {
		cat "$W/submit_$s.log" >&2
		exit 1
	}
	t1=$(now)
	while [[ -n $(squeue -h -o %i) ]]; do sleep 0.2; done
	[[ $(cat "$out/status") == complete:* ]] || {
		log "$s shards: $(cat "$out/status")"
		exit 1
	}
	screen_end=$(mtime_max "$out"/screen_*.h5)
	opt_end=$(mtime_max "$out"/opt_*.h5)
	plan_end=$(mtime_max "$out/plan.h5")
	if [[ -z $base ]]; then
		base=$out/plan.h5
		same=true
	elif "$PY" tools/plan_equal.py "$base" "$out/plan.h5" >/dev/null; then
		same=true
	else
		same=false
	fi
	rows+=("$(awk -v s="$s" -v t0="$t0" -v t1="$t1" -v a="$screen_end" -v b="$opt_end" -v c="$plan_end" -v same="$same" \
		'BEGIN { printf "%d %.1f %.1f %.1f %.1f %.1f %s", s, t1 - t0, c - t1, a - t1, b - a, c - b, same }')")
	log "$s shard(s): ${rows[-1]}"
done

one=$(awk '{ print $3; exit }' <<<"${rows[0]}")
if ((JSON)); then
	printf '{"machine_cpus": %d, "budget": %d, "runs": [' "$cpus" "$BUDGET"
	sep=''
	for r in "${rows[@]}"; do
		read -r s pre wall sc op mg same <<<"$r"
		printf '%s{"shards": %d, "optimiser_parts": %d, "preflight_s": %s, "wall_s": %s, "screen_s": %s, "optimise_s": %s, "merge_s": %s, "speedup_over_one_shard": %s, "plan_equals_one_shard": %s}' \
			"$sep" "$s" "$s" "$pre" "$wall" "$sc" "$op" "$mg" "$(awk -v a="$one" -v b="$wall" 'BEGIN { printf "%.2f", a / b }')" "$same"
		sep=', '
	done
	echo ']}'
else
	echo "Slurm scale-out: reference twin, 5 targets, budget $BUDGET, one CPU per task, one node with $cpus CPUs"
	echo "shards  wall s (submit -> plan)  screen s  optimise s  merge s  speed-up over 1 shard  target (0.8 x min(shards, CPUs))  plan = 1 shard's"
	for r in "${rows[@]}"; do
		read -r s pre wall sc op mg same <<<"$r"
		awk -v s="$s" -v w="$wall" -v sc="$sc" -v op="$op" -v mg="$mg" -v one="$one" -v c="$cpus" -v same="$same" \
			'BEGIN { m = s < c ? s : c; printf "%6d  %23.1f  %8.1f  %10.1f  %7.1f  %21.2f  %31.2f  %s\n", s, w, sc, op, mg, one / w, 0.8 * m, same }'
	done
	echo "(preflight, before submission, not counted: $(awk '{ printf "%s ", $2 }' <<<"$(printf '%s\n' "${rows[@]}")")s)"
fi
