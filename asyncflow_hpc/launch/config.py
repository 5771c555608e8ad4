"""Configuration of how ranks are launched (mpiexec / srun / submitit)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from asyncflow_hpc.configlib import fail, opt


@dataclass(kw_only=True)
class LaunchConfig:
    """How `asyncflow-hpc run` and `asyncflow-hpc submit` start the ranks."""

    launcher: Literal["auto", "mpiexec", "srun"] = opt(
        "auto", "auto: srun inside a Slurm allocation, mpiexec outside one.")
    mpiexec: str = opt("", "mpiexec to use; empty = the one beside this Python, else the first on PATH.")
    mpiexec_args: list[str] = opt(factory=list, help="Extra arguments passed to mpiexec.")
    srun_mpi: str = opt("auto", "srun --mpi plugin: auto = pmi2 for MPICH, pmix for Open MPI.")
    srun_args: list[str] = opt(factory=list, help="Extra arguments passed to srun.")
    iface: str = opt("", "Network interface MPI listens on across hosts (e.g. ib0, eth0); empty = "
                         "$GLOO_SOCKET_IFNAME. On one host: always loopback.")
    # submitit / Slurm resources
    nodes: int = opt(1, "Slurm nodes (submit).")
    tasks_per_node: int = opt(0, "MPI ranks per node (submit); 0 = topology.world_size / nodes.")
    cpus_per_task: int = opt(1, "CPUs per rank (submit).")
    gpus_per_node: int = opt(0, "GPUs/NPUs per node (submit).")
    partition: str = opt("", "Slurm partition (submit); empty = the cluster default.")
    time_min: int = opt(60, "Wall-time limit in minutes (submit).")
    signal_delay_s: int = opt(120, "Seconds before the time limit at which Slurm sends the warning signal (USR2).")
    max_requeues: int = opt(3, "How many times a preempted/timed-out job requeues itself (submit).")
    folder: str = opt("runs/submitit/%j", "submitit log folder (%j = job id).")
    slurm_extra: dict[str, str | int | bool] = opt(
        factory=dict, help="Extra sbatch options for submit, e.g. {account: abc, exclusive: true}.")
    submit_cluster: Literal["auto", "slurm", "local"] = opt(
        "auto", "Where `asyncflow-hpc submit` sends the job: auto = Slurm where sbatch exists, else local processes.")

    def __post_init__(self) -> None:
        for name in ("nodes", "cpus_per_task", "time_min"):
            if getattr(self, name) < 1:
                raise fail(name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("tasks_per_node", "gpus_per_node", "signal_delay_s", "max_requeues"):
            if getattr(self, name) < 0:
                raise fail(name, f"must be >= 0, got {getattr(self, name)}")
