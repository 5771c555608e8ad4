"""Streamed weight sync without processes: a loopback 'group' records what the sender posts, in order, and
replays it into what the receiver posts (collectives match by order, as on a real group)."""

from __future__ import annotations

import threading
import time

import pytest

from asyncflow_hpc.weights.config import WeightSyncConfig
from asyncflow_hpc.weights.errors import ChecksumError, WeightSyncError
from asyncflow_hpc.weights.wire import (CONTROL_WORDS, FLAG_TRAILER, HEADER_WORDS, STATUS_ABORTED, STATUS_OK,
                                        TRAILER_HEAD, TRAILER_MAGIC, check_trailer, decode_header,
                                        encode_trailer_head, trailer_words)

torch = pytest.importorskip("torch")

from asyncflow_hpc.weights import receiver as receiver_mod  # noqa: E402
from asyncflow_hpc.weights import sender as sender_mod  # noqa: E402
from asyncflow_hpc.weights.checksum import bucket_checksum  # noqa: E402
from asyncflow_hpc.weights.flat import plan_for  # noqa: E402


class Done:
    def wait(self, timeout=None):
        return True

    def is_completed(self):
        return True


class Loopback:
    """Sender side records a copy of every posted tensor; receiver side fills its posts from the record."""

    def __init__(self):
        self.sent: list = []
        self.cursor = 0
        self.lock = threading.Lock()

    def send(self, group, tensor, src):
        with self.lock:
            self.sent.append(tensor.detach().clone())
        return Done()

    def recv(self, group, tensor, src):
        msg = self.sent[self.cursor]
        self.cursor += 1
        assert msg.numel() == tensor.numel() and msg.dtype == tensor.dtype, "posts out of step"
        tensor.copy_(msg)
        return Done()


def named(seed: int):
    g = torch.Generator().manual_seed(seed)
    return [("a", torch.randn(300, generator=g)), ("big", torch.randn(5000, generator=g)),
            ("e", torch.zeros(0)), ("c", torch.randn(7, generator=g).half()), ("d", torch.randn(900, generator=g))]


CFG = WeightSyncConfig(bucket_mb=4096 / 2**20, timeout_s=5, version_wait_s=5)  # 4 KiB buckets: 'big' is split


@pytest.fixture
def wire(monkeypatch):
    lo = Loopback()
    monkeypatch.setattr(sender_mod, "group_broadcast", lo.send)
    monkeypatch.setattr(receiver_mod, "group_broadcast", lo.recv)
    plan = plan_for(named(0), CFG)
    sender = sender_mod.WeightSender(None, plan, src=0, rank=0, cfg=CFG, backend="gloo")
    receiver = receiver_mod.WeightReceiver(None, plan, src=0, rank=1, cfg=CFG, backend="gloo", last_version=0)
    return lo, plan, sender, receiver


def bits(t):
    return t.contiguous().reshape(-1).view(torch.uint8)


def test_streamed_send_posts_each_bucket_before_the_next_tensor_is_packed(wire):
    lo, plan, sender, _ = wire
    seen = []  # buckets on the wire when each tensor is handed to the sender

    def slow():
        for i, item in enumerate(named(1)):
            deadline = time.monotonic() + 2
            want = plan.tensors[i].first_bucket  # buckets before this tensor's first one are complete
            while len(lo.sent) < 1 + want and time.monotonic() < deadline:
                time.sleep(0.001)
            seen.append(max(0, len(lo.sent) - 1))  # minus the header (posted with bucket 0)
            yield item

    st = sender.send(slow(), 1)
    assert st.streamed and st.n_buckets == len(plan.buckets) > 5
    assert seen == [p.first_bucket for p in plan.tensors]  # bucket k went out while later tensors were packed
    head = decode_header(lo.sent[0][:HEADER_WORDS].tolist())
    assert head.flags == FLAG_TRAILER and head.version == 1 and lo.sent[0].numel() == CONTROL_WORDS
    assert not lo.sent[0][HEADER_WORDS:].any()  # no checksums inline
    trailer = lo.sent[-1]
    assert trailer.numel() == trailer_words(len(plan.buckets)) and len(lo.sent) == len(plan.buckets) + 2
    assert trailer[:TRAILER_HEAD].tolist() == encode_trailer_head(STATUS_OK, 1, len(plan.buckets))
    for k in range(len(plan.buckets)):  # the trailer carries the checksum of exactly the bytes that went out
        assert tuple(trailer[TRAILER_HEAD + 2 * k: TRAILER_HEAD + 2 * k + 2].tolist()) == \
            bucket_checksum(lo.sent[1 + k], "blocksum64")


