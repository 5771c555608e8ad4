# Shared body of the sbatch templates (sourced, not submitted): venv, job banner, warning signal, requeue.
#
# A template sets its site variables, then:
#     source "$ASYNCFLOW_ROOT/slurm/common.sh"
#     asyncflow_setup "$@"
#     asyncflow_launch "$@"          # runs `asyncflow-hpc run CONFIG [key=value ...]`; exits with its code
#
# Preemption / time limit (wired here; the checkpoint itself is issue 7):
#   1. The template asks for `--signal=B:USR2@S`: Slurm sends USR2 to this batch shell S seconds
#      before the time limit.
#   2. The trap below forwards USR2 to every job step (`scancel --signal=USR2`), i.e. to the ranks
#      under srun: at the next step boundary they write a checkpoint (trainer, optimizer, RNG, the
#      store's rows in flight) and leave their loop (docs/reliability.md).
#   3. When the step has ended, the job requeues itself (`scontrol requeue`, allowed by `--requeue`)
#      unless it already did so ASYNCFLOW_MAX_REQUEUES times; `--open-mode=append` keeps one log.
#   4. The requeued run sees SLURM_RESTART_COUNT > 0 and adds $ASYNCFLOW_RESUME_OVERRIDE
#      (default `resume=auto`: continue from the newest checkpoint; a run that had already
#      completed exits at once) to the command line.
#
# Variables (defaults in brackets; export them before sbatch or set them in the template):
#   ASYNCFLOW_VENV [$ASYNCFLOW_ROOT/.venv]       virtualenv with asyncflow_hpc installed ("" = none)
#   ASYNCFLOW_CMD [asyncflow-hpc run]            what runs the job inside the allocation
#   ASYNCFLOW_MAX_REQUEUES [3]                   self-requeues after the warning signal
#   ASYNCFLOW_RESUME_OVERRIDE [resume=auto]      override added when the job was requeued ("" = none)
#   ASYNCFLOW_SRUN_MPI [""]                      force srun --mpi=... (launch.srun_mpi; "" = auto)

asyncflow_log() { echo "[asyncflow $(date +%H:%M:%S)] $*"; }

asyncflow_setup() {
    if [ $# -lt 1 ] || [ "${1#*=}" != "$1" ]; then
        echo "usage: sbatch slurm/<template>.sbatch configs/<name>.yaml [key=value ...]" >&2
        exit 2
    fi
    if [ ! -f "$1" ]; then
        echo "asyncflow: config file '$1' not found (relative paths are relative to $PWD, the sbatch" \
             "submit folder)" >&2
        exit 2
    fi
    ASYNCFLOW_VENV="${ASYNCFLOW_VENV-$ASYNCFLOW_ROOT/.venv}"
    if [ -n "$ASYNCFLOW_VENV" ]; then
        if [ ! -f "$ASYNCFLOW_VENV/bin/activate" ]; then
            echo "asyncflow: no virtualenv at ASYNCFLOW_VENV=$ASYNCFLOW_VENV (create it, or export" \
                 "ASYNCFLOW_VENV=/path/to/venv before sbatch; ASYNCFLOW_VENV= uses the current PATH)" >&2
            exit 2
        fi
        # shellcheck disable=SC1091
        source "$ASYNCFLOW_VENV/bin/activate"
    fi
    export PYTHONUNBUFFERED=1
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"
    asyncflow_log "job ${SLURM_JOB_ID:-?} (${SLURM_JOB_NAME:-?}) restart ${SLURM_RESTART_COUNT:-0}:" \
        "${SLURM_JOB_NUM_NODES:-?} node(s) [${SLURM_JOB_NODELIST:-?}], ${SLURM_NTASKS:-?} tasks," \
        "python $(command -v python)"
}

_asyncflow_warned=0
_asyncflow_on_warning() {
    _asyncflow_warned=1
    asyncflow_log "warning signal USR2 (time limit or preemption ahead): forwarding it to the ranks"
    scancel --signal=USR2 "$SLURM_JOB_ID" || asyncflow_log "scancel --signal=USR2 failed"
}

_asyncflow_maybe_requeue() {
    local done="${SLURM_RESTART_COUNT:-0}" max="${ASYNCFLOW_MAX_REQUEUES:-3}"
    if [ "$done" -ge "$max" ]; then
        asyncflow_log "not requeueing: already requeued $done time(s) (ASYNCFLOW_MAX_REQUEUES=$max)"
        return 1
    fi
    asyncflow_log "requeueing job $SLURM_JOB_ID (requeue $((done + 1)) of $max)"
    scontrol requeue "$SLURM_JOB_ID"
}

asyncflow_launch() {
    local config="$1" rc
    shift
    local args=("$config")
    [ -n "${ASYNCFLOW_SRUN_MPI:-}" ] && args+=("launch.srun_mpi=$ASYNCFLOW_SRUN_MPI")
    args+=("${ASYNCFLOW_TEMPLATE_OVERRIDES[@]}")
    local resume="${ASYNCFLOW_RESUME_OVERRIDE-resume=auto}"
    if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ] && [ -n "$resume" ]; then
        args+=("$resume")
    fi
    args+=("$@")  # the user's overrides come last, so they win
    local cmd
    read -r -a cmd <<<"${ASYNCFLOW_CMD:-asyncflow-hpc run}"
    asyncflow_log "running: ${cmd[*]} ${args[*]}"
    trap _asyncflow_on_warning USR2
    # In the background, so that the trap runs as soon as the signal arrives (bash runs traps only
    # between commands); `wait` returns early on a trapped signal, hence the loop.
    "${cmd[@]}" "${args[@]}" &
    local child=$!
    while :; do
        wait "$child"
        rc=$?
        kill -0 "$child" 2>/dev/null || break
    done
    trap - USR2
    asyncflow_log "job command exited with $rc"
    if [ "$_asyncflow_warned" = 1 ]; then
        _asyncflow_maybe_requeue && exit 0
    fi
    exit "$rc"
}
