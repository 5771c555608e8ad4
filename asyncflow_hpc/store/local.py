"""In-process twin of the RMA store: same API, the control plane called directly, units as numpy arrays.

    store = LocalStore(schema, StoreConfig(capacity_rows=256))
    store.register_task("trainer", ["response_ids", "reward"])
    ids = store.put({"response_ids": [r0, r1], "reward": [1.0, 0.0]}, [RowMeta(0, 0, 0), RowMeta(1, 0, 0)])
    batch = store.get("trainer", ["response_ids", "reward"], 2)

Thread-safe (one lock around the control plane), so a single process may run producer and consumer
threads against it.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from asyncflow_hpc.store.base import StoreBase
from asyncflow_hpc.store.config import StoreConfig
from asyncflow_hpc.store.control import ControlPlane
from asyncflow_hpc.store.schema import Schema, StoreError


class LocalStore(StoreBase):
    """The twin: storage units are plain byte arrays in this process."""

    def __init__(self, schema: Schema, cfg: StoreConfig | None = None, *, producers: int = 1,
                 label: str = "local"):
        self.schema, self.cfg = schema, cfg or StoreConfig()
        self.unit_bytes = self.cfg.unit_bytes
        self.label, self.rank = label, 0
        self.units = [np.zeros(self.unit_bytes, dtype=np.uint8) for _ in range(self.cfg.local_units)]
        self.ctrl = ControlPlane(schema, self.cfg.capacity_rows, [self.unit_bytes] * self.cfg.local_units,
                                 producers=producers)
        self._lock = threading.Lock()
        self._closed = False

    producer_id = 0  # which producer this handle puts and marks done for (for_producer)

    def for_producer(self, producer: int) -> "LocalStore":
        """A handle on this same store for producer `producer` (0 .. producers-1), e.g. one per producer thread:
        consumers see end of stream once every producer marked itself done."""
        import copy

        if not 0 <= producer < self.ctrl.producers:
            raise StoreError(f"store {self.label}: producer {producer} outside 0..{self.ctrl.producers - 1}")
        view = copy.copy(self)
        view.producer_id = producer
        return view

    def _call(self, name: str, *args: Any) -> Any:
        if self._closed:
            raise StoreError("store is closed")
        with self._lock:
            return getattr(self.ctrl, name)(*args)

    def _register(self, name, columns, adds=()):
        self._call("register_task", name, columns, adds)

    def _alloc(self, col_ids, sizes, counts, index, group, version, wait_s=0.0):
        return self._call("alloc", col_ids, sizes, counts, index, group, version, self.producer_id)

    def _alloc_columns(self, row_ids, col_ids, sizes, counts, wait_s=0.0):
        return self._call("alloc_columns", row_ids, col_ids, sizes, counts)

    def _commit(self, row_ids, col_ids):
        self._call("commit", row_ids, col_ids)

    # leases (off by default here: no round trip to save; `leasing = True` exercises them in tests)
    def _take_lease(self, rows, nbytes, want_rows, want_bytes, wait_s=0.0):
        return self._call("lease", rows, nbytes, want_rows, want_bytes, self.producer_id)

    def _commit_leased(self, *args):
        self._call("commit_leased", *args)

    def _release_lease(self, lease_id):
        self._call("end_lease", lease_id)

    def _select(self, task, col_ids, n, policy, args, wait_s=0.0):
        return self._call("select", task, col_ids, n, policy, args)

    def _peek(self, task, col_ids):
        return self._call("peek", task, col_ids)

    def _release(self, task, row_ids):
        self._call("release", task, row_ids)

    def _unclaim(self, task, row_ids):
        self._call("unclaim", task, row_ids)

    def _stats(self):
        return self._call("stats")

    def _mark_done(self):
        self._call("mark_done", self.producer_id)

    def _write(self, ops):
        for u, off, buf in ops:
            self.units[u][off:off + len(buf)] = buf

    def _read(self, ops):
        for u, off, buf in ops:
            buf[:] = self.units[u][off:off + len(buf)]

    def close(self) -> None:
        self._closed = True
        self.units = []
