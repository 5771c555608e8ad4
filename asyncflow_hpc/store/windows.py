"""The RMA data window of the store: one storage unit per storage rank, moved by Put/Get in Lock_all epochs.

Only `Lock_all` + `Put`/`Get` + `Flush` are used: on both the MPICH and the Open MPI wheels these
complete while the target rank computes without calling MPI (per-target Lock/Unlock and atomics do
not on MPICH), so a busy trainer or rollout rank never stalls another rank's put or get -- within a
node (shared memory) and over RDMA hardware. Over TCP (MPICH's OFI tcp provider) a Get completes only
when the target polls MPI, so across such nodes a `ProgressThread` polls on each storage rank.
"""

from __future__ import annotations

import threading
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


class ProgressThread:
    """A daemon thread that enters MPI's progress engine every `interval_s` (sleeping in between).

    Over transports without hardware RMA (TCP), a Put/Get to this rank's window advances only while
    this rank is inside an MPI call; a rank computing or waiting on torch.distributed would stall the
    origin's Flush forever. An Iprobe for a tag nobody sends is the cheapest call that polls the netmod.
    """

    TAG = 7399

    def __init__(self, comm: Any, interval_s: float):
        from mpi4py import MPI

        self.comm = comm  # the window's communicator carries no point-to-point messages: nothing to match
        self.any_source, self.interval_s = MPI.ANY_SOURCE, float(interval_s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="store-mpi-progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.comm.Iprobe(self.any_source, self.TAG)

    def free(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=10)
            self._thread = None


def spans_nodes(comm: Any) -> bool:
    """Collective: True when some ranks of `comm` cannot share memory (MPI places them on other nodes)."""
    from mpi4py import MPI

    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return local.Get_size() < comm.Get_size()
    finally:
        local.Free()
