"""Swap policy (pure): 'all' vs 'staggered' and the per-instance gate."""

from __future__ import annotations

import pytest

from asyncflow_hpc.weights.stagger import SwapGate, n_groups, should_swap, swap_offset, swap_schedule


def test_all_swaps_at_first_boundary():
    assert swap_schedule(4, "all") == [[0, 1, 2, 3]]
    assert all(should_swap(instance=i, n_instances=4, policy="all", boundaries_since_staged=0) for i in range(4))


def test_staggered_one_after_another_keeps_others_producing():
    sched = swap_schedule(4, "staggered")
    assert sched == [[0], [1], [2], [3]]
    for j, group in enumerate(sched):  # at boundary j exactly one instance pauses, 3 keep producing
        swapping_now = [i for i in range(4) if swap_offset(i, 4, "staggered") == j]
        assert swapping_now == group and len(swapping_now) == 1


def test_staggered_groups_bound_simultaneous_swaps():
    assert swap_schedule(5, "staggered", groups=2) == [[0, 2, 4], [1, 3]]
    assert n_groups(3, "staggered", groups=10) == 3
    assert swap_schedule(1, "staggered") == [[0]]


def test_must_swap_overrides_the_stagger():
    assert not should_swap(instance=3, n_instances=4, policy="staggered", boundaries_since_staged=0)
    assert should_swap(instance=3, n_instances=4, policy="staggered", boundaries_since_staged=0, must_swap=True)


def test_gate_counts_boundaries_from_first_sighting():
    gate = SwapGate(instance=2, n_instances=3, policy="staggered")
    assert gate.boundary(None) is False
    assert gate.boundary(5) is False  # boundary 0 after staging
    assert gate.boundary(6) is False  # a newer version does not restart the count
    assert gate.boundary(6) is True  # boundary 2: instance 2's turn
    assert gate.boundary(None) is False
    assert gate.boundary(7) is False  # a new cycle starts counting again


def test_gate_all_and_validation():
    gate = SwapGate(instance=1, n_instances=2, policy="all")
    assert gate.boundary(1) is True
    with pytest.raises(ValueError):
        SwapGate(instance=2, n_instances=2)
    with pytest.raises(ValueError):
        n_groups(2, "random")
    with pytest.raises(ValueError):
        n_groups(2, "staggered", groups=0)
