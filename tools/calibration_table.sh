#!/usr/bin/env bash
# Minutes of calibration against twin accuracy, on the simulated mouse (ground truth): for each
# calibration length, simulate that many minutes of a calibration protocol, adapt the reference
# core to it (`rig twin adapt`, default GLM readout), and score the twin with `rig twin evaluate`
# on three held-out test sessions of the same mouse (clip libraries no calibration block showed):
# natural clips, drifting gratings and sparse noise, each with repeats for the noise ceiling.
# Prints a markdown table and writes OUT/table_PROTOCOL.json.
#
#   tools/calibration_table.sh [RIG] [OUT] [PROTOCOL] [MINUTES...]
#
# PROTOCOL is a `sim.stimulus_set`: calibration (natural clips + gratings + sparse noise,
# docs/calibration.md) or natural (the families not in the fit are then out of family).
# Takes about 9 s of adaptation per calibration minute on 2 cores, plus the simulations.
set -euo pipefail
RIG=$(realpath "${1:-target/release/rig}")
OUT=${2:-target/calibration-table}
PROTOCOL=${3:-calibration}
shift $(($# < 3 ? $# : 3))
MINUTES=("$@")
[ ${#MINUTES[@]} -gt 0 ] || MINUTES=(2 5 10 20)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SEED=1
mkdir -p "$OUT"
cd "$OUT"
config() { # stimulus_set clips [clip_seed] -> file
  local f="$1-$2${3:+-clips$3}.toml"
  sed -e "s/^stimulus_set = \"mixed\"/stimulus_set = \"$1\"/" -e "s/^clips = 24 /clips = $2 /" \
    -e "s/^# clip_seed = 7 .*/${3:+clip_seed = $3}/" "$ROOT/rig_configs/sim.toml" >"$f"
  grep -q "^stimulus_set = \"$1\"" "$f" || { echo "could not set stimulus_set in $f" >&2; exit 1; }
  echo "$f"
}
sim() { # config minutes out
  [ -f "$3" ] || "$RIG" simulate --config "$1" --minutes "$2" --seed "$SEED" --out "$3" >/dev/null
}
# Test sessions of the same mouse, each from a clip library of its own (sim.clip_seed): no test
# clip was in any calibration block. Natural clips, gratings, sparse noise.
sim "$(config natural 24 1001)" 6 test_natural.h5
sim "$(config gratings 24 1002)" 5 test_gratings.h5
sim "$(config sparse_noise 24 1003)" 5 test_noise.h5
"$RIG" twin build-core --out core.onnx --overwrite >/dev/null
CAL=$(config "$PROTOCOL" 24)
TABLE="table_$PROTOCOL.json"
echo "[]" >"$TABLE"
for m in "${MINUTES[@]}"; do
  K="${PROTOCOL}_$m"
  sim "$CAL" "$m" "cal_$K.h5"
  "$RIG" twin adapt --core core.onnx --session "cal_$K.h5" --out "twin_$K.onnx" --overwrite \
    --json >"adapt_$K.json"
  for t in natural gratings noise; do
    "$RIG" twin evaluate "twin_$K.onnx" --session "test_$t.h5" --json >"eval_${K}_$t.json"
  done
  python3 - "$m" "$K" "$TABLE" <<'PY'
import json, sys
m, k, table = sys.argv[1:4]
a = json.load(open(f"adapt_{k}.json"))
row = {"minutes": float(m), "adapt_s": a["seconds_total"],
       "heldout_r": a["median_heldout_corr"], "linear_heldout_r": a["median_linear_heldout_corr"]}
for t in ("natural", "gratings", "noise"):
    e = json.load(open(f"eval_{k}_{t}.json"))
    fam = [f for f in e["families"] if f["family"] != "all"][0]
    row[t] = {k: fam[k] for k in ("family", "in_fit", "median_r", "median_ceiling",
                                  "median_cc_norm", "cc_norm_neurons", "shuffled_median_r")}
t = json.load(open(table))
t.append(row)
json.dump(t, open(table, "w"), indent=1)
PY
done
python3 - "$PROTOCOL" "$TABLE" <<'PY'
import json, sys
t = json.load(open(sys.argv[2]))
print(f"calibration protocol `{sys.argv[1]}`, simulated mouse seed 1, CC_norm (median over neurons with a noise ceiling > 0.05) on held-out sessions")
print("| calibration minutes | adapt s | held-out r (GLM / linear) | natural | gratings | sparse noise |")
print("|---|---|---|---|---|---|")
f = lambda d: f"{d['median_cc_norm']:.3f}" + ("" if d["in_fit"] else " (out of family)")
for r in t:
    print(f"| {r['minutes']:g} | {r['adapt_s']:.0f} | {r['heldout_r']:.3f} / {r['linear_heldout_r']:.3f} | "
          f"{f(r['natural'])} | {f(r['gratings'])} | {f(r['noise'])} |")
PY
