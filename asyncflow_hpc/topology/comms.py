"""Communicators of a job: MPI per role (Comm.Split), torch.distributed groups bootstrapped from MPI.

    comms = Comms.create(layout, device_cfg)     # collective over COMM_WORLD
    comms.role_comm                              # MPI communicator of this rank's primary role
    comms.weight_group                           # StatelessGroup (topology/pg.py): trainer leader + rollout ranks
    comms.close()

torch.distributed gets its rendezvous from MPI: rank 0 binds a free port and broadcasts host and
port, so no port is ever set by hand. CUDA -> NCCL, Ascend NPU -> HCCL (torch_npu imported only
then), CPU -> gloo.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass, field
from typing import Any

from asyncflow_hpc.errors import LaunchError, RankError
from asyncflow_hpc.topology.config import DeviceConfig
from asyncflow_hpc.topology.pg import StatelessGroup, bind_gloo_to, listen_socket, make_store
from asyncflow_hpc.topology.roles import Layout, Role


def mpi():
    """mpi4py's MPI module, imported lazily (MPI_Init happens here)."""
    from mpi4py import MPI

    return MPI


def sleeping_barrier(comm: Any, timeout_s: float | None = None, *, what: str = "every rank", rank: int = -1,
                     role: str = "", pause_min: float = 1e-4, pause_max: float = 2e-3) -> None:
    """A barrier that sleeps with back-off (pause_min doubling to pause_max) instead of busy-polling.

    A rank blocked in an MPI collective busy-polls a whole core, and ranks here share cores. Put it
    before a collective whose peers may arrive late, so the collective then returns at once. Past
    `timeout_s` (None: never) raises WaitTimeout naming rank, role and `what` it waited for."""
    from asyncflow_hpc.waits import wait_until

    req = comm.Ibarrier()
    wait_until(req.Test, timeout_s=timeout_s, what=what, rank=rank, role=role, pause_min=pause_min,
               pause_max=pause_max)


@dataclass(frozen=True)
class Device:
    kind: str  # "cpu" | "cuda" | "npu"
    index: int
    backend: str  # "gloo" | "nccl" | "hccl"

    @property
    def torch_device(self) -> str:
        return "cpu" if self.kind == "cpu" else f"{self.kind}:{self.index}"


def _npu_available() -> bool:
    try:
        import torch_npu  # noqa: F401  (registers the "npu" device with torch)
        import torch

        return bool(torch.npu.is_available())
    except Exception:
        return False


def choose_device(cfg: DeviceConfig, local_rank: int, *, cuda_available: bool | None = None,
                  npu_available: bool | None = None) -> Device:
    """Pick the device and backend of this rank. The availability flags are injectable for tests."""
    kind = cfg.kind
    if kind == "auto":
        if cuda_available is None:
            import torch

            cuda_available = torch.cuda.is_available()
        if cuda_available:
            kind = "cuda"
        else:
            if npu_available is None:
                npu_available = _npu_available()
            kind = "npu" if npu_available else "cpu"
    elif kind == "npu" and npu_available is None:
        if not _npu_available():
            raise LaunchError("device.kind=npu but torch_npu is not importable or sees no NPU "
                              "(install the Ascend extras and CANN, or set device.kind=cpu)")
    backend = cfg.backend
    if backend == "auto":
        backend = {"cuda": "nccl", "npu": "hccl", "cpu": "gloo"}[kind]
    if (kind, backend) in {("cpu", "nccl"), ("cpu", "hccl"), ("cuda", "hccl"), ("npu", "nccl")}:
        raise LaunchError(f"device.backend={backend} does not work with device.kind={kind}")
    return Device(kind=kind, index=local_rank if kind != "cpu" else 0, backend=backend)


def _local_address(single_node: bool, peer: str) -> str:
    """This host's address on the job's network: loopback on one host, else the address the route to the
    rendezvous host `peer` leaves from (a connected UDP socket sends nothing)."""
    if single_node:
        return "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((peer, 9))
            return s.getsockname()[0]
        except OSError:
            return socket.gethostbyname(socket.gethostname())


def _rendezvous_host(is_local: bool) -> str:
    if is_local:
        return "127.0.0.1"
    # Across nodes, an address the other nodes can reach; the site may override it.
    host = os.environ.get("ASYNCFLOW_MASTER_ADDR")
    if host:
        return host
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return socket.gethostname()


