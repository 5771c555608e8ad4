"""Recycled memory for the big arrays a get returns, so that reading a batch does not pay page faults.

A fresh multi-MiB numpy array is new memory from the kernel: every 4 KiB page faults and is zeroed
on first touch, which made a store get of 8 MiB batches run at half the speed of a copy into memory
already touched (measured: bench store, 1 MiB rows). The pool keeps such buffers after the caller
drops them and hands them out again. It hands out views of a raw uint8 buffer it owns; numpy points
every view (and view of a view) at that owner, so the owner's reference count is 1 (the pool) plus
the number of live arrays using it: a buffer whose count is back to that is free. No finalizers,
no caller cooperation; arrays below `min_bytes` come from `np.empty` as before.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import numpy as np

_GRAIN = 1 << 20  # buffer sizes are rounded up to whole MiB


class BufferPool:
    """`empty(shape, dtype)` like `np.empty`, from recycled buffers for arrays of >= `min_bytes`."""

    def __init__(self, max_bytes: int, min_bytes: int = _GRAIN):
        self.max_bytes, self.min_bytes = int(max_bytes), int(min_bytes)
        self.buffers: list[np.ndarray] = []
        self.held = 0
        self.reused = self.fresh = 0
        self._lock = threading.Lock()
        # the count of a buffer nobody else holds, measured through the same expression `_free` uses
        self.buffers.append(np.empty(1, dtype=np.uint8))
        self._free_refs = sys.getrefcount(self.buffers[0])
        self.buffers.clear()

    def _free(self, i: int) -> bool:
        return sys.getrefcount(self.buffers[i]) <= self._free_refs

    def empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        nbytes = count * dtype.itemsize
        if nbytes < self.min_bytes or self.max_bytes <= 0:
            return np.empty(shape, dtype=dtype)
        return self._take(nbytes)[:nbytes].view(dtype).reshape(shape)

    def _take(self, nbytes: int) -> np.ndarray:
        size = -(-nbytes // _GRAIN) * _GRAIN
        with self._lock:
            fits = [i for i in range(len(self.buffers)) if size <= self.buffers[i].nbytes < 2 * size and self._free(i)]
            if fits:  # the smallest free buffer that fits (at most twice the size asked)
                self.reused += 1
                return self.buffers[min(fits, key=lambda i: self.buffers[i].nbytes)]
            self.fresh += 1
            raw = np.empty(size, dtype=np.uint8)
            if self.held + size > self.max_bytes:  # full: forget free buffers too small for this size
                for i in reversed(range(len(self.buffers))):
                    if self.buffers[i].nbytes < size and self._free(i):
                        self.held -= self.buffers.pop(i).nbytes
                        if self.held + size <= self.max_bytes:
                            break
            if self.held + size <= self.max_bytes:
                self.buffers.append(raw)
                self.held += size
            return raw
