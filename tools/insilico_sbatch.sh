#!/usr/bin/env bash
# A big in-silico search on Slurm: screening and the optimiser both as job arrays, then one job that
# merges them, whatever happened before it (docs/insilico.md, "Scale-out").
#
#   tools/insilico_sbatch.sh [OPTIONS] TWIN.onnx OUT_DIR -- RIG_INSILICO_OPTIONS...
#   tools/insilico_sbatch.sh --resume OUT_DIR [--partition P] [--account A] [--time T] [--mem M]
#                            [--cpus C] [--merge-cpus C] [--rig PATH]
#
# e.g.  tools/insilico_sbatch.sh --shards 16 --cpus 4 onnx/reference_twin.onnx runs/mei -- \
#           --objective neuron --targets 133,65,74,22,177 --budget 200000 --seed 3
#
# Jobs, all writing into OUT_DIR:
#   screen  array 0..N-1   rig insilico ... --shard K/N              -> screen_K.h5
#   opt     array 0..M-1   rig insilico optimise screen_* --part K/M -> opt_K.h5   (after screen)
#   final   one job        merges into plan.h5, or names the shards that failed and prints the
#                          command that reruns them (after screen and opt, whatever their outcome)
# The plan is the one a single unsharded `rig insilico` with the same options and seed writes, bit
# for bit, for any N and M. `--resume OUT_DIR` reruns only the shards and parts that are missing.
#
# Options:
#   --shards N       screening tasks (default 8)
#   --opt-parts M    optimiser tasks (default: N; no more are useful than goals x --starts)
#   --cpus C         CPUs per task, passed on as rig --threads (default 1)
#   --merge-cpus C   CPUs of the final job (default: --cpus)
#   --mem SIZE       memory per task, e.g. 600M or 2G (default: twice the peak the preflight probe
#                    measured, plus 256 MB; the final job adds what reading every shard takes)
#   --time T         time limit per task, Slurm format (default 02:00:00)
#   --partition P    --account A    passed to sbatch
#   --gpus G         GPUs per task (--gres=gpu:G); rig then scores on CUDA (--backend cuda)
#   --rig PATH       the rig binary the jobs run (default: rig on PATH), made absolute
#   --overwrite      OUT_DIR holds an earlier search: remove its files first (else refused)
#   --dry-run        run the preflight, write the job scripts, print the sbatch commands; submit nothing
#
# Before anything is submitted a preflight checks: sbatch and sinfo answer; rig is an executable
# given by absolute path; the twin is readable; a short probe run of the search (a few seconds of
# shard 0 on this machine) accepts the options and measures memory and speed; a node of the
# partition has the CPUs, memory (and GPUs) asked for; OUT_DIR is empty or --overwrite was given.
set -euo pipefail

prog=tools/insilico_sbatch.sh
SCRIPT=$(realpath "$0")
die() {
	echo "$prog: $*" >&2
	exit 2
}
say() { echo "$prog: $*"; }

# ---------------------------------------------------------------------------------------------
# Options

N=8 M='' CPUS=1 MERGE_CPUS='' MEM='' TIME=02:00:00 PARTITION='' ACCOUNT='' GPUS=0 RIG=''
OVERWRITE=0 DRY=0 MODE=submit OUT='' TWIN=''
declare -a OPTS=()
declare -a SET=() # options given on the command line (a resume applies only these)
pos=()
while (($#)); do
	case $1 in
	--shards) N=${2:?--shards N} && shift ;;
	--opt-parts) M=${2:?--opt-parts M} && shift ;;
	--cpus) CPUS=${2:?--cpus C} && SET+=(CPUS) && shift ;;
	--merge-cpus) MERGE_CPUS=${2:?--merge-cpus C} && SET+=(MERGE_CPUS) && shift ;;
	--mem) MEM=${2:?--mem SIZE} && SET+=(MEM) && shift ;;
	--time) TIME=${2:?--time T} && SET+=(TIME) && shift ;;
	--partition) PARTITION=${2:?--partition P} && SET+=(PARTITION) && shift ;;
	--account) ACCOUNT=${2:?--account A} && SET+=(ACCOUNT) && shift ;;
	--gpus) GPUS=${2:?--gpus G} && shift ;;
	--rig) RIG=${2:?--rig PATH} && SET+=(RIG) && shift ;;
	--overwrite) OVERWRITE=1 ;;
	--dry-run) DRY=1 ;;
	--resume) MODE=resume && OUT=${2:?--resume OUT_DIR} && shift ;;
	--finish) MODE=finish && OUT=${2:?--finish OUT_DIR} && shift ;;
	-h | --help) sed -n '2,/^set -euo/p' "$SCRIPT" | sed '$d; s/^# \{0,1\}//' && exit 0 ;;
	--) shift && OPTS=("$@") && break ;;
	-*) die "unknown option $1 (see --help)" ;;
	*) pos+=("$1") ;;
	esac
	shift
