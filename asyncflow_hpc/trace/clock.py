"""Clock alignment across ranks: MPI ping-pong against rank 0, offset taken from the min-RTT sample.

    sync = measure_clock_offset(comm)      # collective over comm
    rec.set_clock(sync)                    # recorder stores times in rank 0's clock

Each rank's local clock is `time.perf_counter()` (monotonic). Rank r sends its time t1, rank 0
answers with its own time t0, r receives at t2; the estimate offset = t0 - (t1 + t2) / 2 is exact
when both directions take equally long, so the sample with the smallest RTT (t2 - t1) bounds the
error by RTT/2. `epoch` is rank 0's clock at the sync, broadcast to all: stored times are
`local + offset - epoch` seconds, i.e. seconds since the epoch on rank 0's clock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from asyncflow_hpc.errors import WaitTimeout

_TAG_PING, _TAG_PONG = 7701, 7702


@dataclass(frozen=True)
class ClockSync:
    """Map from this rank's perf_counter clock to rank 0's, plus the shared epoch."""

    offset: float = 0.0  # add to local perf_counter to get rank 0's perf_counter
    rtt: float = 0.0  # round trip of the sample the offset came from (error bound: rtt/2)
    epoch: float = 0.0  # rank 0's perf_counter at the sync: stored time 0
    epoch_unix: float = 0.0  # rank 0's time.time() at the epoch

    @staticmethod
    def local() -> "ClockSync":
        """No other ranks: epoch = now on this process's clock."""
        return ClockSync(0.0, 0.0, time.perf_counter(), time.time())

    @property
    def shift(self) -> float:
        """Add to a local perf_counter reading to get a stored time."""
        return self.offset - self.epoch


def _wait(req: Any, timeout_s: float, what: str, rank: int, role: str | None) -> None:
    """Complete an MPI request: poll briefly (keeps ping-pong RTTs short), then sleep with back-off."""
    start = time.perf_counter()
    spin_until = start + 0.002
    delay = 20e-6
    while not req.Test():
        now = time.perf_counter()
        if now > start + timeout_s:
            req.Cancel()
            raise WaitTimeout(f"clock sync: waited {timeout_s:.0f}s for {what}", rank=rank, role=role)
        if now > spin_until:
            time.sleep(delay)
            delay = min(delay * 2, 0.005)


def measure_clock_offset(comm: Any, *, rounds: int = 16, timeout_s: float = 60.0,
                         role: str | None = None) -> ClockSync:
    """Collective over `comm` (mpi4py): every rank's offset to rank 0's clock, by ping-pong."""
    rank, size = comm.Get_rank(), comm.Get_size()
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    buf = np.zeros(1, dtype=np.float64)
    if rank == 0:
        for peer in range(1, size):
            for _ in range(rounds):
                _wait(comm.Irecv(buf, source=peer, tag=_TAG_PING), timeout_s, f"ping from rank {peer}", rank, role)
                buf[0] = time.perf_counter()
                _wait(comm.Isend(buf, dest=peer, tag=_TAG_PONG), timeout_s, f"pong to rank {peer}", rank, role)
        offset, rtt = 0.0, 0.0
    else:
        best = (np.inf, 0.0)
        for _ in range(rounds):
            t1 = time.perf_counter()
            buf[0] = t1
            _wait(comm.Isend(buf, dest=0, tag=_TAG_PING), timeout_s, "rank 0 to take a clock ping", rank, role)
            _wait(comm.Irecv(buf, source=0, tag=_TAG_PONG), timeout_s, "clock pong from rank 0", rank, role)
            t2 = time.perf_counter()
            if t2 - t1 < best[0]:
                best = (t2 - t1, float(buf[0]) - (t1 + t2) / 2)
        rtt, offset = best
    epoch = np.array([time.perf_counter(), time.time()], dtype=np.float64)
    req = comm.Ibcast(epoch, root=0)
    _wait(req, timeout_s, "the clock epoch broadcast from rank 0", rank, role)
    return ClockSync(offset=float(offset), rtt=float(rtt), epoch=float(epoch[0]), epoch_unix=float(epoch[1]))
