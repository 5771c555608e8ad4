#!/usr/bin/env bash
# A two-node Slurm 22.05 on this machine: one slurmd per network-namespace host, one slurmctld (on host 0).
#
#   .ci/slurm_netns.sh up [--name P] [--base BASE]     # as root; makes hosts P (scripts/netns_hosts.sh) if absent
#   .ci/slurm_netns.sh run [--name P] [--base BASE] CMD [ARGS...]   # a client command on host 0, e.g.
#       .ci/slurm_netns.sh run sbatch -N 2 slurm/cpu.sbatch configs/smoke.yaml
#       .ci/slurm_netns.sh run srun -N 2 -n 4 hostname
#   .ci/slurm_netns.sh down [--name P] [--base BASE]   # stops the daemons; removes the hosts if up made them
#
# Defaults: P=$ASYNCFLOW_NETNS or afhs, BASE=/tmp/asyncflow-slurm-<P>. Node i is NodeName=P-h<i> with
# NodeAddr = the host's address; each slurmd runs inside its host (network + UTS namespace, so its
# host name is its node name) with its own spool (BASE/spool/P-h<i>), pid file and log. slurmctld
# listens on host 0's address; the hosts have no route elsewhere, so client commands run on a host
# (`run`). munged is shared (its socket is a path, reachable from every network namespace).
# Jobs get MPIR_CVAR_CH4_NETMOD=ofi FI_PROVIDER=tcp (set them before `run` to change): see docs/multihost.md.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
HOSTS_SH="$ROOT/scripts/netns_hosts.sh"
NAME="${ASYNCFLOW_NETNS:-afhs}"
BASE=""
TIMEOUT_S="${ASYNCFLOW_SLURM_UP_TIMEOUT:-60}"

say() { echo "[slurm_netns] $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

cmd="${1:-}"; shift || true
while [ $# -gt 0 ]; do
    case "$1" in
        --name) NAME="$2"; shift 2 ;;
        --base) BASE="$2"; shift 2 ;;
        *) break ;;
    esac
done
BASE="${BASE:-/tmp/asyncflow-slurm-$NAME}"
CONF="$BASE/slurm.conf"
# shellcheck source=slurm_lib.sh
. "$HERE/slurm_lib.sh"
HOSTS_FILE="/run/asyncflow-netns/$NAME/hosts"

on_host() { local h="$1"; shift; "$HOSTS_SH" exec --name "$NAME" "$h" "$@"; }

client() {
    on_host 0 env SLURM_CONF="$CONF" PATH="$ROOT/.venv/bin:$PATH" \
        MPIR_CVAR_CH4_NETMOD="${MPIR_CVAR_CH4_NETMOD:-ofi}" FI_PROVIDER="${FI_PROVIDER:-tcp}" "$@"
}