done

posint() { [[ $2 =~ ^[1-9][0-9]*$ ]] || die "$1: expected a positive whole number, found '$2'"; }

# Memory in MB from 600, 600M, 2G, 1.5G.
mem_mb() {
	local v=$1
	[[ $v =~ ^([0-9]+(\.[0-9]+)?)([MmGg]?)$ ]] || die "--mem: expected a size like 600M or 2G, found '$v'"
	case ${BASH_REMATCH[3]} in
	[Gg]) awk -v x="${BASH_REMATCH[1]}" 'BEGIN { printf "%d", x * 1024 + 0.5 }' ;;
	*) awk -v x="${BASH_REMATCH[1]}" 'BEGIN { printf "%d", x + 0.5 }' ;;
	esac
}

# The files a search writes into OUT_DIR (what --overwrite removes).
artefacts() {
	find "$OUT" -maxdepth 1 \( -name 'screen_*.h5' -o -name 'opt_*.h5' -o -name 'plan.h5' \
		-o -name 'search.env' -o -name 'status' -o -name 'logs' -o -name 'jobs' -o -name 'probe' \) -print
}

missing() { # missing PREFIX COUNT -> space-separated indices whose file is absent
	local k out=()
	for ((k = 0; k < $2; k++)); do [[ -s $OUT/${1}_$k.h5 ]] || out+=("$k"); done
	echo "${out[*]}"
}

# The line of a task's log that says why it ended.
last_words() {
	[[ -e $1 ]] || {
		echo "no log: it never started (cancelled while pending?)"
		return
	}
	local w
	w=$(grep -v -e '^[[:space:]]*$' -e 'For more information' "$1" | tail -n 1)
	echo "${w:-its log is empty} (log: $1)"
}

# ---------------------------------------------------------------------------------------------
# The final job: merge, or say what failed and how to rerun it.

finish() {
	# shellcheck source=/dev/null
	source "$OUT/search.env"
	local ms mo
	ms=$(missing screen "$N")
	mo=$(missing opt "$M")
	if [[ -z $ms && -z $mo ]]; then
		local files=() k
		for ((k = 0; k < N; k++)); do files+=("$OUT/screen_$k.h5"); done
		for ((k = 0; k < M; k++)); do files+=("$OUT/opt_$k.h5"); done
		if "$RIG" insilico merge "${files[@]}" --twin "$TWIN" --threads "$MERGE_CPUS" \
			--out "$OUT/plan.h5" --overwrite --json >"$OUT/logs/merge.json"; then
			echo "complete: $OUT/plan.h5" | tee "$OUT/status"
			return 0
		fi
		echo "failed: the merge of $N shards and $M parts (log: $OUT/logs/final.out)" | tee "$OUT/status"
		return 1
	fi
	local line="incomplete:"
	[[ -n $ms ]] && line+=" screening shard(s) ${ms// /,} of $N"
	[[ -n $ms && -n $mo ]] && line+=" and"
	[[ -n $mo ]] && line+=" optimiser part(s) ${mo// /,} of $M"
	line+=" failed or did not run"
	echo "$line" | tee "$OUT/status"
	local k
	for k in $ms; do echo "  screen_$k: $(last_words "$OUT/logs/screen_$k.out")"; done
	for k in $mo; do echo "  opt_$k: $(last_words "$OUT/logs/opt_$k.out")"; done
	echo "rerun them with: $SCRIPT --resume $OUT"
	return 1
}

# ---------------------------------------------------------------------------------------------
# Preflight

