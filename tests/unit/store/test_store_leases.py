"""Producer leases: slots and bytes reserved once, puts placed by the producer and published one-way."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncflow_hpc.errors import WaitTimeout
from asyncflow_hpc.store import Column, RowMeta, Schema, StoreConfig, StoreError
from asyncflow_hpc.store.control import END, ControlPlane
from asyncflow_hpc.store.local import LocalStore
from asyncflow_hpc.store.schema import chunk_layout

SCHEMA = Schema([Column("a", "int32", var=True), Column("r", "float32")])


class Producer:
    """What StoreBase does on a producer rank, against the control plane directly."""

    def __init__(self, cp, pid):
        self.cp, self.pid, self.lease = cp, pid, None

    def put(self, n, length, start):
        sizes = np.full((n, 1), 4 * length, dtype=np.int64)
        counts = np.full((n, 1), length, dtype=np.int64)
        _, _, total = chunk_layout(sizes)
        if self.lease is None or not self.lease.fits(n, total):
            self.end()
            self.lease = self.cp.lease(n, total, 4 * n, 4 * total, producer=self.pid)
            if self.lease is None:
                return None
        first, off = self.lease.used_rows, self.lease.base + self.lease.used_bytes
        self.lease.used_rows += n
        self.lease.used_bytes += total
        idx = np.arange(start, start + n)
        self.cp.commit_leased(self.lease.lease_id, first, off, [0], sizes, counts, idx, idx, np.zeros(n, np.int64))
        return self.lease.row_ids[first:first + n].tolist()

    def end(self):
        if self.lease is not None:
            self.cp.end_lease(self.lease.lease_id)
            self.lease = None


def check_invariants(cp, cap):
    live = int(cp.live.sum())
    unused = sum(len(x.slots) - x.used_rows for x in cp.leases.values())
    assert len(cp.free_slots) + live + unused == cap  # every slot is free, live or reserved, once
    assert sum(a.used for a in cp.arenas) == sum(e.size for e in cp.extent.values())
    holders = {}
    for ids in cp.extents:
        for eid in ids:
            holders[eid] = holders.get(eid, 0) + 1
    for x in cp.leases.values():  # an open lease holds its extent too
        holders[x.extent] = holders.get(x.extent, 0) + 1
    assert holders == {eid: e.refs for eid, e in cp.extent.items()}
    spans = sorted((e.unit, e.base, e.size) for e in cp.extent.values() if e.size)
    for (u1, b1, s1), (u2, b2, _) in zip(spans, spans[1:]):
        assert u1 != u2 or b1 + s1 <= b2  # extents never overlap


@settings(max_examples=80, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["p0", "p1", "plain", "get", "release", "end0"]), st.integers(1, 5)),
                    min_size=1, max_size=80))
def test_leased_puts_exactly_once_and_nothing_leaks(ops):
    cap = 24
    cp = ControlPlane(SCHEMA, capacity_rows=cap, unit_bytes=[512, 512], producers=3)
    cp.register_task("t", ["a"])
    prods = {"p0": Producer(cp, 0), "p1": Producer(cp, 1)}
    put, claimed, held, nxt = [], [], [], 0
    for op, k in ops:
        if op in prods:
            rids = prods[op].put(k, 1 + k % 3, nxt)
            if rids is not None:
                put += rids
                nxt += k
        elif op == "plain":  # the round-trip path still works beside leases
            pl = cp.alloc([0], np.full((k, 1), 8), np.full((k, 1), 2), np.arange(k), np.arange(k),
                          np.zeros(k, np.int64), producer=2)
            if pl is not None:
                cp.commit(pl.row_ids, [0])
                put += pl.row_ids.tolist()
        elif op == "get":
            c = cp.select("t", [0], k)
            if c is not None and c != END:
                claimed += c.row_ids.tolist()
                held += c.row_ids.tolist()
        elif op == "release" and held:
            cp.release("t", held)
            held = []
        elif op == "end0":
            prods["p0"].end()
        check_invariants(cp, cap)
    assert len(set(put)) == len(put)  # row ids are unique across leases and the plain path
    assert len(claimed) == len(set(claimed)) and set(claimed) <= set(put)
    prods["p0"].end()
    cp.mark_done(0)
    cp.mark_done(1)  # ends producer 1's lease on its behalf
    cp.mark_done(2)
    assert not cp.leases
    while (c := cp.select("t", [0], 5)) != END:
        claimed += c.row_ids.tolist()
        held += c.row_ids.tolist()
    cp.release("t", held)
    assert sorted(claimed) == sorted(put)
    assert cp.live.sum() == 0 and len(cp.free_slots) == cap
    assert all(a.used == 0 and a.starts == [0] and a.sizes == [512] for a in cp.arenas)


def test_lease_leaves_half_of_the_free_space_to_other_producers():
    cp = ControlPlane(SCHEMA, capacity_rows=64, unit_bytes=[4096], producers=2)
    lease = cp.lease(1, 8, 256, 1 << 20, producer=0)
    # 2 producers: a lease takes at most a quarter of what is free beyond the put (8 + 4088 // 4, 8-aligned)
    assert len(lease.row_ids) == 1 + 63 // 4 and lease.nbytes == 1032
    assert cp.stats()["rows_leased"] == 16
    full = cp.lease(1, 8, 1, 8, producer=1)
    assert full is not None  # the other producer is still admitted
    with pytest.raises(StoreError, match="outside the lease"):
        cp.commit_leased(lease.lease_id, 16, lease.base, [0], np.full((1, 1), 8), np.ones((1, 1), np.int64),
                         [0], [0], [0])


def test_fifo_is_publication_order_across_leases():
    cp = ControlPlane(SCHEMA, capacity_rows=16, unit_bytes=[1024], producers=2)
    cp.register_task("t", ["a"])
    a, b = Producer(cp, 0), Producer(cp, 1)
    ra = a.put(1, 2, 100)  # leased first...
    rb = b.put(1, 2, 200)
    rb2 = b.put(1, 2, 201)  # ...but b publishes twice before a's second row
    ra2 = a.put(1, 2, 101)
    assert cp.select("t", [0], 4).row_ids.tolist() == ra + rb + rb2 + ra2
    assert cp.select("t", [0], 4) is None


def leased_store(cap, unit_mb=1.0, **kw):
    s = LocalStore(Schema([Column("ids", "int32", var=True), Column("r", "float32")]),
                   StoreConfig(capacity_rows=cap, unit_mb=unit_mb, timeout_s=5, **kw))
    s.leasing = True
    return s


def test_twin_with_leases_moves_every_byte_and_returns_unused_space():
    s = leased_store(64, lease_mb=0.01, lease_rows=8)
    s.register_task("t", ["ids", "r"])
    rng = np.random.default_rng(0)
    sent, leased = {}, 0
    for i in range(0, 300, 3):
        rows = [rng.integers(0, 1 << 30, size=int(rng.integers(0, 700)), dtype=np.int32) for _ in range(3)]
        ids = s.put({"ids": rows, "r": np.arange(i, i + 3, dtype=np.float32)}, [RowMeta(i + j) for j in range(3)])
        assert len(ids) == 3
        sent.update({i + j: rows[j] for j in range(3)})
        leased = max(leased, s.stats()["rows_leased"])
        if i % 12 == 9:
            b = s.get("t", ["ids", "r"], 12)
            for j, idx in enumerate(b.index.tolist()):
                assert np.array_equal(b["ids"][j], sent.pop(idx)) and b["r"][j] == idx
    assert leased > 0  # slots were reserved ahead of the puts
    s.mark_done()
    st = s.stats()
    assert st["rows_leased"] == 0 and st["rows_put"] == 300
    for b in s.iter_batches("t", ["ids"], 7):
        for j, idx in enumerate(b.index.tolist()):
            assert np.array_equal(b["ids"][j], sent.pop(idx))
    assert not sent and s.stats()["bytes_used"] == [0, 0]


def test_twin_with_leases_blocks_at_capacity_and_loses_nothing():
    s = leased_store(8)
    s.register_task("t", ["ids"])
    for i in range(8):  # leases shrink as the store fills: all 8 slots are usable
        s.put({"ids": [np.full(4, i, np.int32)]}, [RowMeta(i)])
    with pytest.raises(WaitTimeout, match="store full, 8/8 rows live"):
        s.put({"ids": [np.full(4, 8, np.int32)]}, [RowMeta(8)], timeout=0.05)
    b = s.get("t", ["ids"], 8)
    assert b.index.tolist() == list(range(8)) and [int(x[0]) for x in b["ids"]] == list(range(8))
    s.put({"ids": [np.full(4, 8, np.int32)]}, [RowMeta(8)], timeout=1)
    assert s.get("t", ["ids"], 1).index.tolist() == [8]
