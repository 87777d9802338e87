#!/usr/bin/env bash
# slurm_local.sh — a real, one-node Slurm cluster on localhost, for tests.
#
# Used by `make test-slurm` and tools/bench_slurm.sh so that the Slurm paths (sbatch, job arrays,
# dependencies, scancel, --mem / --cpus-per-task scheduling) run against genuine slurmctld/slurmd
# daemons instead of mocks. Everything the cluster writes (config, state, spool, logs, pid files,
# and munged's socket if this script starts munged) lives in one STATE_DIR.
#
#   tools/slurm_local.sh install            apt-get install slurm-wlm munge (only if missing)
#   tools/slurm_local.sh start  STATE_DIR   write STATE_DIR/slurm.conf, start munged (unless one is
#                                           already serving), slurmctld and slurmd; wait until the
#                                           node is idle
#   tools/slurm_local.sh stop   STATE_DIR   cancel this cluster's jobs, then stop exactly the daemons
#                                           recorded in STATE_DIR's pid files
#   tools/slurm_local.sh status STATE_DIR   sinfo + squeue
#
# Clients find the cluster through SLURM_CONF; this script exports nothing, it prints the hint:
#   export SLURM_CONF=STATE_DIR/slurm.conf
#
# The daemons run as root (SlurmUser=root, SlurmdUser=root), so start/stop re-run themselves under
# sudo when not root. No cgroups (proctrack/linuxproc, task/none): sandboxes often forbid them.
# Written for Debian 12 (slurm-wlm 22.05, munge 0.5.15).
#
# Optional environment: SLURM_LOCAL_CTLD_PORT (default 6817), SLURM_LOCAL_SLURMD_PORT (6818),
# SLURM_LOCAL_START_TIMEOUT (seconds to wait for the node to turn idle, default 60).
set -euo pipefail

prog=$(basename "$0")
CTLD_PORT=${SLURM_LOCAL_CTLD_PORT:-6817}
SLURMD_PORT=${SLURM_LOCAL_SLURMD_PORT:-6818}
START_TIMEOUT=${SLURM_LOCAL_START_TIMEOUT:-60}
SYSTEM_MUNGE_KEY=/etc/munge/munge.key
STOPPED_PIDS=()

die() {
	echo "$prog: $*" >&2
	exit 1
}
say() { echo "$prog: $*"; }

usage() {
	echo "usage:" >&2
	sed -n '/^#   tools\/slurm_local.sh install/,/^#   tools\/slurm_local.sh status/p' "$0" | sed 's/^#//' >&2
	exit 2
}

# Run a command as root: directly when we are root, through sudo otherwise.
as_root() {
	if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -- "$@"; fi
}

# start/stop need root (the daemons run as root); re-exec the whole script under sudo if needed.
need_root() {
	if [ "$(id -u)" -ne 0 ]; then
		command -v sudo >/dev/null || die "'$1' needs root (the Slurm daemons run as root) and sudo is not installed"
		exec sudo -- "$0" "$@"
	fi
}

# STATE_DIR as an absolute path (the config and pid files name absolute paths).
state_dir_arg() {
	[ $# -ge 1 ] && [ -n "$1" ] || usage
	mkdir -p "$1" || die "cannot create STATE_DIR $1"
	(cd "$1" && pwd -P)
}

# Is process $1 alive (not a zombie) and named $2? (Guards against a recycled pid.)
proc_alive() {
	local pid=$1 name=$2 comm
	comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
	[ "$comm" = "$name" ] || return 1
	[ "$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null)" != Z ]
}

# Print the pid in pid file $1 if that process is alive and named $2; fail otherwise.
pid_alive() {
	local pidfile=$1 name=$2 pid
	{ pid=$(tr -dc '0-9' <"$pidfile"); } 2>/dev/null || return 1
	[ -n "$pid" ] && proc_alive "$pid" "$name" || return 1
	echo "$pid"
}

# Wait up to $3 seconds for the pid file $1 to name a live process called $2.
wait_pid_file() {
	local pidfile=$1 name=$2 secs=$3 i
	for ((i = 0; i < secs * 10; i++)); do
		pid_alive "$pidfile" "$name" >/dev/null && return 0
		sleep 0.1
	done
	return 1
}

log_tail() {
	echo "---- last lines of $1 ----" >&2
	tail -n 20 "$1" >&2 2>/dev/null || echo "(no log at $1)" >&2
	echo "----" >&2
}

# ---------------------------------------------------------------------------------------------
cmd_install() {
	if command -v sbatch >/dev/null && command -v slurmctld >/dev/null && command -v slurmd >/dev/null &&
		command -v munged >/dev/null; then
		say "slurm and munge already installed ($(slurmctld -V), $(munged -V 2>&1 | awk '{print $1}'))"
		return 0
	fi
	command -v apt-get >/dev/null || die "install: apt-get not found (this script installs Debian's slurm-wlm and munge)"
	say "installing slurm-wlm and munge with apt-get"
	as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq ||
		die "install: 'apt-get update' failed"
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		slurm-wlm munge >/dev/null || die "install: 'apt-get install slurm-wlm munge' failed"
	say "installed $(slurmctld -V), $(munged -V 2>&1 | awk '{print $1}')"
}

# ---------------------------------------------------------------------------------------------
write_config() {
	local dir=$1 host=$2 cpus=$3 mem=$4 authinfo=$5
	cat >"$dir/slurm.conf" <<EOF
# Written by tools/slurm_local.sh: a one-node test cluster on localhost. Regenerated at every start.
ClusterName=twinrig-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
$authinfo
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2

# Everything on disk stays inside STATE_DIR.
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$dir/plugstack.conf

# Fast turnaround for tests: jobs start within about a second of becoming eligible.
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=1,sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default, a job without --mem is given the whole node's memory and runs alone.
DefMemPerCPU=$((mem / cpus))
MessageTimeout=5
SlurmdTimeout=30
InactiveLimit=0
Waittime=0
KillWait=2
MinJobAge=300
OverTimeLimit=0
# Refuse at submit time what this node can never run (e.g. --cpus-per-task above CPUs) instead of
# leaving it pending forever with Reason=PartitionConfig.
EnforcePartLimits=ALL

NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
	: >"$dir/plugstack.conf" # keep /etc/slurm/plugstack.conf (SPANK plugins) out of the test cluster
}

# A munged that answers on the default socket (system-wide) is reused; otherwise start our own
# in STATE_DIR/munge. Prints the AuthInfo line for slurm.conf.
start_munge() {
	local dir=$1 mdir=$1/munge pid
	if pid=$(pid_alive "$mdir/munged.pid" munged); then
		say "munged already running (pid $pid, socket $mdir/munge.socket.2)" >&2
		echo "AuthInfo=socket=$mdir/munge.socket.2"
		return 0
	fi
	if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
		say "reusing the munged already serving the default socket (it will not be stopped)" >&2
		echo "# AuthInfo: munged on the default socket, not started by slurm_local.sh"
		return 0
	fi
	# munged needs a key; create the system one if missing (owned by munge, mode 0400) ...
	if [ ! -s "$SYSTEM_MUNGE_KEY" ]; then
		say "creating $SYSTEM_MUNGE_KEY" >&2
		mkdir -p "$(dirname "$SYSTEM_MUNGE_KEY")"
		if command -v mungekey >/dev/null; then
			mungekey --create --keyfile="$SYSTEM_MUNGE_KEY" || die "start: 'mungekey --create' failed"
		else
			dd if=/dev/urandom of="$SYSTEM_MUNGE_KEY" bs=1 count=1024 status=none
		fi
		chown munge:munge "$SYSTEM_MUNGE_KEY" 2>/dev/null || true
		chmod 0400 "$SYSTEM_MUNGE_KEY"
	fi
	# ... and run munged as root with a root-owned copy of it (munged running as root refuses a key
	# owned by the munge user), its socket, pid, seed and log all in STATE_DIR/munge.
	rm -rf "$mdir"
	mkdir -p "$mdir"
	chmod 0755 "$mdir"
	install -m 0400 -o root -g root "$SYSTEM_MUNGE_KEY" "$mdir/munge.key"
	munged --socket="$mdir/munge.socket.2" --pid-file="$mdir/munged.pid" \
		--log-file="$mdir/munged.log" --seed-file="$mdir/munged.seed" --key-file="$mdir/munge.key" \
		</dev/null >>"$mdir/munged.out" 2>&1 ||
		{
			log_tail "$mdir/munged.log"
			die "start: munged failed to start; read $mdir/munged.log"
		}
	wait_pid_file "$mdir/munged.pid" munged 10 || {
		log_tail "$mdir/munged.log"
		die "start: munged did not come up; read $mdir/munged.log"
	}
	munge -n -S "$mdir/munge.socket.2" </dev/null | unmunge -S "$mdir/munge.socket.2" >/dev/null ||
		die "start: munged runs but a munge/unmunge round trip on $mdir/munge.socket.2 failed; read $mdir/munged.log"
	echo "AuthInfo=socket=$mdir/munge.socket.2"
}

running_summary() {
	local dir=$1 out="" pid
	for d in slurmctld slurmd; do
		pid=$(pid_alive "$dir/$d.pid" "$d") && out+=" $d=$pid"
	done
	pid=$(pid_alive "$dir/munge/munged.pid" munged) && out+=" munged=$pid"
	echo "${out# }"
}

cmd_start() {
	local dir host cpus memtotal mem authinfo ctld slurmd i state
	dir=$(state_dir_arg "$@")
	for b in slurmctld slurmd munged munge sinfo scontrol; do
		command -v "$b" >/dev/null || die "start: '$b' not found; run '$0 install' first"
	done

	# Idempotent: the daemons started earlier from this STATE_DIR are still up -> nothing to do.
	ctld=$(pid_alive "$dir/slurmctld.pid" slurmctld) || ctld=""
	slurmd=$(pid_alive "$dir/slurmd.pid" slurmd) || slurmd=""
	if [ -n "$ctld" ] && [ -n "$slurmd" ]; then
		say "already running from $dir ($(running_summary "$dir")); nothing to do"
		echo "export SLURM_CONF=$dir/slurm.conf"
		return 0
	fi
	if [ -n "$ctld$slurmd" ]; then
		say "only some daemons from $dir are running ($(running_summary "$dir")); stopping them to restart cleanly"
		cmd_stop "$dir"
	fi

	host=$(hostname -s)
	cpus=$(nproc)
	memtotal=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
	mem=$((memtotal - 1024))
	[ "$mem" -gt 0 ] || die "start: only ${memtotal} MB of memory; need more than 1024 MB"

	mkdir -p "$dir/state" "$dir/spool" "$dir/log"
	authinfo=$(start_munge "$dir")
	write_config "$dir" "$host" "$cpus" "$mem" "$authinfo"

	# -c: clear saved state, so jobs from an earlier run do not linger. Both daemonize.
	slurmctld -c -f "$dir/slurm.conf" >>"$dir/log/slurmctld.out" 2>&1 || {
		log_tail "$dir/log/slurmctld.log"
		die "start: slurmctld failed to start; read $dir/log/slurmctld.log (and $dir/log/slurmctld.out)"
	}
	wait_pid_file "$dir/slurmctld.pid" slurmctld 15 || {
		log_tail "$dir/log/slurmctld.log"
		die "start: slurmctld did not stay up; read $dir/log/slurmctld.log"
	}
	slurmd -f "$dir/slurm.conf" >>"$dir/log/slurmd.out" 2>&1 || {
		log_tail "$dir/log/slurmd.log"
		die "start: slurmd failed to start; read $dir/log/slurmd.log (and $dir/log/slurmd.out)"
	}
	wait_pid_file "$dir/slurmd.pid" slurmd 15 || {
		log_tail "$dir/log/slurmd.log"
		die "start: slurmd did not stay up; read $dir/log/slurmd.log"
	}

	state=""
	for ((i = 0; i < START_TIMEOUT * 2; i++)); do
		state=$(SLURM_CONF=$dir/slurm.conf sinfo -h -n "$host" -o '%t' 2>/dev/null | head -n 1) || state=""
		[ "$state" = idle ] && break
		pid_alive "$dir/slurmctld.pid" slurmctld >/dev/null || {
			log_tail "$dir/log/slurmctld.log"
			die "start: slurmctld exited while waiting for the node; read $dir/log/slurmctld.log"
		}
		pid_alive "$dir/slurmd.pid" slurmd >/dev/null || {
			log_tail "$dir/log/slurmd.log"
			die "start: slurmd exited while waiting for the node; read $dir/log/slurmd.log"
		}
		sleep 0.5
	done
	if [ "$state" != idle ]; then
		SLURM_CONF=$dir/slurm.conf scontrol show node "$host" >&2 || true
		log_tail "$dir/log/slurmd.log"
		die "start: node $host is '${state:-unknown}', not idle, after ${START_TIMEOUT}s; read $dir/log/slurmctld.log and $dir/log/slurmd.log (daemons left running: '$0 stop $dir')"
	fi
	echo "slurm: one node $host, $cpus CPUs, $mem MB, config $dir/slurm.conf"
	echo "export SLURM_CONF=$dir/slurm.conf"
}

# ---------------------------------------------------------------------------------------------
# Send TERM to the daemon in pid file $1 (if alive and named $2), wait up to $3 s, then KILL.
stop_daemon() {
	local pidfile=$1 name=$2 secs=$3 pid i
	if ! pid=$(pid_alive "$pidfile" "$name"); then
		[ -e "$pidfile" ] && say "$name (pid file $pidfile) is not running"
		rm -f "$pidfile"
		return 0
	fi
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < secs * 10; i++)); do
		proc_alive "$pid" "$name" || break
		sleep 0.1
	done
	if proc_alive "$pid" "$name"; then
		say "$name (pid $pid) ignored SIGTERM for ${secs}s; sending SIGKILL"
		kill -KILL "$pid" 2>/dev/null || true
		for ((i = 0; i < 50; i++)); do
			proc_alive "$pid" "$name" || break
			sleep 0.1
		done
	fi
	say "stopped $name (pid $pid)"
	STOPPED_PIDS+=("$pid")
	rm -f "$pidfile"
}

