"""Pure bucket planning: named tensor specs (name, shape, dtype) -> one flat byte layout cut into buckets.

    plan = plan_buckets([TensorSpec("wte", (32000, 896), "bfloat16"), ...], bucket_bytes=256 << 20)
    plan.buckets[k].start, .end        # byte range of bucket k in the flat buffer
    plan.tensors[i].offset, .nbytes    # where tensor i lives in the flat buffer
    plan.layout_hash                   # int64 both sides compare before receiving any bucket

Every tensor starts at an ALIGN-byte boundary and every bucket is an ALIGN-aligned, ALIGN-multiple
byte range, so (a) a bucket can be viewed as int64 words for the checksum, (b) a tensor can be viewed
in place from the flat buffer with its own dtype, and (c) a tensor split over several buckets is still
one contiguous range, so the receiver hands it to the engine without any copy.
No torch here: dtypes are names ("bfloat16"), tested with plain Python.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from dataclasses import dataclass
from typing import Iterable, Literal, Sequence

ALIGN = 64  # bytes; >= the largest itemsize (complex128 = 16) and one cache line

ITEMSIZE = {
    "bool": 1, "uint8": 1, "int8": 1, "float8_e4m3fn": 1, "float8_e5m2": 1,
    "int16": 2, "uint16": 2, "float16": 2, "bfloat16": 2,
    "int32": 4, "uint32": 4, "float32": 4, "complex32": 4,
    "int64": 8, "uint64": 8, "float64": 8, "complex64": 8, "complex128": 16,
}


def dtype_name(dtype: object) -> str:
    """'torch.bfloat16' / torch.bfloat16 / 'bfloat16' -> 'bfloat16' (no torch import needed)."""
    name = str(dtype)
    return name[len("torch."):] if name.startswith("torch.") else name


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "dtype", dtype_name(self.dtype))
        if self.dtype not in ITEMSIZE:
            raise ValueError(f"tensor {self.name!r}: unsupported dtype {self.dtype!r} "
                             f"(supported: {', '.join(sorted(ITEMSIZE))})")
        if any(s < 0 for s in self.shape):
            raise ValueError(f"tensor {self.name!r}: negative dimension in shape {self.shape}")

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * ITEMSIZE[self.dtype]


@dataclass(frozen=True)
class Placed:
    """A tensor's place in the flat buffer: bytes [offset, offset + nbytes); buckets first..last hold it."""

    spec: TensorSpec
    offset: int
    first_bucket: int
    last_bucket: int

    @property
    def nbytes(self) -> int:
        return self.spec.nbytes

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class Bucket:
    index: int
    start: int  # byte offset in the flat buffer (ALIGN-aligned)
    end: int  # exclusive, ALIGN-aligned
    names: tuple[str, ...]  # tensors (or pieces of them) in this bucket, in order

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class BucketPlan:
    tensors: tuple[Placed, ...]
    buckets: tuple[Bucket, ...]
    total_bytes: int  # size of the flat buffer (ALIGN multiple)
    bucket_bytes: int  # the bound used
    large_tensors: str

    @property
    def layout_hash(self) -> int:
        """Signed int64 digest of names, shapes, dtypes, offsets and bucket ranges."""
        desc = {
            "align": ALIGN,
            "tensors": [[p.name, list(p.spec.shape), p.spec.dtype, p.offset] for p in self.tensors],
            "buckets": [[b.start, b.end] for b in self.buckets],
        }
        digest = hashlib.sha256(json.dumps(desc, separators=(",", ":")).encode()).digest()
        return int.from_bytes(digest[:8], "little", signed=True)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.tensors)

    def describe(self) -> str:
        return (f"{len(self.tensors)} tensors, {self.total_bytes / 2**20:.1f} MiB in {len(self.buckets)} "
                f"buckets of <= {self.bucket_bytes / 2**20:.1f} MiB")


def plan_buckets(specs: Iterable[TensorSpec], bucket_bytes: int,
                 large_tensors: Literal["split", "own"] = "split") -> BucketPlan:
    """Lay `specs` out in order and cut the flat range into buckets of at most `bucket_bytes`.

    A tensor never straddles two buckets unless it alone exceeds the bound: then 'split' cuts it into
    bound-sized pieces (the last piece may share its bucket with the next tensors) and 'own' gives it
    one bucket of its own. The bound is rounded down to ALIGN (at least ALIGN).
    """
    if large_tensors not in ("split", "own"):
        raise ValueError(f"large_tensors must be 'split' or 'own', got {large_tensors!r}")
    specs = list(specs)
    seen: set[str] = set()
    for s in specs:
        if s.name in seen:
            raise ValueError(f"tensor name {s.name!r} appears twice")
        seen.add(s.name)
    bound = max(ALIGN, (int(bucket_bytes) // ALIGN) * ALIGN)
    cuts = _Cutter(bound)
    placed = []
    offset = 0
    for spec in specs:
        size = _align(spec.nbytes)
        if size > bound:
            cuts.close(offset)  # a large tensor starts a fresh bucket
            if large_tensors == "split":
                pos = offset
                while offset + size - pos > bound:
                    cuts.add(spec.name, pos, pos + bound)
                    pos += bound
                    cuts.close(pos)
                cuts.add(spec.name, pos, offset + size)
            else:
                cuts.add(spec.name, offset, offset + size)
                cuts.close(offset + size)
        else:
            if cuts.current_size(offset + size) > bound:
                cuts.close(offset)
            cuts.add(spec.name, offset, offset + size)
        placed.append((spec, offset))
        offset += size
    cuts.close(offset)
    buckets = tuple(cuts.buckets)
    starts = [b.start for b in buckets]
    tensors = []
    for spec, off in placed:
        first = _bucket_at(starts, off)
        last = _bucket_at(starts, off + _align(spec.nbytes) - 1) if spec.nbytes else first
        tensors.append(Placed(spec=spec, offset=off, first_bucket=first, last_bucket=last))
    return BucketPlan(tensors=tuple(tensors), buckets=buckets, total_bytes=offset, bucket_bytes=bound,
                      large_tensors=large_tensors)


def _bucket_at(starts: Sequence[int], pos: int) -> int:
    """Index of the bucket holding byte `pos` (the last bucket for pos == total; -1 without buckets)."""
    return bisect.bisect_right(starts, pos) - 1 if starts else -1


class _Cutter:
    """Accumulates [start, end) pieces into the open bucket; close() seals it."""

    def __init__(self, bound: int):
        self.bound = bound
        self.buckets: list[Bucket] = []
        self.start: int | None = None
        self.names: list[str] = []

    def current_size(self, end: int) -> int:
        return 0 if self.start is None else end - self.start

    def add(self, name: str, start: int, end: int) -> None:
        if self.start is None:
            self.start = start
        if not self.names or self.names[-1] != name:
            self.names.append(name)

    def close(self, end: int) -> None:
        if self.start is not None and end > self.start:
            self.buckets.append(Bucket(index=len(self.buckets), start=self.start, end=end, names=tuple(self.names)))
        if self.start is not None and end >= self.start:
            self.start, self.names = None, []


def check_named(plan: BucketPlan, names: Sequence[str]) -> str | None:
    """A one-line description of how `names` differ from the plan's tensors, or None when equal."""
    want, got = list(plan.names), list(names)
    if want == got:
        return None
    missing = [n for n in want if n not in set(got)]
    extra = [n for n in got if n not in set(want)]
    parts = []
    if missing:
        parts.append(f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}")
    if extra:
        parts.append(f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}")
    if not parts:
        parts.append("same names in a different order")
    return "; ".join(parts)
