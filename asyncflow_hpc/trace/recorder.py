"""Per-rank trace recorder: spans, sample lineage, metrics, counters and run metadata -> HDF5.

    rec = Recorder("runs/x/trace.rank00001.h5", rank=1, role="rollout", world_size=4)
    rec.set_clock(measure_clock_offset(comm))          # optional: align to rank 0's clock
    rec.set_metadata(config=cfg.to_dict(), topology=layout.describe())
    with rec.span("generate", version=w, rows=16) as s:
        ...
        s.set(tokens=n_tokens)
    h = rec.begin("store_wait"); ...; rec.end(h)
    rec.sample(row=r, prompt_id=p, sample_index=i, seed=s, version_produced=w, response_len=n, reward=1.0)
    rec.payload(row=r, prompt_ids=p_ids, response_ids=r_ids, behav_logprobs=lps)   # data, for `trace replay`
    rec.metric(step, "loss", 0.7); rec.counter("store_occupancy", 12)
    rec.close()                                        # flush; then merge_traces(...) on rank 0

The hot path only reads perf_counter and appends a tuple to a list (about a microsecond); rows are
converted to numpy structured arrays and appended to the chunked HDF5 tables at flush time (every
`flush_rows` events and at close). NullRecorder has the same API and does nothing.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

import numpy as np

from asyncflow_hpc.trace import schema
from asyncflow_hpc.trace.clock import ClockSync
from asyncflow_hpc.trace.schema import TraceError

_perf = time.perf_counter
_ident = threading.get_ident


_RAW_SPAN = np.dtype([("name", f"S{schema.NAME_LEN}"), ("role", "S16"), ("t0", "<f8"), ("t1", "<f8"),
                      ("tid", "<u8"), ("step", "<i8"), ("version", "<i8"), ("rows", "<i8"), ("tokens", "<i8"),
                      ("bytes", "<i8"), ("peer", "<i4")])


_RAW_SAMPLE = np.dtype([(n, schema.SAMPLE_DTYPE[n]) for n in (
    "t", "row", "prompt_id", "sample_index", "seed", "version_produced", "version_consumed", "prompt_len",
    "response_len", "reward")])


class Span:
    """An open span; `set()` adds attributes known only at the end (e.g. tokens generated)."""

    __slots__ = ("_rec", "name", "t0", "step", "version", "rows", "tokens", "bytes", "peer", "role")

    def __init__(self, rec: "Recorder", name: str, step: int, version: int, rows: int, tokens: int,
                 nbytes: int, peer: int, role: str | None):
        self._rec, self.name, self.t0 = rec, name, 0.0
        self.step, self.version, self.rows, self.tokens, self.bytes, self.peer = step, version, rows, tokens, nbytes, peer
        self.role = role if role is not None else rec.role

    def set(self, *, step: int | None = None, version: int | None = None, rows: int | None = None,
            tokens: int | None = None, bytes: int | None = None, peer: int | None = None) -> "Span":
        if step is not None:
            self.step = step
        if version is not None:
            self.version = version
        if rows is not None:
            self.rows = rows
        if tokens is not None:
            self.tokens = tokens
        if bytes is not None:
            self.bytes = bytes
        if peer is not None:
            self.peer = peer
        return self

    def __enter__(self) -> "Span":
        self.t0 = _perf()
        return self

    def __exit__(self, *exc: Any) -> None:
        t1 = _perf()
        rec = self._rec
        rec._spans.append((self.name, self.role, self.t0, t1, _ident(), self.step, self.version, self.rows,
                           self.tokens, self.bytes, self.peer))
        rec._tick()


ALT_SUFFIX = ".alt"  # the per-rank file's twin during the run (see Recorder.flush)


class Recorder:
    """Records this rank's trace into memory and flushes it to `path` (an HDF5 file)."""

    enabled = True

    def __init__(self, path: str, *, rank: int = 0, role: str = "", world_size: int = 1,
                 flush_rows: int = 1 << 16, clock: ClockSync | None = None, payloads: bool = True,
                 flush_s: float = 0.0):
        self.path, self.rank, self.role, self.world_size = str(path), int(rank), str(role), int(world_size)
        self.flush_rows = max(1, int(flush_rows))
        # Also flush when the oldest buffered event is this old (0 = off): a killed rank then loses at most
        # flush_s seconds of its trace, and its per-rank file stays readable (closed between flushes).
        self.flush_s = float(flush_s)
        self._last_flush = time.monotonic()
        self.clock = clock or ClockSync.local()
        self._spans: list[tuple] = []  # rows of _RAW_SPAN
        self._samples: list[tuple] = []
        self._metrics: list[tuple] = []
        self._counters: list[tuple] = []
        self._payloads: list[tuple] = []  # (row, prompt ids, response ids, behaviour log-probs)
        self._flat_sizes = [0, 0]  # tokens and log-probs already in the file (offsets continue from here)
        if not payloads:
            self.payload = None  # callers test `getattr(rec, "payload", None)`: row data is not recorded
        self._threads: dict[int, int] = {}
        self._meta: dict[str, Any] = {"config": {}, "topology": {}, "versions": {}, "extra": {}}
        self._job_id = os.environ.get("SLURM_JOB_ID", "")
        self._hostname = socket.gethostname()
        self._run_name = ""
        self._flushed = False
        self._gen = 0  # flushes done; even ones go to `path`, odd ones to `path + ALT_SUFFIX`
        self._prev: dict[str, np.ndarray] | None = None  # the last flush's rows (the other file lacks them)
        self._closed = False
        self._lock = threading.Lock()
        self._n_events = 0

    # ---- metadata -------------------------------------------------------------------------
    def set_clock(self, sync: ClockSync) -> None:
        """Use `sync` (from measure_clock_offset) for every stored time; call before the first flush."""
        if self._flushed:
            raise TraceError(f"{self.path}: set_clock() after rows were flushed would mix clocks; "
                             f"call it right after creating the recorder")
        self.clock = sync

    def set_metadata(self, *, config: Any = None, topology: Any = None, versions: dict | None = None,
                     job_id: str | None = None, hostname: str | None = None, run_name: str | None = None,
                     **extra: Any) -> None:
        """Resolved config (dict), topology description, package versions (default: collected),
        Slurm job id and host name (default: from the environment), and any extra JSON-able items."""
        if config is not None:
            self._meta["config"] = config
        if topology is not None:
            self._meta["topology"] = topology
        self._meta["versions"] = versions if versions is not None else package_versions()
        if job_id is not None:
            self._job_id = str(job_id)
        if hostname is not None:
            self._hostname = str(hostname)
        if run_name is not None:
            self._run_name = str(run_name)
        self._meta["extra"].update(extra)

    # ---- events (hot path) ----------------------------------------------------------------
    def span(self, name: str, *, step: int = -1, version: int = -1, rows: int = -1, tokens: int = -1,
             bytes: int = -1, peer: int = -1, role: str | None = None) -> Span:
        """A context manager timing one span; `role` overrides the recorder's role (colocated ranks)."""
        return Span(self, name, step, version, rows, tokens, bytes, peer, role)

    def begin(self, name: str, **attrs: Any) -> Span:
        """Open a span now; close it with `end(handle, **attrs)`."""
        s = self.span(name, **attrs)
        s.t0 = _perf()
        return s

    def end(self, handle: Span, **attrs: Any) -> None:
        t1 = _perf()
        if attrs:
            handle.set(**attrs)
        self._spans.append((handle.name, handle.role, handle.t0, t1, _ident(), handle.step, handle.version,
                            handle.rows, handle.tokens, handle.bytes, handle.peer))
        self._tick()

    def add_span(self, name: str, t0: float, t1: float, *, thread: int, **attrs: Any) -> None:
        """A span timed elsewhere (time.perf_counter() values), e.g. by a background thread that must not touch the
        recorder; `thread` is that thread's ident (threading.get_ident())."""
        s = self.span(name, **attrs)
        self._spans.append((s.name, s.role, t0, t1, thread, s.step, s.version, s.rows, s.tokens, s.bytes, s.peer))
        self._tick()

    def sample(self, *, row: int, prompt_id: int = -1, sample_index: int = -1, seed: int = -1,
               version_produced: int = -1, version_consumed: int = -1, prompt_len: int = -1,
               response_len: int = -1, reward: float = float("nan")) -> None:
        """One lineage record. The trainer records rows it consumed (version_consumed = its step)."""
        self._samples.append((_perf(), row, prompt_id, sample_index, seed, version_produced, version_consumed,
                              prompt_len, response_len, reward))
        self._tick()

    def payload(self, *, row: int, prompt_ids: Any, response_ids: Any, behav_logprobs: Any) -> None:
        """The data of a consumed row (token ids and behaviour log-probs), so `trace replay` can re-feed
        it to a trainer. The sequences are kept by reference until the next flush: do not mutate them."""
        self._payloads.append((row, prompt_ids, response_ids, behav_logprobs))
        self._tick()

    def metric(self, step: int, name: str, value: float) -> None:
        self._metrics.append((_perf(), step, name, value))
        self._tick()

    def counter(self, name: str, value: float) -> None:
        """A time-series value (store occupancy, queue depth...), stamped now."""
        self._counters.append((_perf(), name, value))
        self._tick()

    def _tick(self) -> None:
        self._n_events += 1
        if self._n_events >= self.flush_rows or (
                self.flush_s > 0 and time.monotonic() - self._last_flush >= self.flush_s):
            self.flush()

    # ---- flushing -------------------------------------------------------------------------
    def _tables(self) -> dict[str, np.ndarray]:
        """Drain the buffers into numpy structured arrays (times shifted to the stored clock)."""
        with self._lock:
            spans, self._spans = self._spans, []
            samples, self._samples = self._samples, []
            metrics, self._metrics = self._metrics, []
            counters, self._counters = self._counters, []
            payloads, self._payloads = self._payloads, []
            self._n_events = 0
        shift, rank = self.clock.shift, self.rank
        out = {}
        sp = np.zeros(len(spans), dtype=schema.SPAN_DTYPE)
        if spans:
            raw = np.array(spans, dtype=_RAW_SPAN)  # one C loop over the tuples
            names, codes = np.unique(raw["name"], return_inverse=True)
            sp["rank"] = rank
            sp["name"] = raw["name"]
            sp["kind"] = np.array([schema.span_kind(n.decode("utf-8", "replace")) for n in names], dtype=np.uint8)[codes]
            sp["role"] = raw["role"]
            sp["t_start"] = raw["t0"] + shift
            sp["t_end"] = raw["t1"] + shift
            tids, tcodes = np.unique(raw["tid"], return_inverse=True)
            threads = self._threads
            sp["thread"] = np.array([threads.setdefault(int(t), len(threads)) for t in tids], dtype=np.uint16)[tcodes]
            for f in ("step", "version", "rows", "tokens", "bytes", "peer"):
                sp[f] = raw[f]
        out["spans"] = sp
        sa = np.zeros(len(samples), dtype=schema.SAMPLE_DTYPE)
        if samples:
            raw = np.array(samples, dtype=_RAW_SAMPLE)
            for f in _RAW_SAMPLE.names:
                sa[f] = raw[f]
            sa["rank"] = rank
            sa["t"] += shift
        out["samples"] = sa
        me = np.zeros(len(metrics), dtype=schema.METRIC_DTYPE)
        if metrics:
            cols = list(zip(*metrics))
            me["rank"], me["t"], me["step"] = rank, np.asarray(cols[0]) + shift, cols[1]
            me["name"], me["value"] = [n.encode() for n in cols[2]], cols[3]
        out["metrics"] = me
        co = np.zeros(len(counters), dtype=schema.COUNTER_DTYPE)
        if counters:
            cols = list(zip(*counters))
            co["rank"], co["t"] = rank, np.asarray(cols[0]) + shift
            co["name"], co["value"] = [n.encode() for n in cols[1]], cols[2]
        out["counters"] = co
        out.update(self._payload_tables(payloads))
        return out

    def _payload_tables(self, payloads: list[tuple]) -> dict[str, np.ndarray]:
        """Pack payload rows: one table row each, token ids and log-probs concatenated (offsets, no padding)."""
        pl = np.zeros(len(payloads), dtype=schema.PAYLOAD_DTYPE)
        if not payloads:
            return {"payloads": pl, "payload_tokens": schema.empty("payload_tokens"),
                    "payload_logprobs": schema.empty("payload_logprobs")}
        tok_parts, lp_parts = [], []
        for row, p_ids, r_ids, lps in payloads:
            tok_parts += [np.asarray(p_ids, dtype=np.int32).ravel(), np.asarray(r_ids, dtype=np.int32).ravel()]
            lp = np.asarray(lps, dtype=np.float32).ravel()
            if len(lp) != len(r_ids):
                raise TraceError(f"{self.path}: payload of row {row} has {len(r_ids)} response tokens but "
                                 f"{len(lp)} log-probs (rank {self.rank}, role {self.role})")
            lp_parts.append(lp)
        pl["rank"] = self.rank
        pl["row"] = [p[0] for p in payloads]
        pl["prompt_len"] = [len(p[1]) for p in payloads]
        pl["response_len"] = [len(p[2]) for p in payloads]
        tok_sizes = (pl["prompt_len"] + pl["response_len"]).astype(np.int64)
        pl["tok_off"] = self._flat_sizes[0] + np.concatenate([[0], np.cumsum(tok_sizes)[:-1]])
        pl["lp_off"] = self._flat_sizes[1] + np.concatenate([[0], np.cumsum(pl["response_len"].astype(np.int64))[:-1]])
        tokens, lps = np.concatenate(tok_parts), np.concatenate(lp_parts)
        self._flat_sizes[0] += len(tokens)
        self._flat_sizes[1] += len(lps)
        return {"payloads": pl, "payload_tokens": tokens, "payload_logprobs": lps}

    def _rank_row(self) -> np.ndarray:
        row = np.zeros(1, dtype=schema.RANK_DTYPE)
        row["rank"], row["role"], row["hostname"] = self.rank, self.role.encode(), self._hostname.encode()[:64]
        row["pid"], row["clock_offset"], row["clock_rtt"] = os.getpid(), self.clock.offset, self.clock.rtt
        return row

    def _attrs(self) -> dict[str, Any]:
        from asyncflow_hpc import __version__

        return {"epoch_unix": self.clock.epoch_unix, "world_size": self.world_size, "job_id": self._job_id,
                "run_name": self._run_name, "created_unix": time.time(), "asyncflow_version": __version__,
                "merged": False}

    def flush(self) -> None:
        """Append buffered rows to the rank file (created on first flush).

        Crash-safe: flushes alternate between `path` and `path + ALT_SUFFIX`, each file brought up to date with the
        previous flush's rows as well, so a process killed in the middle of one flush leaves the other file
        complete up to the previous flush (`trace.recover.best_rank_file` picks it). close() leaves `path` only."""
        import h5py

        tables = self._tables()
        gen = self._gen
        target = self.path if gen % 2 == 0 else self.path + ALT_SUFFIX
        try:
            with h5py.File(target, "a" if gen >= 2 else "w") as f:
                if gen < 2:
                    schema.create_tables(f)
                    schema.append_rows(f, "ranks", self._rank_row())
                schema.write_attrs(f, {**self._attrs(), "flush_gen": gen})
                schema.write_meta(f, self._meta)
                for part in (self._prev, tables):
                    for name, rows in (part or {}).items():
                        schema.append_rows(f, name, rows)
        except OSError as exc:
            raise TraceError(f"{self.path}: cannot write trace (rank {self.rank}, role {self.role}): {exc}") from None
        self._prev = tables
        self._gen += 1
        self._flushed = True
        self._last_flush = time.monotonic()

    def close(self) -> None:
        if not self._closed:
            self.flush()
            alt = self.path + ALT_SUFFIX
            try:
                if self._gen % 2 == 0:  # the last flush went to the alternate file: it is the complete one
                    os.replace(alt, self.path)
                elif os.path.exists(alt):
                    os.remove(alt)
            except OSError as exc:
                raise TraceError(f"{self.path}: cannot finish trace (rank {self.rank}): {exc}") from None
            self._prev = None
            self._closed = True

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _NullSpan:
    __slots__ = ()

    def set(self, **attrs: Any) -> "_NullSpan":
        return self

    def __enter__(self) -> "_NullSpan":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


