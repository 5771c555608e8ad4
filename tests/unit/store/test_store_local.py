"""The in-process twin: full put/get round trips, put_columns, back-pressure, stale accounting, threads."""

import threading

import numpy as np
import pytest

from asyncflow_hpc.errors import WaitTimeout
from asyncflow_hpc.store import (Column, EndOfStream, RowMeta, Schema, SchemaError, StoreConfig, StoreError,
                                 make_store)


def grpo_schema():
    return Schema([Column("prompt_ids", "int32", var=True), Column("response_ids", "int32", var=True),
                   Column("logp", "float32", var=True), Column("reward", "float32")])


def make(cap=64, **kw):
    return make_store(StoreConfig(capacity_rows=cap, unit_mb=1, timeout_s=5, **kw), grpo_schema())


def rollout(lo, hi, version=0, g=4):
    rng = np.random.default_rng(lo)
    resp = [rng.integers(0, 100, size=int(rng.integers(1, 50)), dtype=np.int32) for _ in range(lo, hi)]
    rows = {"prompt_ids": [np.full(i % 7 + 1, i, np.int32) for i in range(lo, hi)], "response_ids": resp,
            "logp": [-np.ones(len(r), np.float32) for r in resp]}
    return rows, [RowMeta(i, i // g, version) for i in range(lo, hi)]


def test_roundtrip_with_reward_added_later():
    s = make()
    assert type(s).__name__ == "LocalStore"
    s.register_task("reward", ["prompt_ids", "response_ids"], adds=["reward"])
    s.register_task("trainer", ["response_ids", "logp", "reward"])
    rows, meta = rollout(0, 8)
    ids = s.put(rows, meta)
    b = s.get("reward", ["prompt_ids", "response_ids"], 8)
    assert b.index.tolist() == list(range(8)) and b.group.tolist() == [0] * 4 + [1] * 4
    for i in range(8):
        assert np.array_equal(b["response_ids"][i], rows["response_ids"][i])
    assert s.try_get("trainer", ["reward"], 1) is None  # reward not ready
    s.put_columns(b.row_ids, {"reward": (b.index % 2).astype(np.float32)})
    t = s.get("trainer", ["response_ids", "logp", "reward"], 8, policy="grpo_group", group_size=4)
    assert t["reward"].tolist() == [0, 1, 0, 1, 0, 1, 0, 1]
    assert [len(x) for x in t["logp"]] == [len(x) for x in rows["response_ids"]]
    assert s.stats()["rows_live"] == 0 and s.stats()["rows_recycled"] == 8
    with pytest.raises(StoreError, match="not in the store"):
        s.put_columns(ids[:1], {"reward": [1.0]})


def test_backpressure_blocks_then_resumes_and_never_overwrites():
    s = make(cap=4)
    s.register_task("t", ["response_ids"])
    s.put(*rollout(0, 4))
    with pytest.raises(WaitTimeout, match=r"rank 0.*store full, 4/4 rows live"):
        s.put(*rollout(4, 5), timeout=0.05)
    got = []

    def consume():
        got.extend(s.get("t", ["response_ids"], 4)["response_ids"].to_list())

    th = threading.Thread(target=consume)
    th.start()
    s.put(*rollout(4, 6), timeout=5)  # blocks until the consumer frees space
    th.join()
    assert len(got) == 4 and s.stats()["rows_live"] == 2


def test_bad_inputs_lose_nothing():
    s = make()
    s.register_task("t", ["response_ids"])
    s.put(*rollout(0, 2))
    with pytest.raises(SchemaError, match="unknown column 'bogus'"):
        s.put({"bogus": [1]}, [RowMeta(9)])
    with pytest.raises(SchemaError, match="column 'reward': dtype float64"):
        s.put({"reward": np.zeros(1)}, [RowMeta(9)])
    with pytest.raises(SchemaError, match="more than a storage unit"):
        s.put({"response_ids": [np.zeros(400_000, np.int32)]}, [RowMeta(9)])
    with pytest.raises(StoreError, match="task 'nope' is not registered"):
        s.get("nope", ["response_ids"], 1)
    with pytest.raises(WaitTimeout, match="task 't' to get 3 rows"):
        s.get("t", ["response_ids"], 3, timeout=0.05)
    assert s.get("t", ["response_ids"], 2).index.tolist() == [0, 1]


def test_end_of_stream_and_iter_batches():
    s = make()
    s.register_task("t", ["response_ids"])
    s.put(*rollout(0, 5))
    s.mark_done()
    sizes = [len(b) for b in s.iter_batches("t", ["response_ids"], 2)]
    assert sizes == [2, 2, 1]
    with pytest.raises(EndOfStream):
        s.try_get("t", ["response_ids"], 2)


def test_version_bounded_stale_rows_are_counted():
    s = make()
    s.register_task("trainer", ["response_ids"])
    s.put(*rollout(0, 4, version=0))
    s.put(*rollout(4, 8, version=2))
    b = s.get("trainer", ["response_ids"], 4, policy="version_bounded", version=2, eta=1)
    assert b.version.tolist() == [2, 2, 2, 2]
    st = s.stats()["tasks"]["trainer"]
    assert st["discarded_stale"] == 4 and st["consumed"] == 4 and st["lag"] == 0


def test_seqlen_balanced_parts_and_bcast_shape():
    s = make()
    s.register_task("trainer", ["response_ids"])
    s.put(*rollout(0, 8))
    b = s.get("trainer", ["prompt_ids", "response_ids"], 8, policy="seqlen_balanced", dp=2)
    parts = [b.part(i) for i in range(2)]
    assert sorted(np.concatenate([p.index for p in parts]).tolist()) == list(range(8))
    loads = [sum(len(x) for x in p["prompt_ids"]) + sum(len(x) for x in p["response_ids"]) for p in parts]
    total = sum(loads)
    assert max(loads) - min(loads) <= max(total // 4, 60)


def test_threads_exactly_once():
    s = make(cap=32)
    s.register_task("t", ["response_ids"])
    seen, lock = [], threading.Lock()

    def consumer():
        for b in s.iter_batches("t", ["response_ids"], 7):
            with lock:
                seen.extend(b.index.tolist())

    ths = [threading.Thread(target=consumer) for _ in range(3)]
    for th in ths:
        th.start()
    for lo in range(0, 500, 10):
        s.put(*rollout(lo, lo + 10))
    s.mark_done()
    for th in ths:
        th.join()
    assert sorted(seen) == list(range(500))


def test_prefetching_stream_hands_back_an_unread_batch():
    s = make(cap=64)
    s.register_task("t", ["response_ids"])
    for lo in range(0, 40, 8):
        s.put(*rollout(lo, lo + 8))
    seen = []
    for k, b in enumerate(s.iter_batches("t", ["response_ids"], 5, prefetch=True)):
        seen += b.index.tolist()
        if k == 1:
            break  # the third batch was already claimed: it goes back unread
    assert seen == list(range(10)) and s.stats()["tasks"]["t"]["consumed"] == 10
    s.mark_done()
    rest = [i for b in s.iter_batches("t", ["response_ids"], 5, prefetch=True) for i in b.index.tolist()]
    assert rest == list(range(10, 40)) and s.stats()["rows_live"] == 0
