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


@dataclass(kw_only=True)
class MonitorConfig:
    """How `asyncflow-hpc run` watches the ranks (heartbeats under <run dir>/heartbeat)."""

    enabled: bool = opt(True, "Watch rank heartbeats and the MPI child; kill the job with one named error on a failure.")
    interval_s: float = opt(1.0, "How often each rank writes its heartbeat file.")
    stale_s: float = opt(30.0, "A heartbeat older than this means the rank is frozen: the job is killed.")
    hang_s: float = opt(0.0, "A rank in the same activity for longer than this is hung (0 = off; waits have "
                             "their own timeouts, which raise named errors).")
    poll_s: float = opt(0.2, "How often the launcher checks.")
    kill_grace_s: float = opt(3.0, "After SIGTERM, seconds before the job's processes get SIGKILL.")

    def __post_init__(self) -> None:
        for name in ("interval_s", "stale_s", "poll_s"):
            if getattr(self, name) <= 0:
                raise fail(name, f"must be > 0, got {getattr(self, name)}")
        if self.stale_s < 3 * self.interval_s:
            raise fail("stale_s", f"must be at least 3 x interval_s ({3 * self.interval_s:g}), got {self.stale_s:g}")
        if self.hang_s < 0 or self.kill_grace_s < 0:
            raise fail("hang_s", "hang_s and kill_grace_s must be >= 0")