def test_receiver_verifies_streamed_and_inline_syncs_and_names_a_bad_bucket(wire):
    lo, plan, sender, receiver = wire
    sender.send(named(1), 1)  # streamed
    sender.pack(named(2))
    assert not sender.send_async(None, 2).wait().streamed  # inline
    sender.inject_corruption(3)
    sender.send(named(3), 3)
    sender.send(named(4), 4)
    assert receiver.receive() == 1
    got = {}
    receiver.swap(lambda nt, v: got.__setitem__(v, [(n, t.clone()) for n, t in nt]))
    assert receiver.receive() == 2
    receiver.swap(lambda nt, v: got.__setitem__(v, [(n, t.clone()) for n, t in nt]))
    with pytest.raises(ChecksumError, match=r"\[rank 1, role rollout\] weight version 3: bucket 3 of") as exc:
        receiver.receive()
    assert exc.value.bucket == 3 and exc.value.version == 3
    assert receiver.receive() == 4  # in step after the bad bucket
    receiver.swap(lambda nt, v: got.__setitem__(v, [(n, t.clone()) for n, t in nt]))
    for v in (1, 2, 4):
        assert all(torch.equal(bits(t), bits(w)) for (_, t), (_, w) in zip(got[v], named(v)))
    assert lo.cursor == len(lo.sent)


def test_failed_snapshot_aborts_in_step_or_sends_nothing(wire):
    lo, plan, sender, receiver = wire

    def failing(after):
        for i, item in enumerate(named(5)):
            if i == after:
                raise ValueError("gather broke")
            yield item

    with pytest.raises(ValueError, match="gather broke"):
        sender.send_async(failing(0), 1)
    sender._finish_previous()
    assert lo.sent == []  # nothing on the wire: receivers never saw version 1
    with pytest.raises(ValueError, match="gather broke"):
        sender.send_async(failing(3), 2)  # buckets up to 'e' went out, then the trailer says ABORTED
    wrong = [(n, t.double()) if n == "d" else (n, t) for n, t in named(6)]
    with pytest.raises(WeightSyncError, match="tensor 'd' is float64"):
        sender.send(wrong, 3)
    sender.send(named(7), 7)  # the sender is usable again; the failed snapshots are not re-raised
    assert [int(m[1]) for m in lo.sent if m.numel() == trailer_words(len(plan.buckets)) and
            int(m[0]) == TRAILER_MAGIC] == [STATUS_ABORTED, STATUS_ABORTED, STATUS_OK]
    assert receiver.receive() == 7 and receiver.aborted_versions == 2


def test_trailer_checks():
    good = encode_trailer_head(STATUS_OK, 4, 3)
    assert check_trailer(good, version=4, n_buckets=3, rank=1, role="rollout", src=0) == STATUS_OK
    assert check_trailer(encode_trailer_head(STATUS_ABORTED, 4, 3), version=4, n_buckets=3, rank=1,
                         role="rollout", src=0) == STATUS_ABORTED
    for bad in ([TRAILER_MAGIC + 1, 0, 4, 3], [TRAILER_MAGIC, 0, 5, 3], [TRAILER_MAGIC, 0, 4, 2],
                [TRAILER_MAGIC, 9, 4, 3]):
        with pytest.raises(WeightSyncError, match=r"\[rank 1, role rollout\] garbled checksum trailer"):
            check_trailer(bad, version=4, n_buckets=3, rank=1, role="rollout", src=0)


def test_snapshot_stall_is_a_named_timeout():
    from asyncflow_hpc.errors import WaitTimeout

    cfg = WeightSyncConfig(bucket_mb=4096 / 2**20, timeout_s=0.2)
    plan = plan_for(named(0), cfg)
    sender = sender_mod.WeightSender(None, plan, src=0, rank=0, cfg=cfg, backend="gloo")
    snap = sender_mod._Snapshot(len(plan.buckets))
    with pytest.raises(WaitTimeout, match=r"\[rank 0, role trainer\].*snapshot of bucket 0/\d+ of version 9"):
        sender._wait_snapshot(snap, 0, 9)
