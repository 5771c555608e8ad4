"""Wake-ups between ranks of one node, so that waiting for a control message never spins nor oversleeps.

MPI has no wait that sleeps: a blocking receive busy-polls a core (DESIGN.md), so the store's
controller and its clients poll with back-off sleeps, and a message that arrives during a sleep
waits for it to end (measured: ~1 ms per request-reply round trip on 3 ranks over 2 cores, most of a
1 MiB-row put). A doorbell is a datagram socket in Linux's abstract namespace per rank: after
sending an MPI control message, the sender rings the receiver's bell (one byte, never blocking),
and the receiver sleeps in `select` on its bell instead of `time.sleep`, so it wakes when the
message is there. The bell is only a hint: every wait still polls MPI after its timeout, so a lost
ring (full socket buffer, peer on another node or network namespace) costs latency, never
correctness. Only peers on the same node (MPI shared-memory domain) are rung.
"""

from __future__ import annotations

import os
import select
import socket
import time
import uuid
from typing import Any


class Doorbell:
    """This rank's bell (`wait`) and the ability to ring other ranks' bells (`ring`)."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.address = b""
        self.peers: dict[int, bytes] = {}
        if not hasattr(socket, "AF_UNIX") or not os.uname().sysname == "Linux":
            return  # abstract socket names are Linux-only: every wait then falls back to plain sleeps
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            address = b"\0asyncflow-bell-" + uuid.uuid4().hex.encode()
            sock.bind(address)
            sock.setblocking(False)
        except OSError:
            return
        self.sock, self.address = sock, address

    def connect(self, comm: Any) -> None:
        """Collective over `comm`: learn the bells of the ranks that share this rank's node."""
        from mpi4py import MPI

        local = comm.Split_type(MPI.COMM_TYPE_SHARED)
        try:
            group_ranks = local.allgather(comm.Get_rank())
            addresses = local.allgather(self.address)
        finally:
            local.Free()
        self.peers = {r: a for r, a in zip(group_ranks, addresses) if a and r != comm.Get_rank()}

    def can_ring(self, rank: int) -> bool:
        return self.sock is not None and rank in self.peers

    def ring(self, rank: int) -> None:
        """Wake `rank` if it sleeps in `wait` (never blocks; forgets a peer whose bell is unreachable)."""
        address = self.peers.get(rank) if self.sock is not None else None
        if address is None:
            return
        try:
            self.sock.sendto(b"\1", socket.MSG_DONTWAIT, address)
        except BlockingIOError:
            pass  # its buffer is full of rings: it is awake, or will be at its next poll
        except OSError:
            del self.peers[rank]  # another network namespace: fall back to its polling

    def wait(self, timeout: float) -> bool:
        """Sleep until rung or `timeout` seconds pass; True when rung (the rings are consumed)."""
        if self.sock is None:
            time.sleep(timeout)
            return False
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return False
        try:
            while True:
                self.sock.recv(64)
        except BlockingIOError:
            pass
        return True

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
