"""Row schema of the store: named columns (dtype, shape, fixed or variable length), validation, packing.

    schema = Schema([Column("prompt_ids", "int32", var=True), Column("reward", "float32")])
    cols = schema.validate({"prompt_ids": [a, b], "reward": [1.0, 0.0]}, n=2)

The rows of one put are stored as one chunk, column by column: each column's values of all the rows
back to back (a variable-length value is its elements, count kept in the control plane, never
padded), columns in schema order, each column block aligned to 8 bytes. A batch read in put order is
then one Get per column, straight into the numpy array it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from asyncflow_hpc.errors import AsyncFlowError

ALIGN = 8
MAX_COLUMNS = 64  # ready bits of a row live in one uint64


class StoreError(AsyncFlowError):
    """A store call was used wrongly (unknown task, row no longer stored, ...)."""


class SchemaError(StoreError, ValueError):
    """A put does not match the declared schema; the message names the column."""


class EndOfStream(StoreError):
    """Every producer called mark_done() and no eligible row is left for this task."""


@dataclass(frozen=True)
class RowMeta:
    """Per-row metadata: global sample index, prompt-group id, policy version that generated it."""

    index: int
    group: int = -1
    version: int = 0


@dataclass(frozen=True)
class Column:
    """A named field: dtype, per-element shape, and whether the value has a variable leading length."""

    name: str
    dtype: Any
    shape: tuple[int, ...] = ()
    var: bool = False

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise SchemaError(f"column name must be a non-empty string, got {self.name!r}")
        try:
            dt = np.dtype(self.dtype)
        except TypeError:
            raise SchemaError(f"column '{self.name}': unknown dtype {self.dtype!r}") from None
        if dt.hasobject:
            raise SchemaError(f"column '{self.name}': object dtype cannot be stored")
        object.__setattr__(self, "dtype", dt)
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if any(s < 0 for s in self.shape):
            raise SchemaError(f"column '{self.name}': negative shape {self.shape}")

    @property
    def elem_bytes(self) -> int:
        """Bytes of one element (a fixed value, or one step of a variable-length value)."""
        return int(self.dtype.itemsize * int(np.prod(self.shape, dtype=np.int64)))


def aligned(nbytes: np.ndarray | int) -> Any:
    return (nbytes + (ALIGN - 1)) // ALIGN * ALIGN


class Schema:
    """An ordered set of columns, declared once per run and checked on every put."""

    def __init__(self, columns: Sequence[Column]):
        self.columns = tuple(columns)
        if not self.columns:
            raise SchemaError("a schema needs at least one column")
        if len(self.columns) > MAX_COLUMNS:
            raise SchemaError(f"a schema holds at most {MAX_COLUMNS} columns, got {len(self.columns)}")
        self.index = {}
        for i, c in enumerate(self.columns):
            if not isinstance(c, Column):
                raise SchemaError(f"schema entry {i} is not a Column: {c!r}")
            if c.name in self.index:
                raise SchemaError(f"column '{c.name}' declared twice")
            self.index[c.name] = i

    def __repr__(self) -> str:
        return f"Schema({list(self.columns)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schema) and self.columns == other.columns

    def __reduce__(self):
        return (Schema, (self.columns,))

    def col(self, name: str) -> Column:
        return self.columns[self.col_id(name)]

    def col_id(self, name: str) -> int:
        try:
            return self.index[name]
        except KeyError:
            raise SchemaError(f"unknown column '{name}'; the schema has: {', '.join(self.index)}") from None

    def col_ids(self, names: Sequence[str]) -> list[int]:
        if isinstance(names, str):
            names = [names]
        ids = [self.col_id(n) for n in names]
        if len(set(ids)) != len(ids):
            raise SchemaError(f"column listed twice in {list(names)}")
        return ids

    def mask(self, names: Sequence[str]) -> int:
        m = 0
        for i in self.col_ids(names):
            m |= 1 << i
        return m

    def validate(self, rows: Mapping[str, Any], n: int | None = None) -> "Validated":
        """Check every column of a put; returns the values as contiguous arrays ready to be written."""
        if not isinstance(rows, Mapping) or not rows:
            raise SchemaError("put needs a non-empty mapping of column name -> values")
        ids = sorted(self.col_id(name) for name in rows)  # raises on an unknown column
        values: dict[int, list[np.ndarray]] = {}
        blocks: dict[int, np.ndarray] = {}
        for cid in ids:
            col = self.columns[cid]
            vals, block = _column_values(col, rows[col.name])
            if n is None:
                n = len(vals)
            if len(vals) != n:
                raise SchemaError(f"column '{col.name}': {len(vals)} values, expected {n} (one per row)")
            values[cid] = vals
            if block is not None:
                blocks[cid] = block
        if not n:
            raise SchemaError("put of zero rows")
        sizes = np.zeros((n, len(ids)), dtype=np.int64)
        counts = np.ones((n, len(ids)), dtype=np.int64)
        for j, cid in enumerate(ids):
            col = self.columns[cid]
            if cid in blocks:
                sizes[:, j] = blocks[cid].nbytes // n
                counts[:, j] = blocks[cid].shape[1] if col.var else 1
                continue
            sizes[:, j] = np.fromiter((v.nbytes for v in values[cid]), dtype=np.int64, count=n)
            if col.var:
                counts[:, j] = np.fromiter((v.shape[0] for v in values[cid]), dtype=np.int64, count=n)
        return Validated(ids=ids, values=values, sizes=sizes, counts=counts, blocks=blocks)

    def check_row_fits(self, v: "Validated", unit_bytes: int) -> None:
        """A row larger than one storage unit can never be stored: say which column is big."""
        totals = aligned(v.sizes).sum(axis=1)
        i = int(np.argmax(totals))
        if totals[i] > unit_bytes:
            j = int(np.argmax(v.sizes[i]))
            name = self.columns[v.ids[j]].name
            raise SchemaError(f"row {i} of the put needs {totals[i]} bytes, more than a storage unit "
                              f"({unit_bytes} bytes, store.unit_mb); its largest column is '{name}' "
                              f"({v.sizes[i, j]} bytes): raise store.unit_mb or shorten '{name}'")


@dataclass
class Validated:
    """A checked put: column ids (schema order), per-row contiguous arrays, byte sizes and counts."""

    ids: list[int]
    values: dict[int, list[np.ndarray]]
    sizes: np.ndarray  # (n, k) bytes of each (row, column)
    counts: np.ndarray  # (n, k) elements of each var value (1 for fixed columns)
    blocks: dict[int, np.ndarray] = field(default_factory=dict)  # column id -> contiguous (n, ...) input

    def column_bytes(self, cid: int, lo: int, hi: int) -> list[np.ndarray]:
        """The bytes of column `cid` for rows lo..hi, as few flat uint8 buffers as possible (no copy
        for a contiguous block input or for big values; one concatenation for many small values)."""
        if cid in self.blocks:
            return [_flat(self.blocks[cid][lo:hi])]
        vals = self.values[cid][lo:hi]
        total = sum(v.nbytes for v in vals)
        if total >= 65536 * len(vals):  # big values: move each directly, a copy would cost as much
            return [_flat(v) for v in vals]
        return [_flat(np.concatenate([v.reshape(-1) for v in vals]))] if vals else []

    @property
    def n(self) -> int:
        return int(self.sizes.shape[0])


def _flat(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1).view(np.uint8)


def chunk_layout(sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(n, k) value sizes of a chunk -> offset of each (row, column) inside the chunk, column starts, total.

    Column j's values of all rows lie back to back from `starts[j]`; blocks are 8-byte aligned."""
    col = sizes.sum(axis=0)
    al = aligned(col)
    starts = np.cumsum(al) - al
    within = np.cumsum(sizes, axis=0) - sizes
    return starts[None, :] + within, starts, int(al.sum())


