#!/usr/bin/env bash
# `make test-slurm`: tools/insilico_sbatch.sh on a real one-node Slurm cluster on this machine.
#
#   tools/test_slurm.sh RIG_BINARY PYTHON_WITH_H5PY
#
# Starts the cluster (tools/slurm_local.sh), then:
#   1. the preflight refuses, before anything is queued: more CPUs than a node has, a rig that is
#      not there, a bad search option, a folder holding an earlier search (and --overwrite clears it);
#   2. a search with 4 screening shards and 4 optimiser parts, one shard cancelled while pending:
#      the final job still runs, names the shard and the parts that could not run, and prints the
#      resume command; no plan is written;
#   3. --resume reruns only what is missing, and the plan equals the unsharded search's byte for
#      byte (tools/plan_equal.py, which must also see a different seed's plan as different).
# Stops the daemons it started, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
RIG=$(realpath -e "${1:?rig binary}")
PY=${2:?python with h5py}
TWIN=$PWD/onnx/reference_twin.onnx
SBATCH=tools/insilico_sbatch.sh
W=$(mktemp -d "${TMPDIR:-/tmp}/twinrig-slurm.XXXXXX")
chmod 755 "$W" # munged wants every folder above its socket searchable by all
STATE=$W/cluster
export SLURM_CONF=$STATE/slurm.conf
t0=$SECONDS

cleanup() {
	tools/slurm_local.sh stop "$STATE" >/dev/null 2>&1 || echo "test-slurm: could not stop the cluster in $STATE" >&2
	rm -rf "$W"
}
trap cleanup EXIT
fail() {
	echo "test-slurm: FAIL: $*" >&2
	exit 1
}
ok() { echo "test-slurm: ok: $*"; }

# Waits until no job is queued or running (bounded).
wait_idle() {
	local i
	for ((i = 0; i < ${1:-300}; i++)); do
		[[ -z $(squeue -h -o %i) ]] && return 0
		sleep 1
	done
	squeue >&2
	fail "jobs still queued after ${1:-300} s"
}

tools/slurm_local.sh install
tools/slurm_local.sh start "$STATE"

# shellcheck disable=SC2054 # --targets takes a comma list
SEARCH=(--objective neuron --targets 133,65,74 --budget 720 --clip-s 0.5 --seed 3)

# 1. Preflight refusals: each leaves the queue empty.
refused() { # refused WHAT EXPECTED_TEXT -- COMMAND...
	local what=$1 want=$2 out
	shift 3
	if out=$("$@" 2>&1); then fail "$what: accepted"; fi
	grep -qF -- "$want" <<<"$out" || fail "$what: refused without saying '$want': $out"
	[[ -z $(squeue -h -o %i) ]] || fail "$what: jobs were queued anyway"
	ok "$what: $(grep -F -- "$want" <<<"$out" | head -n 1)"
}
refused "more CPUs than a node has" "the largest node of partition" -- \
	bash $SBATCH --cpus 64 --rig "$RIG" "$TWIN" "$W/a" -- "${SEARCH[@]}"
refused "rig not there" "--rig $W/no/rig: no such file" -- \
	bash $SBATCH --rig "$W/no/rig" "$TWIN" "$W/b" -- "${SEARCH[@]}"
refused "a bad search option" "--objective" -- \
	bash $SBATCH --rig "$RIG" "$TWIN" "$W/c" -- --objective nope --targets 133
mkdir -p "$W/d" && touch "$W/d/plan.h5" "$W/d/screen_0.h5"
refused "a folder with an earlier search" "is not empty" -- \
	bash $SBATCH --rig "$RIG" "$TWIN" "$W/d" -- "${SEARCH[@]}"
bash $SBATCH --dry-run --overwrite --rig "$RIG" "$TWIN" "$W/d" -- "${SEARCH[@]}" >/dev/null 2>&1
[[ ! -e $W/d/plan.h5 && ! -e $W/d/screen_0.h5 ]] || fail "--overwrite left the earlier search's plan or shards"
ok "--overwrite removes an earlier search's plan and shards"

