"""The store API shared by the RMA store and its in-process twin: validation, packing, waits, batches.

A transport supplies the control-plane calls (`_alloc`, `_alloc_columns`, `_commit`, `_select`,
`_release`, `_stats`, `_mark_done`, `_register`) and the byte movers (`_write`, `_read`, taking
lists of (unit, offset, flat uint8 buffer): each one Put or Get, no staging copies). Everything else — the put/get protocol, back-pressure and
timeouts — lives here once.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from asyncflow_hpc.errors import WaitTimeout
from asyncflow_hpc.store.batch import Batch, Packed
from asyncflow_hpc.store.bufpool import BufferPool
from asyncflow_hpc.store.config import StoreConfig
from asyncflow_hpc.store.control import END, Claim, Lease, Placement
from asyncflow_hpc.store.schema import EndOfStream, RowMeta, Schema, Validated, chunk_layout

LEASE_PUTS = 8  # a lease holds at least this many puts like the one that asks for it


def as_bytes(a: np.ndarray) -> np.ndarray:
    """A contiguous array viewed as flat uint8 (no copy)."""
    return a.reshape(-1).view(np.uint8) if a.size else np.zeros(0, dtype=np.uint8)


def read_runs(unit: np.ndarray, offset: np.ndarray, nbytes: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Rows of one column, in batch order -> maximal runs adjacent in storage (vectorised).

    Each run (unit, offset, first row, end row) is one Get straight into the destination array,
    whose rows are back to back in the same order."""
    m = len(unit)
    if not m:
        return []
    brk = np.nonzero((unit[1:] != unit[:-1]) | (offset[1:] != offset[:-1] + nbytes[:-1]))[0] + 1
    starts = np.concatenate(([0], brk))
    ends = np.concatenate((brk, [m]))
    return [(int(unit[a]), int(offset[a]), int(a), int(b)) for a, b in zip(starts, ends)]


def _lacking(task_stats: dict[str, Any]) -> str:
    """' (N rows lack column 'c')' for a task whose pending rows wait for a column that is not there yet."""
    wait = task_stats.get("waiting_for") or {}
    return "".join(f" ({k} rows lack column '{c}')" for c, k in sorted(wait.items()))