need_slurm() {
	local c
	for c in sbatch sinfo squeue; do
		command -v "$c" >/dev/null || die "preflight: $c not found; run this on a Slurm login node"
	done
	sinfo -h -o %P >/dev/null 2>&1 || die "preflight: sinfo cannot reach the Slurm controller: $(sinfo 2>&1 | head -n 1)"
}

check_rig() {
	[[ -n $RIG ]] || RIG=$(command -v rig) ||
		die "preflight: rig not on PATH; give --rig /absolute/path/to/rig (the jobs run it by that path)"
	[[ -e $RIG ]] || die "preflight: --rig $RIG: no such file"
	RIG=$(realpath -e "$RIG")
	[[ -f $RIG && -x $RIG ]] || die "preflight: --rig $RIG: not an executable file"
	"$RIG" --version >/dev/null 2>&1 || die "preflight: $RIG --version failed; is it the rig binary?"
}

check_twin() {
	[[ -r $TWIN && -f $TWIN ]] || die "preflight: twin $TWIN: not a readable file"
	TWIN=$(realpath -e "$TWIN")
}

# Largest CPUs, memory (MB) and GPU count of one node of the partition.
check_nodes() {
	local p=() line c m g maxc=0 maxm=0 maxg=0 mem_need=$1 cpus_need=$2
	[[ -n $PARTITION ]] && p=(-p "$PARTITION")
	while read -r c m g; do
		c=${c%%+*} m=${m%%+*}
		((c > maxc)) && maxc=$c
		((m > maxm)) && maxm=$m
		if [[ $g =~ gpu:([^:]*:)?([0-9]+) ]] && ((BASH_REMATCH[2] > maxg)); then maxg=${BASH_REMATCH[2]}; fi
	done < <(sinfo -h -N "${p[@]}" -o '%c %m %G' 2>/dev/null)
	local where="partition ${PARTITION:-(default)}"
	((maxc > 0)) || die "preflight: $where has no nodes (sinfo -N ${p[*]})"
	((cpus_need <= maxc)) || die "preflight: $cpus_need CPUs per task asked for, but the largest node of $where has $maxc; use --cpus $maxc or less"
	((mem_need <= maxm)) || die "preflight: ${mem_need} MB per task asked for, but the largest node of $where has ${maxm} MB; use --mem ${maxm}M or less"
	((GPUS <= maxg)) || die "preflight: $GPUS GPUs per task asked for, but the largest node of $where has $maxg"
	say "preflight: $where: nodes up to $maxc CPUs, $maxm MB$( ((maxg > 0)) && echo ", $maxg GPUs")"
}

check_out_empty() {
	mkdir -p "$OUT"
	if [[ -n $(artefacts) && $OVERWRITE == 1 ]]; then
		say "--overwrite: removing the earlier search in $OUT"
		artefacts | xargs -r rm -rf --
	fi
	local left
	left=$(find "$OUT" -mindepth 1 -maxdepth 1 -printf '%f ' | head -c 300)
	[[ -z $left ]] || die "$OUT is not empty ($left); give an empty folder, or --overwrite to remove an earlier search's files"
}

