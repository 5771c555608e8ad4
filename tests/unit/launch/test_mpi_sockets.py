"""MPI's own sockets on one host: the ranks' netmod (UCX, or libfabric tcp with MPIR_CVAR_CH4_NETMOD=ofi) listens
on loopback only under the launcher's environment (before: on the machine's external address too). The one
exception is hydra's control port, which mpiexec binds on every interface with no knob to change it
(docs/reliability.md); the ranks only inherit that same socket."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asyncflow_hpc.launch.cleanup import descendants

ROOT = Path(__file__).resolve().parents[3]
pytestmark = [pytest.mark.mpi, pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs Linux /proc")]

PROBE = r'''
import os, sys, time
from mpi4py import MPI
c = MPI.COMM_WORLD
c.Barrier()
if c.rank == 0:
    open(sys.argv[1], "w").close()
deadline = time.time() + 60
while not os.path.exists(sys.argv[2]) and time.time() < deadline:
    time.sleep(0.05)
c.Barrier()
'''


def _sockets(pid: int) -> set[str]:
    out = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                out.add(link[8:-1])
    except OSError:
        pass
    return out


def _listening() -> dict[str, str]:
    """inode -> address of every listening TCP socket on the host."""
    out = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            for line in fh.readlines()[1:]:
                f = line.split()
                if f[3] != "0A":
                    continue
                ip, _, port = f[1].partition(":")
                addr = ".".join(str(b) for b in bytes.fromhex(ip)[::-1]) if len(ip) == 8 else ip
                out[f[9]] = f"{addr}:{int(port, 16)}"
    return out


def _loopback(addr: str) -> bool:
    ip = addr.rpartition(":")[0]
    return ip.startswith("127.") or ip in ("00000000000000000000000001000000", "0000000000000000FFFF00000100007F")


@pytest.mark.parametrize("netmod", ["ucx", "ofi-tcp"])
def test_mpich_ranks_listen_on_loopback_only(tmp_path, netmod):
    from asyncflow_hpc.config import load_config
    from asyncflow_hpc.launch.local import find_mpiexec, launch_command, mpi_flavour

    if mpi_flavour(find_mpiexec()) != "mpich":
        pytest.skip("the MPICH wheel's mpiexec is not installed")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "UCX_", "FI_", "MPIR_CVAR_"))}
    if netmod == "ofi-tcp":
        base.update({"MPIR_CVAR_CH4_NETMOD": "ofi", "FI_PROVIDER": "tcp"})
    cfg = load_config(str(ROOT / "configs" / "smoke.yaml"), ["topology.world_size=2", "launch.launcher=mpiexec"])
    cmd, extra = launch_command(cfg, None, [], env=base)
    cmd = cmd[:cmd.index(sys.executable)]  # mpiexec and its flags; the ranks run the probe instead
    ready, done = tmp_path / "ready", tmp_path / "done"
    proc = subprocess.Popen([*cmd, sys.executable, "-c", PROBE, str(ready), str(done)], env={**base, **extra},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-2000:]
            time.sleep(0.05)
        time.sleep(0.3)
        listening = _listening()
        hydra = {i for i in _sockets(proc.pid) if i in listening}  # mpiexec's own control port
        ranks = {pid: {i for i in _sockets(pid) if i in listening} - hydra for pid in descendants(proc.pid)}
    finally:
        done.touch()
        out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out[-2000:]
    rank_addrs = sorted(listening[i] for socks in ranks.values() for i in socks)
    assert rank_addrs, "the ranks listen on nothing: the probe did not see the netmod"
    assert all(_loopback(a) for a in rank_addrs), rank_addrs
    print(f"{netmod}: ranks listen on {rank_addrs}; hydra's control port {[listening[i] for i in hydra]}")
