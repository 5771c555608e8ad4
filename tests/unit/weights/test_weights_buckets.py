"""Bucket planning (pure): bounds, alignment, splitting, contiguity and the layout hash."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncflow_hpc.weights.buckets import ALIGN, ITEMSIZE, TensorSpec, check_named, plan_buckets

DTYPES = sorted(ITEMSIZE)


def spec(name, shape, dtype="float32"):
    return TensorSpec(name, shape, dtype)


def test_small_tensors_pack_into_bounded_buckets():
    specs = [spec(f"t{i}", (100,)) for i in range(10)]  # 400 B each -> 448 aligned
    plan = plan_buckets(specs, 1024)
    assert [b.nbytes for b in plan.buckets] == [896] * 5
    assert plan.buckets[0].names == ("t0", "t1")
    assert [t.first_bucket for t in plan.tensors] == [i // 2 for i in range(10)]


def test_large_tensor_is_split_over_its_own_buckets_and_stays_contiguous():
    plan = plan_buckets([spec("a", (10,)), spec("big", (1000,)), spec("c", (4,))], 1024, "split")
    big = plan.tensors[1]
    assert big.first_bucket == 1 and big.last_bucket == 4
    inside = plan.buckets[big.first_bucket: big.last_bucket + 1]
    assert inside[0].start == big.offset
    assert all(b.nbytes <= 1024 for b in plan.buckets)
    assert all(x.end == y.start for x, y in zip(inside, inside[1:]))  # one contiguous range
    assert plan.tensors[2].first_bucket == 4  # the remainder piece shares its bucket with 'c'


def test_large_tensor_gets_one_own_bucket():
    plan = plan_buckets([spec("a", (10,)), spec("big", (1000,)), spec("c", (4,))], 1024, "own")
    assert [b.names for b in plan.buckets] == [("a",), ("big",), ("c",)]
    assert plan.buckets[1].nbytes == 4032  # larger than the bound, on purpose


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="appears twice"):
        plan_buckets([spec("a", (1,)), spec("a", (2,))], 1024)
    with pytest.raises(ValueError, match="unsupported dtype"):
        TensorSpec("x", (1,), "float99")
    with pytest.raises(ValueError, match="large_tensors"):
        plan_buckets([spec("a", (1,))], 1024, "shard")


def test_layout_hash_changes_with_shape_dtype_name_order_and_bound():
    base = [spec("a", (10, 4)), spec("b", (7,), "bfloat16")]
    h = plan_buckets(base, 4096).layout_hash
    assert h == plan_buckets(list(base), 4096).layout_hash
    variants = [
        [spec("a", (4, 10)), base[1]], [spec("a", (10, 4), "float16"), base[1]],
        [spec("z", (10, 4)), base[1]], [base[1], base[0]],
    ]
    for v in variants:
        assert plan_buckets(v, 4096).layout_hash != h
    assert plan_buckets(base, 128).layout_hash != h
    assert -2**63 <= h < 2**63


def test_check_named_reports_differences():
    plan = plan_buckets([spec("a", (1,)), spec("b", (1,))], 1024)
    assert check_named(plan, ["a", "b"]) is None
    assert "missing ['b']" in check_named(plan, ["a"])
    assert "unexpected ['c']" in check_named(plan, ["a", "b", "c"])
    assert "order" in check_named(plan, ["b", "a"])


def test_torch_dtype_objects_are_accepted_by_name():
    assert TensorSpec("x", (2,), "torch.bfloat16").dtype == "bfloat16"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.lists(st.integers(0, 30), min_size=0, max_size=3), st.sampled_from(DTYPES)),
                min_size=1, max_size=25),
       st.integers(1, 20000), st.sampled_from(["split", "own"]))
def test_plan_invariants(shapes, bound, mode):
    specs = [TensorSpec(f"t{i}", tuple(s), d) for i, (s, d) in enumerate(shapes)]
    plan = plan_buckets(specs, bound, mode)
    b = plan.buckets
    eff = max(ALIGN, bound // ALIGN * ALIGN)
    # buckets tile [0, total) exactly, each aligned
    if plan.total_bytes:
        assert b[0].start == 0 and b[-1].end == plan.total_bytes
    assert all(x.end == y.start for x, y in zip(b, b[1:]))
    assert all(x.start % ALIGN == 0 and x.nbytes % ALIGN == 0 and x.nbytes > 0 for x in b)
    assert [x.index for x in b] == list(range(len(b)))
    prev_end = 0
    for t in plan.tensors:
        assert t.offset % ALIGN == 0 and t.offset >= prev_end
        prev_end = t.offset + t.nbytes
        if t.nbytes:
            first, last = b[t.first_bucket], b[t.last_bucket]
            assert first.start <= t.offset and t.offset + t.nbytes <= last.end
            if t.first_bucket != t.last_bucket:  # only a tensor above the bound straddles buckets
                assert -(-t.nbytes // ALIGN) * ALIGN > eff and mode == "split"
    for x in b:  # the bound holds except for a tensor given its own bucket
        if x.nbytes > eff:
            assert mode == "own" and len(x.names) == 1
