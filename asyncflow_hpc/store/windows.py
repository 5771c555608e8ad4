"""The RMA data window of the store: one storage unit per storage rank, moved by Put/Get in Lock_all epochs.

Only `Lock_all` + `Put`/`Get` + `Flush` are used: on both the MPICH and the Open MPI wheels these
complete while the target rank computes without calling MPI (per-target Lock/Unlock and atomics do
not on MPICH), so a busy trainer or rollout rank never stalls another rank's put or get -- within a
node (shared memory) and over RDMA hardware. Over TCP (MPICH's OFI tcp provider) a Get completes only
when the target polls MPI, so across such nodes a `ProgressThread` polls on each storage rank.

With `shared=True` (every rank of the communicator on one node) the window is `Win.Allocate_shared`
and put/get are plain memory copies into and out of the target's segment (`Shared_query`), ordered
by `Win.Sync` (a memory barrier) before the control message that publishes them: the MPI-3 shared
memory model. That moves bytes at memcpy speed, without the per-operation cost of the RMA path.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np

from asyncflow_hpc.topology.comms import sleeping_barrier


class DataWindow:
    """`Win.Allocate` of `nbytes` on this rank (0 on ranks without a storage unit), or
    `Win.Allocate_shared` with direct copies when `shared` (collective: the same value on every rank)."""

    def __init__(self, comm: Any, nbytes: int, shared: bool = False):
        from mpi4py import MPI

        self.MPI = MPI
        self.nbytes = int(nbytes)
        self.shared = bool(shared)
        self.views: dict[int, np.ndarray] = {}
        if not self.shared:
            self.win = MPI.Win.Allocate(self.nbytes, 1, comm=comm)
            return
        # non-contiguous: each rank's segment is its own mapping (page-aligned, no false sharing)
        info = MPI.Info.Create()
        info.Set("alloc_shared_noncontig", "true")
        try:
            self.win = MPI.Win.Allocate_shared(self.nbytes, 1, info=info, comm=comm)
        finally:
            info.Free()
        for r in range(comm.Get_size()):
            mem, _ = self.win.Shared_query(r)
            if len(mem):
                self.views[r] = np.frombuffer(mem, dtype=np.uint8)
        self._prefault(comm)

    def _prefault(self, comm: Any) -> None:
        """Page the units in now, not on the first pass of puts: a first write to a shared-memory page
        allocates and zeroes it (measured ~4 us per 4 KiB page: puts into new pages ran at 0.9 GB/s),
        and each other rank's first access maps it. The owner writes a byte per page, then every rank
        reads one per page of every unit (collective). In 8 MiB steps that let other threads run in
        between: page faults of four ranks on two cores can take seconds, and a heartbeat thread
        starved of the GIL that long reads as a frozen rank to the job monitor."""
        own = self.views.get(comm.Get_rank())
        if own is not None:
            _touch(own, write=True)
        sleeping_barrier(comm)
        for view in self.views.values():
            _touch(view, write=False)

    @contextmanager
    def epoch(self) -> Iterator["DataWindow"]:
        """A passive-target access epoch to every rank; Unlock_all completes every operation in it."""
        self.win.Lock_all()
        try:
            yield self
        finally:
            self.win.Unlock_all()

    def put(self, buf: np.ndarray, rank: int, offset: int) -> None:
        if self.shared:
            np.copyto(self.views[rank][offset:offset + len(buf)], buf)
            return
        self.win.Put([buf, self.MPI.BYTE], rank, target=(offset, len(buf), self.MPI.BYTE))

    def get(self, buf: np.ndarray, rank: int, offset: int) -> None:
        if self.shared:
            np.copyto(buf, self.views[rank][offset:offset + len(buf)])
            return
        self.win.Get([buf, self.MPI.BYTE], rank, target=(offset, len(buf), self.MPI.BYTE))

    def flush_all(self) -> None:
        if self.shared:
            self.win.Sync()  # copies done by this thread are visible before the next control message
            return
        self.win.Flush_all()

    def flush(self, rank: int) -> None:
        if self.shared:
            self.win.Sync()
            return
        self.win.Flush(rank)

    def sync(self) -> None:
        """Before reading bytes another rank published (shared windows: a memory barrier)."""
        if self.shared:
            self.win.Sync()

    def free(self) -> None:
        if self.win is not None:
            self.views.clear()
            self.win.Free()
            self.win = None


def _touch(view: np.ndarray, write: bool, page: int = 4096, step: int = 8 << 20) -> None:
    """Write (or read) one byte per page of `view`, yielding the GIL after every `step` bytes."""
    for start in range(0, len(view), step):
        pages = view[start:start + step:page]
        if write:
            pages[:] = 0
        else:
            int(pages.sum())
        time.sleep(0)


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
