#!/usr/bin/env bash
# A big in-silico search as a Slurm job array: N shards screen in parallel, then one job merges
# them and runs the optimiser stage (docs/insilico.md, "Scale-out").
#
#   tools/insilico_sbatch.sh TWIN.onnx OUT_DIR [N_SHARDS] [-- extra rig insilico options]
#
# e.g.  tools/insilico_sbatch.sh onnx/reference_twin.onnx runs/mei 16 -- \
#           --objective neuron --targets 133,65,74,22,177 --budget 200000 --seed 3
#
# Submits an array of N screening tasks (0-based: --shard ${SLURM_ARRAY_TASK_ID}/N) and a merge
# job that starts when all of them succeeded. Every task must see the same rig options; the merge
# refuses shards from different searches and names missing ones. The merged plan equals what one
# unsharded `rig insilico` with the same options and seed would write.
set -euo pipefail
TWIN=${1:?twin .onnx}
OUT=${2:?output folder}
N=${3:-8}
shift $(( $# >= 3 ? 3 : $# ))
[[ ${1:-} == "--" ]] && shift
RIG=${RIG:-rig}
CPUS=${CPUS:-8}
mkdir -p "$OUT/logs"
OPTS=$(printf ' %q' "$@")

screen=$(sbatch --parsable \
  --job-name=insilico-screen --array=0-$((N - 1)) \
  --cpus-per-task="$CPUS" --time=02:00:00 --mem=8G \
  --output="$OUT/logs/screen_%a.out" \
  --wrap="$RIG insilico --twin $(printf %q "$TWIN") $OPTS --threads $CPUS \
          --shard \${SLURM_ARRAY_TASK_ID}/$N --out $(printf %q "$OUT")/shard_\${SLURM_ARRAY_TASK_ID}.h5 --json")

sbatch --parsable \
  --job-name=insilico-merge --dependency=afterok:"$screen" \
  --cpus-per-task="$CPUS" --time=02:00:00 --mem=8G \
  --output="$OUT/logs/merge.out" \
  --wrap="$RIG insilico merge $(printf %q "$OUT")/shard_*.h5 --twin $(printf %q "$TWIN") \
          --out $(printf %q "$OUT")/plan.h5 --json"
echo "submitted screening array $screen ($N shards) and its merge; plan: $OUT/plan.h5"
