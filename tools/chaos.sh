#!/usr/bin/env bash
# Chaos figures for issue 13 ("never lose a session"): what survives a SIGKILL at random moments,
# a full disk, hostile clients, and how long each refusal of a bad start takes.
#
#   tools/chaos.sh [KILLS]      (default 6 kills; about 3 minutes on 2 cores)
#
# Everything runs on loopback and in a scratch folder under target/ (removed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
KILLS=${1:-6}
TARGET=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet --bin rig
RIG="$TARGET/release/rig"
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/twinrig-chaos.XXXXXX")
MNT=""
cleanup() {
	if [ -n "$MNT" ]; then umount "$MNT" 2>/dev/null || true; fi
	jobs -p | xargs -r kill 2>/dev/null || true
	rm -rf "$SCRATCH"
}
trap cleanup EXIT
now() { date +%s.%N; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", (b - a) * 1000 }'; }
rss_kb() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(d$1)"; }

# The embedded simulated rig, unshrunk (the tests shrink it; these figures should not).
CFG="$SCRATCH/sim.toml"
cp rig_configs/sim.toml "$CFG"
FR=$(awk -F= '/^frame_rate_hz/ { sub(/#.*/, "", $2); gsub(/ /, "", $2); print $2; exit }' "$CFG")
FLUSH=$(awk -F= '/^flush_interval_s/ { sub(/#.*/, "", $2); gsub(/ /, "", $2); print $2; exit }' "$CFG")

echo "== 1. SIGKILL at random moments: rig run in real time (${FR} Hz, flush every ${FLUSH} s)"
printf "%-6s %-9s %-14s %-14s %-12s %s\n" kill "after_s" "flushed_before" "frames_in_file" "lost_frames" "opens"
worst=0
for i in $(seq 1 "$KILLS"); do
	out="$SCRATCH/kill$i.h5"
	log="$SCRATCH/kill$i.log"
	RUST_LOG=debug "$RIG" run --config "$CFG" --out "$out" --no-twin --control 127.0.0.1:0 >/dev/null 2>"$log" &
	pid=$!
	# Wait until it records, then kill somewhere in the next 2-8 s.
	for _ in $(seq 1 200); do grep -q "rig run: recording" "$log" && break; sleep 0.05; done
	t0=$(now)
	sleep "$(awk -v r="$RANDOM" 'BEGIN { printf "%.2f", 2 + 6 * r / 32768 }')"
	kill -9 "$pid"
	wait "$pid" 2>/dev/null || true
	t1=$(now)
	flushed=$(grep -o 'frames=[0-9]*' "$log" | tail -1 | cut -d= -f2)
	if j=$("$RIG" inspect "$out" --json 2>/dev/null); then
		n=$(echo "$j" | json '["n_frames"]')
		opens=yes
	else
		n=0
		opens=NO
	fi
	# Frames the microscope had made when the kill came, less what the file holds.
	made=$(awk -v a="$t0" -v b="$t1" -v fr="$FR" 'BEGIN { printf "%.0f", (b - a) * fr }')
	lost=$((made > n ? made - n : 0))
	worst=$((lost > worst ? lost : worst))
	printf "%-6s %-9s %-14s %-14s %-12s %s\n" "$i" "$(ms "$t0" "$t1")ms" "${flushed:-0}" "$n" "~$lost" "$opens"
done
echo "worst loss ~$worst frames; one flush interval is $(awk -v f="$FLUSH" -v fr="$FR" 'BEGIN { print f * fr }') frames (plus the frames still in the 32-slot recorder ring)"

echo
echo "== 2. disk full: rig run onto a 3 MB tmpfs"
MNT="$SCRATCH/small"
mkdir -p "$MNT"
if mount -t tmpfs -o size=3m tmpfs "$MNT" 2>/dev/null; then
	t0=$(now)
	if "$RIG" run --config "$CFG" --minutes 5 --speed max --no-twin --control 127.0.0.1:0 \
		--out "$MNT/full.h5" >/dev/null 2>"$SCRATCH/full.log"; then
		echo "  UNEXPECTED: the run succeeded"
	fi
	t1=$(now)
	echo "  stopped after $(ms "$t0" "$t1") ms with: $(grep '^rig: error' "$SCRATCH/full.log")"
	echo "  error lines: $(grep -c '^rig: error' "$SCRATCH/full.log")"
	if j=$("$RIG" inspect "$MNT/full.h5" --json 2>&1); then
		echo "  the file opens: $(echo "$j" | json '["n_frames"]') frames, complete=$(echo "$j" | json '["complete"]')"
	else
		echo "  the file does NOT open: $j"
	fi
	umount "$MNT"
	MNT=""
else
	echo "  skipped: this machine does not let us mount a tmpfs (needs root)"
fi

echo
echo "== 3. hostile clients against a running rig run"
log="$SCRATCH/hostile.log"
"$RIG" run --config "$CFG" --out "$SCRATCH/hostile.h5" --no-twin --control 127.0.0.1:0 --speed 1 \
	--minutes 1 --json >"$SCRATCH/hostile.json" 2>"$log" &
pid=$!
for _ in $(seq 1 200); do grep -q "rig run: recording" "$log" && break; sleep 0.05; done
addr=$(grep -o 'control on [^)]*' "$log" | head -1 | cut -d' ' -f3)
sleep 1
before=$(rss_kb "$pid")
python3 - "$addr" <<'EOF'
import socket, sys, time
host, port = sys.argv[1].rsplit(":", 1)
def conn():
    s = socket.create_connection((host, int(port)), timeout=10)
    return s
# 200 MB without a newline.
s = conn()
chunk = b"x" * (1 << 20)
sent = 0
try:
    for _ in range(200):
        s.sendall(chunk)
        sent += len(chunk)
except OSError as e:
    pass
try:
    reply = s.recv(200)
except OSError:
    reply = b""
print(f"  200 MB line: {sent >> 20} MB accepted before the endpoint answered {reply[:80]!r}")
s.close()
# Invalid UTF-8.
s = conn()
s.sendall(b"\xff\xfe{\"cmd\":\"status\"}\n")
print(f"  invalid UTF-8 line: {s.recv(200)[:120]!r}")
s.close()
# A good client after all that.
s = conn()
s.sendall(b'{"cmd":"status"}\n')
r = s.recv(4096)
print(f"  a good client afterwards: {'ok' if b'frames_in' in r or b'ok' in r else r[:80]!r}")
# Idle connections that never send.
idle = [conn() for _ in range(20)]
time.sleep(1)
for c in idle:
    c.close()
EOF
after=$(rss_kb "$pid")
echo "  daemon RSS: ${before} kB before, ${after} kB after"
"$RIG" status --addr "$addr" --stop >/dev/null || true
wait "$pid" || true
echo "  frames: in $(json '["frames_in"]' <"$SCRATCH/hostile.json"), recorded $(json '["frames_recorded"]' <"$SCRATCH/hostile.json"), lost $(json '["frames_lost"]' <"$SCRATCH/hostile.json")"

echo
echo "== 4. refusals: how long a bad start takes, and that it leaves nothing"
"$RIG" simulate --config "$CFG" --minutes 0.05 --out "$SCRATCH/existing.h5" >/dev/null
refuse() {
	local what=$1
	shift
	local before after t0 t1 msg
	before=$(ls -A "$SCRATCH" | wc -l)
	t0=$(now)
	if msg=$("$@" 2>&1 >/dev/null); then msg="UNEXPECTED: it ran"; fi
	t1=$(now)
	after=$(ls -A "$SCRATCH" | wc -l)
	printf "  %-28s %6s ms  new files: %d  %s\n" "$what" "$(ms "$t0" "$t1")" $((after - before)) \
		"$(echo "$msg" | grep '^rig: error' | cut -c1-110)"
}
refuse "existing --out" "$RIG" run --config "$CFG" --out "$SCRATCH/existing.h5" --minutes 0.01 --no-twin --control 127.0.0.1:0
# A live file: a second run while the first records.
"$RIG" run --config "$CFG" --out "$SCRATCH/live.h5" --no-twin --control 127.0.0.1:0 --minutes 0.5 2>"$SCRATCH/live.log" >/dev/null &
live=$!
for _ in $(seq 1 200); do grep -q "rig run: recording" "$SCRATCH/live.log" && break; sleep 0.05; done
refuse "second run on a live file" "$RIG" run --config "$CFG" --out "$SCRATCH/live.h5" --overwrite --minutes 0.01 --no-twin --control 127.0.0.1:0
liveaddr=$(grep -o 'control on [^)]*' "$SCRATCH/live.log" | head -1 | cut -d' ' -f3)
refuse "busy control port" "$RIG" run --config "$CFG" --out "$SCRATCH/busy.h5" --minutes 0.01 --no-twin --control "$liveaddr"
"$RIG" status --addr "$liveaddr" --stop >/dev/null || true
wait "$live" || true
echo "  the live file afterwards: complete=$("$RIG" inspect "$SCRATCH/live.h5" --json | json '["complete"]')"
# As on a 2 GB acquisition box (limits.max_memory_gb); unset, the cap is the memory available now.
for big in "width = 4096|height = 4096" "planes = 64|width = 1024|height = 1024" "clips = 10000|max_memory_gb = 2" "clip_seconds = 600|max_memory_gb = 2"; do
	c="$SCRATCH/big.toml"
	python3 - "$CFG" "$c" "$big" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
for kv in sys.argv[3].split("|"):
    k, v = [x.strip() for x in kv.split("=")]
    text, n = re.subn(rf"(?m)^{k}\s*=.*$", f"{k} = {v}", text, count=1)
    if n == 0:
        section = "[limits]" if k.startswith("max_") else "[imaging]"
        text = text.replace(section, f"{section}\n{k} = {v}", 1)
open(sys.argv[2], "w").write(text)
EOF
	refuse "config: ${big//|/ }" "$RIG" run --config "$c" --out "$SCRATCH/big.h5" --minutes 0.01 --no-twin --control 127.0.0.1:0
	rm -f "$c"
done
