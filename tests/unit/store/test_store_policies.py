"""Sampling policies as pure functions over candidate metadata (no MPI)."""

import numpy as np
import pytest

from asyncflow_hpc.store.policies import (POLICIES, Candidates, balanced_parts, register_policy, resolve_policy)


def test_fifo_waits_for_a_full_batch_until_final():
    c = Candidates.make(index=[5, 6, 7])
    assert resolve_policy("fifo")(c, 4) is None
    assert resolve_policy("fifo")(c, 2).take.tolist() == [0, 1]
    assert resolve_policy("fifo")(c, 4, final=True).take.tolist() == [0, 1, 2]


def test_grpo_group_takes_whole_groups_only():
    c = Candidates.make(index=range(7), group=[1, 2, 1, 2, 3, 1, 3])
    assert POLICIES["grpo_group"](c, 6, group_size=3) is None  # only group 1 is complete
    sel = POLICIES["grpo_group"](c, 3, group_size=3)
    assert c.group[sel.take].tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="multiple of group_size"):
        POLICIES["grpo_group"](c, 4, group_size=3)


def test_grpo_group_end_of_stream_returns_incomplete_groups():
    c = Candidates.make(index=range(3), group=[4, 4, 9])
    assert POLICIES["grpo_group"](c, 2, group_size=2).take.tolist() == [0, 1]
    c2 = Candidates.make(index=[2], group=[9])
    assert POLICIES["grpo_group"](c2, 2, group_size=2) is None
    assert POLICIES["grpo_group"](c2, 2, group_size=2, final=True).take.tolist() == [0]


def test_seqlen_balanced_parts():
    seq = np.array([100, 1, 90, 2, 80, 3, 70, 4])
    parts = balanced_parts(seq, 2)
    sums = [int(seq[p].sum()) for p in parts]
    assert sorted(len(p) for p in parts) == [4, 4]
    assert abs(sums[0] - sums[1]) <= 30  # the naive halves would differ by 170+
    c = Candidates.make(index=range(8), seqlen=seq)
    sel = POLICIES["seqlen_balanced"](c, 8, dp=4)
    assert sorted(i for p in sel.parts for i in p) == list(range(8))
    assert max(int(seq[sel.take][p].sum()) for p in sel.parts) <= 104


def test_version_bounded_uses_eta_and_counts_stale():
    c = Candidates.make(index=range(6), version=[0, 1, 2, 3, 4, 2])
    sel = POLICIES["version_bounded"](c, 2, version=3, eta=1)
    assert c.version[sel.take].tolist() == [2, 3]
    assert c.version[sel.discard].tolist() == [0, 1]  # too old: consumed and counted, never silently lost
    sel = POLICIES["version_bounded"](c, 5, version=3, eta=1, on_stale="consume")
    assert c.version[sel.take].tolist() == [0, 1, 2, 3, 2] and sel.stale == 2
    sel = POLICIES["version_bounded"](c, 4, version=3, eta=0)  # only version 3 is fresh: no batch, discards
    assert len(sel.take) == 0 and c.version[sel.discard].tolist() == [0, 1, 2, 2]
    # rows from a newer version are never eligible nor discarded
    assert 4 not in c.version[sel.discard].tolist()


def test_version_bounded_composes_with_grpo_group():
    c = Candidates.make(index=range(6), group=[0, 0, 1, 1, 2, 2], version=[0, 0, 1, 1, 1, 1])
    sel = POLICIES["version_bounded"](c, 4, version=1, eta=0, then="grpo_group", group_size=2)
    assert c.group[sel.take].tolist() == [1, 1, 2, 2] and c.group[sel.discard].tolist() == [0, 0]


def test_registry_and_dotted_path():
    @register_policy("newest_first_test")
    def newest(c, n, *, final=False):
        return None

    assert resolve_policy("newest_first_test") is newest
    assert resolve_policy("asyncflow_hpc.store.policies:fifo") is POLICIES["fifo"]
    with pytest.raises(ValueError, match="unknown sampling policy 'nope'.*fifo"):
        resolve_policy("nope")
    with pytest.raises(ValueError, match="cannot import"):
        resolve_policy("no.such.module:fn")
