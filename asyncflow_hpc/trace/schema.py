"""The HDF5 trace file format (schema version 2): table dtypes, span kinds, the error type, and writing.

One file layout serves both per-rank files and the merged file (see docs/trace.md):

    /                attrs: format="asyncflow_hpc.trace", schema_version=2, epoch_unix, world_size,
                            job_id, run_name, created_unix, asyncflow_version, merged
    /spans           compound table SPAN_DTYPE    (one row per span; times in seconds, rank-0 clock)
    /samples         compound table SAMPLE_DTYPE  (sample lineage)
    /metrics         compound table METRIC_DTYPE  (per-step scalars: loss, reward, ...)
    /counters        compound table COUNTER_DTYPE (time series: store occupancy, ...)
    /ranks           compound table RANK_DTYPE    (rank, role, host, pid, clock offset and RTT)
    /payloads        compound table PAYLOAD_DTYPE (v2: where each consumed row's data lies in the two
                                                   flat arrays below; `trace replay` re-feeds them)
    /payload_tokens  int32, flat: prompt ids then response ids of each payload row, packed (offsets)
    /payload_logprobs float32, flat: the behaviour log-prob of each response token, packed
    /meta/config_json, /meta/topology_json, /meta/versions_json, /meta/extra_json   (JSON text)

Tables are chunked, gzip-compressed (with shuffle), checksummed (fletcher32) and resizable, so a
rank can append as it goes.
Nothing in a trace is ever executed: metadata is JSON text, tables are plain numeric/bytes columns.
"""

from __future__ import annotations

import enum
import json
from typing import Any

import numpy as np

from asyncflow_hpc.errors import AsyncFlowError

FORMAT = "asyncflow_hpc.trace"
SCHEMA_VERSION = 2
# Versions this code reads: 1 (no row payloads; every view but `trace replay` works) and 2.
READABLE_VERSIONS = (1, 2)
CHUNK_ROWS = 8192
NAME_LEN = 32

# Span kinds: BUSY spans count as work; IDLE spans are waits (recorded for attribution; idle time
# itself is computed as the wall time not covered by busy spans).
BUSY, IDLE = 0, 1
IDLE_NAMES = frozenset({"idle", "wait", "store_wait", "weight_wait", "barrier"})
WEIGHT_PREFIX = "weight_"

SPAN_DTYPE = np.dtype([
    ("rank", "<i4"), ("thread", "<u2"), ("kind", "u1"), ("name", f"S{NAME_LEN}"), ("role", "S16"),
    ("t_start", "<f8"), ("t_end", "<f8"), ("step", "<i8"), ("version", "<i8"), ("rows", "<i8"),
    ("tokens", "<i8"), ("bytes", "<i8"), ("peer", "<i4"),
])
SAMPLE_DTYPE = np.dtype([
    ("rank", "<i4"), ("t", "<f8"), ("row", "<i8"), ("prompt_id", "<i8"), ("sample_index", "<i4"),
    ("seed", "<i8"), ("version_produced", "<i8"), ("version_consumed", "<i8"), ("prompt_len", "<i4"),
    ("response_len", "<i4"), ("reward", "<f8"),
])
METRIC_DTYPE = np.dtype([("rank", "<i4"), ("t", "<f8"), ("step", "<i8"), ("name", "S48"), ("value", "<f8")])
COUNTER_DTYPE = np.dtype([("rank", "<i4"), ("t", "<f8"), ("name", "S48"), ("value", "<f8")])
RANK_DTYPE = np.dtype([
    ("rank", "<i4"), ("role", "S32"), ("hostname", "S64"), ("pid", "<i8"),
    ("clock_offset", "<f8"), ("clock_rtt", "<f8"),
])
PAYLOAD_DTYPE = np.dtype([
    ("rank", "<i4"), ("row", "<i8"), ("tok_off", "<i8"), ("prompt_len", "<i4"), ("response_len", "<i4"),
    ("lp_off", "<i8"),
])
TABLES: dict[str, np.dtype] = {
    "spans": SPAN_DTYPE, "samples": SAMPLE_DTYPE, "metrics": METRIC_DTYPE,
    "counters": COUNTER_DTYPE, "ranks": RANK_DTYPE, "payloads": PAYLOAD_DTYPE,
}
# Flat (non-compound) arrays the payload table points into.
FLAT: dict[str, np.dtype] = {"payload_tokens": np.dtype("<i4"), "payload_logprobs": np.dtype("<f4")}
# Tables added after schema version 1 (absent from version-1 files: read as empty).
ADDED_IN_2 = frozenset({"payloads", "payload_tokens", "payload_logprobs"})
META_KEYS = ("config", "topology", "versions", "extra")