class StoreBase:
    """put / put_columns / get / try_get / stats / mark_done / close over a transport."""

    schema: Schema
    cfg: StoreConfig
    rank: int = 0
    label: str = "store"
    unit_bytes: int = 0
    leasing: bool = False  # transports with a round trip per control call (RMA) place puts in leases
    _lease: Lease | None = None
    _pool: BufferPool | None = None

    @property
    def pool(self) -> BufferPool:
        """Recycled memory for the big arrays gets return (store.recv_pool_mb)."""
        if self._pool is None:
            self._pool = BufferPool(int(self.cfg.recv_pool_mb * 2**20))
        return self._pool

    # ---- waiting -----------------------------------------------------------------------------
    def _wait(self, attempt: Callable[[float], Any], timeout: float | None, what: Callable[[], str]) -> Any:
        """Retry `attempt(seconds left)` with sleeping back-off until it returns non-None or the timeout
        passes. A transport may wait inside `attempt` (the RMA controller parks the request)."""
        timeout = self.cfg.timeout_s if timeout is None else timeout
        deadline = time.monotonic() + timeout
        pause = self.cfg.poll_min_s
        while True:
            got = attempt(max(0.0, deadline - time.monotonic()))
            if got is not None:
                return got
            now = time.monotonic()
            if now >= deadline:
                raise WaitTimeout(f"store: waited {timeout:g}s {what()} (store.timeout_s)", rank=self.rank,
                                  role=self.label)
            time.sleep(min(pause, max(0.0, deadline - now)))
            pause = min(pause * 2, self.cfg.poll_max_s)

    # ---- producers ---------------------------------------------------------------------------
    def register_task(self, name: str, columns: Sequence[str], adds: Sequence[str] = ()) -> None:
        """Declare a consumer task; rows are recycled only after every registered task consumed them.

        `columns`: what the task needs; `adds`: columns its consumer writes later with put_columns (e.g. the
        reward). A put must carry every column some task needs unless some task adds it (else refused)."""
        self.schema.col_ids(columns)
        self.schema.col_ids(adds)
        if adds:
            self._register(name, list(columns), list(adds))
        else:
            self._register(name, list(columns))

    def put(self, rows: Mapping[str, Any], meta: Sequence[RowMeta], timeout: float | None = None) -> np.ndarray:
        """Store new rows; blocks while the store is full (back-pressure), returns their row ids."""
        v = self.schema.validate(rows, n=len(meta))
        self.schema.check_row_fits(v, self.unit_bytes)
        m = [x if isinstance(x, RowMeta) else RowMeta(*x) for x in meta]
        index = np.fromiter((x.index for x in m), dtype=np.int64, count=len(m))
        group = np.fromiter((x.group for x in m), dtype=np.int64, count=len(m))
        version = np.fromiter((x.version for x in m), dtype=np.int64, count=len(m))
        if self.leasing and self.cfg.lease_mb > 0:
            return self._put_leased(v, index, group, version, timeout)
        pl = self._wait(lambda w: self._alloc(v.ids, v.sizes, v.counts, index, group, version, w), timeout,
                        lambda: f"to put {v.n} rows ({int(v.sizes.sum())} bytes): store full, {self._describe()}")
        self._write_validated(v, pl)
        return pl.row_ids

    def put_columns(self, row_ids: Sequence[int], columns: Mapping[str, Any], timeout: float | None = None) -> None:
        """Add columns to rows already stored (e.g. the reward after the rollout); never overwrites."""
        row_ids = np.asarray(row_ids, dtype=np.int64)
        v = self.schema.validate(columns, n=len(row_ids))
        self.schema.check_row_fits(v, self.unit_bytes)
        pl = self._wait(lambda w: self._alloc_columns(row_ids, v.ids, v.sizes, v.counts, w), timeout,
                        lambda: f"for {int(v.sizes.sum())} free bytes to add columns: {self._describe()}")
        self._write_validated(v, pl)

    def _put_leased(self, v: Validated, index, group, version, timeout: float | None) -> np.ndarray:
        """Place the put in this producer's lease (a new lease when it is used up: the only round
        trip), write it, and publish it one-way."""
        _, starts, total = chunk_layout(v.sizes)
        lease = self._lease
        if lease is None or not lease.fits(v.n, total):
            self._end_lease()
            want_bytes = max(int(self.cfg.lease_mb * 2**20), LEASE_PUTS * total)
            want_rows = max(self.cfg.lease_rows, LEASE_PUTS * v.n)
            lease = self._wait(lambda w: self._take_lease(v.n, total, want_rows, want_bytes, w), timeout,
                               lambda: f"to put {v.n} rows ({total} bytes): store full, {self._describe()}")
            self._lease = lease
        first, offset = lease.used_rows, lease.base + lease.used_bytes
        lease.used_rows += v.n
        lease.used_bytes += total
        self._write(self._chunk_ops(v, [(0, v.n, lease.unit, offset + starts)]))
        self._commit_leased(lease.lease_id, first, offset, v.ids, v.sizes, v.counts, index, group, version)
        return lease.row_ids[first:first + v.n]

    def _end_lease(self) -> None:
        if self._lease is not None:
            lid, self._lease = self._lease.lease_id, None
            self._release_lease(lid)

    def _write_validated(self, v: Validated, pl: Placement) -> None:
        self._write(self._chunk_ops(v, pl.chunks))
        self._commit(pl.row_ids, v.ids)

    @staticmethod
    def _chunk_ops(v: Validated, chunks) -> list:
        ops = []
        for lo, hi, u, col_starts in chunks:
            for j, cid in enumerate(v.ids):
                off = int(col_starts[j])
                for buf in v.column_bytes(cid, lo, hi):
                    if len(buf):
                        ops.append((u, off, buf))
                    off += len(buf)
        return ops

    def mark_done(self) -> None:
        """This producer will put no more rows; consumers see EndOfStream once all producers said so."""
        self._end_lease()
        self._mark_done()

    # ---- consumers ---------------------------------------------------------------------------
    def get(self, task: str, columns: Sequence[str], n: int, policy: str = "fifo", timeout: float | None = None,
            **policy_args: Any) -> Batch:
        """Claim n rows for `task` (exactly once per task) and fetch `columns`; blocks until a batch exists.

        Raises EndOfStream when every producer is done and nothing is left; WaitTimeout after `timeout`."""
        col_ids = self.schema.col_ids(columns)
        claim = self._wait(lambda w: self._select(task, col_ids, n, policy, policy_args, w), timeout,
                           lambda: f"for task '{task}' to get {n} rows with columns {list(columns)} "
                                   f"(policy {policy}): {self._describe()}")
        return self._fetch(task, col_ids, claim)

    def try_get(self, task: str, columns: Sequence[str], n: int, policy: str = "fifo",
                **policy_args: Any) -> Batch | None:
        """Like get, without waiting: None when no batch can be formed now."""
        col_ids = self.schema.col_ids(columns)
        claim = self._select(task, col_ids, n, policy, policy_args)
        return None if claim is None else self._fetch(task, col_ids, claim)

    def iter_batches(self, task: str, columns: Sequence[str], n: int, policy: str = "fifo",
                     timeout: float | None = None, prefetch: bool = False, **policy_args: Any) -> Iterator[Batch]:
        """get() until EndOfStream.

        prefetch=True claims the next batch before reading this one (the claim's round trip to the
        controller then overlaps the copy and the caller's work on the batch). Its rows belong to this
        consumer from then on; leaving the loop early hands them back unread (`unclaim`)."""
        col_ids = self.schema.col_ids(columns)
        ahead: Any = None
        try:
            while True:
                claim = self._select_end(ahead) if ahead is not None else None
                ahead = None
                if claim is None:
                    claim = self._wait(lambda w: self._select(task, col_ids, n, policy, policy_args, w), timeout,
                                       lambda: f"for task '{task}' to get {n} rows with columns {list(columns)} "
                                               f"(policy {policy}): {self._describe()}")
                if claim == END:
                    return
                if prefetch:
                    ahead = self._select_begin(task, col_ids, n, policy, policy_args)
                yield self._fetch(task, col_ids, claim)
        finally:
            if ahead is not None:
                left = self._select_end(ahead)
                if isinstance(left, Claim):
                    self._unclaim(task, left.row_ids)

    # a claim sent now and collected later; transports with a round trip override both
    def _select_begin(self, task, col_ids, n, policy, args) -> Any:
        return ("claimed", self._select(task, col_ids, n, policy, args))

    def _select_end(self, handle) -> Any:
        return handle[1]

    def peek(self, task: str, columns: Sequence[str]) -> Batch:
        """Copy of every row `task` has not consumed yet (with `columns` ready), without consuming any.

        For checkpoints: call it only from the task's one consumer (the rows then cannot be recycled
        while they are read)."""
        col_ids = self.schema.col_ids(columns)
        return self._fetch(task, col_ids, self._peek(task, col_ids), release=False)

    def _fetch(self, task: str, col_ids: list[int], claim: Claim | str, release: bool = True) -> Batch:
        if claim == END:
            raise EndOfStream(f"[rank {self.rank}, role {self.label}] task '{task}': every producer is done "
                              f"and no rows are left")
        m = len(claim.row_ids)
        cols: dict[str, Any] = {}
        ops = []
        for j, cid in enumerate(col_ids):
            col = self.schema.columns[cid]
            if col.var:
                offsets = np.zeros(m + 1, dtype=np.int64)
                np.cumsum(claim.count[:, j], out=offsets[1:])
                arr = self.pool.empty((int(offsets[-1]), *col.shape), col.dtype)
                cols[col.name] = Packed(arr, offsets)
            else:
                arr = self.pool.empty((m, *col.shape), col.dtype)
                cols[col.name] = arr
            flat = as_bytes(arr)
            dst = np.zeros(m + 1, dtype=np.int64)
            np.cumsum(claim.nbytes[:, j], out=dst[1:])  # where each row's bytes go in `arr`
            for u, off, a, b in read_runs(claim.unit[:, j], claim.offset[:, j], claim.nbytes[:, j]):
                if dst[b] > dst[a]:
                    ops.append((u, off, flat[dst[a]:dst[b]]))
        self._read(ops)
        if release:
            self._release(task, claim.row_ids)
        return Batch(row_ids=claim.row_ids, index=claim.index, group=claim.group, version=claim.version,
                     columns=cols, parts=claim.parts, stale=claim.stale)

    def stats(self) -> dict[str, Any]:
        """Occupancy, bytes per storage unit, per-task consumed / lag / stale counts."""
        return self._stats()

    def _describe(self) -> str:
        try:
            st = self._stats()
        except Exception:  # noqa: BLE001 - a description must never mask the timeout
            return "store state unavailable"
        lag = ", ".join(f"task '{k}' lag {v['lag']}" + _lacking(v) for k, v in st["tasks"].items()) \
            or "no task registered"
        return (f"{st['rows_live']}/{st['capacity_rows']} rows live, {sum(st['bytes_used'])}/"
                f"{sum(st['bytes_capacity'])} bytes used; {lag}")

    def __enter__(self) -> "StoreBase":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError
