"""Open a trace file, check it, and expose its tables as numpy structured arrays.

    t = read_trace("runs/x/trace.h5")
    t.spans[t.spans["name"] == "generate"]["t_end"]     # text columns are numpy str ('U')
    t.config["workflow"]["eta"]; t.ranks; t.samples; t.metrics; t.counters

Every problem with the file (missing, not HDF5, truncated, corrupt, written by another program,
another schema version) raises TraceError naming the file and what is wrong. Only numeric/bytes
tables and JSON text are read: nothing in a file is ever executed or unpickled.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from asyncflow_hpc.trace import schema
from asyncflow_hpc.trace.schema import TraceError


@dataclass
class Trace:
    """One trace in memory (all times are seconds since the run epoch, on rank 0's clock)."""

    path: str
    schema_version: int
    attrs: dict[str, Any]
    spans: np.ndarray
    samples: np.ndarray
    metrics: np.ndarray
    counters: np.ndarray
    ranks: np.ndarray
    payloads: np.ndarray = field(default_factory=lambda: schema.empty("payloads"))
    payload_tokens: np.ndarray = field(default_factory=lambda: schema.empty("payload_tokens"))
    payload_logprobs: np.ndarray = field(default_factory=lambda: schema.empty("payload_logprobs"))
    config: dict[str, Any] = field(default_factory=dict)
    topology: Any = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def world_size(self) -> int:
        return int(self.attrs.get("world_size", len(self.ranks)))

    @property
    def job_id(self) -> str:
        return str(self.attrs.get("job_id", ""))

    def role_of(self, rank: int) -> str:
        hit = self.ranks[self.ranks["rank"] == rank]
        return str(hit["role"][0]) if len(hit) else ""

    def spans_named(self, name: str) -> np.ndarray:
        return self.spans[self.spans["name"] == name]

    def metric(self, name: str) -> np.ndarray:
        """Rows of metric `name`, sorted by step."""
        m = self.metrics[self.metrics["name"] == name]
        return m[np.argsort(m["step"], kind="stable")]

    def payload_of(self, i: int) -> tuple[list[int], list[int], list[float]]:
        """(prompt ids, response ids, behaviour log-probs) of payload row i (index into `payloads`)."""
        p = self.payloads[i]
        o, lp, lr, lo = int(p["tok_off"]), int(p["prompt_len"]), int(p["response_len"]), int(p["lp_off"])
        return (self.payload_tokens[o:o + lp].tolist(), self.payload_tokens[o + lp:o + lp + lr].tolist(),
                self.payload_logprobs[lo:lo + lr].tolist())

    def tables(self) -> dict[str, np.ndarray]:
        """Every table and flat array by name (as `merge.write_trace` takes them)."""
        return {name: getattr(self, name) for name in (*schema.TABLES, *schema.FLAT)}

    def duration(self) -> tuple[float, float]:
        """(first span start, last span end); (0, 0) when there are no spans."""
        if len(self.spans) == 0:
            return 0.0, 0.0
        return float(self.spans["t_start"].min()), float(self.spans["t_end"].max())


def text_dtype(dtype: np.dtype) -> np.dtype:
    """The same structured dtype with bytes columns ('S') as str columns ('U')."""
    return np.dtype([(n, f"U{dtype[n].itemsize}" if dtype[n].kind == "S" else dtype[n]) for n in dtype.names])


def _check_file(path: str) -> None:
    import h5py

    if not os.path.exists(path):
        raise TraceError(f"{path}: trace file not found")
    if os.path.isdir(path):
        raise TraceError(f"{path}: is a directory, expected an HDF5 trace file")
    if os.path.getsize(path) == 0:
        raise TraceError(f"{path}: empty file, not an HDF5 trace (was the run killed before it wrote?)")
    if not h5py.is_hdf5(path):
        raise TraceError(f"{path}: not an HDF5 file (no HDF5 signature); expected a trace written by asyncflow-hpc")


def _attrs(f: Any, path: str) -> dict[str, Any]:
    out = {}
    for key, value in f.attrs.items():
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        elif isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    fmt = out.get("format")
    if fmt != schema.FORMAT:
        raise TraceError(f"{path}: an HDF5 file but not an asyncflow_hpc trace (attribute 'format' is "
                         f"{fmt!r}, expected {schema.FORMAT!r}); was it written by another program?")
    version = out.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise TraceError(f"{path}: attribute 'schema_version' is {version!r}, expected an integer")
    if version not in schema.READABLE_VERSIONS:
        readable = " and ".join(str(v) for v in schema.READABLE_VERSIONS)
        raise TraceError(f"{path}: trace schema_version {version}, but this asyncflow_hpc reads schema_version "
                         f"{readable}; read it with the asyncflow_hpc version that wrote it "
                         f"(asyncflow_version {out.get('asyncflow_version', '?')})")
    return out


def _table(f: Any, name: str, path: str, version: int) -> np.ndarray:
    expected = schema.TABLES[name] if name in schema.TABLES else schema.FLAT[name]
    if name not in f and version < 2 and name in schema.ADDED_IN_2:
        return schema.empty(name)
    if name not in f:
        raise TraceError(f"{path}: table '/{name}' is missing; the file is incomplete or corrupt")
    import h5py

    ds = f[name]  # a flipped bit can make the name resolve to a committed datatype or a group
    if not isinstance(ds, h5py.Dataset) or ds.dtype != expected or len(ds.shape) != 1:
        got = getattr(ds, "dtype", type(ds).__name__)
        raise TraceError(f"{path}: table '/{name}' has layout {got}, expected {expected} for schema_version "
                         f"{version}; the file is corrupt or from another program")
    rows = ds[()]
    if name in schema.FLAT:
        return rows
    try:
        return rows.astype(text_dtype(expected))
    except (UnicodeDecodeError, UnicodeError, ValueError):
        raise TraceError(f"{path}: table '/{name}' holds undecodable text; the file is corrupt") from None


def _meta(f: Any, key: str, path: str) -> Any:
    name = f"meta/{key}_json"
    if name not in f:
        return {}
    raw = f[name][()]
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    try:
        return json.loads(raw)  # JSON only: nothing in the file is executed
    except (TypeError, ValueError) as exc:
        raise TraceError(f"{path}: metadata '/{name}' is not valid JSON ({exc}); the file is corrupt") from None


def _sanity(t: Trace) -> None:
    sp = t.spans
    if len(sp) and not (np.isfinite(sp["t_start"]).all() and np.isfinite(sp["t_end"]).all()):
        raise TraceError(f"{t.path}: table '/spans' has non-finite times; the file is corrupt")
    if len(sp) and (sp["t_end"] < sp["t_start"]).any():
        bad = int(np.flatnonzero(sp["t_end"] < sp["t_start"])[0])
        raise TraceError(f"{t.path}: span {bad} ('{sp['name'][bad]}') ends before it starts; the file is corrupt")
    ws = t.world_size
    for name in schema.TABLES:
        ranks = getattr(t, name)["rank"]
        if len(ranks) and (ranks.min() < 0 or ranks.max() >= ws):
            raise TraceError(f"{t.path}: table '/{name}' names rank {int(ranks.max())} outside world size {ws}; "
                             f"the file is corrupt")
    pl = t.payloads
    if len(pl):
        n_tok, n_lp = len(t.payload_tokens), len(t.payload_logprobs)
        lens_ok = (pl["prompt_len"] >= 0) & (pl["response_len"] >= 0) & (pl["tok_off"] >= 0) & (pl["lp_off"] >= 0)
        ends_ok = (pl["tok_off"] + pl["prompt_len"] + pl["response_len"] <= n_tok) & \
            (pl["lp_off"] + pl["response_len"] <= n_lp)
        if not (lens_ok & ends_ok).all():
            bad = int(np.flatnonzero(~(lens_ok & ends_ok))[0])
            raise TraceError(f"{t.path}: payload {bad} (row {int(pl['row'][bad])}) points outside "
                             f"'/payload_tokens' ({n_tok}) or '/payload_logprobs' ({n_lp}); the file is corrupt")


def read_trace(path: str | os.PathLike) -> Trace:
    """Read and check a trace file (per-rank or merged)."""
    import h5py

    path = os.fspath(path)
    _check_file(path)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise TraceError(f"{path}: cannot open as HDF5 ({_short(exc)}); the file is truncated or corrupt") from None
    try:
        with f:
            attrs = _attrs(f, path)
            version = int(attrs["schema_version"])
            tables = {name: _table(f, name, path, version) for name in (*schema.TABLES, *schema.FLAT)}
            meta = {key: _meta(f, key, path) for key in schema.META_KEYS}
    except TraceError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError, TypeError, AttributeError) as exc:
        raise TraceError(f"{path}: cannot read ({_short(exc)}); the file is truncated or corrupt") from None
    t = Trace(path=path, schema_version=int(attrs["schema_version"]), attrs=attrs, **tables,
              config=meta["config"] if isinstance(meta["config"], dict) else {}, topology=meta["topology"],
              versions=meta["versions"] if isinstance(meta["versions"], dict) else {},
              extra=meta["extra"] if isinstance(meta["extra"], dict) else {})
    _sanity(t)
    return t


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
