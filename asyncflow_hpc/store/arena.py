"""Byte allocation inside one storage unit (pure): a sorted free list, freed extents coalescing."""

from __future__ import annotations

import bisect

from asyncflow_hpc.store.schema import StoreError


class Arena:
    """First-fit byte allocator of one storage unit; freed extents coalesce with their neighbours."""

    def __init__(self, size: int):
        self.size = int(size)
        self.starts: list[int] = [0] if size else []
        self.sizes: list[int] = [self.size] if size else []
        self.used = 0

    @property
    def free_bytes(self) -> int:
        return self.size - self.used

    def alloc(self, n: int) -> int | None:
        for i, sz in enumerate(self.sizes):
            if sz >= n:
                start = self.starts[i]
                if sz == n:
                    del self.starts[i], self.sizes[i]
                else:
                    self.starts[i] += n
                    self.sizes[i] -= n
                self.used += n
                return start
        return None

    def release(self, start: int, n: int) -> None:
        i = bisect.bisect_left(self.starts, start)
        if (i < len(self.starts) and self.starts[i] < start + n) or (i and self.starts[i - 1] + self.sizes[i - 1] > start):
            raise StoreError(f"internal: double free of bytes [{start}, {start + n})")
        self.used -= n
        if i and self.starts[i - 1] + self.sizes[i - 1] == start:  # merge left
            i -= 1
            self.sizes[i] += n
        else:
            self.starts.insert(i, start)
            self.sizes.insert(i, n)
        if i + 1 < len(self.starts) and self.starts[i] + self.sizes[i] == self.starts[i + 1]:
            self.sizes[i] += self.sizes.pop(i + 1)
            self.starts.pop(i + 1)
