"""Hosts of a multi-node job: hostfiles, rank placement, MPI over TCP, and test hosts made of network namespaces.

    hosts = parse_hostfile(open("hosts").read())        # "name[:slots]" (MPICH) or "name slots=N" (Open MPI)
    per_rank = place_ranks(4, hosts)                    # host index of each rank (block: fill each host's slots)
    hydra_hosts_arg(hosts, per_rank)                     # "h0:2,h1:2" for `mpiexec -hosts`
    nh = NetnsHosts.load("afh")                          # hosts made by scripts/netns_hosts.sh (or the test fixture)
    nh.mpiexec(4, ["python", "-m", "asyncflow_hpc.main", "configs/default.yaml"], per_host=[2, 2])
    nh.traffic()                                         # bytes each host sent/received on its interface

Network namespaces share one kernel, so MPI libraries can reach each other's memory across them:
the MPICH wheel's default UCX netmod moved a 1 MiB Put between two namespaces with only ~7 KB on the
wire (shared memory / CMA). Runs that must cross hosts for real use `INTER_HOST_MPICH_ENV`
(libfabric's tcp provider), under which ranks on different hosts only talk over their interfaces.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from asyncflow_hpc.errors import LaunchError

ROOT = Path(__file__).resolve().parents[2]
NETNS_SCRIPT = ROOT / "scripts" / "netns_hosts.sh"
STATE_ROOT = Path("/run/asyncflow-netns")
# MPICH (ch4:ucx,ofi wheel): the OFI netmod on libfabric's tcp provider, so inter-host bytes go over TCP.
INTER_HOST_MPICH_ENV = {"MPIR_CVAR_CH4_NETMOD": "ofi", "FI_PROVIDER": "tcp"}


@dataclass(frozen=True)
class Host:
    name: str
    slots: int = 1
    address: str = ""


_SLOTS_OMPI = re.compile(r"^(\S+)\s+slots\s*=\s*(\d+)\s*$")
_SLOTS_MPICH = re.compile(r"^([^\s:]+)(?::(\d+))?\s*$")


def parse_hostfile(text: str, *, where: str = "hostfile") -> list[Host]:
    """Hosts from a hostfile: `name`, `name:N` (MPICH) or `name slots=N` (Open MPI); `#` comments."""
    hosts: list[Host] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = _SLOTS_OMPI.match(line) or _SLOTS_MPICH.match(line)
        if not m:
            raise LaunchError(f"{where}:{lineno}: cannot read {raw.strip()!r}; write 'host', 'host:N' or 'host slots=N'")
        slots = int(m.group(2)) if m.group(2) else 1
        if slots < 1:
            raise LaunchError(f"{where}:{lineno}: host {m.group(1)} has {slots} slots; give at least 1")
        hosts.append(Host(m.group(1), slots))
    if not hosts:
        raise LaunchError(f"{where}: no hosts in it")
    return hosts


def format_hostfile(hosts: Sequence[Host]) -> str:
    """An MPICH hostfile (`name:slots` per line)."""
    return "".join(f"{h.name}:{h.slots}\n" for h in hosts)


def place_ranks(world_size: int, hosts: Sequence[Host], mode: str = "block") -> list[int]:
    """Host index of every rank. block: fill host 0's slots, then host 1's, ... (mpiexec's default);
    cyclic: one rank per host in turn. More ranks than slots wrap around (oversubscription)."""
    if not hosts:
        raise LaunchError("place_ranks: no hosts")
    if mode == "cyclic":
        return [r % len(hosts) for r in range(world_size)]
    if mode != "block":
        raise LaunchError(f"place_ranks: mode must be 'block' or 'cyclic', got {mode!r}")
    order = [i for i, h in enumerate(hosts) for _ in range(h.slots)]
    return [order[r % len(order)] for r in range(world_size)]


def hydra_hosts_arg(hosts: Sequence[Host], per_rank: Sequence[int]) -> str:
    """`mpiexec -hosts` value that reproduces `per_rank` with hydra (runs of consecutive ranks)."""
    runs: list[list[int]] = []
    for h in per_rank:
        if runs and runs[-1][0] == h:
            runs[-1][1] += 1
        else:
            runs.append([h, 1])
    return ",".join(f"{hosts[h].name}:{n}" for h, n in runs)


def spans_hosts(per_rank: Sequence[int], ranks_a: Sequence[int], ranks_b: Sequence[int]) -> bool:
    """True when some rank of `ranks_a` and some rank of `ranks_b` are on different hosts."""
    return any(per_rank[a] != per_rank[b] for a in ranks_a for b in ranks_b)


def netns_available() -> str | None:
    """None when this process can make network namespaces, else the reason it cannot."""
    if os.name != "posix" or not Path("/proc/self/ns/net").exists():
        return "no Linux network namespaces on this system"
    if os.geteuid() != 0:
        return "making network namespaces needs root (CAP_SYS_ADMIN + CAP_NET_ADMIN); run the tests as root"
    if not _which("ip"):
        return "no 'ip' command: apt-get install -y --no-install-recommends iproute2"
    if not _which("unshare"):
        return "no 'unshare' command (util-linux)"
    return None


def _which(cmd: str) -> bool:
    import shutil

    return shutil.which(cmd) is not None


@dataclass
class NetnsHosts:
    """Hosts made of network namespaces by scripts/netns_hosts.sh; host i is namespace `<name>-h<i>`."""

    name: str
    hosts: list[Host]

    @classmethod
    def load(cls, name: str) -> "NetnsHosts":
        f = STATE_ROOT / name / "hosts"
        if not f.exists():
            raise LaunchError(f"no namespace hosts '{name}' ({f} missing): run scripts/netns_hosts.sh up 2 --name {name}")
        hosts = [Host(ns, 1, addr) for ns, addr in (line.split() for line in f.read_text().splitlines() if line.strip())]
        return cls(name=name, hosts=hosts)

    @classmethod
    def up(cls, n: int, name: str, subnet: str = "10.213.0", timeout: float = 60) -> "NetnsHosts":
        _script("up", str(n), "--name", name, "--subnet", subnet, timeout=timeout)
        return cls.load(name)

    def down(self, timeout: float = 60) -> None:
        _script("down", "--name", self.name, timeout=timeout, check=False)

    @property
    def ssh(self) -> str:
        """The ssh stand-in for hydra (`-launcher ssh -launcher-exec THIS`)."""
        return str(STATE_ROOT / self.name / "ssh")

    def prefix(self, host: int | str) -> list[str]:
        """Command prefix running the rest of a command line on `host` (index or name)."""
        return [str(NETNS_SCRIPT), "exec", "--name", self.name, str(host)]

    def mpiexec_cmd(self, mpiexec: str, per_rank: Sequence[int], argv: Sequence[str]) -> list[str]:
        """mpiexec (hydra) started on host 0 that places rank r on host `per_rank[r]`."""
        return [*self.prefix(0), mpiexec, "-launcher", "ssh", "-launcher-exec", self.ssh,
                "-hosts", hydra_hosts_arg(self.hosts, per_rank), "-n", str(len(per_rank)), *argv]

    def traffic(self) -> dict[str, tuple[int, int]]:
        """(bytes sent, bytes received) by each host on its interface, read from the bridge side of its veth."""
        out = {}
        for i, h in enumerate(self.hosts):
            stats = Path(f"/sys/class/net/{self.name}v{i}/statistics")
            rx, tx = (int((stats / f).read_text()) for f in ("rx_bytes", "tx_bytes"))
            out[h.name] = (rx, tx)  # the bridge side receives what the host sends
        return out


def _script(*args: str, timeout: float, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", str(NETNS_SCRIPT), *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise LaunchError(f"scripts/netns_hosts.sh {' '.join(args)} failed ({proc.returncode}): "
                          f"{proc.stderr.strip()[-600:]}")
    return proc


def traffic_delta(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    return {h: (after[h][0] - before[h][0], after[h][1] - before[h][1]) for h in after}
