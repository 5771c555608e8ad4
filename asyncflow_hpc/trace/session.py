"""A rank's trace session, collective over the job: start (clock sync + recorder), finish (close + merge).

    rec = start_trace(cfg.trace, comm, final_path="runs/x/trace.h5", role="rollout",
                      config=cfg.to_dict(), topology=layout.describe())
    ... rec.span(...), rec.sample(...) ...
    finish_trace(rec, comm, "runs/x/trace.h5", keep_rank_files=cfg.trace.keep_rank_files)

Both are collective over `comm` (mpi4py) and every wait has a timeout (errors.WaitTimeout names the
rank and role). With tracing off every rank gets a NullRecorder and no communication happens.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from asyncflow_hpc.trace.clock import measure_clock_offset
from asyncflow_hpc.trace.merge import merge_traces
from asyncflow_hpc.trace.recorder import NullRecorder, Recorder, make_recorder
from asyncflow_hpc.trace.schema import TraceError


def start_trace(cfg: Any, comm: Any, *, final_path: str, role: str, config: Any = None, topology: Any = None,
                **extra: Any) -> Recorder | NullRecorder:
    """Collective: align clocks to rank 0, open this rank's recorder, store the run metadata."""
    rank, size = comm.Get_rank(), comm.Get_size()
    rec = make_recorder(cfg, final_path=final_path, rank=rank, role=role, world_size=size)
    if not rec.enabled:
        return rec
    rec.set_clock(measure_clock_offset(comm, rounds=cfg.clock_sync_rounds, timeout_s=cfg.timeout_s, role=role))
    rec.set_metadata(config=config, topology=topology, **extra)
    return rec


_PATH_BYTES = 4096


def _wait(req: Any, timeout_s: float, what: str, rank: int, role: str) -> None:
    from asyncflow_hpc.waits import wait_until

    wait_until(req.Test, timeout_s=timeout_s, what=f"trace merge: {what}", rank=rank, role=role, pause_max=0.05)


def finish_trace(rec: Any, comm: Any, final_path: str, *, keep_rank_files: bool = False,
                 timeout_s: float = 300.0) -> str | None:
    """Collective: every rank closes its recorder; rank 0 merges all rank files into `final_path`.

    Returns the merged path on rank 0 (None elsewhere or when tracing is off)."""
    rank = comm.Get_rank()
    role = getattr(rec, "role", "")
    if getattr(rec, "enabled", False):
        rec.close()
    # Every rank contributes its file path (empty when tracing is off) after closing its file.
    mine = np.zeros(_PATH_BYTES, dtype=np.uint8)
    encoded = os.path.abspath(rec.path).encode() if getattr(rec, "enabled", False) else b""
    if len(encoded) > _PATH_BYTES:
        raise TraceError(f"{rec.path}: path longer than {_PATH_BYTES} bytes")
    mine[: len(encoded)] = np.frombuffer(encoded, dtype=np.uint8)
    everyone = np.zeros((comm.Get_size(), _PATH_BYTES), dtype=np.uint8)
    _wait(comm.Iallgather(mine, everyone), timeout_s, "every rank to close its trace file", rank, role)
    files = [bytes(row).rstrip(b"\0").decode() for row in everyone]
    files = [p for p in files if p]
    if rank != 0 or not files:
        return None
    merge_traces(files, final_path)
    if not keep_rank_files:
        for p in files:
            try:
                os.unlink(p)
            except OSError:
                pass
    return final_path
