#!/usr/bin/env bash
# `rig export nwb` throughput and memory at 512x512: simulates a session of each length (movie,
# ROIs, behaviour, trials), exports it uncompressed and with gzip 1 (frames decoded and written
# 64 at a time), then simulates it again recorded with deflate level 3 (a real rig's
# storage.compression) and exports that (its compressed chunks copied as stored). Prints one JSON
# line per export with the movie's MB/s (uncompressed MB per second of copying) and the
# exporter's peak RSS (VmHWM), which must not grow with the session's length.
# Usage: tools/bench_export.sh [minutes...]   (default: 1 3; a 30-minute session needs ~29 GB)
set -euo pipefail
cd "$(dirname "$0")/.."
RIG=${RIG:-target/release/rig}
mkdir -p target
work=$(mktemp -d -p target bench_export.XXXXXX)
trap 'rm -rf "$work"' EXIT
sed -e 's/^width = 256 .*/width = 512/' -e 's/^height = 256 .*/height = 512/' \
    -e 's/^neurons = 200 .*/neurons = 500/' -e 's/^um_per_px = 2.0 .*/um_per_px = 1.0/' \
    rig_configs/sim.toml > "$work/sim512.toml"
sed -e 's/^compression = "none" .*/compression = "deflate"/' -e 's/^deflate_level = 4 .*/deflate_level = 3/' \
    "$work/sim512.toml" > "$work/sim512-deflate.toml"
report() {
  python3 - "$1" "$2" <<'PY'
import json, sys
e = json.load(open(sys.argv[2]))
print(json.dumps({
    "minutes": float(sys.argv[1]), "frames": e["frames"], "size": f'{e["frame_height"]}x{e["frame_width"]}',
    "rois": e["rois"], "movie_copy": e["movie_copy"], "gzip": e["gzip"], "movie_mb": round(e["movie_mb"], 1),
    "movie_mb_per_s": round(e["movie_mb_per_s"], 1), "file_mb": round(e["file_mb"], 1),
    "wall_s": round(e["wall_s"], 1), "peak_rss_mb": round(e["peak_rss_mb"], 1),
}))
PY
}
for mm in ${@:-1 3}; do
  "$RIG" simulate --config "$work/sim512.toml" --minutes "$mm" --seed 7 --out "$work/s.h5" --json > /dev/null
  for gz in 0 1; do
    "$RIG" export nwb "$work/s.h5" --out "$work/s.nwb" --gzip "$gz" --overwrite --json > "$work/e.json"
    report "$mm" "$work/e.json"
  done
  rm -f "$work/s.h5" "$work/s.nwb"
  "$RIG" simulate --config "$work/sim512-deflate.toml" --minutes "$mm" --seed 7 --out "$work/s.h5" --json > /dev/null
  "$RIG" export nwb "$work/s.h5" --out "$work/s.nwb" --overwrite --json > "$work/e.json"
  report "$mm" "$work/e.json"
  rm -f "$work/s.h5" "$work/s.nwb"
done
