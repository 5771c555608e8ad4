"""Schema declaration, validation of puts, record layout and packing."""

import numpy as np
import pytest

from asyncflow_hpc.store import Column, Packed, Schema, SchemaError
from asyncflow_hpc.store.schema import chunk_layout


def schema():
    return Schema([Column("ids", "int32", var=True), Column("lp", "float32", var=True),
                   Column("reward", "float32"), Column("vec", "float64", shape=(3,))])


def test_blocks_are_accepted_for_fixed_and_equal_length_columns():
    v = schema().validate({"ids": np.zeros((3, 4), np.int32), "vec": np.zeros((3, 3))})
    assert v.sizes.tolist() == [[16, 24]] * 3 and v.counts.tolist() == [[4, 1]] * 3
    assert [len(b) for b in v.column_bytes(0, 1, 3)] == [32]  # a slice of the block, no copy


def test_validate_sizes_counts_and_order():
    v = schema().validate({"reward": [1.0, 0.5], "ids": [np.arange(5, dtype=np.int32), np.arange(2, dtype=np.int32)]})
    assert v.ids == [0, 2]  # schema order, whatever the dict order
    assert v.sizes.tolist() == [[20, 4], [8, 4]]
    assert v.counts.tolist() == [[5, 1], [2, 1]]


def test_chunk_layout_is_columnar_aligned_and_unpadded():
    offs, starts, total = chunk_layout(np.array([[20, 4], [8, 4]]))
    assert starts.tolist() == [0, 32]  # column 0: 28 bytes of values, block aligned to 32
    assert offs.tolist() == [[0, 32], [20, 36]]  # row 1's values follow row 0's with no padding
    assert total == 40


@pytest.mark.parametrize("rows, needle", [
    ({"nope": [1]}, "unknown column 'nope'"),
    ({"reward": np.zeros(2, np.float64)}, "column 'reward': dtype float64"),
    ({"vec": np.zeros((2, 4))}, "column 'vec': value shape (4,)"),
    ({"ids": [np.zeros((2, 2), np.int32)]}, "column 'ids' row 0: shape (2, 2)"),
    ({"ids": [[1.5]]}, "do not fit dtype int32"),
    ({"reward": [1.0], "ids": [[1], [2]]}, "column 'reward': 1 values, expected 2"),
    ({"reward": "abc"}, "expected one value per row"),
])
def test_bad_puts_name_the_column(rows, needle):
    with pytest.raises(SchemaError) as exc:
        schema().validate(rows)
    assert needle in str(exc.value)


def test_row_larger_than_unit_names_the_biggest_column():
    v = schema().validate({"ids": [np.zeros(1000, np.int32)], "reward": [1.0]})
    with pytest.raises(SchemaError, match="largest column is 'ids'.*store.unit_mb"):
        schema().check_row_fits(v, 1024)
    schema().check_row_fits(v, 8192)


def test_declaration_errors():
    with pytest.raises(SchemaError, match="declared twice"):
        Schema([Column("a", "int32"), Column("a", "int64")])
    with pytest.raises(SchemaError, match="unknown dtype"):
        Column("a", "notatype")
    with pytest.raises(SchemaError, match="at least one"):
        Schema([])


def test_packed_roundtrip():
    arrs = [np.arange(3), np.arange(0), np.arange(5)]
    p = Packed.from_list(arrs)
    assert len(p) == 3 and p.lengths.tolist() == [3, 0, 5]
    assert all(np.array_equal(a, b) for a, b in zip(p, arrs))
    assert p.take([2, 0]).to_list()[0].tolist() == [0, 1, 2, 3, 4]
    assert schema().validate({"ids": Packed.from_list([np.arange(2, dtype=np.int32)])}).counts.tolist() == [[2]]
