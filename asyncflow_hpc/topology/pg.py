"""Process groups outside torch.distributed's default world, for the weight broadcast.

    sock = listen_socket("127.0.0.1") if rank == 0 else None      # the first member binds; share its port
    g = StatelessGroup(ranks=(0, 2, 3), rank=rank, host="127.0.0.1", port=port, backend="gloo", sock=sock)
    work = group_broadcast(g, tensor, src=0)       # src is a global (MPI) rank, as with dist.broadcast
    work.wait(); g.destroy()

Why: an in-process vLLM engine builds its own parallel state on torch.distributed's default group
(vllm.distributed.parallel_state: `init_process_group` if none exists, then `new_group` calls that
are collective over every rank of that group). If the job's default group spanned every rank, each
rank would have to build an engine at the same point, trainers included. So the rollout ranks of an
AsyncFlow job with a vLLM engine keep out of the default group (vLLM makes its own, of one rank, or
of its tensor-parallel size), and the trainer leader reaches them through this group: a TCPStore
rendezvous and a backend object (gloo / NCCL / HCCL) registered on a bare `ProcessGroup`, the same
construction vLLM uses for its RLHF weight-transfer groups. Collectives go through the group's own
methods (`ProcessGroup.broadcast`), since `dist.broadcast(group=...)` accepts only registered groups.
"""

from __future__ import annotations

import datetime
from typing import Any, Sequence


class StatelessGroup:
    """A torch ProcessGroup over `ranks` (global MPI ranks, in group order) that torch.distributed's
    default world does not know about. Construct on every member with the same host/port."""

    def __init__(self, ranks: Sequence[int], rank: int, *, host: str, port: int, backend: str,
                 timeout_s: float = 600.0, device: str = "cpu", sock: Any = None):
        """`sock`: on the group's first rank, the listening socket of listen_socket(host)."""
        import torch
        from torch.distributed import PrefixStore, ProcessGroup

        self.ranks = tuple(int(r) for r in ranks)
        if rank not in self.ranks:
            raise ValueError(f"rank {rank} is not a member of the group {self.ranks}")
        self.rank, self.backend, self.size = rank, backend, len(self.ranks)
        self.group_rank = self.ranks.index(rank)
        timeout = datetime.timedelta(seconds=timeout_s)
        if (sock is not None) != (self.group_rank == 0):
            raise ValueError("the group's first rank (and only it) passes the listening socket")
        store = make_store(host, port, self.size, sock=sock, timeout_s=timeout_s)
        self._store = PrefixStore(f"asyncflow-pg-{'-'.join(map(str, self.ranks))}", store)
        pg = ProcessGroup(self._store, self.group_rank, self.size)
        be, btype, dev = _backend(backend, self._store, self.group_rank, self.size, timeout, device)
        pg._set_default_backend(btype)
        be._set_sequence_number_for_group()
        pg._register_backend(torch.device(dev), btype, be)
        self.pg = pg

    def broadcast(self, tensor: Any, src: int) -> Any:
        """Start a broadcast from global rank `src`; returns the Work to wait on."""
        import torch.distributed as dist

        opts = dist.BroadcastOptions()
        opts.rootRank = self.ranks.index(src)
        opts.rootTensor = 0
        return self.pg.broadcast([tensor], opts)

    def destroy(self) -> None:
        self.pg = None
        self._store = None


def listen_socket(host: str) -> Any:
    """A TCP socket bound to `host` (never all interfaces) on a free port, listening: the root of a rendezvous
    binds it first, shares its port, then hands it to the TCPStore server (master_listen_fd)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(128)
    return sock


def make_store(host: str, port: int, size: int, *, sock: Any = None, timeout_s: float = 600.0) -> Any:
    """A TCPStore: the server (the rank holding `sock` from listen_socket) listens only on that socket's
    address (torch would otherwise listen on every interface, IPv4 and IPv6); clients connect to host:port."""
    from torch.distributed import TCPStore

    kw: dict[str, Any] = {}
    if sock is not None:
        kw["master_listen_fd"] = sock.detach()  # the store owns the descriptor from here on
    return TCPStore(host, port, size, is_master=sock is not None, timeout=datetime.timedelta(seconds=timeout_s),
                    wait_for_workers=False, **kw)


def bind_gloo_to(host: str) -> None:
    """Make gloo listen on the interface that holds `host` (loopback on one host) instead of the address the
    host name resolves to. GLOO_SOCKET_IFNAME set by the user or the site wins."""
    import os

    if os.environ.get("GLOO_SOCKET_IFNAME"):
        return
    name = interface_of(host)
    if name:
        os.environ["GLOO_SOCKET_IFNAME"] = name


def interface_of(ip: str) -> str | None:
    """The name of the local interface that holds IPv4 address `ip` (Linux), or None."""
    import fcntl
    import socket
    import struct

    if ip.startswith("127."):
        return "lo"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                req = struct.pack("256s", name.encode()[:15])
                addr = socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x8915, req)[20:24])  # SIOCGIFADDR
            except OSError:
                continue
            if addr == ip:
                return name
    return None


def _backend(name: str, store: Any, rank: int, size: int, timeout: datetime.timedelta, device: str):
    """(backend object, backend type, torch device type) for gloo on CPU, NCCL on CUDA, HCCL on NPU."""
    import torch.distributed as dist
    from torch.distributed import ProcessGroup

    if name == "gloo":
        return dist.ProcessGroupGloo(store, rank, size, timeout), ProcessGroup.BackendType.GLOO, "cpu"
    if name == "nccl":
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, size, opts), ProcessGroup.BackendType.NCCL, "cuda"
    if name == "hccl":  # as vllm-ascend builds its stateless groups; torch_npu provides the class
        from torch_npu._C._distributed_c10d import ProcessGroupHCCL

        opts = ProcessGroupHCCL.Options()
        opts._timeout = timeout
        return ProcessGroupHCCL(store, rank, size, opts), ProcessGroup.BackendType.CUSTOM, "npu"
    raise ValueError(f"no stateless process group for backend {name!r} (gloo, nccl, hccl)")


def group_broadcast(group: Any, tensor: Any, src: int) -> Any:
    """Async broadcast from global rank `src` over a registered torch.distributed group or a
    StatelessGroup; returns the Work."""
    if isinstance(group, StatelessGroup):
        return group.broadcast(tensor, src)
    import torch.distributed as dist

    return dist.broadcast(tensor, src=src, group=group, async_op=True)


def group_backend(group: Any) -> str:
    if isinstance(group, StatelessGroup):
        return group.backend
    import torch.distributed as dist

    return str(dist.get_backend(group))