def _contig(a: np.ndarray) -> np.ndarray:
    return a if a.flags.c_contiguous else a.copy(order="C")


def _as_array(col: Column, v: Any, i: int) -> np.ndarray:
    if hasattr(v, "detach") and hasattr(v, "cpu"):  # a torch tensor, without importing torch
        v = v.detach().cpu().numpy()
    if isinstance(v, np.ndarray):
        if v.dtype != col.dtype:
            raise SchemaError(f"column '{col.name}' row {i}: dtype {v.dtype}, schema says {col.dtype}")
        return _contig(v)
    try:
        arr = np.asarray(v, dtype=col.dtype)
        raw = np.asarray(v)
    except (TypeError, ValueError) as exc:
        raise SchemaError(f"column '{col.name}' row {i}: cannot convert to {col.dtype}: {exc}") from None
    if raw.dtype.kind in "iufb" and raw.size and not np.array_equal(arr, raw):
        raise SchemaError(f"column '{col.name}' row {i}: values do not fit dtype {col.dtype} exactly")
    return _contig(arr)


def _column_values(col: Column, data: Any) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Values of one column for n rows -> (n contiguous arrays, shape checked; the block if given as one)."""
    from asyncflow_hpc.store.batch import Packed

    if isinstance(data, Packed):
        data = data.to_list()
    if isinstance(data, np.ndarray) and data.ndim == 1 + col.var + len(col.shape):
        # A block: (n, *shape), or (n, length, *shape) for a variable-length column with equal lengths.
        if data.dtype != col.dtype:
            raise SchemaError(f"column '{col.name}': dtype {data.dtype}, schema says {col.dtype}")
        if data.shape[1 + col.var:] != col.shape:
            raise SchemaError(f"column '{col.name}': value shape {data.shape[1 + col.var:]}, schema says {col.shape}")
        data = _contig(data)
        return list(data), data
    if isinstance(data, (str, bytes)) or not hasattr(data, "__len__"):
        raise SchemaError(f"column '{col.name}': expected one value per row (a list or array), got {type(data).__name__}")
    out = []
    for i, v in enumerate(data):
        if (type(v) is np.ndarray and v.dtype == col.dtype and v.ndim == col.var + len(col.shape)
                and v.shape[col.var:] == col.shape and v.flags.c_contiguous):
            out.append(v)  # fast path: already a contiguous array of the right dtype and shape
            continue
        a = _as_array(col, v, i)
        if col.var:
            if a.ndim != 1 + len(col.shape) or a.shape[1:] != col.shape:
                raise SchemaError(f"column '{col.name}' row {i}: shape {a.shape}, schema says (length, "
                                  f"{', '.join(map(str, col.shape))}) (variable length)".replace(", )", ")"))
        elif a.shape != col.shape:
            raise SchemaError(f"column '{col.name}' row {i}: shape {a.shape}, schema says {col.shape}")
        out.append(a)
    return out, None
