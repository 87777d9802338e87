#!/usr/bin/env bash
# End-to-end replay benchmark at 512x512 (HDF5 read -> ring -> extraction -> traces written), for
# two session lengths, to show throughput against real time and that peak memory does not grow
# with session length. Prints one JSON line per length. Usage: tools/bench_replay.sh [minutes...]
set -euo pipefail
cd "$(dirname "$0")/.."
RIG=${RIG:-target/release/rig}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sed -e 's/^width = 256 .*/width = 512/' -e 's/^height = 256 .*/height = 512/' \
    -e 's/^neurons = 200 .*/neurons = 500/' -e 's/^um_per_px = 2.0 .*/um_per_px = 1.0/' \
    rig_configs/sim.toml > "$work/sim512.toml"
for m in "${@:-1 3}"; do
  for mm in $m; do
    "$RIG" simulate --config "$work/sim512.toml" --minutes "$mm" --seed 7 --out "$work/s.h5" --json > "$work/sim.json"
    "$RIG" replay "$work/s.h5" --out "$work/r.h5" --json > "$work/replay.json"
    python3 - "$mm" "$work/replay.json" <<'PY' 2>/dev/null || cat "$work/replay.json"
import json, sys
r = json.load(open(sys.argv[2]))
lat = {s["stage"]: s for s in r["latency"]}
print(json.dumps({
    "minutes": float(sys.argv[1]), "frames": r["frames_in"], "lost": r["frames_lost"],
    "skipped": r["frames_skipped"], "frames_per_s": round(r["frames_per_s"], 1),
    "realtime_factor_at_30hz": round(r["realtime_factor"], 2), "peak_rss_mb": round(r["peak_rss_mb"], 1),
    "extract_p50_us": lat["extract"]["p50_us"], "extract_p99_us": lat["extract"]["p99_us"],
    "median_dff_corr": r["accuracy"]["median_dff_calcium_corr"] if r.get("accuracy") else None,
}))
PY
    rm -f "$work/s.h5" "$work/r.h5"
  done
done
