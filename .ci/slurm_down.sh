#!/usr/bin/env bash
# Stop the single-host Slurm that .ci/slurm_up.sh started (slurmd, slurmctld; munged only if we started it).
#
#   .ci/slurm_down.sh [BASE] [--munge]    # BASE as given to slurm_up.sh, default /tmp/asyncflow-slurm
#
# Only the daemons whose pid files live in BASE are stopped (by pid, never by name); munged is
# left running unless --munge is given, since other Slurm instances on the host may share it.
# Safe to run when nothing is running.
set -uo pipefail

BASE="/tmp/asyncflow-slurm"
BASE="${ASYNCFLOW_SLURM_BASE:-$BASE}"
STOP_MUNGE=0
for arg in "$@"; do
    case "$arg" in
        --munge) STOP_MUNGE=1 ;;
        *) BASE="$arg" ;;
    esac
done

[ -d "$BASE" ] && BASE="$(cd "$BASE" && pwd)"

say() { echo "[slurm_down] $*" >&2; }

stop_pidfile() {  # stop_pidfile FILE NAME: TERM the process, wait up to 10 s, then KILL
    local file="$1" name="$2" pid i
    [ -s "$file" ] || return 0
    pid="$(cat "$file")"
    if [ -z "$pid" ] || [ ! -d "/proc/$pid" ] || ! grep -q "$name" "/proc/$pid/comm" 2>/dev/null; then
        rm -f "$file"; return 0
    fi
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 100); do
        [ -d "/proc/$pid" ] || break
        sleep 0.1
    done
    if [ -d "/proc/$pid" ]; then
        say "$name (pid $pid) ignored TERM for 10 s; killing it"
        kill -KILL "$pid" 2>/dev/null
    fi
    rm -f "$file"
    say "stopped $name (pid $pid)"
}

# slurmd first (it may still hold job steps), then the controller.
stop_pidfile "$BASE/slurmd.pid" slurmd
stop_pidfile "$BASE/slurmctld.pid" slurmctld
if [ "$STOP_MUNGE" = 1 ]; then
    stop_pidfile /run/munge/munged.pid munged
fi
rm -f "$BASE/env.sh"
exit 0
