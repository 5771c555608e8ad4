"""Control plane of the store (pure, no MPI): row slots, byte placement, ready bits, per-task claims.

One instance lives in the controller (a store rank or a thread); the in-process twin calls it
directly. Row slots form a bounded pool of `capacity_rows`; a row is recycled (slot and bytes
freed) once every registered task has consumed and released it. Bytes are placed in storage units
(one per storage rank), choosing the unit with the most free bytes, so bytes balance across ranks.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Sequence

import numpy as np

from asyncflow_hpc.store.arena import Arena
from asyncflow_hpc.store.policies import Candidates, resolve_policy
from asyncflow_hpc.store.records import Claim, Extent, Lease, OpenLease, Placement, TaskState
from asyncflow_hpc.store.schema import Schema, SchemaError, StoreError, aligned, chunk_layout

MAX_TASKS = 64
END = "end"


class ControlPlane:
    """Metadata of every live row; every method is one atomic step of the store protocol."""

    def __init__(self, schema: Schema, capacity_rows: int, unit_bytes: Sequence[int], producers: int = 1):
        self.schema, self.cap = schema, int(capacity_rows)
        self.arenas = [Arena(b) for b in unit_bytes]
        if not any(a.size for a in self.arenas):
            raise StoreError("the store has no storage bytes (every storage unit is empty)")
        k, cap = len(schema.columns), self.cap
        self.live = np.zeros(cap, dtype=bool)
        self.row_id = np.full(cap, -1, dtype=np.int64)
        self.index, self.group, self.version, self.seqlen, self.arrival = (
            np.zeros(cap, dtype=np.int64) for _ in range(5))
        self.ready, self.consumed, self.released = (np.zeros(cap, dtype=np.uint64) for _ in range(3))
        self.loc_unit = np.full((cap, k), -1, dtype=np.int32)
        self.loc_off, self.loc_nb, self.loc_cnt = (np.zeros((cap, k), dtype=np.int64) for _ in range(3))
        self.extents: list[list[int]] = [[] for _ in range(cap)]  # extent ids of each slot
        self.extent: dict[int, Extent] = {}
        self.next_extent = 0
        self.free_slots = deque(range(cap))
        self.slot_of: dict[int, int] = {}
        self.tasks: dict[str, TaskState] = {}
        self.all_tasks = np.uint64(0)
        self.next_row = self.next_arrival = 0
        self.rows_put = self.recycled = 0
        self.leases: dict[int, OpenLease] = {}
        self.next_lease = 0
        self.producers, self.done_by = max(1, producers), set()

    # ---- tasks and end of stream ------------------------------------------------------------
    def register_task(self, name: str, columns: Sequence[str], adds: Sequence[str] = ()) -> None:
        """`columns`: what the task waits for; `adds`: what its consumer writes later with put_columns.

        The put contract: a put must carry every column some task waits for, unless a task adds it."""
        need, add = self.schema.mask(columns), self.schema.mask(adds)
        t = self.tasks.get(name)
        if t is not None:
            if t.need != need or t.adds != add:
                raise StoreError(f"task '{name}' already registered with columns {list(t.names)}, not {list(columns)}"
                                 f" (or with other adds)")
            return
        if len(self.tasks) >= MAX_TASKS:
            raise StoreError(f"at most {MAX_TASKS} tasks can be registered")
        self.tasks[name] = TaskState(bit=len(self.tasks), need=need, names=tuple(columns), adds=add)
        self.all_tasks |= np.uint64(1 << self.tasks[name].bit)

    def check_put(self, col_ids: Sequence[int]) -> None:
        """Refuse a put that lacks a column a registered task waits for and no registered task adds later
        (its rows would never become ready for that task, and the stream would never end)."""
        have = sum(1 << c for c in col_ids)
        added = 0
        for t in self.tasks.values():
            added |= t.adds
        for name, t in self.tasks.items():
            lack = t.need & ~have & ~added
            if lack:
                col = self.schema.columns[(lack & -lack).bit_length() - 1].name
                raise SchemaError(f"put lacks column '{col}', which task '{name}' needs (and no registered task "
                                  f"adds it with put_columns); put it with the rows, or register the task that "
                                  f"computes it with adds=['{col}']")

    def task(self, name: str) -> TaskState:
        t = self.tasks.get(name)
        if t is None:
            raise StoreError(f"task '{name}' is not registered (registered: {', '.join(self.tasks) or 'none'}); "
                             f"call register_task('{name}', columns) first")
        return t

    def mark_done(self, producer: int = 0) -> None:
        for lid in [k for k, x in self.leases.items() if x.producer == producer]:
            self.end_lease(lid)
        self.done_by.add(producer)

    @property
    def done(self) -> bool:
        return len(self.done_by) >= self.producers

    # ---- placement ---------------------------------------------------------------------------
    def _place(self, sizes: np.ndarray, lo: int = 0) -> list | None:
        """Chunks for rows lo..lo+n: the whole put on the emptiest unit that fits it, else split in halves."""
        n = sizes.shape[0]
        offs, starts, total = chunk_layout(sizes)
        for u in sorted(range(len(self.arenas)), key=lambda q: -self.arenas[q].free_bytes):
            base = self.arenas[u].alloc(total) if self.arenas[u].free_bytes >= total else None
            if base is not None:
                return [(lo, lo + n, u, base, total, base + offs)]
        if n == 1:
            return None
        h = n // 2
        first = self._place(sizes[:h], lo)
        second = self._place(sizes[h:], lo + h) if first is not None else None
        if second is None:
            for _, _, u, base, total, _ in first or []:
                self.arenas[u].release(base, total)
            return None
        return first + second

    def _check_fits(self, sizes: np.ndarray) -> None:
        biggest = max(a.size for a in self.arenas)
        totals = aligned(sizes).sum(axis=1)
        if len(totals) and int(totals.max()) > biggest:
            raise SchemaError(f"a row needs {int(totals.max())} bytes, more than a storage unit ({biggest} bytes)")

    def alloc(self, col_ids: Sequence[int], sizes: np.ndarray, counts: np.ndarray, index: Sequence[int],
              group: Sequence[int], version: Sequence[int], producer: int = 0) -> Placement | None:
        """Reserve slots and bytes for n new rows (None when full: the producer waits)."""
        if producer in self.done_by:
            raise StoreError("put after mark_done() on this producer")
        self.check_put(col_ids)
        n = sizes.shape[0]
        self._check_fits(sizes)
        if len(self.free_slots) < n:
            return None
        chunks = self._place(sizes)
        if chunks is None:
            return None
        slots = self._take_slots(n)
        rids = np.arange(self.next_row, self.next_row + n, dtype=np.int64)
        self.next_row += n
        self._open_rows(slots, rids, index, group, version)
        return self._set_locs(rids, slots, col_ids, sizes, counts, chunks)

    def _take_slots(self, n: int) -> np.ndarray:
        return np.fromiter((self.free_slots.popleft() for _ in range(n)), dtype=np.int64, count=n)

    def _open_rows(self, slots: np.ndarray, rids: np.ndarray, index, group, version) -> None:
        n = len(slots)
        self.rows_put += n
        self.live[slots] = True
        self.row_id[slots] = rids
        self.index[slots], self.group[slots], self.version[slots] = index, group, version
        self.arrival[slots] = np.arange(self.next_arrival, self.next_arrival + n)  # FIFO = publication order
        self.next_arrival += n
        self.ready[slots] = self.consumed[slots] = self.released[slots] = 0
        self.loc_unit[slots] = -1
        self.seqlen[slots] = 0
        for rid, s in zip(rids.tolist(), slots.tolist()):
            self.slot_of[rid] = s

    # ---- leases: placement done by the producer, published one-way ---------------------------
    def lease(self, rows: int, nbytes: int, want_rows: int, want_bytes: int, producer: int = 0) -> Lease | None:
        """Reserve at least `rows` slots and `nbytes` bytes in one unit (None when full: the producer
        waits), and up to `want_rows`/`want_bytes` while that leaves at least half of what is free to
        the other producers, so a lease never takes the space a put of another producer could use
        when the store is nearly full (then leases shrink to single puts)."""
        if producer in self.done_by:
            raise StoreError("put after mark_done() on this producer")
        if nbytes > max(a.size for a in self.arenas):
            raise SchemaError(f"a put needs {nbytes} bytes, more than a storage unit "
                              f"({max(a.size for a in self.arenas)} bytes)")
        free = len(self.free_slots)
        if free < rows:
            return None
        share = 2 * self.producers
        n = max(rows, min(want_rows, rows + (free - rows) // share))
        for u in sorted(range(len(self.arenas)), key=lambda q: -self.arenas[q].free_bytes):
            arena = self.arenas[u]
            size = aligned(max(nbytes, min(want_bytes, nbytes + (arena.free_bytes - nbytes) // share)))
            base = arena.alloc(size) if arena.free_bytes >= size else None
            if base is None and size > nbytes:
                size = aligned(nbytes)
                base = arena.alloc(size) if arena.free_bytes >= size else None
            if base is not None:
                break
        else:
            return None
        slots = self._take_slots(n)
        rids = np.arange(self.next_row, self.next_row + n, dtype=np.int64)
        self.next_row += n
        eid = self.next_extent
        self.next_extent += 1
        self.extent[eid] = Extent(u, base, size, 1)  # the lease itself holds the extent until end_lease
        lid = self.next_lease
        self.next_lease += 1
        self.leases[lid] = OpenLease(producer, eid, slots, rids)
        return Lease(lease_id=lid, unit=u, base=base, nbytes=size, row_ids=rids)

    def commit_leased(self, lease_id: int, first: int, offset: int, col_ids: Sequence[int], sizes: np.ndarray,
                      counts: np.ndarray, index: Sequence[int], group: Sequence[int], version: Sequence[int]) -> None:
        """Rows first..first+n of a lease, written as one chunk at `offset` of its unit: live and ready."""
        lease = self.leases.get(lease_id)
        if lease is None:
            raise StoreError(f"internal: commit to lease {lease_id}, which is not open")
        eid, slots, rids = lease.extent, lease.slots, lease.rows
        if lease.producer in self.done_by:
            raise StoreError("put after mark_done() on this producer")
        self.check_put(col_ids)
        n = sizes.shape[0]
        ext = self.extent[eid]
        u, base, size = ext.unit, ext.base, ext.size
        offs, _, total = chunk_layout(sizes)
        if first + n > len(slots) or offset < base or offset + total > base + size:
            raise StoreError(f"internal: lease {lease_id} rows {first}..{first + n} at byte {offset} (+{total}) "
                             f"outside the lease ({len(slots)} rows, bytes [{base}, {base + size}))")
        s, r = slots[first:first + n], rids[first:first + n]
        self._open_rows(s, r, index, group, version)
        ci = np.asarray(col_ids)
        self.loc_unit[s[:, None], ci] = u
        self.loc_off[s[:, None], ci] = offset + offs
        self.loc_nb[s[:, None], ci] = sizes
        self.loc_cnt[s[:, None], ci] = counts
        ext.refs += n
        lease.used_rows = max(lease.used_rows, first + n)
        lease.used_bytes = max(lease.used_bytes, offset + total - base)
        for x in s.tolist():
            self.extents[x].append(eid)
        var = np.array([self.schema.columns[c].var for c in col_ids], dtype=bool)
        if var.any():
            self.seqlen[s] += counts[:, var].sum(axis=1)
        self.ready[s] |= np.uint64(sum(1 << c for c in col_ids))

    def end_lease(self, lease_id: int) -> None:
        """The producer is done with a lease: its unused slots and the unused tail of its bytes are freed."""
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            return
        eid, slots, used_rows, used_bytes = lease.extent, lease.slots, lease.used_rows, lease.used_bytes
        self.free_slots.extend(slots[used_rows:].tolist())
        ext = self.extent[eid]
        keep = aligned(used_bytes)
        if keep < ext.size:
            self.arenas[ext.unit].release(ext.base + keep, ext.size - keep)
            ext.size = keep
        self._drop_extent_ref(eid)

    def _drop_extent_ref(self, eid: int) -> None:
        ext = self.extent[eid]
        ext.refs -= 1
        if ext.refs == 0:
            if ext.size:
                self.arenas[ext.unit].release(ext.base, ext.size)
            del self.extent[eid]

    def _set_locs(self, rids, slots, col_ids, sizes, counts, chunks) -> Placement:
        ci = np.asarray(col_ids)
        out = []
        for lo, hi, u, base, total, offs in chunks:
            s = slots[lo:hi]
            self.loc_unit[s[:, None], ci] = u
            self.loc_off[s[:, None], ci] = offs
            self.loc_nb[s[:, None], ci] = sizes[lo:hi]
            self.loc_cnt[s[:, None], ci] = counts[lo:hi]
            eid = self.next_extent
            self.next_extent += 1
            self.extent[eid] = Extent(u, base, total, hi - lo)  # freed when its last row is recycled
            for x in s.tolist():
                self.extents[x].append(eid)
            out.append((lo, hi, u, offs[0].copy()))  # absolute start of each column block
        var = np.array([self.schema.columns[c].var for c in col_ids], dtype=bool)
        if var.any():
            self.seqlen[slots] += counts[:, var].sum(axis=1)
        return Placement(row_ids=rids, chunks=out)

    def slots_of(self, row_ids: Sequence[int]) -> np.ndarray:
        try:
            return np.fromiter((self.slot_of[int(r)] for r in row_ids), dtype=np.int64, count=len(row_ids))
        except KeyError as exc:
            raise StoreError(f"row {exc.args[0]} is not in the store (never put, or recycled after every "
                             f"registered task consumed it)") from None

    def alloc_columns(self, row_ids: Sequence[int], col_ids: Sequence[int], sizes: np.ndarray,
                      counts: np.ndarray) -> Placement | None:
        """Reserve bytes for new columns of existing rows (None when no bytes are free)."""
        slots = self.slots_of(row_ids)
        taken = self.loc_unit[slots[:, None], np.asarray(col_ids)] >= 0
        if taken.any():
            i, j = map(int, np.argwhere(taken)[0])
            raise SchemaError(f"column '{self.schema.columns[col_ids[j]].name}' of row {row_ids[i]} is already "
                              f"written; the store never overwrites")
        self._check_fits(sizes)
        chunks = self._place(sizes)
        if chunks is None:
            return None
        return self._set_locs(np.asarray(row_ids, dtype=np.int64), slots, col_ids, sizes, counts, chunks)

    def commit(self, row_ids: Sequence[int], col_ids: Sequence[int]) -> None:
        """The bytes of these columns are written (Put + Flush done): set their ready bits."""
        m = np.uint64(sum(1 << c for c in col_ids))
        slots = [self.slot_of[int(r)] for r in row_ids if int(r) in self.slot_of]
        self.ready[slots] |= m

    # ---- claims ------------------------------------------------------------------------------
    def select(self, task: str, col_ids: Sequence[int], n: int, policy: str = "fifo",
               args: dict[str, Any] | None = None) -> Claim | str | None:
        """Claim rows for `task` (exactly once); None if no batch yet, END when the stream is over."""
        t = self.task(task)
        bit = np.uint64(1 << t.bit)
        need = np.uint64(t.need | sum(1 << c for c in col_ids))
        pending = self.live & ((self.consumed & bit) == 0)
        elig = pending & ((self.ready & need) == need)
        pos = np.nonzero(elig)[0]
        pos = pos[np.argsort(self.arrival[pos], kind="stable")]
        cands = Candidates(self.row_id[pos], self.index[pos], self.group[pos], self.version[pos], self.seqlen[pos])
        final = self.done and int(np.count_nonzero(pending)) == len(pos)
        sel = resolve_policy(policy)(cands, n, final=final, **(args or {}))
        if sel is not None and len(sel.discard):
            d = pos[sel.discard]
            self.consumed[d] |= bit
            self.released[d] |= bit
            t.discarded_stale += len(d)
            self._recycle(d)
        if sel is None or not len(sel.take):
            left = len(pos) - (len(sel.discard) if sel is not None else 0)
            return END if final and left == 0 else None
        s = pos[sel.take]
        self.consumed[s] |= bit
        t.consumed += len(s)
        t.stale_consumed += sel.stale
        ci = np.asarray(col_ids)
        return Claim(row_ids=self.row_id[s], index=self.index[s], group=self.group[s], version=self.version[s],
                     unit=self.loc_unit[s[:, None], ci], offset=self.loc_off[s[:, None], ci],
                     nbytes=self.loc_nb[s[:, None], ci], count=self.loc_cnt[s[:, None], ci],
                     parts=sel.parts, stale=sel.stale)

    def peek(self, task: str, col_ids: Sequence[int]) -> Claim:
        """Every stored row `task` has not consumed whose `col_ids` are ready, oldest first, WITHOUT claiming
        them (checkpoints). Safe to read while only this task's single consumer calls it: rows are
        recycled only after every task consumed them."""
        t = self.task(task)
        bit = np.uint64(1 << t.bit)
        need = np.uint64(sum(1 << c for c in col_ids))
        pos = np.nonzero(self.live & ((self.consumed & bit) == 0) & ((self.ready & need) == need))[0]
        s = pos[np.argsort(self.arrival[pos], kind="stable")]
        ci = np.asarray(col_ids)
        return Claim(row_ids=self.row_id[s], index=self.index[s], group=self.group[s], version=self.version[s],
                     unit=self.loc_unit[s[:, None], ci], offset=self.loc_off[s[:, None], ci],
                     nbytes=self.loc_nb[s[:, None], ci], count=self.loc_cnt[s[:, None], ci])

    def unclaim(self, task: str, row_ids: Sequence[int]) -> None:
        """Hand back rows a task claimed but never read (a prefetched batch the consumer did not use)."""
        t = self.task(task)
        bit = np.uint64(1 << t.bit)
        slots = self.slots_of(row_ids)
        if ((self.consumed[slots] & bit) == 0).any() or ((self.released[slots] & bit) != 0).any():
            raise StoreError(f"internal: unclaim of rows task '{task}' does not hold")
        self.consumed[slots] &= ~bit
        t.consumed -= len(slots)

    def release(self, task: str, row_ids: Sequence[int]) -> None:
        """The task has copied these rows out: once every task has, their slots and bytes are reused."""
        bit = np.uint64(1 << self.task(task).bit)
        slots = self.slots_of(row_ids)
        self.released[slots] |= bit
        self._recycle(slots)

    def _recycle(self, slots: np.ndarray) -> None:
        full = self.all_tasks
        for s in slots.tolist():
            if self.live[s] and (self.released[s] & full) == full:
                for eid in self.extents[s]:
                    self._drop_extent_ref(eid)
                self.extents[s] = []
                self.live[s] = False
                del self.slot_of[int(self.row_id[s])]
                self.free_slots.append(s)
                self.recycled += 1

    # ---- reporting ---------------------------------------------------------------------------
    def _waiting_for(self, t: TaskState) -> dict[str, int]:
        """Columns the task needs that its pending rows still lack: {column: rows lacking it}."""
        pending = self.live & ((self.consumed & np.uint64(1 << t.bit)) == 0)
        out = {}
        for c, col in enumerate(self.schema.columns):
            if t.need >> c & 1:
                k = int(np.count_nonzero(pending & ((self.ready & np.uint64(1 << c)) == 0)))
                if k:
                    out[col.name] = k
        return out

    def stats(self) -> dict[str, Any]:
        live = int(np.count_nonzero(self.live))
        tasks = {}
        for name, t in self.tasks.items():
            tasks[name] = {"consumed": t.consumed, "lag": self.rows_put - t.consumed - t.discarded_stale,
                           "discarded_stale": t.discarded_stale, "stale_consumed": t.stale_consumed,
                           "waiting_for": self._waiting_for(t)}
        leased = sum(len(x.slots) - x.used_rows for x in self.leases.values())
        return {"rows_live": live, "capacity_rows": self.cap, "occupancy": live / self.cap, "rows_leased": leased,
                "rows_put": self.rows_put, "rows_recycled": self.recycled,
                "bytes_used": [a.used for a in self.arenas], "bytes_capacity": [a.size for a in self.arenas],
                "done": self.done, "tasks": tasks}
