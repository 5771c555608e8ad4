"""The put contract in the in-process twin: a put lacking a column some task needs is refused, naming both,
unless a registered task adds that column later (put_columns); a wait for a missing column names it."""

import numpy as np
import pytest

from asyncflow_hpc.errors import WaitTimeout
from asyncflow_hpc.store import Column, RowMeta, Schema, SchemaError, StoreConfig, make_store

SCHEMA = Schema([Column("response_ids", "int32", var=True), Column("reward", "float32"),
                 Column("ref_logprobs", "float32", var=True)])


def make(leasing=False):
    st = make_store(StoreConfig(capacity_rows=16, unit_mb=1, timeout_s=5), SCHEMA)
    st.leasing = leasing
    return st


def rows(lo, hi, reward=False):
    cols = {"response_ids": [np.arange(i % 3 + 1, dtype=np.int32) for i in range(lo, hi)]}
    if reward:
        cols["reward"] = np.arange(lo, hi, dtype=np.float32)
    return cols, [RowMeta(i, i, 0) for i in range(lo, hi)]


@pytest.mark.parametrize("leasing", [False, True])
def test_a_put_lacking_a_needed_column_is_refused_naming_column_and_task(leasing):
    st = make(leasing)
    st.register_task("train", ["response_ids", "reward"])
    with pytest.raises(SchemaError, match="put lacks column 'reward', which task 'train' needs"):
        st.put(*rows(0, 2))
    assert st.stats()["rows_put"] == 0  # nothing half-stored
    st.put(*rows(0, 2, reward=True))  # the same put with the column goes through
    assert len(st.get("train", ["response_ids", "reward"], 2)) == 2


def test_a_column_a_task_adds_later_may_be_missing_from_the_put():
    st = make()
    st.register_task("train", ["response_ids", "reward", "ref_logprobs"])
    st.register_task("reward", ["response_ids"], adds=["reward"])
    with pytest.raises(SchemaError, match="'ref_logprobs', which task 'train' needs"):
        st.put(*rows(0, 2))
    st.register_task("reference", ["response_ids"], adds=["ref_logprobs"])
    ids = st.put(*rows(0, 2))
    st.put_columns(ids, {"reward": np.ones(2, np.float32)})
    with pytest.raises(WaitTimeout, match=r"task 'train' lag 2 \(2 rows lack column 'ref_logprobs'\)"):
        st.get("train", ["response_ids", "reward", "ref_logprobs"], 2, timeout=0.05)
    st.put_columns(ids, {"ref_logprobs": [np.zeros(len(r), np.float32) for r in rows(0, 2)[0]["response_ids"]]})
    assert len(st.get("train", ["response_ids", "reward", "ref_logprobs"], 2)) == 2


def test_adds_must_name_schema_columns():
    st = make()
    with pytest.raises(SchemaError, match="bogus"):
        st.register_task("reward", ["response_ids"], adds=["bogus"])
