"""Configuration of the HDF5 run trace."""

from __future__ import annotations

from dataclasses import dataclass

from asyncflow_hpc.configlib import fail, opt


@dataclass(kw_only=True)
class TraceConfig:
    """Every run records an HDF5 trace (spans, sample lineage, config, topology)."""

    enabled: bool = opt(True, "Record a trace of this run.")
    path: str = opt("", "Trace file; empty = <run.dir>/trace.h5.")
    flush_rows: int = opt(65536, "Events a rank buffers in memory before appending them to its per-rank file.")
    flush_s: float = opt(10.0, "Also append buffered events at least this often (seconds; 0 = only by flush_rows "
                               "and at the end), so a rank killed mid-run leaves a readable per-rank file.")
    payloads: bool = opt(True, "Record the data (token ids, behaviour log-probs) of every consumed row, so "
                               "`asyncflow-hpc trace replay` can re-feed it; costs ~12 bytes per token.")
    keep_rank_files: bool = opt(False, "Keep the per-rank files (trace.rankNNNNN.h5) after rank 0 merges them.")
    clock_sync_rounds: int = opt(16, "Ping-pong rounds per rank when aligning clocks to rank 0 (min-RTT sample wins).")
    timeout_s: float = opt(300.0, "Timeout of the clock sync and of waiting for every rank to close its file.")

    def __post_init__(self) -> None:
        if self.flush_rows < 1:
            raise fail("flush_rows", f"must be >= 1, got {self.flush_rows}")
        if self.flush_s < 0:
            raise fail("flush_s", f"must be >= 0, got {self.flush_s}")
        if self.clock_sync_rounds < 1:
            raise fail("clock_sync_rounds", f"must be >= 1, got {self.clock_sync_rounds}")
        if self.timeout_s <= 0:
            raise fail("timeout_s", f"must be > 0, got {self.timeout_s}")
