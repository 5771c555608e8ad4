"""The control plane's records (store/control.py): what a put, a lease and a get are given, and its own state."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Placement:
    """Where a put goes: row ids and chunks (row lo, row hi, unit, byte offset of each column block)."""

    row_ids: np.ndarray
    chunks: list[tuple[int, int, int, np.ndarray]]


@dataclass
class Lease:
    """Slots, row ids and one byte extent reserved for one producer, which places its puts in them
    itself and publishes each with a one-way `commit_leased` (no round trip per put)."""

    lease_id: int
    unit: int
    base: int
    nbytes: int
    row_ids: np.ndarray
    used_bytes: int = 0
    used_rows: int = 0

    def fits(self, rows: int, nbytes: int) -> bool:
        return self.used_rows + rows <= len(self.row_ids) and self.used_bytes + nbytes <= self.nbytes


@dataclass
class Claim:
    """Rows a get claimed for one task, with where each requested column lies."""

    row_ids: np.ndarray
    index: np.ndarray
    group: np.ndarray
    version: np.ndarray
    unit: np.ndarray  # (m, k)
    offset: np.ndarray  # (m, k)
    nbytes: np.ndarray  # (m, k)
    count: np.ndarray  # (m, k)
    parts: list[list[int]] | None = None
    stale: int = 0


@dataclass
class TaskState:
    bit: int
    need: int  # column mask the task registered
    consumed: int = 0
    discarded_stale: int = 0
    stale_consumed: int = 0
    names: tuple[str, ...] = field(default=())
    adds: int = 0  # columns this task's consumer writes later with put_columns (not expected in a put)


@dataclass
class Extent:
    """Bytes [base, base + size) of storage unit `unit`, held by `refs` rows (and by its lease while one is open)."""

    unit: int
    base: int
    size: int
    refs: int


@dataclass
class OpenLease:
    """A producer's open lease: its extent, reserved slots and row ids, and how much of them its puts used."""

    producer: int
    extent: int
    slots: np.ndarray
    rows: np.ndarray
    used_rows: int = 0
    used_bytes: int = 0