@dataclass
class Comms:
    layout: Layout
    rank: int
    world: Any  # MPI.Comm
    role_comm: Any  # MPI.Comm of this rank's primary role
    device: Device
    torch_ready: bool = False
    trainer_group: Any = None  # torch.distributed group of all trainer ranks
    trainer_dp_group: Any = None  # torch.distributed group of the data-parallel peers of this rank
    weight_group: Any = None  # topology.pg.StatelessGroup: trainer leader + rollout ranks
    _groups: list = field(default_factory=list)
    _torch_ranks: dict = field(default_factory=dict)  # world rank -> rank in the default torch group

    @property
    def role(self) -> Role:
        return self.layout.role_of(self.rank)

    def where(self) -> str:
        return f"rank {self.rank} ({self.role})"

    @classmethod
    def create(cls, layout: Layout, device_cfg: DeviceConfig, *, init_torch: bool = True,
               local_rank: int = 0, world: Any = None, isolate_rollout: bool = False) -> "Comms":
        MPI = mpi()
        world = world if world is not None else MPI.COMM_WORLD
        rank = world.Get_rank()
        if world.Get_size() != layout.world_size:
            raise RankError(f"layout is for {layout.world_size} ranks but MPI has {world.Get_size()}", rank=rank)
        role = layout.role_of(rank)
        role_comm = world.Split(color=list(Role).index(role), key=rank)
        device = choose_device(device_cfg, local_rank)
        comms = cls(layout=layout, rank=rank, world=world, role_comm=role_comm, device=device)
        if init_torch:
            comms._init_torch(device_cfg, isolate_rollout=isolate_rollout and not layout.colocate)
        return comms

    def _init_torch(self, device_cfg: DeviceConfig, isolate_rollout: bool = False) -> None:
        """torch.distributed for this job. The default group spans every rank, or only the trainer ranks
        when `isolate_rollout` (an in-process vLLM engine on the rollout ranks builds its own default
        group; see topology/pg.py). The weight group is always a StatelessGroup."""
        import torch
        import torch.distributed as dist

        if self.device.kind == "npu":
            import torch_npu  # noqa: F401
        if self.device.kind == "cuda":
            torch.cuda.set_device(self.device.index)
        elif self.device.kind == "npu":
            torch.npu.set_device(self.device.index)
        # Loopback only when every rank really is on this host: a layout planned without node ids
        # (all zeros) must not send ranks on other hosts to their own 127.0.0.1.
        hosts = self.world.allgather(socket.gethostname())
        single_node = len(set(self.layout.nodes)) <= 1 and len(set(hosts)) <= 1
        timeout = datetime.timedelta(seconds=device_cfg.dist_timeout_s)
        members = tuple(sorted(self.layout.trainer_ranks)) if isolate_rollout else tuple(range(self.layout.world_size))
        self._torch_ranks = {r: i for i, r in enumerate(members)}
        host, port, sock = self._rendezvous(single_node, members[0])
        bind_gloo_to(host if self.rank == members[0] else _local_address(single_node, host))
        if self.rank in members:
            store = make_store(host, port, len(members), sock=sock, timeout_s=device_cfg.dist_timeout_s)
            dist.init_process_group(backend=self.device.backend, store=store,
                                    rank=self._torch_ranks[self.rank], world_size=len(members), timeout=timeout)
            self.torch_ready = True
            # new_group is collective over the default group: every member creates every group, in order.
            self.trainer_group = self._group(self.layout.trainer_ranks)
            for dp in self.layout.trainer_dp_groups():
                g = self._group(dp)
                if self.rank in dp:
                    self.trainer_dp_group = g
        wg = self.layout.weight_group()
        if len(wg) > 1:
            host, port, sock = self._rendezvous(single_node, wg[0])
            if self.rank in wg:
                self.weight_group = StatelessGroup(wg, self.rank, host=host, port=port, backend=self.device.backend,
                                                   timeout_s=device_cfg.dist_timeout_s, device=self.device.kind,
                                                   sock=sock)

    def _rendezvous(self, single_node: bool, root: int) -> tuple[str, int, Any]:
        """(host, port, listening socket) of a TCPStore served by world rank `root`, shared with every rank
        (collective over the world). Only `root` gets the socket, bound to `host` alone: loopback on one
        host, the job's address across hosts (never all interfaces)."""
        sock = None
        if self.rank == root:
            host = _rendezvous_host(single_node)
            sock = listen_socket(host)
            addr = (host, sock.getsockname()[1])
        else:
            addr = None
        host, port = self.world.bcast(addr, root=root)
        return host, port, sock

    def _group(self, ranks) -> Any:
        import torch.distributed as dist

        ranks = sorted(ranks)
        if not ranks:
            return None
        g = dist.new_group(ranks=[self._torch_ranks[r] for r in ranks])
        self._groups.append(g)
        return g if self.rank in ranks else None

    def close(self) -> None:
        if self.weight_group is not None and hasattr(self.weight_group, "destroy"):
            self.weight_group.destroy()
            self.weight_group = None
        if self.torch_ready:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.torch_ready = False
        if self.role_comm is not None:
            self.role_comm.Free()
            self.role_comm = None