class SpanName(str, enum.Enum):
    """Every span name the workflows record: the one list that the cost model, the simulator's synthetic
    trace and the views read from (tests/mpi/test_trace_recorder_mpi.py checks that a real run records
    each one the cost model reads)."""

    GENERATE = "generate"        # rollout: one prompt group (rows, tokens, version)
    PROMPT_WAIT = "prompt_wait"  # rollout: waiting for a prompt id
    STORE_PUT = "store_put"      # rollout: one group's rows into the sample store
    WEIGHT_SWAP = "weight_swap"  # rollout: a staged version loaded into the engine
    WEIGHT_WAIT = "weight_wait"  # rollout: waiting for the version a prompt needs
    WEIGHT_RECV = "weight_recv"  # rollout, background thread: one version received and verified
    BATCH_WAIT = "batch_wait"    # trainer leader: waiting for a step's whole groups
    TRAIN_STEP = "train_step"    # trainer: one RL step (rows, tokens)
    ALLREDUCE = "allreduce"      # replicated trainer: the gradient all-reduce of one update, inside train_step
    WEIGHT_SEND = "weight_send"  # trainer: snapshot (and gather) of version v+1 for the broadcast
    REWARD = "reward"            # reward rank: one group scored
    REFERENCE = "reference"      # reference rank: one group's reference log-probs
    GATHER_WAIT = "gather_wait"  # sync mode: every rank's rows of a step
    EVALUATE = "evaluate"        # held-out evaluation
    SFT_WARMUP = "sft_warmup"    # supervised warm-up before RL

    def __str__(self) -> str:
        return self.value


class TraceError(AsyncFlowError):
    """A trace file is missing, unreadable, corrupt, foreign or of another schema version."""


def span_kind(name: str) -> int:
    """IDLE for waits (`idle`, `*_wait`, `wait_*`, `barrier`), BUSY for everything else."""
    if name in IDLE_NAMES or name.endswith("_wait") or name.startswith("wait_") or name.startswith("idle_"):
        return IDLE
    return BUSY


def empty(table: str) -> np.ndarray:
    return np.zeros(0, dtype=TABLES[table] if table in TABLES else FLAT[table])


def to_json(value: Any) -> str:
    """JSON text for metadata; anything not JSON-able becomes its str() (never pickled)."""
    return json.dumps(value if value is not None else {}, default=str, sort_keys=True)


def create_tables(f: Any) -> None:
    """Create the empty, chunked, compressed, resizable tables and the /meta group in h5py file `f`."""
    for name, dtype in {**TABLES, **FLAT}.items():
        chunk = CHUNK_ROWS if name in TABLES else 8 * CHUNK_ROWS
        f.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(chunk,),
                         compression="gzip", compression_opts=1, shuffle=True, fletcher32=True)
    f.create_group("meta")


def append_rows(f: Any, table: str, rows: np.ndarray) -> None:
    """Append structured rows to a resizable table of an open h5py file."""
    if len(rows) == 0:
        return
    ds = f[table]
    n = ds.shape[0]
    ds.resize((n + len(rows),))
    ds[n:] = rows.astype(TABLES[table] if table in TABLES else FLAT[table], copy=False)


def write_meta(f: Any, meta: dict[str, Any]) -> None:
    """Write (or replace) the JSON metadata datasets under /meta."""
    import h5py

    grp = f.require_group("meta")
    for key in META_KEYS:
        if key in meta:
            name = f"{key}_json"
            if name in grp:
                del grp[name]
            grp.create_dataset(name, data=to_json(meta[key]), dtype=h5py.string_dtype("utf-8"))


def write_attrs(f: Any, attrs: dict[str, Any]) -> None:
    f.attrs["format"] = FORMAT
    f.attrs["schema_version"] = SCHEMA_VERSION
    for key, value in attrs.items():
        f.attrs[key] = "" if value is None else value
