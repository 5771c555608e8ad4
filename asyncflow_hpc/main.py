"""Per-rank entry: config -> job environment -> topology -> communicators -> this rank's loop.

Started once per rank by `asyncflow-hpc run` (mpiexec or srun), sbatch templates and submitit:

    mpiexec -n 4 python -m asyncflow_hpc.main configs/smoke.yaml
    srun --mpi=pmi2 -n 4 python -m asyncflow_hpc.main configs/default.yaml workflow.steps=5

A failure on any rank prints one line naming the rank and role and aborts the whole MPI job, so
the job exits non-zero instead of hanging.
"""

from __future__ import annotations

import os
import sys
import traceback


def rank_main(argv: list[str]) -> int:
    from asyncflow_hpc.config import load_config
    from asyncflow_hpc.env import read_env
    from asyncflow_hpc.errors import AsyncFlowError

    config_path = argv[0] if argv and "=" not in argv[0] else None
    overrides = argv[1:] if config_path else argv
    env = read_env()
    where = f"rank {env.rank}"
    _dump_stacks_on_sigquit()
    try:
        cfg = load_config(config_path, overrides)
    except AsyncFlowError as exc:
        return _fail(where, exc, tb=False)
    try:
        from asyncflow_hpc.launch.monitor import Heartbeat
        from asyncflow_hpc.workflow.driver import run_rank

        hb = Heartbeat.from_env(rank=env.rank, role="starting") if cfg.monitor.enabled else None
        rc = run_rank(cfg, env)
        if hb is not None:
            hb.finish("done" if rc == 0 else f"failed: exit code {rc}")
        return rc
    except AsyncFlowError as exc:
        return _fail(getattr(exc, "where", where), exc, tb=bool(os.environ.get("ASYNCFLOW_TRACEBACK")))
    except Exception as exc:  # noqa: BLE001 - any crash must take the job down, loudly
        return _fail(where, exc, tb=True)


def _dump_stacks_on_sigquit() -> None:
    """`kill -QUIT <rank pid>` prints every thread's Python stack (diagnosing a hang without a debugger)."""
    import faulthandler
    import signal

    if hasattr(signal, "SIGQUIT"):
        faulthandler.register(signal.SIGQUIT, all_threads=True)


def _fail(where: str, exc: BaseException, *, tb: bool) -> int:
    if tb:
        traceback.print_exc()
    line = (f"[{where}] {type(exc).__name__}: {exc}" if "rank" not in str(exc)[:12] else str(exc))
    hb = sys.modules.get("asyncflow_hpc.launch.monitor")
    hb = hb.Heartbeat.current if hb is not None else None
    if hb is not None and hb.finish(f"failed: {type(exc).__name__}: {exc}"):
        # The launcher's monitor prints the one error line for the job (rank, role, last activity).
        print(f"asyncflow-hpc: rank failed: {line}", file=sys.stderr, flush=True)
    else:
        print(f"asyncflow-hpc: error: {line}", file=sys.stderr, flush=True)
    _abort()
    return 1


def _abort() -> None:
    """Take every other rank down with us (only if MPI is already up: never init MPI just to abort)."""
    mod = sys.modules.get("mpi4py.MPI")
    if mod is not None and mod.Is_initialized() and not mod.Is_finalized() and mod.COMM_WORLD.Get_size() > 1:
        sys.stderr.flush()
        sys.stdout.flush()
        mod.COMM_WORLD.Abort(1)


if __name__ == "__main__":
    raise SystemExit(rank_main(sys.argv[1:]))
