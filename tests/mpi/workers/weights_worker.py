"""MPI worker for tests/mpi/test_weights.py: 3 ranks (trainer leader 0, rollout 1 and 2), several scenarios.

Each scenario runs on its own torch.distributed group, so a scenario that leaves a collective pending
(timeout, layout mismatch) cannot disturb the next. Every rank prints `RESULT <json>` lines.
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch
import torch.distributed as dist

from asyncflow_hpc.errors import WaitTimeout
from asyncflow_hpc.topology.comms import Comms
from asyncflow_hpc.topology.config import DeviceConfig, TopologyConfig
from asyncflow_hpc.topology.roles import plan_layout
from asyncflow_hpc.weights import (ChecksumError, LayoutMismatchError, WeightReceiver, WeightSender,
                                   WeightSyncConfig, plan_for)

SPECS = [("embed", (1024, 512), torch.bfloat16), ("layer0.w", (512, 512), torch.float32),
         ("layer0.b", (512,), torch.float32), ("layer0.step", (3,), torch.int64),
         ("big", (3000, 1024), torch.float32), ("empty", (0, 4), torch.float16), ("head", (257, 300), torch.float16)]


def weights(version: int) -> list[tuple[str, torch.Tensor]]:
    """Deterministic full weights of `version` (every rank can regenerate them to check bit-exactness)."""
    g = torch.Generator().manual_seed(1000 + version)
    out = []
    for name, shape, dt in SPECS:
        if dt.is_floating_point:
            t = torch.randn(shape, generator=g).to(dt)
        else:
            t = torch.randint(-2**40, 2**40, shape, generator=g, dtype=dt)
        out.append((name, t))
    return out


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes of a tensor (bit-exact comparison, -0.0 != 0.0)."""
    return t.contiguous().reshape(-1).view(torch.uint8)


