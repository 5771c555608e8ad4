"""Checksum, header checks (version monotone, layout hash), config, and the timed wait (no process group)."""

from __future__ import annotations

import threading
import time

import pytest

from asyncflow_hpc.errors import ConfigError, WaitTimeout
from asyncflow_hpc.weights.buckets import TensorSpec, plan_buckets
from asyncflow_hpc.weights.config import WeightSyncConfig
from asyncflow_hpc.weights.errors import LayoutMismatchError, VersionError, WeightSyncError
from asyncflow_hpc.weights.wire import (CONTROL_WORDS, HEADER_WORDS, INLINE_SUMS, KIND_STOP, KIND_WEIGHTS, MAGIC,
                                        Header, Stopped, check_header, control_words, decode_header, pipeline,
                                        sum_slice, wait_work)

torch = pytest.importorskip("torch")

from asyncflow_hpc.weights.checksum import BLOCK, blocksum64, bucket_checksum  # noqa: E402
from asyncflow_hpc.weights.flat import FlatBuffer, plan_for  # noqa: E402


def words(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-2**62, 2**62, (n,), generator=g, dtype=torch.int64)


def test_blocksum_matches_reference_mod_2_64():
    w = words(3 * BLOCK + 17)
    vals = [int(x) for x in w.tolist()]
    rows = [sum(vals[i:i + BLOCK]) for i in range(0, len(vals), BLOCK)]
    wrap = lambda x: (x + 2**63) % 2**64 - 2**63  # noqa: E731
    assert blocksum64(w) == (wrap(sum(rows)), wrap(sum((i + 1) * r for i, r in enumerate(rows))))


def test_blocksum_detects_bit_flips_and_block_swaps():
    w = words(4 * BLOCK, seed=1)
    ref = blocksum64(w)
    for pos in (0, BLOCK + 3, 4 * BLOCK - 1):
        for bit in (0, 31, 63):
            bad = w.clone()
            bad[pos] ^= (1 << bit) if bit < 63 else -2**63
            assert blocksum64(bad) != ref
    swapped = torch.cat([w[BLOCK:2 * BLOCK], w[:BLOCK], w[2 * BLOCK:]])
    assert blocksum64(swapped)[0] == ref[0] and blocksum64(swapped) != ref  # s2 catches moved blocks
    zeroed = w.clone()
    zeroed[-100:] = 0
    assert blocksum64(zeroed) != ref


def test_bucket_checksum_on_uint8_views_and_none():
    b = words(1000).view(torch.uint8)
    assert bucket_checksum(b, "blocksum64") == blocksum64(b.view(torch.int64))
    assert bucket_checksum(b, "none") == (0, 0)
    with pytest.raises(ValueError):
        bucket_checksum(b, "crc")


def test_flat_buffer_views_alias_the_buffer():
    named = [("a", torch.randn(3, 5)), ("b", torch.arange(7, dtype=torch.int64)), ("c", torch.randn(4).half())]
    plan = plan_for(named, WeightSyncConfig(bucket_mb=1e-4))
    flat = FlatBuffer(plan)
    for i, (_, t) in enumerate(named):
        flat.tensor(i).copy_(t)
    got = dict(flat.named())
    assert all(torch.equal(got[n], t) for n, t in named)
    assert flat.data.data_ptr() <= got["b"].data_ptr() < flat.data.data_ptr() + plan.total_bytes


def _hdr(**kw):
    plan = plan_buckets([TensorSpec("a", (10,), "float32")], 1024)
    base = dict(kind=KIND_WEIGHTS, version=3, layout_hash=plan.layout_hash, n_buckets=1, total_bytes=64, algorithm=1)
    base.update(kw)
    return Header(**base), plan


def check(h, plan, newest=2):
    check_header(h, layout_hash=plan.layout_hash, n_buckets=1, total_bytes=64, algorithm="blocksum64",
                 newest_version=newest, rank=4, role="rollout", src=0)


def test_header_round_trip_and_checks():
    h, plan = _hdr()
    assert decode_header(h.encode()) == h
    check(h, plan)  # newer version of the same layout: fine
    with pytest.raises(VersionError, match=r"\[rank 4, role rollout\] weight version 3 .* version 3"):
        check(h, plan, newest=3)
    with pytest.raises(LayoutMismatchError, match="layout mismatch for version 3"):
        check(_hdr(layout_hash=plan.layout_hash + 1)[0], plan)
    with pytest.raises(LayoutMismatchError):
        check(_hdr(n_buckets=2)[0], plan)
    with pytest.raises(LayoutMismatchError, match="checksum algorithm"):
        check(_hdr(algorithm=0)[0], plan)
    garbled = h.encode()
    garbled[0] = MAGIC + 1
    with pytest.raises(WeightSyncError, match="garbled"):
        check(decode_header(garbled), plan)
    check(_hdr(kind=KIND_STOP, version=0)[0], plan)  # STOP passes whatever the version


