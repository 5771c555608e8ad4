"""Control plane without MPI: hypothesis-driven exactly-once, recycling, allocator and capacity invariants."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncflow_hpc.store import Column, Schema, SchemaError, StoreError
from asyncflow_hpc.store.control import END, Arena, ControlPlane

SCHEMA = Schema([Column("a", "int32", var=True), Column("r", "float32")])


def alloc(cp, n, start, length=3, cols=(0,)):
    sizes = np.full((n, len(cols)), 4 * length, dtype=np.int64)
    counts = np.full((n, len(cols)), length, dtype=np.int64)
    idx = np.arange(start, start + n)
    return cp.alloc(list(cols), sizes, counts, idx, idx // 2, np.zeros(n, dtype=np.int64))


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["put", "get_t1", "get_t2", "release"]), st.integers(1, 6)),
                    min_size=1, max_size=80))
def test_exactly_once_per_task_and_bounded_ring(ops):
    cp = ControlPlane(SCHEMA, capacity_rows=16, unit_bytes=[256, 256])
    cp.register_task("t1", ["a"])
    cp.register_task("t2", ["a"])
    put, next_idx, claimed = [], 0, {"t1": [], "t2": []}
    unreleased = {"t1": [], "t2": []}
    for op, k in ops:
        if op == "put":
            pl = alloc(cp, k, next_idx)
            if pl is not None:
                cp.commit(pl.row_ids, [0])
                put.extend(pl.row_ids.tolist())
                next_idx += k
        elif op.startswith("get"):
            task = op[4:]
            c = cp.select(task, [0], k)
            if c is not None and c != END:
                claimed[task].extend(c.row_ids.tolist())
                unreleased[task].extend(c.row_ids.tolist())
        else:
            for task in ("t1", "t2"):
                if unreleased[task]:
                    cp.release(task, unreleased[task])
                    unreleased[task] = []
        live = int(cp.live.sum())
        assert live <= 16 and len(cp.free_slots) + live == 16
        assert sum(a.used for a in cp.arenas) == sum(e.size for e in cp.extent.values())
        holders = {}
        for slot, ids in enumerate(cp.extents):
            for eid in ids:
                holders[eid] = holders.get(eid, 0) + 1
        assert holders == {eid: e.refs for eid, e in cp.extent.items()}  # refcounts match live rows
    for task in ("t1", "t2"):
        assert len(claimed[task]) == len(set(claimed[task]))  # never twice
        assert set(claimed[task]) <= set(put)
    # drain: everything put is eventually claimed exactly once per task, then recycled
    cp.mark_done(0)
    for task in ("t1", "t2"):
        while (c := cp.select(task, [0], 5)) != END:
            claimed[task].extend(c.row_ids.tolist())
            cp.release(task, c.row_ids)
        if unreleased[task]:
            cp.release(task, unreleased[task])
        assert sorted(claimed[task]) == sorted(put)
    assert cp.live.sum() == 0 and all(a.used == 0 for a in cp.arenas)
    assert all(a.starts == [0] and a.sizes == [256] for a in cp.arenas)  # free lists fully coalesced


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=30), seed=st.integers(0, 1000))
def test_arena_never_overlaps_and_coalesces(sizes, seed):
    a = Arena(256)
    held = []
    rng = np.random.default_rng(seed)
    for s in sizes:
        start = a.alloc(s)
        if start is not None:
            for b, n in held:
                assert start + s <= b or b + n <= start
            held.append((start, s))
        if held and rng.random() < 0.4:
            b, n = held.pop(int(rng.integers(len(held))))
            a.release(b, n)
    for b, n in held:
        a.release(b, n)
    assert a.used == 0 and a.starts == [0] and a.sizes == [256]


def test_not_ready_until_commit_and_columns_added_later():
    cp = ControlPlane(SCHEMA, 8, [1024])
    cp.register_task("trainer", ["a", "r"])
    cp.register_task("scorer", ["a"], adds=["r"])  # 'r' arrives later, from the scorer
    pl = alloc(cp, 2, 0)
    assert cp.select("trainer", [0], 2) is None
    cp.commit(pl.row_ids, [0])
    assert cp.select("trainer", [0], 2) is None  # 'r' not there yet
    pl2 = cp.alloc_columns(pl.row_ids, [1], np.full((2, 1), 4), np.ones((2, 1), dtype=np.int64))
    assert pl2 is not None
    cp.commit(pl.row_ids, [1])
    c = cp.select("trainer", [0, 1], 2)
    assert c.row_ids.tolist() == [0, 1] and c.count[:, 0].tolist() == [3, 3]
    with pytest.raises(SchemaError, match="already written"):
        cp.alloc_columns(pl.row_ids, [1], np.full((2, 1), 4), np.ones((2, 1), dtype=np.int64))


def test_byte_balance_and_full_store():
    cp = ControlPlane(SCHEMA, 64, [400, 400])
    for i in range(6):
        assert alloc(cp, 2, 2 * i, length=10) is not None  # 40-byte values, 80 per put
    assert [a.used for a in cp.arenas] == [240, 240]  # each put on the emptiest unit: balanced bytes
    assert alloc(cp, 9, 100, length=10) is None  # 360 bytes > 320 free: the producer waits
    pl = alloc(cp, 5, 100, length=10)  # 200 bytes fit in no single unit: split into chunks
    assert sorted((hi - lo) for lo, hi, _, _ in pl.chunks) == [2, 3]
    assert sorted(a.used for a in cp.arenas) == [320, 360]
    with pytest.raises(SchemaError, match="more than a storage unit"):
        alloc(cp, 1, 200, length=200)


def test_errors_unregistered_task_and_gone_rows():
    cp = ControlPlane(SCHEMA, 4, [256])
    with pytest.raises(StoreError, match="task 'x' is not registered"):
        cp.select("x", [0], 1)
    with pytest.raises(StoreError, match="row 7 is not in the store"):
        cp.release("x", [7]) if False else cp.slots_of([7])
    cp.register_task("x", ["a"])
    with pytest.raises(StoreError, match="already registered"):
        cp.register_task("x", ["r"])
    cp.mark_done(0)
    with pytest.raises(StoreError, match="put after mark_done"):
        alloc(cp, 1, 0)