# Options reach sbatch and the job scripts (a dry run: this node has no GPU, partition or account).
out=$(bash $SBATCH --dry-run --shards 3 --opt-parts 2 --cpus 2 --merge-cpus 1 --mem 1.5G --time 00:20:00 \
	--partition gpu --account lab --gpus 1 --rig "$RIG" "$TWIN" "$W/e" -- "${SEARCH[@]}" 2>&1)
for want in "--array=0-2 --cpus-per-task=2 --mem=1536M --gres=gpu:1" "--array=0-1 --dependency=afterany:DRY" \
	"--cpus-per-task=1 --mem=" "--time=00:20:00" "--partition=gpu" "--account=lab"; do
	grep -qF -- "$want" <<<"$out" || fail "dry run: no '$want' in: $out"
done
grep -qF -- "--backend cuda --threads 2 --shard \"\$SLURM_ARRAY_TASK_ID/3\"" "$W/e/jobs/screen.sh" ||
	fail "screening job script: $(cat "$W/e/jobs/screen.sh")"
grep -qF -- "--part \"\$SLURM_ARRAY_TASK_ID/2\"" "$W/e/jobs/opt.sh" || fail "optimiser job script: $(cat "$W/e/jobs/opt.sh")"
ok "partition, account, time, memory, CPUs and GPUs reach sbatch and the job scripts"

# The reference: one unsharded search.
"$RIG" insilico --twin "$TWIN" "${SEARCH[@]}" --threads 2 --out "$W/whole.h5" --json >/dev/null
"$RIG" insilico --twin "$TWIN" "${SEARCH[@]}" --seed 4 --threads 2 --out "$W/seed4.h5" --json >/dev/null
if "$PY" tools/plan_equal.py "$W/whole.h5" "$W/seed4.h5" >/dev/null; then
	fail "tools/plan_equal.py finds seed 3's and seed 4's plans equal"
fi

# 2. Sharded, one shard cancelled. Two CPUs run tasks 0 and 1 first; task 3 is still pending.
out=$(bash $SBATCH --shards 4 --opt-parts 4 --cpus 1 --rig "$RIG" "$TWIN" "$W/run" -- "${SEARCH[@]}")
echo "$out"
screen=$(sed -n 's/^jobs: screen=\([0-9]*\) .*/\1/p' <<<"$out")
[[ -n $screen ]] || fail "no screening array id in: $out"
scancel "${screen}_3"
wait_idle
status=$(cat "$W/run/status")
[[ $status == "incomplete: screening shard(s) 3 of 4 and optimiser part(s) 0,1,2,3 of 4 failed or did not run" ]] ||
	fail "status after the cancel: $status"
grep -qF "rerun them with: $PWD/$SBATCH --resume $W/run" "$W/run/logs/final.out" ||
	fail "the final job gave no resume command: $(cat "$W/run/logs/final.out")"
[[ ! -e $W/run/plan.h5 ]] || fail "a plan was written from an incomplete search"
ok "a cancelled shard: $status"

# 3. Resume: only shard 3 and the optimiser parts run again.
out=$(bash $SBATCH --resume "$W/run")
echo "$out"
grep -qF "screening shard(s) [3] of 4, optimiser part(s) [0 1 2 3] of 4 to run" <<<"$out" ||
	fail "resume does not rerun exactly the missing pieces: $out"
wait_idle
[[ $(cat "$W/run/status") == "complete: $W/run/plan.h5" ]] || fail "after resume: $(cat "$W/run/status"); $(cat "$W/run/logs/final.out")"
"$PY" tools/plan_equal.py "$W/whole.h5" "$W/run/plan.h5" || fail "the sharded plan differs from the unsharded one"
ok "resumed; the plan of 4 shards and 4 optimiser parts equals the unsharded plan"
if out=$(bash $SBATCH --resume "$W/run" 2>&1); then fail "a second resume of a complete search was accepted"; fi
ok "a complete search is not resumed: $out"
echo "test-slurm: passed in $((SECONDS - t0)) s"
