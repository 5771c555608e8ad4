"""Full tensors from FSDP2 shards, gathered onto one rank bucket by bucket (the weight broadcast's source).

    for name, full in gather_buckets(named, group, leader, bucket_bytes):   # EVERY rank of `group` iterates
        ...                                                                 # only the leader gets items

A bucket is a run of tensors of one dtype whose full sizes add up to at most `bucket_bytes` (a larger
tensor is a bucket by itself). Per bucket each follower packs its Shard(0) rows of every tensor of the
bucket (no padding) into one buffer and sends it to the leader point to point (isend/irecv: no gloo
gather temporary, no padded copies); the leader assembles each full tensor from its own shard and the
received rows, one copy per byte. Transfers run ahead: while the leader assembles bucket k (and its
consumer -- WeightSender -- checksums and broadcasts it), buckets k+1.. are already on the wire (as many
as fit in PREFETCH_BUCKETS = 1.5 buckets of receive buffers: 2 ahead at T=2, 1 at T=4), and each
follower packs bucket k+1 while bucket k is in flight. One message per bucket, not per
tensor: measured here, 74 per-tensor messages of 10 MB in all took ~3x as long as one message.

Two ways to consume it on the leader:
- iterate: `(name, full tensor)`, each a fresh tensor;
- `write_into(dest)`: `dest(name, shape, dtype)` returns where that tensor goes (e.g. a view into the
  WeightSender's flat snapshot buffer) or None; a tensor with a destination is assembled straight into
  it (no intermediate full tensor) and yielded as `(name, None)`. WeightSender.pack/send_async use this
  when the iterable offers it.

The leader's extra memory (`stats.last_gather_peak_bytes`, and `stats.last_gather_peak_buckets` in units
of the bucket being assembled): the receive buffers of the current and the prefetched buckets, (T-1)/T
of a bucket each (at most 1.5 buckets with write_into), plus, when iterating, the fresh tensor being
yielded (one bucket ahead at most, and only while that stays within two buckets). everywhere=True
(colocated engines: every rank needs the full tensors) keeps one all_gather per bucket, not prefetched.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Callable, Iterable, Iterator


def _local_and_rows(t: Any, size: int) -> tuple[Any, int] | None:
    """(local piece, padded rows per rank) of a Shard(0) DTensor on a 1-D mesh; None for a whole tensor."""
    from torch.distributed.tensor import DTensor, Shard

    if not isinstance(t, DTensor):
        return None
    if len(t.placements) != 1 or not isinstance(t.placements[0], Shard) or t.placements[0].dim != 0:
        if all(not isinstance(p, Shard) for p in t.placements):
            return None
        raise ValueError(f"gather_buckets: placements {t.placements} not supported (1-D Shard(0) only)")
    # The local tensor itself: to_local() goes through an autograd Function (~30 us a call, per tensor per sync).
    local = getattr(t, "_local_tensor", None)
    return (t.to_local() if local is None else local), math.ceil(t.shape[0] / size) if t.dim() else 0


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


Dest = Callable[[str, tuple, Any], Any]
# Receive buffers the leader may hold when assembling into a destination, in buckets. Measured at T=2 under
# load: 1 bucket ahead 0.59-0.74, 3 ahead (2.0 buckets held) 0.56-0.72 -- no gain worth the memory.
PREFETCH_BUCKETS = 1.5


class GatherStream:
    """What gather_buckets returns: iterate it for (name, full tensor), or `write_into(dest)` (see module doc).
    EVERY rank of the group must exhaust exactly one of the two; only the leader gets items."""

    def __init__(self, named: Iterable[tuple[str, Any]], group: Any, leader: int, bucket_bytes: int,
                 stats: Any = None, everywhere: bool = False, device: str = "cpu"):
        self.named, self.group, self.leader, self.bucket_bytes = list(named), group, leader, bucket_bytes
        self.stats, self.everywhere, self.device = stats, everywhere, device
        self._used = False

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return self._run(None)

    def write_into(self, dest: Dest) -> Iterator[tuple[str, Any]]:
        """Like iterating, but a tensor for which dest(name, shape, dtype) returns a tensor is assembled
        straight into it and yielded as (name, None); the others as (name, full tensor)."""
        return self._run(dest)

    def _run(self, dest: Dest | None) -> Iterator[tuple[str, Any]]:
        if self._used:
            raise RuntimeError("a GatherStream is consumed once (it runs collectives on every trainer rank)")
        self._used = True
        if self.everywhere:
            return self._all_gather()
        return self._to_leader(dest)

    def _record(self, extra: int, unit: int) -> None:
        peak = max(getattr(self, "_peak", 0), extra)
        peak_b = max(getattr(self, "_peak_b", 0.0), extra / unit)
        self._peak, self._peak_b = peak, peak_b
        if self.stats is not None:
            self.stats.last_gather_peak_bytes, self.stats.last_gather_peak_buckets = peak, peak_b

    # -- leader only: prefetched point-to-point transfers -------------------------------------------
    def _to_leader(self, dest: Dest | None) -> Iterator[tuple[str, Any]]:
        import torch
        import torch.distributed as dist

        group, size = self.group, dist.get_world_size(self.group)
        me = dist.get_rank()
        ranks = dist.get_process_group_ranks(group) if size > 1 else [me]
        lead_idx = ranks.index(self.leader)
        buckets = [[(n, t, _local_and_rows(t, size)) for n, t in b]
                   for b in plan_buckets(self.named, self.bucket_bytes)]
        self._record(0, max(1, self.bucket_bytes))

        def span(r: int, t: Any, rows: int) -> tuple[int, int]:  # rank r's rows [lo, hi) of a Shard(0) tensor
            lo = min(r * rows, t.shape[0])
            return lo, min(lo + rows, t.shape[0])

        def length(r: int, pieces) -> int:  # elements of rank r's rows of one bucket (no padding)
            return sum((lambda lo, hi: (hi - lo) * t.shape[1:].numel())(*span(r, t, lr[1]))
                       for _, t, lr in pieces if lr is not None)

        if me != self.leader:
            # Follower: one message per bucket (its rows of every tensor, packed), at most three in flight,
            # so it packs bucket k+1 while bucket k is on the wire. Measured here: 74 per-tensor messages took
            # 3x as long as one message of the same 10 MB.
            mine = ranks.index(me)
            inflight: deque = deque()
            for pieces in buckets:
                n = length(mine, pieces)
                if n == 0:
                    continue
                flat = torch.empty(n, dtype=pieces[0][1].dtype, device=self.device)
                off = 0
                for _, t, lr in pieces:
                    if lr is None:
                        continue
                    lo, hi = span(mine, t, lr[1])
                    k = (hi - lo) * t.shape[1:].numel()
                    if k:
                        flat[off:off + k].copy_(lr[0].detach()[: hi - lo].reshape(-1))
                    off += k
                if len(inflight) >= 3:
                    inflight.popleft()[0].wait()
                inflight.append((dist.isend(flat, dst=self.leader, group=group), flat))
            while inflight:
                inflight.popleft()[0].wait()
            return

        def post(pieces):  # the receive buffer and work of every follower's rows of one bucket
            out = {}
            for r in range(size):
                n = length(r, pieces) if r != lead_idx else 0
                if n:
                    buf = torch.empty(n, dtype=pieces[0][1].dtype, device=self.device)
                    out[r] = (buf, dist.irecv(buf, src=ranks[r], group=group))
            return out

        def nbytes(posted) -> int:
            return sum(b.numel() * b.element_size() for b, _ in posted.values()) if posted else 0

        def recv_bytes(pieces) -> int:
            return sum(length(r, pieces) for r in range(size) if r != lead_idx) * pieces[0][1].element_size()

        posted: deque = deque()  # receives posted for buckets k, k+1, ... (bucket k first)
        for k, pieces in enumerate(buckets):
            if not posted:
                posted.append(post(pieces))
            unit = max(self.bucket_bytes, sum(t.numel() * t.element_size() for _, t, _ in pieces))
            biggest = 0 if dest is not None else max((t.numel() * t.element_size() for _, t, _ in pieces), default=0)
            # Prefetch while the leader's buffers stay small. write_into: receive buffers only, within
            # PREFETCH_BUCKETS * bucket_bytes (2 buckets ahead at T=2, 1 at T=4). Iterating: one bucket ahead,
            # and only if its buffers + this bucket's + the largest fresh tensor fit in two of this bucket.
            while k + len(posted) < len(buckets):
                nxt = recv_bytes(buckets[k + len(posted)])
                if dest is None:
                    if len(posted) > 1 or nbytes(posted[0]) + nxt + biggest > 2 * unit:
                        break
                elif sum(map(nbytes, posted)) + nxt > PREFETCH_BUCKETS * self.bucket_bytes:
                    break
                posted.append(post(buckets[k + len(posted)]))
            held = sum(map(nbytes, posted))
            current = posted[0]
            for _, w in current.values():
                w.wait()
            offs = dict.fromkeys(current, 0)
            for name, t, lr in pieces:
                if lr is None:  # a whole tensor on every rank
                    whole = (t.full_tensor() if hasattr(t, "full_tensor") else t).detach()
                    out = dest(name, tuple(whole.shape), whole.dtype) if dest is not None else None
                    if out is not None:
                        out.copy_(whole)
                    self._record(held, unit)
                    yield (name, None) if out is not None else (name, whole)
                    continue
                out = dest(name, tuple(t.shape), t.dtype) if dest is not None else None
                fresh = out is None
                if fresh:
                    out = torch.empty(t.shape, dtype=t.dtype, device=self.device)
                rest = t.shape[1:]
                for r in range(size):
                    lo, hi = span(r, t, lr[1])
                    if hi <= lo:
                        continue
                    if r == lead_idx:
                        src = lr[0].detach()[: hi - lo]
                    else:
                        n = (hi - lo) * rest.numel()
                        src = current[r][0][offs[r]:offs[r] + n].view(hi - lo, *rest)
                        offs[r] += n
                    out[lo:hi].copy_(src)
                self._record(held + (out.numel() * out.element_size() if fresh else 0), unit)
                yield (name, out) if fresh else (name, None)
                del out
            posted.popleft()
            del current

    # -- every rank: one all_gather per bucket (colocated rollout engines) --------------------------
    def _all_gather(self) -> Iterator[tuple[str, Any]]:
        import torch
        import torch.distributed as dist

        size = dist.get_world_size(self.group)
        for bucket in plan_buckets(self.named, self.bucket_bytes):
            pieces = [(n, t, _local_and_rows(t, size)) for n, t in bucket]
            flat = _pack_local(pieces, bucket[0][1].dtype, self.device)
            gathered = None
            if flat is not None and size == 1:
                gathered = [flat]
            elif flat is not None:
                gathered = [torch.empty_like(flat) for _ in range(size)]
                dist.all_gather(gathered, flat, group=self.group)
            del flat
            held = sum(g.numel() * g.element_size() for g in gathered) if gathered else 0
            unit = max(self.bucket_bytes, sum(t.numel() * t.element_size() for _, t in bucket))
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
                self._record(held + full.numel() * full.element_size(), unit)
                yield name, full
                del full
            del gathered


def gather_buckets(named: Iterable[tuple[str, Any]], group: Any, leader: int, bucket_bytes: int,
                   stats: Any = None, everywhere: bool = False, device: str = "cpu") -> GatherStream:
    """Yield (name, full tensor) on the global rank `leader`; run the same transfers, yielding nothing, elsewhere.
    everywhere=True: every rank gets the full tensors (all_gather; colocated rollout engines). `device`:
    where the transfer buffers live (the rank's accelerator under NCCL/HCCL, even with CPU offload); the
    yielded tensors live there too (WeightSender.pack copies them into its host buffer). The result is a
    GatherStream: iterate it, or hand it to WeightSender, which assembles the tensors straight into its
    snapshot buffer (`write_into`)."""
    return GatherStream(named, group, leader, bucket_bytes, stats=stats, everywhere=everywhere, device=device)