install_packages() {
    local b missing=()
    for b in slurmctld slurmd sbatch munged; do command -v "$b" >/dev/null || missing+=("$b"); done
    [ ${#missing[@]} = 0 ] && return 0
    command -v apt-get >/dev/null || die "no apt-get: install slurmctld slurmd slurm-client munge by hand"
    say "installing slurmctld slurmd slurm-client munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || die "apt-get update failed (no network to the Debian archive?)"
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null \
        || die "apt-get install slurmctld slurmd slurm-client munge failed"
}

start_munge() {
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
    mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
    [ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
    chmod 0700 /etc/munge /var/lib/munge /var/log/munge; chmod 0755 /run/munge; chmod 0400 /etc/munge/munge.key
    runuser -u munge -- munged --force || die "munged did not start"
    local _
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0; sleep 0.1; done
    die "munged is not answering"
}

write_conf() {
    local mem first_job_id ns addr nodes=""
    mem="$(free -m | awk '/^Mem:/ {printf "%d", $2 * 0.9 / 2}')"  # the nodes share this machine's memory
    first_job_id="$(random_first_job_id)"  # see .ci/slurm_lib.sh: stale MPICH shm names
    while read -r ns addr; do
        nodes+="NodeName=$ns NodeAddr=$addr CPUs=${ASYNCFLOW_SLURM_CPUS:-4} RealMemory=$mem State=UNKNOWN"$'\n'
    done <"$HOSTS_FILE"
    read -r ns addr <"$HOSTS_FILE"
    cat >"$CONF" <<CONF
# Written by .ci/slurm_netns.sh: one slurmd per network-namespace host, slurmctld on the first.
ClusterName=afnetns
SlurmctldHost=$ns($addr)
$(slurm_conf_common "$BASE" "%n" "$first_job_id" "SlurmdParameters=config_overrides")
$nodes
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
}

dump_logs() {
    local f
    for f in "$BASE"/log/*.log; do [ -f "$f" ] && { say "--- $f"; tail -n 20 "$f" >&2; }; done
    return 0
}

stop_pid() {  # stop_pid FILE: TERM, wait up to 10 s, KILL (only the pid in our own pid file)
    local pid i
    [ -s "$1" ] || return 0
    pid="$(cat "$1")"
    if [ -n "$pid" ] && [ -d "/proc/$pid" ] && grep -q slurm "/proc/$pid/comm" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 100); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
        [ -d "/proc/$pid" ] && kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$1"
}

stop_daemons() {
    local f
    for f in "$BASE"/slurmd.*.pid; do [ -e "$f" ] && stop_pid "$f"; done
    stop_pid "$BASE/slurmctld.pid"
}

down() {
    stop_daemons
    if [ -f "$BASE/made_hosts" ]; then "$HOSTS_SH" down --name "$NAME" >/dev/null 2>&1 || true; rm -f "$BASE/made_hosts"; fi
    say "down: $NAME ($BASE)"
}

up() {
    [ "$(id -u)" = 0 ] || die "must run as root (network namespaces, slurmd)"
    install_packages
    start_munge
    mkdir -p "$BASE" && BASE="$(cd "$BASE" && pwd)" && CONF="$BASE/slurm.conf"
    stop_daemons  # a fresh start: no stale job survives a wiped state
    if [ ! -f "$HOSTS_FILE" ]; then
        "$HOSTS_SH" up "${ASYNCFLOW_NETNS_HOSTS:-2}" --name "$NAME" >/dev/null
        touch "$BASE/made_hosts"
    fi
    rm -rf "$BASE/state" "$BASE/spool" "$BASE/log"
    mkdir -p "$BASE/state" "$BASE/log"
    local ns addr i=0
    while read -r ns addr; do mkdir -p "$BASE/spool/$ns"; done <"$HOSTS_FILE"
    write_conf
    on_host 0 slurmctld -i -f "$CONF" || { dump_logs; die "slurmctld failed to start"; }
    while read -r ns addr; do
        on_host "$i" slurmd -f "$CONF" </dev/null || { dump_logs; die "slurmd on $ns failed to start"; }
        i=$((i + 1))
    done <"$HOSTS_FILE"
    local deadline=$(( $(date +%s) + TIMEOUT_S )) states=""
    while [ "$(date +%s)" -lt "$deadline" ]; do
        states="$(client sinfo -h -N -o '%N=%T' 2>/dev/null | sort -u | tr '\n' ' ' || true)"
        if [ -n "$states" ] && ! echo "$states" | grep -qvE '=(idle|mixed|allocated)( |$)' \
            && [ "$(echo "$states" | wc -w)" -eq "$i" ]; then
            say "up: $states(conf $CONF)"
            printf 'export SLURM_CONF=%s ASYNCFLOW_NETNS=%s\n' "$CONF" "$NAME" >"$BASE/env.sh"
            return 0
        fi
        sleep 0.3
    done
    dump_logs
    die "nodes not idle after ${TIMEOUT_S}s: '${states:-no answer}'"
}

case "$cmd" in
    up) up ;;
    down) down ;;
    run) [ $# -ge 1 ] || die "usage: $0 run CMD [ARGS...]"; client "$@" ;;
    *) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