cmd_stop() {
	local dir i jobs
	dir=$(state_dir_arg "$@")
	# Cancel the jobs of this cluster first (through its own slurmctld), so no slurmstepd or job
	# script outlives slurmd.
	if pid_alive "$dir/slurmctld.pid" slurmctld >/dev/null && [ -e "$dir/slurm.conf" ]; then
		export SLURM_CONF=$dir/slurm.conf
		jobs=$(squeue -h -t PENDING,RUNNING,SUSPENDED -o %i 2>/dev/null) || jobs=""
		if [ -n "$jobs" ]; then
			say "cancelling the jobs still queued or running: ${jobs//$'\n'/ }"
			# shellcheck disable=SC2086 # one job id (or array expression) per word
			scancel $jobs 2>/dev/null || true
		fi
		# Wait (bounded) until no job is running or completing, so slurmd can reap every slurmstepd.
		for ((i = 0; i < 40; i++)); do
			[ -z "$(squeue -h -t RUNNING,SUSPENDED,COMPLETING -o %i 2>/dev/null)" ] && break
			sleep 0.5
		done
		[ "$i" -lt 40 ] || say "warning: jobs still running or completing after 20 s; read $dir/log/slurmd.log"
		unset SLURM_CONF
	fi
	stop_daemon "$dir/slurmd.pid" slurmd 20
	stop_daemon "$dir/slurmctld.pid" slurmctld 20
	# Only a munged this script started has its pid file here; a reused system munged does not.
	stop_daemon "$dir/munge/munged.pid" munged 10
	# The daemons' parent is init; give it a moment to reap the zombies, so that `pgrep` right
	# after stop no longer lists them (some sandboxes' init reaps only every few seconds).
	for ((i = 0; i < 50; i++)); do
		local left=0 pid
		for pid in "${STOPPED_PIDS[@]}"; do [ -d "/proc/$pid" ] && left=1; done
		[ "$left" -eq 0 ] && break
		sleep 0.1
	done
	say "cluster in $dir stopped"
}

# ---------------------------------------------------------------------------------------------
cmd_status() {
	local dir
	dir=$(state_dir_arg "$@")
	[ -e "$dir/slurm.conf" ] || die "status: no $dir/slurm.conf; run '$0 start $dir' first"
	say "daemons: $(running_summary "$dir" | sed 's/^$/none running/')"
	export SLURM_CONF=$dir/slurm.conf
	sinfo || die "status: sinfo failed; read $dir/log/slurmctld.log"
	squeue || die "status: squeue failed; read $dir/log/slurmctld.log"
}

# ---------------------------------------------------------------------------------------------
[ $# -ge 1 ] || usage
sub=$1
shift
case "$sub" in
install) cmd_install ;;
start)
	need_root start "$@"
	cmd_start "$@"
	;;
stop)
	need_root stop "$@"
	cmd_stop "$@"
	;;
status) cmd_status "$@" ;;
-h | --help | help) usage ;;
*)
	echo "$prog: unknown subcommand '$sub'" >&2
	usage
	;;
esac
