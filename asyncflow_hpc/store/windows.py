"""The RMA data window of the store: one storage unit per storage rank, moved by Put/Get in Lock_all epochs.

Only `Lock_all` + `Put`/`Get` + `Flush` are used: on both the MPICH and the Open MPI wheels these
complete while the target rank computes without calling MPI (per-target Lock/Unlock and atomics do
not on MPICH), so a busy trainer or rollout rank never stalls another rank's put or get.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np


class DataWindow:
    """`Win.Allocate` of `nbytes` on this rank (0 on ranks without a storage unit)."""

    def __init__(self, comm: Any, nbytes: int):
        from mpi4py import MPI

        self.MPI = MPI
        self.nbytes = int(nbytes)
        self.win = MPI.Win.Allocate(self.nbytes, 1, comm=comm)

    @contextmanager
    def epoch(self) -> Iterator["DataWindow"]:
        """A passive-target access epoch to every rank; Unlock_all completes every operation in it."""
        self.win.Lock_all()
        try:
            yield self
        finally:
            self.win.Unlock_all()

    def put(self, buf: np.ndarray, rank: int, offset: int) -> None:
        self.win.Put([buf, self.MPI.BYTE], rank, target=(offset, len(buf), self.MPI.BYTE))

    def get(self, buf: np.ndarray, rank: int, offset: int) -> None:
        self.win.Get([buf, self.MPI.BYTE], rank, target=(offset, len(buf), self.MPI.BYTE))

    def flush_all(self) -> None:
        self.win.Flush_all()

    def flush(self, rank: int) -> None:
        self.win.Flush(rank)

    def free(self) -> None:
        if self.win is not None:
            self.win.Free()
            self.win = None
