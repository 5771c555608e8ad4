"""Run a Python module or script under real `mpiexec` ranks from a test, with a hard timeout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def mpiexec() -> str:
    from asyncflow_hpc.launch.local import find_mpiexec

    return find_mpiexec()


def mpi_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env.setdefault("OMPI_MCA_osc", "^ucx")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    # Ranks share 2 cores: one torch thread each, or they fight.
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra or {})
    return env


def run_mpi(n: int, args: list[str], *, timeout: float = 120, env: dict[str, str] | None = None,
            check: bool = True, cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    """`mpiexec -n N python ARGS...`; `args` start with `-m module` or a script path."""
    cmd = [mpiexec(), "-n", str(n), sys.executable, *args]
    proc = subprocess.run(cmd, env=mpi_env(env), capture_output=True, text=True, timeout=timeout,
                          cwd=cwd or ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
                             f"\n--- stderr\n{proc.stderr[-4000:]}")
    return proc


def run_job(tmp_path, name: str, *overrides: str, timeout: float = 300) -> tuple[dict, subprocess.CompletedProcess]:
    """`asyncflow-hpc run configs/default.yaml run.name=NAME run.dir=TMP/{name} OVERRIDES...` (the launcher starts
    real mpiexec ranks); asserts it succeeded and returns (its result.json, the process)."""
    import json

    args = [sys.executable, "-m", "asyncflow_hpc", "run", "configs/default.yaml", f"run.name={name}",
            f"run.dir={tmp_path}/{{name}}", *overrides]
    p = subprocess.run(args, cwd=ROOT, env=mpi_env(), capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return json.loads((Path(tmp_path) / name / "result.json").read_text()), p
