"""Configuration of the streaming sample store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from asyncflow_hpc.configlib import fail, opt


@dataclass(kw_only=True)
class StoreConfig:
    """The streaming store that rollout, reward and trainer stages exchange rows through."""

    transport: Literal["auto", "rma", "local"] = opt("auto", "rma: MPI windows; local: in-process twin; auto: rma when >1 rank.")
    capacity_rows: int = opt(4096, "Rows the store holds before producers block (back-pressure).")
    unit_mb: float = opt(64.0, "Bytes of one storage unit (the RMA window of one storage rank), in MiB; a row must fit in one.")
    storage: Literal["all", "servers"] = opt(
        "all", "Which ranks hold storage units: all store participants, or only dedicated store ranks (topology.store_ranks).")
    lease_mb: float = opt(64.0, "Bytes a producer reserves at once (at least 8 puts' worth) and fills with its puts, "
                          "publishing each one-way: one control round trip per lease instead of per put. Capped at "
                          "half of the free space per producer, so a nearly full store still admits every producer; "
                          "0 = one round trip per put.")
    lease_rows: int = opt(1024, "Row slots a producer reserves at once (at least 8 puts' worth; same cap as lease_mb).")
    recv_pool_mb: float = opt(256.0, "Memory a consumer keeps for reuse by the arrays its gets return (each >= 1 MiB): "
                              "a recycled buffer is already paged in, a fresh one page-faults on every 4 KiB. 0 = off.")
    timeout_s: float = opt(300.0, "Timeout of blocking put/get; the error names rank, role and what it waited for.")
    poll_min_s: float = opt(5e-5, "First back-off sleep of a waiting put/get or of an idle controller.")
    poll_max_s: float = opt(2e-3, "Longest back-off sleep of a waiting put/get or of an idle controller.")
    spin_s: float = opt(3e-4, "How long the controller and a client awaiting a reply poll without sleeping after "
                        "activity (a short spin keeps control round trips at tens of microseconds).")
    ctrl_poll_max_s: float = opt(5e-4, "Longest back-off sleep of an idle controller (bounds the first request's latency).")
    shared_memory: Literal["auto", "off"] = opt(
        "auto", "auto: when every store rank is on one node, storage units are MPI shared-memory windows "
        "(Win.Allocate_shared) and puts/gets are plain memory copies; off: always RMA Put/Get.")
    local_units: int = opt(2, "Storage units of the in-process twin (transport=local).")
    progress: Literal["auto", "thread", "none"] = opt(
        "auto", "Who drives MPI progress on storage ranks while they compute: thread = a sleeping thread that calls "
        "into MPI every progress_interval_s (needed over TCP, where a Get/Put completes only when its target "
        "polls); auto = thread when the store spans more than one node; none = rely on the transport (shared "
        "memory, RDMA hardware).")
    progress_interval_s: float = opt(1e-3, "Sleep between two progress calls of the progress thread.")

    def __post_init__(self) -> None:
        if self.capacity_rows < 1:
            raise fail("capacity_rows", f"must be >= 1, got {self.capacity_rows}")
        if self.unit_mb <= 0:
            raise fail("unit_mb", f"must be > 0, got {self.unit_mb}")
        if self.timeout_s <= 0:
            raise fail("timeout_s", f"must be > 0, got {self.timeout_s}")
        if not 0 < self.poll_min_s <= self.poll_max_s:
            raise fail("poll_min_s", f"need 0 < poll_min_s <= poll_max_s, got {self.poll_min_s}, {self.poll_max_s}")
        if self.spin_s < 0 or self.ctrl_poll_max_s < self.poll_min_s:
            raise fail("spin_s", f"need spin_s >= 0 and ctrl_poll_max_s >= poll_min_s, got {self.spin_s}, "
                                 f"{self.ctrl_poll_max_s}")
        if self.recv_pool_mb < 0:
            raise fail("recv_pool_mb", f"must be >= 0, got {self.recv_pool_mb}")
        if self.lease_mb < 0 or self.lease_rows < 1:
            raise fail("lease_mb", f"need lease_mb >= 0 and lease_rows >= 1, got {self.lease_mb}, {self.lease_rows}")
        if self.progress_interval_s <= 0:
            raise fail("progress_interval_s", f"must be > 0, got {self.progress_interval_s}")
        if self.local_units < 1:
            raise fail("local_units", f"must be >= 1, got {self.local_units}")

    @property
    def unit_bytes(self) -> int:
        return int(self.unit_mb * 1024 * 1024) // 8 * 8
