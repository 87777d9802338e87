#!/usr/bin/env bash
# Presenter timing benchmark: `rig present --measure` (a drifting grating, flip interval mean and
# SD, missed refresh periods) at 1280x720 / 60 Hz under Xvfb, for each renderer (`gl`: OpenGL on
# Mesa's llvmpipe; `cpu`: softbuffer), idle and with the closed loop running beside it: `rig run`
# on the simulated rig at real time with the reference twin stepped on every frame and its
# presenter (spawned, headless) running the trials, competing for the same cores. The baseline is
# the idle run of the same renderer in the same invocation. One JSON line per run.
# Xvfb has no vsync, so flips are paced by the presenter's deadline timer in both renderers.
# Usage: [RENDERERS="gl cpu"] tools/bench_present.sh [seconds]   (default 30)
set -euo pipefail
cd "$(dirname "$0")/.."
RIG=${RIG:-target/release/rig}
seconds=${1:-30}
work=$(mktemp -d)
xvfb=""
loop=""
cleanup() {
  [ -n "$loop" ] && kill "$loop" 2>/dev/null && wait "$loop" 2>/dev/null
  [ -n "$xvfb" ] && kill "$xvfb" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
command -v Xvfb >/dev/null || { echo "bench_present: Xvfb is needed (make deps installs it)" >&2; exit 1; }
# -displayfd: Xvfb picks a free display and says which once it accepts connections.
Xvfb -displayfd 3 -screen 0 1280x720x24 -nolisten tcp 3>"$work/display" 2>/dev/null &
xvfb=$!
for _ in $(seq 100); do [ -s "$work/display" ] && break; sleep 0.1; done
[ -s "$work/display" ] || { echo "bench_present: Xvfb did not start" >&2; exit 1; }
DISPLAY=":$(head -n1 "$work/display")"
export DISPLAY
sed -e 's/^width_px = 1920/width_px = 1280/' -e 's/^height_px = 1080/height_px = 720/' \
    rig_configs/sim.toml > "$work/present.toml"
sed -e 's/^presenter = "none" .*/presenter = "spawn-headless"/' \
    -e "s#^out_dir = \"sessions\"#out_dir = \"$work/sessions\"#" \
    rig_configs/sim.toml > "$work/loop.toml"
minutes=$(python3 -c "print(($seconds + 20) / 60)")
for renderer in ${RENDERERS:-gl cpu}; do
  for beside in idle closed-loop; do
    if [ "$beside" = closed-loop ]; then
      "$RIG" run --config "$work/loop.toml" --minutes "$minutes" --speed 1 --out "$work/run.h5" \
        --overwrite --no-dashboard --control 127.0.0.1:0 >/dev/null 2>"$work/run.err" &
      loop=$!
      until grep -q recording "$work/run.err" 2>/dev/null; do
        kill -0 "$loop" 2>/dev/null || { cat "$work/run.err" >&2; exit 1; }
        sleep 0.2
      done
    fi
    "$RIG" present --config "$work/present.toml" --renderer "$renderer" \
      --measure "$seconds" --json > "$work/m.json"
    python3 - "$work/m.json" "$renderer" "$beside" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
print(json.dumps({
    "renderer": sys.argv[2], "beside": sys.argv[3], "renderer_name": m["renderer"],
    "size": f'{m["width_px"]}x{m["height_px"]}', "refresh_hz": m["refresh_hz"],
    "seconds": m["seconds"], "pacing": m["pacing"], "priority": m["priority"],
    "flips": m["flips"], "interval_mean_ms": round(m["interval_mean_ms"], 3),
    "interval_sd_ms": round(m["interval_sd_ms"], 3),
    "interval_p99_ms": round(m["interval_p99_ms"], 3),
    "missed_frames": m["missed_frames"], "missed_events": m["missed_events"],
    "present_mean_ms": round(m["present_mean_ms"], 3),
}))
EOF
    if [ -n "$loop" ]; then
      kill "$loop" 2>/dev/null || true
      wait "$loop" 2>/dev/null || true
      loop=""
    fi
  done
done
