#!/usr/bin/env bash
# Bring up a single-host Slurm 22.05 (Debian packages, no systemd) for the tests; idempotent.
#
#   .ci/slurm_up.sh [BASE]      # as root; BASE = state folder, default /tmp/asyncflow-slurm
#   source BASE/env.sh          # sets SLURM_CONF (the same line is the last line printed)
#
# Installs slurmctld slurmd slurm-client munge when missing, creates a munge key, starts munged as
# the munge user, writes BASE/slurm.conf (../shared/slurm.conf.example with this machine's host
# name, CPUs (at least 4, see write_conf) and memory), wipes BASE/state, starts slurmctld and
# slurmd as root and waits until the node is idle. Run again while they are up, it only checks them and prints the export line.
# A fresh state would restart job ids at 1: each fresh start begins at a random FirstJobId instead
# (see write_conf), and the submitit launcher keys its folders on the controller's boot time too.
# tests/slurm/conftest.py reads BASE/env.sh. Stop with .ci/slurm_down.sh [BASE].
set -euo pipefail

BASE="${1:-${ASYNCFLOW_SLURM_BASE:-/tmp/asyncflow-slurm}}"
mkdir -p "$BASE" && BASE="$(cd "$BASE" && pwd)"  # absolute: it is written into slurm.conf
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CONF="$BASE/slurm.conf"
# shellcheck source=slurm_lib.sh
. "$HERE/slurm_lib.sh"
TIMEOUT_S="${ASYNCFLOW_SLURM_UP_TIMEOUT:-60}"
T0=$(date +%s.%N)

say() { echo "[slurm_up] $*" >&2; }
die() { say "ERROR: $*"; exit 1; }
secs() { awk -v t0="$T0" -v t1="$(date +%s.%N)" 'BEGIN{printf "%.1f", t1-t0}'; }

dump_logs() {
    local f
    for f in "$BASE/log/slurmctld.log" "$BASE/log/slurmd.log" "$BASE/log/munged.log"; do
        if [ -f "$f" ]; then say "--- last lines of $f"; tail -n 25 "$f" >&2; fi
    done
    return 0
}

pid_alive() {  # pid_alive PIDFILE NAME: the pid in PIDFILE is a running process called NAME
    local pid
    [ -s "$1" ] || return 1
    pid="$(cat "$1")"
    [ -n "$pid" ] && [ -d "/proc/$pid" ] && grep -q "$2" "/proc/$pid/comm" 2>/dev/null
}

[ "$(id -u)" = 0 ] || die "must run as root (the package install and slurmd need it); run: sudo $0 $*"

install_packages() {
    local b missing=()
    for b in slurmctld slurmd sbatch munged; do command -v "$b" >/dev/null || missing+=("$b"); done
    [ ${#missing[@]} = 0 ] && return 0
    command -v apt-get >/dev/null || die "no apt-get: install slurmctld slurmd slurm-client munge by hand"
    say "installing slurmctld slurmd slurm-client munge (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || die "apt-get update failed (no network to the Debian archive?)"
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null \
        || die "apt-get install slurmctld slurmd slurm-client munge failed"
    say "packages installed after $(secs) s"
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
    if [ ! -s /etc/munge/munge.key ]; then
        say "creating /etc/munge/munge.key"
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
    chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
    chmod 0700 /etc/munge /var/lib/munge /var/log/munge
    chmod 0755 /run/munge
    chmod 0400 /etc/munge/munge.key
    munge_ok && return 0
    say "starting munged"
    runuser -u munge -- munged --force || die "munged did not start (see /var/log/munge/munged.log)"
    local _
    for _ in $(seq 50); do munge_ok && return 0; sleep 0.1; done
    tail -n 20 /var/log/munge/munged.log >&2 || true
    die "munged is not answering on /run/munge/munge.socket.2"
}

write_conf() {
    local host cpus mem nproc_ first_job_id overrides=""
    host="$(hostname -s)"
    nproc_="$(nproc --all)"
    # The tests run 4 ranks (--ntasks-per-node=4, as submitit asks) on 2-core machines, and Slurm
    # refuses more tasks per node than CPUs even with --overcommit: declare at least 4 CPUs and let
    # the configured value win over the detected one (config_overrides). mpiexec oversubscribes alike.
    cpus="${ASYNCFLOW_SLURM_CPUS:-$(( nproc_ > 4 ? nproc_ : 4 ))}"
    [ "$cpus" -gt "$nproc_" ] && overrides="SlurmdParameters=config_overrides"
    first_job_id="$(random_first_job_id)"  # see .ci/slurm_lib.sh: stale MPICH shm names
    # RealMemory above what slurmd measures drains the node: keep a 10% margin.
    mem="$(free -m | awk '/^Mem:/ {printf "%d", $2 * 0.9}')"
    cat >"$CONF.new" <<CONF
# Written by .ci/slurm_up.sh (single-host test Slurm); rewritten on every fresh start.
ClusterName=asyncflow
SlurmctldHost=$host(127.0.0.1)
$(slurm_conf_common "$BASE" "" "$first_job_id" "$overrides")
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
    mv "$CONF.new" "$CONF"
}

node_state() { sinfo -h -N -o '%T' 2>/dev/null | head -n1; }

wait_idle() {
    local deadline=$(( $(date +%s) + TIMEOUT_S )) state=""
    while [ "$(date +%s)" -lt "$deadline" ]; do
        state="$(node_state || true)"
        case "$state" in
            idle|mixed|allocated|completing) return 0 ;;
            drain*|down*|fail*)
                scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true ;;
        esac
        sleep 0.3
    done
    dump_logs
    die "node not idle after ${TIMEOUT_S}s (sinfo says '${state:-nothing}'); logs above, conf $CONF"
}

fresh_start() {
    # A half-started instance is stopped first; the state is wiped so no stale job survives.
    "$HERE/slurm_down.sh" "$BASE" >/dev/null 2>&1 || true
    rm -rf "$BASE/state" "$BASE/spool"
    mkdir -p "$BASE/state" "$BASE/spool" "$BASE/log"
    : >"$BASE/log/slurmctld.log"; : >"$BASE/log/slurmd.log"
    : >"$BASE/log/jobcomp.txt"  # job ids restart at 1: old records would shadow the new jobs
    write_conf
    say "starting slurmctld and slurmd with $CONF"
    slurmctld -i -f "$CONF" || { dump_logs; die "slurmctld failed to start"; }
    slurmd -f "$CONF" || { dump_logs; die "slurmd failed to start"; }
}

mkdir -p "$BASE/log"
export SLURM_CONF="$CONF"
install_packages
start_munge
if [ -f "$CONF" ] && pid_alive "$BASE/slurmctld.pid" slurmctld && pid_alive "$BASE/slurmd.pid" slurmd \
    && scontrol ping >/dev/null 2>&1; then
    say "slurmctld and slurmd already running with $CONF"
else
    fresh_start
fi
wait_idle

printf 'export SLURM_CONF=%s\n' "$CONF" >"$BASE/env.sh"
say "Slurm up after $(secs) s: $(sinfo -h -N -o 'node %N %T cpus=%c mem=%mMB')"
echo "export SLURM_CONF=$CONF"