def test_control_message_is_fixed_size_and_checksums_are_contiguous():
    assert control_words(0) == control_words(INLINE_SUMS) == CONTROL_WORDS  # independent of the layout
    assert control_words(INLINE_SUMS + 3) == CONTROL_WORDS + 6
    assert sum_slice(0) == slice(HEADER_WORDS, HEADER_WORDS + 2)
    assert sum_slice(INLINE_SUMS - 1).stop == CONTROL_WORDS == sum_slice(INLINE_SUMS).start  # inline | overflow
    h, _ = _hdr()
    words = h.encode() + [7] * (CONTROL_WORDS - HEADER_WORDS)
    assert decode_header(words) == h  # the header is read from the front of the control message
    with pytest.raises(ValueError):
        decode_header(words[:HEADER_WORDS - 1])


def _sender(named, bucket_mb):
    from asyncflow_hpc.weights.sender import WeightSender

    plan = plan_for(named, WeightSyncConfig(bucket_mb=bucket_mb))
    # backend given: no process group is touched until a send
    return WeightSender(None, plan, src=0, rank=0, cfg=WeightSyncConfig(bucket_mb=bucket_mb), backend="gloo")


def test_pack_checksums_every_bucket_as_it_fills():
    g = torch.Generator().manual_seed(3)
    named = [("a", torch.randn(300, generator=g)), ("big", torch.randn(5000, generator=g)),
             ("e", torch.zeros(0)), ("c", torch.randn(7, generator=g).half()), ("z", torch.zeros(0))]
    sender = _sender(named, bucket_mb=4096 / 2**20)  # 4 KiB buckets: 'big' (20 KB) is split
    assert len(sender.plan.buckets) > 5
    sender.pack(named)
    for k in range(len(sender.plan.buckets)):
        want = bucket_checksum(sender.flat.bucket(k), "blocksum64")
        assert tuple(sender.control[sum_slice(k)].tolist()) == want != (0, 0)
    assert all(torch.equal(dict(sender.flat.named())[n], t) for n, t in named)


def test_pack_rejects_names_out_of_plan_order():
    named = [("a", torch.randn(600)), ("b", torch.randn(600))]
    sender = _sender(named, bucket_mb=2048 / 2**20)
    with pytest.raises(WeightSyncError, match="different order"):
        sender.pack(named[::-1])


class FakeWork:
    """Stands in for a c10d Work: completes after `after` seconds (never, if None)."""

    def __init__(self, after=None, fail=None):
        self.t0, self.after, self.fail = time.monotonic(), after, fail

    def is_completed(self):
        return self.after is not None and time.monotonic() - self.t0 >= self.after

    def wait(self, timeout=None):
        if timeout is not None and timeout.total_seconds() < 0.001:
            time.sleep(3600)  # c10d truncates to ms and treats 0 as "no timeout": a real hang
        if self.fail:
            raise RuntimeError(self.fail)
        left = None if self.after is None else self.after - (time.monotonic() - self.t0)
        if timeout is None and left is not None:
            time.sleep(max(left, 0))
            return True
        if left is not None and left <= timeout.total_seconds():
            time.sleep(max(left, 0))
            return True
        time.sleep(timeout.total_seconds())
        raise RuntimeError("Operation timed out!")


def test_wait_work_times_out_with_named_error():
    t0 = time.monotonic()
    with pytest.raises(WaitTimeout) as exc:
        wait_work(FakeWork(None), timeout_s=0.3, what="bucket 3/9 from trainer leader rank 0", rank=2,
                  role="rollout", version=7, bucket=3)
    assert 0.25 <= time.monotonic() - t0 < 2
    msg = str(exc.value)
    assert "[rank 2, role rollout]" in msg and "version 7, bucket 3" in msg and "bucket 3/9" in msg


def test_wait_work_completes_across_slices_and_polling_backends():
    wait_work(FakeWork(0.7), timeout_s=5, what="x", rank=0, role="trainer")  # spans two 0.5 s slices
    wait_work(FakeWork(0.05), timeout_s=5, what="x", rank=0, role="trainer", backend="nccl")


def test_wait_work_reports_collective_failures_and_stops():
    with pytest.raises(WeightSyncError, match="Connection closed by peer"):
        wait_work(FakeWork(fail="Connection closed by peer"), timeout_s=5, what="x", rank=0, role="trainer")
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    with pytest.raises(Stopped):
        wait_work(FakeWork(None), timeout_s=30, what="x", rank=0, role="trainer", stop=stop)


def test_pipeline_order_and_depth():
    log, inflight = [], []

    def post(k):
        inflight.append(k)
        assert len(inflight) <= 2
        log.append(("post", k))
        return k

    def finish(k, w):
        inflight.remove(k)
        log.append(("finish", k))

    pipeline(4, post, finish, depth=2)
    assert [k for op, k in log if op == "finish"] == [0, 1, 2, 3]
    assert log.index(("post", 1)) < log.index(("finish", 0))


def test_config_checks():
    assert WeightSyncConfig().bucket_bytes == 32 * 2**20
    for bad in (dict(bucket_mb=0), dict(timeout_s=-1), dict(staging_buffers=3), dict(stagger_groups=0),
                dict(version_wait_s=0)):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            WeightSyncConfig(**bad)
