"""Job environment: rank, local rank, world size, node and job id, read in one place.

Sources, in order: the MPI launcher of this process (Open MPI / PMIx, MPICH Hydra / PMI), then a
Slurm job step (`SLURM_*` under srun), then a plain single process. Inside an sbatch script but
outside a step, SLURM_PROCID describes the batch script, not us, so MPI launcher variables win.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Mapping

from asyncflow_hpc.errors import LaunchError


@dataclass(frozen=True)
class JobEnv:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int
    num_nodes: int
    hostname: str
    job_id: str | None  # Slurm job id (or None outside Slurm)
    source: str  # "openmpi" | "pmix" | "mpich" | "slurm" | "single"

    @property
    def in_slurm(self) -> bool:
        return self.job_id is not None

    def describe(self) -> str:
        job = f" job {self.job_id}" if self.job_id else ""
        return (f"rank {self.rank}/{self.world_size} local {self.local_rank}/{self.local_world_size} "
                f"node {self.node_rank}/{self.num_nodes} on {self.hostname}{job} (from {self.source})")


def _int(env: Mapping[str, str], *names: str) -> int | None:
    for name in names:
        raw = env.get(name)
        if raw is not None and raw.strip() != "":
            try:
                return int(raw.split("(")[0].split(",")[0])
            except ValueError:
                raise LaunchError(f"environment variable {name}={raw!r} is not an integer") from None
    return None


def _slurm_job_id(env: Mapping[str, str]) -> str | None:
    job = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
    if job and env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return job


def read_env(env: Mapping[str, str] | None = None, hostname: str | None = None) -> JobEnv:
    """Read the job environment from `env` (default `os.environ`). Pure apart from the host name."""
    env = os.environ if env is None else env
    host = hostname or env.get("SLURMD_NODENAME") or socket.gethostname()
    job_id = _slurm_job_id(env)
    in_step = env.get("SLURM_STEP_ID") is not None or env.get("SLURM_STEPID") is not None
    slurm_nodes = _int(env, "SLURM_STEP_NUM_NODES", "SLURM_JOB_NUM_NODES", "SLURM_NNODES")
    slurm_node = _int(env, "SLURM_NODEID")

    if _int(env, "OMPI_COMM_WORLD_RANK") is not None:
        rank, size = _int(env, "OMPI_COMM_WORLD_RANK"), _int(env, "OMPI_COMM_WORLD_SIZE")
        local, lsize = _int(env, "OMPI_COMM_WORLD_LOCAL_RANK"), _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE")
        node = _int(env, "OMPI_COMM_WORLD_NODE_RANK")
        source = "openmpi"
    elif _int(env, "PMIX_RANK") is not None and in_step:
        # srun --mpi=pmix: PMIx gives the rank, Slurm the rest.
        rank, size = _int(env, "PMIX_RANK"), _int(env, "SLURM_NTASKS", "SLURM_NPROCS")
        local, lsize = _int(env, "SLURM_LOCALID"), _tasks_on_node(env)
        node = slurm_node
        source = "pmix"
    elif _int(env, "PMI_RANK") is not None and not in_step:
        rank, size = _int(env, "PMI_RANK"), _int(env, "PMI_SIZE")
        local = _int(env, "MPI_LOCALRANKID")
        lsize = _int(env, "MPI_LOCALNRANKS")
        node = None
        source = "mpich"
    elif in_step and _int(env, "SLURM_PROCID") is not None:
        rank, size = _int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS", "SLURM_NPROCS")
        local, lsize = _int(env, "SLURM_LOCALID"), _tasks_on_node(env)
        node = slurm_node
        source = "slurm"
    else:
        rank, size, local, lsize, node, source = 0, 1, 0, 1, 0, "single"

    size = size if size is not None else 1
    if rank is None or not 0 <= rank < size:
        raise LaunchError(f"job environment ({source}): rank {rank} is outside world size {size}")
    local = local if local is not None else 0
    lsize = lsize if lsize is not None else max(local + 1, 1)
    if node is None:
        node = slurm_node if (in_step and slurm_node is not None) else 0
    nodes = slurm_nodes if (slurm_nodes is not None and (in_step or source == "slurm")) else None
    if nodes is None:
        nodes = max(1, -(-size // max(lsize, 1))) if source != "single" else 1
    return JobEnv(rank=rank, world_size=size, local_rank=local, local_world_size=lsize, node_rank=node,
                  num_nodes=nodes, hostname=host, job_id=job_id, source=source)


def _tasks_on_node(env: Mapping[str, str]) -> int | None:
    """SLURM_TASKS_PER_NODE looks like '2(x3),1'; the entry of this node is what we want."""
    raw = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    node = _int(env, "SLURM_NODEID") or 0
    if not raw:
        return None
    counts: list[int] = []
    for part in raw.split(","):
        if "(x" in part:
            n, rep = part.split("(x")
            counts.extend([int(n)] * int(rep.rstrip(")")))
        else:
            counts.append(int(part))
    return counts[node] if node < len(counts) else counts[-1]


def launched_as_rank(env: Mapping[str, str] | None = None) -> bool:
    """True when this process was started by an MPI launcher or srun (so it must not launch again)."""
    return read_env(env).source != "single"
