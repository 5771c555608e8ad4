"""What a get returns: row ids, row meta and numpy column data; broadcast inside a data-parallel group.

    batch = store.get("trainer", ["response_ids", "reward"], 64)
    batch["reward"]            # np.ndarray (n,)
    batch["response_ids"][3]   # np.ndarray of row 3 (a Packed column: values + offsets, no padding)
    batch = bcast_batch(batch if leader else None, replica_comm, root=0)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from asyncflow_hpc.store.schema import RowMeta


class Packed:
    """n variable-length values packed back to back: `values[offsets[i]:offsets[i+1]]` is row i."""

    __slots__ = ("values", "offsets")

    def __init__(self, values: np.ndarray, offsets: np.ndarray):
        self.values = values
        self.offsets = np.asarray(offsets, dtype=np.int64)

    @classmethod
    def from_list(cls, arrays: Sequence[np.ndarray], dtype: Any = None) -> "Packed":
        lens = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
        offs = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum(lens, out=offs[1:])
        vals = np.concatenate(arrays) if len(arrays) else np.zeros(0, dtype=dtype or np.float32)
        return cls(vals.astype(dtype, copy=False) if dtype is not None else vals, offs)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        if i < 0:
            i += len(self)
        return self.values[self.offsets[i]:self.offsets[i + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def to_list(self) -> list[np.ndarray]:
        return [self[i] for i in range(len(self))]

    def take(self, idx: Sequence[int]) -> "Packed":
        return Packed.from_list([self[int(i)] for i in idx], dtype=self.values.dtype)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Packed) and np.array_equal(self.offsets, other.offsets)
                and np.array_equal(self.values, other.values))

    def __repr__(self) -> str:
        return f"Packed(n={len(self)}, values={self.values.shape} {self.values.dtype})"


@dataclass
class Batch:
    """Rows claimed by one get: ids, meta arrays and one entry per requested column."""

    row_ids: np.ndarray
    index: np.ndarray
    group: np.ndarray
    version: np.ndarray
    columns: dict[str, Any] = field(default_factory=dict)  # name -> ndarray (n, *shape) or Packed
    parts: list[list[int]] | None = None  # seqlen_balanced: positions of this batch per dp rank
    stale: int = 0  # rows in this batch that were beyond the staleness bound (policy chose to consume)

    def __len__(self) -> int:
        return int(len(self.row_ids))

    def __getitem__(self, name: str) -> Any:
        return self.columns[name]

    def __contains__(self, name: str) -> bool:
        return name in self.columns

    @property
    def meta(self) -> list[RowMeta]:
        return [RowMeta(index=int(i), group=int(g), version=int(v))
                for i, g, v in zip(self.index, self.group, self.version)]

    def select(self, positions: Sequence[int]) -> "Batch":
        """A sub-batch (e.g. one dp rank's part of a seqlen-balanced batch)."""
        pos = np.asarray(positions, dtype=np.int64)
        cols = {k: (v.take(pos) if isinstance(v, Packed) else v[pos]) for k, v in self.columns.items()}
        return Batch(row_ids=self.row_ids[pos], index=self.index[pos], group=self.group[pos],
                     version=self.version[pos], columns=cols)

    def part(self, i: int) -> "Batch":
        if self.parts is None:
            raise ValueError("this batch has no dp parts (use policy='seqlen_balanced' with dp=...)")
        return self.select(self.parts[i])


def empty_batch() -> Batch:
    z = np.zeros(0, dtype=np.int64)
    return Batch(row_ids=z, index=z.copy(), group=z.copy(), version=z.copy())


def bcast_batch(batch: Batch | None, comm: Any, root: int = 0) -> Batch:
    """The store talker (root) of a data-parallel group shares its batch with the rest of the group."""
    return comm.bcast(batch, root=root)


def scatter_parts(batch: Batch | None, comm: Any, root: int = 0) -> Batch:
    """Root splits a seqlen-balanced batch (comm.size parts) and each rank of `comm` receives its part."""
    parts = None
    if comm.Get_rank() == root:
        if batch.parts is None or len(batch.parts) != comm.Get_size():
            raise ValueError(f"scatter_parts: batch has {None if batch.parts is None else len(batch.parts)} "
                             f"parts, the communicator has {comm.Get_size()} ranks (use dp=comm size)")
        parts = [batch.part(i) for i in range(comm.Get_size())]
    return comm.scatter(parts, root=root)