def emit(rank: int, scenario: str, **data) -> None:
    """One result line. With WEIGHTS_RESULTS set, into this rank's own file: lines that several ranks
    print at once can interleave in mpiexec's merged stdout."""
    line = "RESULT " + json.dumps({"rank": rank, "scenario": scenario, **data})
    out_dir = os.environ.get("WEIGHTS_RESULTS")
    if out_dir:
        with open(os.path.join(out_dir, f"rank-{rank}.txt"), "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
    else:
        print(line, flush=True)


def busy(n: int = 1) -> None:
    a = torch.randn(96, 96)
    for _ in range(n):
        a = torch.tanh(a @ a)


def roundtrip(comms: Comms, group, rank: int, versions: int = 3) -> None:
    cfg = WeightSyncConfig(bucket_mb=1.0, timeout_s=30, version_wait_s=60)
    plan = plan_for(weights(0), cfg)
    if rank == 0:
        sender = WeightSender(group, plan, src=0, rank=0, cfg=cfg)
        overlap = []
        for v in range(1, versions + 1):
            handle = sender.send_async(weights(v), v)
            steps = 0
            while not handle.done():  # the trainer keeps training while the send is in flight
                busy()
                steps += 1
            overlap.append(steps)
            st = handle.wait()
            time.sleep(0.3)  # let receivers swap before the next version (they also check newest-wins)
        sender.close()
        emit(rank, "roundtrip", n_buckets=len(plan.buckets), nbytes=plan.total_bytes, overlap=overlap,
             send_s=st.send_s)
        return
    recv = WeightReceiver(group, plan, src=0, rank=rank, cfg=cfg, last_version=0)
    recv.start()
    applied, exact, stamps = [], [], []

    def load_weights(named, version):
        want = weights(version)
        exact.append([n for n, _ in named] == [n for n, _ in want] and all(
            t.dtype == w.dtype and t.shape == w.shape and torch.equal(bits(t), bits(w))
            for (_, t), (_, w) in zip(named, want)))
        applied.append(version)

    deadline = time.monotonic() + 60
    while recv.applied_version < versions and time.monotonic() < deadline:
        busy()  # one "generation step" on the old weights
        stamps.append(time.monotonic())  # a generation boundary
        if recv.poll() is not None:
            recv.swap(load_weights)
    recv.close()
    # Generation boundaries passed while a version was being received (header .. staged): the overlap.
    during = [sum(1 for t in stamps if s.t_header <= t <= s.t_staged) for s in recv.stats]
    emit(rank, "roundtrip", applied=applied, exact=exact, boundaries=len(stamps), during_recv=during,
         swap_s=[s.swap_s for s in recv.stats], recv_s=[s.recv_s for s in recv.stats],
         verify_s=[s.verify_s for s in recv.stats], skipped=recv.skipped_versions)


def _corrupt_then_next(group, rank: int, name: str, plan, cfg, damaged: int, pick, prepacked: bool = False,
                       **info) -> None:
    """Version 1 with bucket `damaged` corrupted after its checksum was taken, then version 2: the receiver
    names the bad bucket and still receives version 2 bit-exact (the stream stays in step). prepacked=True:
    pack() then send_async(None) (checksums inline in the control message, overflow for very many
    buckets); else send() streams (checksums in the trailer after the last bucket)."""
    if rank == 0:
        sender = WeightSender(group, plan, src=0, rank=0, cfg=cfg)
        sender.inject_corruption(damaged)
        streamed = []
        for v in (1, 2):
            if prepacked:
                sender.pack(pick(v))
                streamed.append(sender.send_async(None, v).wait().streamed)
            else:
                streamed.append(sender.send(pick(v), v).streamed)
        emit(rank, name, sent=[1, 2], streamed=streamed, **info)
        return
    recv = WeightReceiver(group, plan, src=0, rank=rank, cfg=cfg, last_version=0)
    err = None
    try:
        recv.receive()
    except ChecksumError as exc:
        err = {"type": type(exc).__name__, "msg": str(exc), "bucket": exc.bucket, "version": exc.version}
    after = recv.receive()
    got = []
    recv.swap(lambda named, v: got.append(all(torch.equal(bits(t), bits(w)) for (_, t), (_, w) in zip(named, pick(v)))))
    emit(rank, name, error=err, after=after, exact_after=got)


def corrupt(group, rank: int) -> None:
    cfg = WeightSyncConfig(bucket_mb=1.0, timeout_s=30, version_wait_s=30)
    _corrupt_then_next(group, rank, "corrupt", plan_for(weights(0), cfg), cfg, 2, weights)


def corrupt_inline(group, rank: int) -> None:
    cfg = WeightSyncConfig(bucket_mb=1.0, timeout_s=30, version_wait_s=30)
    _corrupt_then_next(group, rank, "corrupt_inline", plan_for(weights(0), cfg), cfg, 2, weights, prepacked=True)


def aborted(group, rank: int) -> None:
    """A streamed send whose iterator fails after buckets went out (the trainer's gather raised): the sender
    raises that error, the receivers discard the version in step, and version 2 arrives bit-exact. A
    failure on the first tensor puts nothing on the wire."""
    cfg = WeightSyncConfig(bucket_mb=1.0, timeout_s=30, version_wait_s=30)
    plan = plan_for(weights(0), cfg)
    if rank == 0:
        sender = WeightSender(group, plan, src=0, rank=0, cfg=cfg)

        def failing(v, after):
            for i, item in enumerate(weights(v)):
                if i == after:
                    raise RuntimeError(f"gather failed after {after} tensors")
                yield item

        errors = []
        for after in (0, 5):  # 0: before the header; 5: 'big' and later never packed, header and buckets sent
            try:
                sender.send(failing(1 + (after > 0), after), 1 + (after > 0))
            except RuntimeError as exc:
                errors.append(str(exc))
        sender.send(weights(3), 3)
        sender.close()
        emit(rank, "aborted", errors=errors, n_buckets=len(plan.buckets))
        return
    recv = WeightReceiver(group, plan, src=0, rank=rank, cfg=cfg, last_version=0)
    got = recv.receive()  # the aborted version 2 is received and discarded inside; version 3 is staged
    exact = []
    recv.swap(lambda named, v: exact.append(all(torch.equal(bits(t), bits(w))
                                                for (_, t), (_, w) in zip(named, weights(v)))))
    end = recv.receive()
    emit(rank, "aborted", got=got, exact=exact, aborted=recv.aborted_versions, end=end)


def overflow(group, rank: int) -> None:
    """More buckets than the control message holds checksums for: the rest travel in the overflow message
    (the inline form: pack() then send_async(None))."""
    from asyncflow_hpc.weights.wire import INLINE_SUMS

    small = [(n, t) for n, t in weights(0) if t.numel() * t.element_size() <= 1_100_000]  # ~1.2 MB
    cfg = WeightSyncConfig(bucket_mb=4 / 1024, timeout_s=30, version_wait_s=30)  # 4 KiB buckets
    plan = plan_for(small, cfg)
    bad_bucket = INLINE_SUMS + 7  # a bucket whose checksum travels in the overflow
    assert len(plan.buckets) > bad_bucket + 1, plan.describe()
    names = dict(small)
    _corrupt_then_next(group, rank, "overflow", plan, cfg, bad_bucket,
                       lambda v: [(n, t) for n, t in weights(v) if n in names], prepacked=True,
                       n_buckets=len(plan.buckets), inline=INLINE_SUMS, bad=bad_bucket)


def single(group, rank: int) -> None:
    """One staging buffer holding an unswapped version: bucket 0 cannot be posted early (it would clobber
    the staged copy), so the receiver posts it after the header, and drains STOP's bucket 0 into scratch."""
    cfg = WeightSyncConfig(bucket_mb=1.0, timeout_s=30, version_wait_s=30, staging_buffers=1)
    plan = plan_for(weights(0), cfg)
    if rank == 0:
        sender = WeightSender(group, plan, src=0, rank=0, cfg=cfg)
        for v in (1, 2, 3):
            sender.send(weights(v), v)
        sender.close()
        emit(rank, "single", sent=[1, 2, 3])
        return
    recv = WeightReceiver(group, plan, src=0, rank=rank, cfg=cfg, last_version=0)
    exact = []
    check = lambda named, v: exact.append(  # noqa: E731
        (v, all(torch.equal(bits(t), bits(w)) for (_, t), (_, w) in zip(named, weights(v)))))
    got = [recv.receive()]
    recv.swap(check)  # v1 swapped: nothing staged, so v2's bucket 0 goes early
    got += [recv.receive(), recv.receive()]  # v3 arrives while v2 is staged and unswapped: not early
    got.append(recv.receive())  # STOP (+ bucket 0 into scratch: v3 stays staged)
    recv.swap(check)
    emit(rank, "single", got=got, exact=exact, skipped=recv.skipped_versions)


def layout(group, rank: int) -> None:
    cfg = WeightSyncConfig(bucket_mb=1.0, timeout_s=3, version_wait_s=30)
    if rank == 0:
        plan = plan_for(weights(0), cfg)
        sender = WeightSender(group, plan, src=0, rank=0, cfg=cfg)
        try:
            sender.send(weights(1), 1)
            outcome = "sent"
        except WaitTimeout as exc:  # nobody receives the buckets: either is acceptable
            outcome = str(exc)
        emit(rank, "layout", outcome=outcome)
        return
    other = WeightSyncConfig(bucket_mb=0.5, timeout_s=3, version_wait_s=30)
    recv = WeightReceiver(group, plan_for(weights(0), other), src=0, rank=rank, cfg=other)
    try:
        recv.receive()
        emit(rank, "layout", error=None)
    except LayoutMismatchError as exc:
        emit(rank, "layout", error=str(exc))


def timeout(group, rank: int) -> None:
    cfg = WeightSyncConfig(bucket_mb=1.0, timeout_s=2, version_wait_s=2)
    plan = plan_for(weights(0), cfg)
    if rank == 0:
        emit(rank, "timeout", sent=False)  # the leader never sends
        return
    recv = WeightReceiver(group, plan, src=0, rank=rank, cfg=cfg, last_version=0)
    recv.start()
    t0 = time.monotonic()
    try:
        recv.wait_staged(1, timeout_s=30)
        emit(rank, "timeout", error=None)
    except WaitTimeout as exc:
        emit(rank, "timeout", error=str(exc), type=type(exc).__name__, elapsed=time.monotonic() - t0)
    recv.close()


def main(argv: list[str]) -> int:
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    layout_ = plan_layout(world.Get_size(), TopologyConfig(trainer_ranks=1))
    comms = Comms.create(layout_, DeviceConfig(kind="cpu", dist_timeout_s=120))
    rank = comms.rank
    torch.set_num_threads(1)
    scenarios = argv or ["roundtrip", "corrupt", "corrupt_inline", "aborted", "overflow", "single", "layout",
                         "timeout"]
    for name in scenarios:
        # A fresh group per scenario: new_group is collective over the default group, so every rank calls it.
        group = comms.weight_group if name == "roundtrip" else dist.new_group(list(layout_.weight_group()))
        {"roundtrip": lambda: roundtrip(comms, group, rank), "corrupt": lambda: corrupt(group, rank),
         "corrupt_inline": lambda: corrupt_inline(group, rank), "aborted": lambda: aborted(group, rank),
         "overflow": lambda: overflow(group, rank), "single": lambda: single(group, rank),
         "layout": lambda: layout(group, rank),
         "timeout": lambda: timeout(group, rank)}[name]()
        world.Barrier()
    comms.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