# A few seconds of shard 0 on this machine: the options are valid, and how much memory and time
# a task takes.
probe() {
	mkdir -p "$OUT/probe"
	local be=() js
	((GPUS > 0)) && be=(--backend cpu) # the login node may have no GPU; the memory is the host's
	if ! js=$("$RIG" insilico --twin "$TWIN" "${OPTS[@]}" --shard "0/$N" --threads "$CPUS" "${be[@]}" \
		--time-limit 4 --out "$OUT/probe/probe.h5" --overwrite --json 2>"$OUT/probe/stderr"); then
		die "preflight: a probe run of the search failed: $(grep -v '^\s*$' "$OUT/probe/stderr" | tail -n 1)"
	fi
	read -r PROBE_MB PROBE_RATE PROBE_FILE_MB PROBE_BUDGET < <(python3 -c '
import json, os, sys
d = json.loads(sys.argv[1])
print(round(d.get("peak_rss_mb") or 512), d["evaluations_per_s"],
      round(os.path.getsize(sys.argv[2]) / 1e6 + 1), d["budget"])' "$js" "$OUT/probe/probe.h5")
	rm -rf "$OUT/probe"
}

# ---------------------------------------------------------------------------------------------
# Submission

write_env() {
	{
		declare -p N M CPUS MERGE_CPUS MEM MERGE_MEM TIME PARTITION ACCOUNT GPUS RIG TWIN TAG
		declare -p OPTS
	} >"$OUT/search.env"
}

# Job scripts, kept in OUT_DIR/jobs so a failed task can be read and rerun by hand. The task id
# is expanded when the job runs, not here.
# shellcheck disable=SC2016
write_jobs() {
	mkdir -p "$OUT/jobs" "$OUT/logs"
	local be=() s='' k
	((GPUS > 0)) && be=(--backend cuda)
	for ((k = 0; k < N; k++)); do s+=" $(printf %q "$OUT/screen_$k.h5")"; done
	{
		echo '#!/bin/bash'
		echo 'set -euo pipefail'
		printf 'exec %q insilico --twin %q' "$RIG" "$TWIN"
		printf ' %q' "${OPTS[@]}"
		((GPUS > 0)) && printf ' %q' "${be[@]}"
		printf ' --threads %q --shard "$SLURM_ARRAY_TASK_ID/%d" --out %q/screen_"$SLURM_ARRAY_TASK_ID".h5 --overwrite --json\n' \
			"$CPUS" "$N" "$OUT"
	} >"$OUT/jobs/screen.sh"
	{
		echo '#!/bin/bash'
		echo 'set -euo pipefail'
		printf 'exec %q insilico optimise%s --twin %q' "$RIG" "$s" "$TWIN"
		((GPUS > 0)) && printf ' %q' "${be[@]}"
		printf ' --threads %q --part "$SLURM_ARRAY_TASK_ID/%d" --out %q/opt_"$SLURM_ARRAY_TASK_ID".h5 --overwrite --json\n' \
			"$CPUS" "$M" "$OUT"
	} >"$OUT/jobs/opt.sh"
	printf '#!/bin/bash\nexec bash %q --finish %q\n' "$SCRIPT" "$OUT" >"$OUT/jobs/final.sh"
}

sbatch_() { # sbatch_ NAME ARGS... -> prints the job id
	local common=(--parsable --time="$TIME" --job-name="insilico-$TAG-$1")
	[[ -n $PARTITION ]] && common+=(--partition="$PARTITION")
	[[ -n $ACCOUNT ]] && common+=(--account="$ACCOUNT")
	shift
	if ((DRY)); then
		echo "sbatch ${common[*]} $*" >&2
		echo "DRY$RANDOM"
		return
	fi
	local id
	id=$(sbatch "${common[@]}" "$@") || die "sbatch refused: sbatch ${common[*]} $*"
	echo "${id%%;*}"
}

submit() { # submit SCREEN_INDICES OPT_INDICES  (comma lists, empty = none)
	local screen='' opt='' dep final gres=()
	((GPUS > 0)) && gres=(--gres="gpu:$GPUS")
	if [[ -n $1 ]]; then
		screen=$(sbatch_ screen --array="$1" --cpus-per-task="$CPUS" --mem="${MEM}M" "${gres[@]}" \
			--output="$OUT/logs/screen_%a.out" "$OUT/jobs/screen.sh")
	fi
	if [[ -n $2 ]]; then
		dep=()
		[[ -n $screen ]] && dep=(--dependency="afterany:$screen")
		opt=$(sbatch_ opt --array="$2" "${dep[@]}" --cpus-per-task="$CPUS" --mem="${MEM}M" "${gres[@]}" \
			--output="$OUT/logs/opt_%a.out" "$OUT/jobs/opt.sh")
	fi
	dep=()
	local after=${screen}${screen:+${opt:+:}}${opt}
	[[ -n $after ]] && dep=(--dependency="afterany:$after")
	final=$(sbatch_ final "${dep[@]}" --cpus-per-task="$MERGE_CPUS" --mem="${MERGE_MEM}M" "${gres[@]}" \
		--output="$OUT/logs/final.out" "$OUT/jobs/final.sh")
	echo "${screen:+screen $screen }${opt:+opt $opt }final $final" >>"$OUT/jobs/submitted"
	say "submitted${screen:+ screening array $screen [$1] of $N,}${opt:+ optimiser array $opt [$2] of $M,} final job $final"
	say "the plan will be $OUT/plan.h5; $OUT/status and $OUT/logs/final.out say how it ended"
	echo "jobs: ${screen:+screen=$screen }${opt:+opt=$opt }final=$final"
}

list() { echo "${1// /,}"; } # "1 3" -> "1,3"

# ---------------------------------------------------------------------------------------------

case $MODE in
finish)
	OUT=$(realpath -e "$OUT")
	finish
	;;