_NULL_SPAN = _NullSpan()


class NullRecorder:
    """Tracing off: the Recorder API, doing nothing."""

    enabled = False
    path = ""

    def __init__(self, *args: Any, rank: int = 0, role: str = "", **kwargs: Any):
        self.rank, self.role = rank, role

    def set_clock(self, sync: ClockSync) -> None:
        return None

    def set_metadata(self, **kwargs: Any) -> None:
        return None

    def span(self, name: str, **attrs: Any) -> _NullSpan:
        return _NULL_SPAN

    def begin(self, name: str, **attrs: Any) -> _NullSpan:
        return _NULL_SPAN

    def end(self, handle: Any, **attrs: Any) -> None:
        return None

    def add_span(self, name: str, t0: float, t1: float, **attrs: Any) -> None:
        return None

    def sample(self, **lineage: Any) -> None:
        return None

    payload = None  # row data is never recorded: `getattr(rec, "payload", None)` is None

    def metric(self, step: int, name: str, value: float) -> None:
        return None

    def counter(self, name: str, value: float) -> None:
        return None

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None

    def __enter__(self) -> "NullRecorder":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape a run, read from package metadata (nothing imported)."""
    import platform
    from importlib import metadata

    from asyncflow_hpc import __version__

    out = {"python": platform.python_version(), "asyncflow_hpc": __version__}
    for dist in ("numpy", "h5py", "torch", "mpi4py", "mpich", "openmpi", "transformers", "vllm",
                 "torch_npu", "safetensors"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def rank_path(final_path: str, rank: int) -> str:
    """Per-rank file beside the merged one: runs/x/trace.h5 -> runs/x/trace.rank00003.h5."""
    base, ext = os.path.splitext(final_path)
    return f"{base}.rank{rank:05d}{ext or '.h5'}"


def make_recorder(cfg: Any, *, final_path: str, rank: int, role: str, world_size: int) -> Recorder | NullRecorder:
    """Recorder for this rank per TraceConfig `cfg` (NullRecorder when cfg.enabled is false)."""
    if not cfg.enabled:
        return NullRecorder(rank=rank, role=role)
    os.makedirs(os.path.dirname(os.path.abspath(final_path)), exist_ok=True)
    return Recorder(rank_path(final_path, rank), rank=rank, role=role, world_size=world_size,
                    flush_rows=cfg.flush_rows, payloads=cfg.payloads, flush_s=cfg.flush_s)
