"""Configuration of the HDF5 run trace."""

from __future__ import annotations

from dataclasses import dataclass

from asyncflow_hpc.configlib import opt


@dataclass(kw_only=True)
class TraceConfig:
    """Every run records an HDF5 trace (spans, sample lineage, config, topology)."""

    enabled: bool = opt(True, "Record a trace of this run.")
    path: str = opt("", "Trace file; empty = <run.dir>/trace.h5.")
