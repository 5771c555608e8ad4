"""`trace export`: Chrome / Perfetto trace-event JSON (open in ui.perfetto.dev or chrome://tracing).

One process per rank ("rank 3 (rollout)"), one thread per recording thread; spans are complete
("X") events with their attributes as args, counters and metrics are counter ("C") events.
Timestamps are microseconds since the run epoch on rank 0's clock.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from asyncflow_hpc.trace.reader import Trace
from asyncflow_hpc.trace.schema import TraceError

_ATTRS = ("step", "version", "rows", "tokens", "bytes", "peer")


def _num(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no NaN


def trace_events(t: Trace) -> dict[str, Any]:
    events: list[dict[str, Any]] = []
    for rank, role in zip(t.ranks["rank"].tolist(), t.ranks["role"].tolist()):
        events.append({"ph": "M", "name": "process_name", "pid": rank, "tid": 0,
                       "args": {"name": f"rank {rank} ({role})"}})
        events.append({"ph": "M", "name": "process_sort_index", "pid": rank, "tid": 0, "args": {"sort_index": rank}})
    sp = t.spans
    cols = {k: sp[k].tolist() for k in ("rank", "thread", "name", "role", "t_start", "t_end", *_ATTRS)}
    for i in range(len(sp)):
        args = {k: cols[k][i] for k in _ATTRS if cols[k][i] >= 0}
        args["role"] = cols["role"][i]
        events.append({"ph": "X", "name": cols["name"][i], "cat": cols["role"][i], "pid": cols["rank"][i],
                       "tid": cols["thread"][i], "ts": cols["t_start"][i] * 1e6,
                       "dur": (cols["t_end"][i] - cols["t_start"][i]) * 1e6, "args": args})
    for row in t.counters.tolist():
        rank, ts, name, value = row
        events.append({"ph": "C", "name": name, "pid": rank, "tid": 0, "ts": ts * 1e6, "args": {name: _num(value)}})
    for row in t.metrics.tolist():
        rank, ts, step, name, value = row
        events.append({"ph": "C", "name": f"metric:{name}", "pid": rank, "tid": 0, "ts": ts * 1e6,
                       "args": {name: _num(value)}})
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"source": t.path, "schema_version": t.schema_version, "job_id": t.job_id,
                          "epoch_unix": t.attrs.get("epoch_unix", 0.0)}}


def export_chrome(t: Trace, out_path: str) -> int:
    """Write the trace-event JSON to `out_path`; returns the number of events."""
    doc = trace_events(t)
    tmp = out_path + ".tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, allow_nan=False)
        os.replace(tmp, out_path)
    except (OSError, ValueError) as exc:
        raise TraceError(f"{out_path}: cannot write trace-event JSON: {exc}") from None
    return len(doc["traceEvents"])