resume)
	OUT=$(realpath -e "$OUT" 2>/dev/null) || die "--resume: $OUT: no such folder"
	[[ -r $OUT/search.env ]] || die "--resume: $OUT/search.env not found; was the search submitted with $prog?"
	declare -A given=()
	for v in "${SET[@]}"; do given[$v]=${!v}; done
	# shellcheck source=/dev/null
	source "$OUT/search.env"
	for v in "${!given[@]}"; do printf -v "$v" '%s' "${given[$v]}"; done
	[[ -n ${given[MEM]:-} ]] && MEM=$(mem_mb "$MEM") && MERGE_MEM=$MEM
	[[ -s $OUT/plan.h5 ]] && die "--resume: $OUT/plan.h5 exists; the search is complete"
	need_slurm
	queued=$(squeue -h -o '%i %j' | awk -v t="insilico-$TAG-" 'index($2, t) == 1 { print $1 }' | sort -u | xargs)
	[[ -z $queued ]] || die "--resume: jobs of this search are still queued or running ($queued); wait for them or scancel them first"
	check_rig
	check_twin
	check_nodes "$MERGE_MEM" "$((CPUS > MERGE_CPUS ? CPUS : MERGE_CPUS))"
	write_env
	write_jobs
	ms=$(missing screen "$N")
	mo=$(missing opt "$M")
	rm -f "$OUT/status"
	say "resuming $OUT: screening shard(s) [${ms:-none}] of $N, optimiser part(s) [${mo:-none}] of $M to run"
	submit "$(list "$ms")" "$(list "$mo")"
	;;
submit)
	((${#pos[@]} == 2)) || die "expected TWIN.onnx OUT_DIR -- RIG_INSILICO_OPTIONS (see --help)"
	TWIN=${pos[0]}
	OUT=$(realpath -m "${pos[1]}")
	((${#OPTS[@]})) || die "no rig insilico options after --; at least --objective (see rig insilico --help)"
	posint --shards "$N"
	M=${M:-$N}
	posint --opt-parts "$M"
	posint --cpus "$CPUS"
	MERGE_CPUS=${MERGE_CPUS:-$CPUS}
	posint --merge-cpus "$MERGE_CPUS"
	[[ $GPUS =~ ^[0-9]+$ ]] || die "--gpus: expected a whole number, found '$GPUS'"
	((DRY)) || need_slurm
	check_rig
	say "preflight: rig $RIG ($("$RIG" --version 2>&1 | head -n 1))"
	check_twin
	say "preflight: twin $TWIN"
	check_out_empty
	probe
	say "preflight: probe: the options are accepted; peak memory ${PROBE_MB} MB, ${PROBE_RATE%.*} twin evaluations/s with $CPUS thread(s)"
	if [[ -n $MEM ]]; then
		MEM=$(mem_mb "$MEM")
		((MEM >= PROBE_MB)) || say "warning: --mem ${MEM}M is below the probe's peak of ${PROBE_MB} MB"
	else
		MEM=$((2 * PROBE_MB + 256))
	fi
	# The final job holds every shard's and part's survivors (rendered frames included) at once.
	MERGE_MEM=$((MEM + 2 * (N + M) * PROBE_FILE_MB))
	est=$(awk -v b="$PROBE_BUDGET" -v n="$N" -v r="$PROBE_RATE" 'BEGIN { printf "%d", b / n / r / 2 + 1 }')
	say "preflight: memory per task ${MEM} MB (final job ${MERGE_MEM} MB); a screening task takes about ${est} s on a core like this one"
	((DRY)) || check_nodes "$MERGE_MEM" "$((CPUS > MERGE_CPUS ? CPUS : MERGE_CPUS))"
	TAG=$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')
	write_env
	write_jobs
	submit "0-$((N - 1))" "0-$((M - 1))"
	;;
esac
