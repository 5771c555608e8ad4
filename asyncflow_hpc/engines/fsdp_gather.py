"""Full tensors from FSDP2 shards, gathered onto one rank bucket by bucket (the weight broadcast's source).

    for name, full in gather_buckets(named, group, leader, bucket_bytes):   # EVERY rank of `group` iterates
        ...                                                                 # only the leader gets items

A bucket is a run of tensors of one dtype whose full sizes add up to at most `bucket_bytes` (a larger
tensor is a bucket by itself). Per bucket each rank packs its Shard(0) pieces, padded to ceil(d0/T)
rows, into one flat buffer, and one `dist.gather` brings the T buffers to the leader, which cuts full
tensors out of them one at a time. The leader's extra memory is the gather buffer of one bucket plus
the one full tensor it has yielded: at most about two buckets (`stats.last_gather_peak_bytes`, and
`stats.last_gather_peak_buckets` in units of the bucket being gathered).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Iterator


def _local_and_rows(t: Any, size: int) -> tuple[Any, int] | None:
    """(local piece, padded rows per rank) of a Shard(0) DTensor on a 1-D mesh; None for a whole tensor."""
    from torch.distributed.tensor import DTensor, Shard

    if not isinstance(t, DTensor):
        return None
    if len(t.placements) != 1 or not isinstance(t.placements[0], Shard) or t.placements[0].dim != 0:
        if all(not isinstance(p, Shard) for p in t.placements):
            return None
        raise ValueError(f"gather_buckets: placements {t.placements} not supported (1-D Shard(0) only)")
    return t.to_local(), math.ceil(t.shape[0] / size) if t.dim() else 0


def _pack_local(pieces: list, dtype: Any, device: str) -> Any:
    """This rank's Shard(0) pieces of one bucket in one flat buffer, each padded to its ceil(d0/T) rows."""
    import torch

    sizes = [lr[1] * t.shape[1:].numel() for _, t, lr in pieces if lr is not None]
    if not sizes:
        return None
    flat = torch.empty(sum(sizes), dtype=dtype, device=device)
    off = 0
    for (_, t, lr), n in zip([p for p in pieces if p[2] is not None], sizes):
        local = lr[0].detach().reshape(-1)
        flat[off:off + local.numel()].copy_(local)
        flat[off + local.numel():off + n].zero_()
        off += n
    return flat


def plan_buckets(named: list[tuple[str, Any]], bucket_bytes: int) -> list[list[tuple[str, Any]]]:
    """Consecutive runs of one dtype whose full sizes add up to at most bucket_bytes (at least one tensor)."""
    out: list[list[tuple[str, Any]]] = []
    size = 0
    for name, t in named:
        nbytes = t.numel() * t.element_size()
        if out and out[-1][0][1].dtype == t.dtype and size + nbytes <= bucket_bytes:
            out[-1].append((name, t))
            size += nbytes
        else:
            out.append([(name, t)])
            size = nbytes
    return out


def gather_buckets(named: Iterable[tuple[str, Any]], group: Any, leader: int, bucket_bytes: int,
                   stats: Any = None, everywhere: bool = False, device: str = "cpu") -> Iterator[tuple[str, Any]]:
    """Yield (name, full tensor) on the global rank `leader`; run the same gathers, yielding nothing, elsewhere.
    everywhere=True: every rank gets the full tensors (all_gather; colocated rollout engines). `device`:
    where the gather buffers live (the rank's accelerator under NCCL/HCCL, even with CPU offload); the
    yielded tensors live there too (WeightSender.pack copies them into its host buffer)."""
    import torch
    import torch.distributed as dist

    size = dist.get_world_size(group)
    is_leader = everywhere or dist.get_rank() == leader
    peak, peak_buckets = 0, 0.0
    for bucket in plan_buckets(list(named), bucket_bytes):
        pieces = [(n, t, _local_and_rows(t, size)) for n, t in bucket]
        flat = _pack_local(pieces, bucket[0][1].dtype, device)
        gathered = None
        if flat is not None and size == 1:
            gathered = [flat]
        elif flat is not None:
            gathered = [torch.empty_like(flat) for _ in range(size)] if is_leader else None
            if everywhere:
                dist.all_gather(gathered, flat, group=group)
            else:
                dist.gather(flat, gather_list=gathered, dst=leader, group=group)
        del flat
        if not is_leader:
            continue
        held = sum(g.numel() * g.element_size() for g in gathered) if gathered else 0
        unit = max(bucket_bytes, sum(t.numel() * t.element_size() for _, t in bucket))  # a big tensor: own bucket
        off = 0
        for name, t, lr in pieces:
            if lr is None:
                full = (t.full_tensor() if hasattr(t, "full_tensor") else t).detach()
            else:
                rows = lr[1]
                n = rows * t.shape[1:].numel()
                parts = [g[off:off + n].view(rows, *t.shape[1:]) for g in gathered]
                full = (parts[0] if size == 1 else torch.cat(parts))[:t.shape[0]]
                off += n
            extra = held + full.numel() * full.element_size()
            peak, peak_buckets = max(peak, extra), max(peak_buckets, extra / unit)
            if stats is not None:
                stats.last_gather_peak_bytes, stats.last_gather_peak_buckets = peak, peak_buckets
            yield name, full
            del full
        del gathered
