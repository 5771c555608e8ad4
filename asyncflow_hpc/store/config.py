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
    timeout_s: float = opt(300.0, "Timeout of blocking put/get; the error names rank, role and what it waited for.")

    def __post_init__(self) -> None:
        if self.capacity_rows < 1:
            raise fail("capacity_rows", f"must be >= 1, got {self.capacity_rows}")
        if self.timeout_s <= 0:
            raise fail("timeout_s", f"must be > 0, got {self.timeout_s}")
