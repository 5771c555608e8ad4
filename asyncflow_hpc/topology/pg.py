"""Process groups outside torch.distributed's default world, for the weight broadcast.

    g = StatelessGroup(ranks=(0, 2, 3), rank=2, host="127.0.0.1", port=port, backend="gloo")
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
                 timeout_s: float = 600.0, device: str = "cpu"):
        import torch
        from torch.distributed import PrefixStore, ProcessGroup, TCPStore

        self.ranks = tuple(int(r) for r in ranks)
        if rank not in self.ranks:
            raise ValueError(f"rank {rank} is not a member of the group {self.ranks}")
        self.rank, self.backend, self.size = rank, backend, len(self.ranks)
        self.group_rank = self.ranks.index(rank)
        timeout = datetime.timedelta(seconds=timeout_s)
        store = TCPStore(host, port, self.size, is_master=self.group_rank == 0, timeout=timeout,
                         wait_for_workers=False)
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
