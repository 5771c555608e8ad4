"""Helpers shared by the bench verbs: run a job through the CLI, read its result, print the JSON last."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from asyncflow_hpc.errors import AsyncFlowError


class BenchError(AsyncFlowError):
    """A benchmark job failed; the message carries the tail of its output."""


def run_job(config: str, overrides: Sequence[str], *, name: str, workdir: str, timeout: float = 900) -> dict[str, Any]:
    """`asyncflow-hpc run CONFIG overrides` (real mpiexec ranks); returns its result.json."""
    args = [sys.executable, "-m", "asyncflow_hpc", "run", config, f"run.name={name}", f"run.dir={workdir}/{{name}}",
            *overrides]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    if p.returncode != 0:
        raise BenchError(f"bench job '{name}' ({' '.join(args[3:])}) exited {p.returncode}:\n"
                         f"{(p.stdout + p.stderr)[-3000:]}")
    return json.loads((Path(workdir) / name / "result.json").read_text())


def run_mpi_worker(module: str, ranks: int, argv: Sequence[str], *, marker: str, timeout: float) -> dict[str, Any]:
    """`mpiexec -n ranks python -m module --worker argv`: the JSON that follows `marker` on its last result line
    (the bench's own worker prints it). A failure or a run past `timeout` is a LaunchError with the output's tail."""
    from asyncflow_hpc.errors import LaunchError
    from asyncflow_hpc.launch.local import find_mpiexec

    cmd = [find_mpiexec(), "-n", str(ranks), sys.executable, "-m", module, "--worker", *argv]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
    verb = module.rsplit(".", 1)[-1]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise LaunchError(f"bench {verb}: `{' '.join(cmd)}` ran past {timeout:g} s and was killed") from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(marker)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise LaunchError(f"bench {verb}: `{' '.join(cmd)}` exited {proc.returncode}: " + " | ".join(tail))
    return json.loads(lines[-1][len(marker):])


def workdir(prefix: str) -> str:
    return tempfile.mkdtemp(prefix=f"asyncflow-{prefix}-")


def print_json_last(obj: dict[str, Any]) -> None:
    print(json.dumps(obj, sort_keys=True, default=float), flush=True)
