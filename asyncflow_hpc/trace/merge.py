"""Merge per-rank trace files into one, written atomically (no MPI here; see session.py for the collective).

    merge_traces(["t.rank00000.h5", "t.rank00001.h5"], "t.h5")

The merged file is written to a temporary file in the same directory, fsynced, then renamed over
`out_path`, so a reader never sees half a trace.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any, Sequence

import numpy as np

from asyncflow_hpc.trace import schema
from asyncflow_hpc.trace.reader import Trace, read_trace
from asyncflow_hpc.trace.schema import TraceError


def _to_bytes_table(arr: np.ndarray, table: str) -> np.ndarray:
    """Reader arrays carry str columns; the file stores bytes."""
    out = np.zeros(len(arr), dtype=schema.TABLES[table])
    for name in out.dtype.names:
        col = arr[name]
        out[name] = np.char.encode(col, "utf-8") if col.dtype.kind == "U" else col
    return out


def write_trace(out_path: str, tables: dict[str, np.ndarray], attrs: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write a complete trace file atomically (temp file in the same directory, fsync, rename)."""
    import h5py

    out_dir = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".trace-", suffix=".h5.tmp", dir=out_dir)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            schema.create_tables(f)
            schema.write_attrs(f, attrs)
            schema.write_meta(f, meta)
            for name, rows in tables.items():
                if name in schema.TABLES and rows.dtype != schema.TABLES[name]:
                    rows = _to_bytes_table(rows, name)
                schema.append_rows(f, name, rows)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, out_path)
        dir_fd = os.open(out_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise TraceError(f"{out_path}: cannot write merged trace: {exc}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def merge_payloads(traces: Sequence[Trace]) -> dict[str, np.ndarray]:
    """Concatenate the row payloads of several traces, shifting each file's offsets into the flat arrays."""
    parts, tok_base, lp_base = [], 0, 0
    for t in traces:
        p = t.payloads.copy()
        p["tok_off"] += tok_base
        p["lp_off"] += lp_base
        parts.append(p)
        tok_base += len(t.payload_tokens)
        lp_base += len(t.payload_logprobs)
    return {"payloads": np.concatenate(parts) if parts else schema.empty("payloads"),
            "payload_tokens": np.concatenate([t.payload_tokens for t in traces]).astype(schema.FLAT["payload_tokens"]),
            "payload_logprobs": np.concatenate([t.payload_logprobs for t in traces]).astype(
                schema.FLAT["payload_logprobs"])}


def merge_traces(rank_files: Sequence[str], out_path: str, extra_attrs: dict[str, Any] | None = None) -> Trace:
    """Concatenate per-rank traces (spans sorted by start time) into `out_path`; returns the merged trace.

    Metadata (config, topology, versions) comes from the lowest rank's file; every file must share
    the run epoch (they were aligned by the same clock sync), else they are from different runs.
    `extra_attrs` are added to the merged file's attributes."""
    if not rank_files:
        raise TraceError(f"{out_path}: no per-rank trace files to merge")
    traces = sorted((read_trace(p) for p in rank_files), key=lambda t: int(t.ranks["rank"].min()) if len(t.ranks) else 0)
    first = traces[0]
    epoch = float(first.attrs.get("epoch_unix", 0.0))
    seen: dict[int, str] = {}
    for t in traces:
        if abs(float(t.attrs.get("epoch_unix", 0.0)) - epoch) > 1e-3:
            raise TraceError(f"{t.path}: its clock epoch differs from {first.path}'s; these files are from "
                             f"different runs (or were not aligned with measure_clock_offset)")
        for r in t.ranks["rank"]:
            if int(r) in seen:
                raise TraceError(f"{t.path}: rank {int(r)} also appears in {seen[int(r)]}; merge each rank once")
            seen[int(r)] = t.path
    tables = {}
    for name in schema.TABLES:
        if name == "payloads":
            continue
        rows = np.concatenate([getattr(t, name) for t in traces])
        key = {"spans": "t_start", "ranks": "rank"}.get(name, "t")
        tables[name] = rows[np.argsort(rows[key], kind="stable")]
    tables.update(merge_payloads(traces))
    attrs = {k: v for k, v in first.attrs.items() if k not in ("format", "schema_version")}
    attrs.update(merged=True, created_unix=time.time(),
                 world_size=max(int(t.attrs.get("world_size", 1)) for t in traces))
    attrs.update(extra_attrs or {})
    meta = {"config": first.config, "topology": first.topology, "versions": first.versions, "extra": first.extra}
    write_trace(out_path, tables, attrs, meta)
    return read_trace(out_path)
