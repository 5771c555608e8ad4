"""Session fixtures: two hosts made of network namespaces (scripts/netns_hosts.sh), and a two-node Slurm on them."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from asyncflow_hpc.launch.hosts import INTER_HOST_MPICH_ENV, NetnsHosts, netns_available, traffic_delta

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def netns_hosts():
    """Two hosts (`<name>-h0`, `<name>-h1`, 10.213.0.1-2) on a private bridge; torn down after the session."""
    reason = netns_available()
    if reason:
        pytest.skip(f"cannot create network namespaces: {reason}")
    name = "af" + uuid.uuid4().hex[:4]  # unique: concurrent sessions on this machine must not collide
    try:
        hosts = NetnsHosts.up(2, name)
    except Exception as exc:  # noqa: BLE001
        subprocess.run(["bash", str(ROOT / "scripts" / "netns_hosts.sh"), "down", "--name", name], capture_output=True)
        if "Operation not permitted" in str(exc) or "Permission denied" in str(exc):
            pytest.skip(f"cannot create network namespaces here: {exc}")
        raise
    try:
        yield hosts
    finally:
        hosts.down()


def run_on_hosts(hosts: NetnsHosts, per_rank: list[int], args: list[str], *, timeout: float = 150,
                 env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    """`mpiexec` (hydra, started on host 0) with rank r on host per_rank[r], MPI over TCP between hosts.
    Returns the process and the bytes each host sent/received on its interface meanwhile."""
    from tests.mpi_util import mpi_env

    cmd = hosts.mpiexec_cmd(str(Path(sys.executable).parent / "mpiexec"), per_rank, [sys.executable, *args])
    before = hosts.traffic()
    proc = subprocess.run(cmd, env=mpi_env({**INTER_HOST_MPICH_ENV, **(env or {})}), capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)
    moved = traffic_delta(before, hosts.traffic())
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}"
                             f"\n--- stderr\n{proc.stderr[-3000:]}")
    return proc, moved


class NetnsSlurm:
    def __init__(self, hosts: NetnsHosts, base: Path):
        self.hosts, self.base = hosts, base

    def run(self, *cmd: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
        proc = subprocess.run(["bash", str(ROOT / ".ci" / "slurm_netns.sh"), "run", "--name", self.hosts.name,
                               "--base", str(self.base), *cmd], env=env, capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc


@pytest.fixture(scope="session")
def netns_slurm(netns_hosts):
    """slurmctld on host 0, one slurmd per host (.ci/slurm_netns.sh); stopped after the session."""
    import shutil

    if not shutil.which("slurmd") and not shutil.which("apt-get"):
        pytest.skip("no Slurm installed and no apt-get to install it (slurmctld slurmd slurm-client munge)")
    base = Path(f"/tmp/asyncflow-slurm-{netns_hosts.name}")
    script = ["bash", str(ROOT / ".ci" / "slurm_netns.sh")]
    args = ["--name", netns_hosts.name, "--base", str(base)]
    proc = subprocess.run([*script, "up", *args], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        if "apt-get" in proc.stderr and "failed" in proc.stderr:
            pytest.skip(f"apt unusable, cannot install Slurm: {proc.stderr.strip().splitlines()[-1]}")
        pytest.fail(f".ci/slurm_netns.sh up failed ({proc.returncode}):\n{proc.stderr[-3000:]}", pytrace=False)
    try:
        yield NetnsSlurm(netns_hosts, base)
    finally:
        subprocess.run([*script, "down", *args], capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)
