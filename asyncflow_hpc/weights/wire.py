"""Wire format of one weight sync and the timed wait every collective goes through.

One sync over the weight group (trainer leader = broadcast source) has one of two forms, named by the
header's flags word:

  inline (flags 0) -- the snapshot was packed before the send started (`pack()` then `send_async(None)`):
    1. control   int64[CONTROL_WORDS]  fixed size (4 KiB), always safe to receive:
                 words 0..7   MAGIC, kind (WEIGHTS | STOP), version, layout hash, n_buckets, total bytes,
                              checksum algorithm, flags
                 words 8..    (s1, s2) of bucket 0, 1, ... -- the first INLINE_SUMS buckets
    2. bucket 0  uint8[...] bytes [start_0, end_0) of the flat layout
    3. overflow  int64[2 (n - INLINE_SUMS)]  checksums of the later buckets; only when n > INLINE_SUMS
                 (> ~8 GB at the default bucket size)
    4. buckets   1..n-1 in order

  streamed (flags FLAG_TRAILER) -- `send_async(named)`: bucket k goes out as soon as the caller's
  snapshot has filled it and taken its checksum, while later buckets are still being gathered/copied:
    1. control   the same fixed-size message, header only (no checksums inline)
    2. buckets   0..n-1 in order, each posted the moment it is packed
    3. trailer   int64[TRAILER_HEAD + 2n]: TRAILER_MAGIC, status (OK | ABORTED), version, n_buckets, then
                 (s1, s2) of every bucket. Receivers checksum bucket k as it lands (overlapped with later
                 buckets) and compare when the trailer arrives; ABORTED (the caller's snapshot failed after
                 the header went out, e.g. a wrong tensor) makes them discard the version, in step.
    Why not a 16-byte checksum trailer inside each bucket: a tensor split over several buckets would stop
    being one contiguous range, so the receiver could no longer hand it to the engine as a view. One small
    message per sync instead costs one collective (~1 ms here) and keeps the flat layout unchanged.

A stream ends with a control message of kind STOP, followed by bucket 0 once a WEIGHTS sync was sent.
The header travels in one fixed-size control message: every collective costs a wake-up of
the gloo threads on every rank (0.4-7 ms each on this loaded 2-core machine), and its fixed size means
a receiver never posts a layout-dependent size before it has validated a header (magic, layout hash,
bucket count, size, algorithm, flags, monotone version), so a mismatch is a named error, never a
size-mismatched collective. After the first validated header the layout is fixed for the stream, so
receivers post bucket 0 together with the control message and the header's round trip (one wake-up of
every rank) overlaps bucket 0's transfer instead of delaying it. `control_words(n)` words hold header
+ all checksums contiguously: checksum k sits at words HEADER_WORDS + 2k, +1 (`sum_slice(k)`), whether it
travels inline or in the overflow.

`wait_work` is the only way this package waits on a collective: the wait is cut into slices so a stop
request is noticed, and the deadline raises errors.WaitTimeout naming rank, role, version, bucket and
what was awaited. It never busy-spins: gloo's wait blocks on a condition variable; for other backends
`is_completed()` is polled with a sleeping back-off.
"""

from __future__ import annotations

import datetime
import threading
import time
from dataclasses import dataclass

from asyncflow_hpc.weights.checksum import ALGORITHMS
from asyncflow_hpc.weights.errors import LayoutMismatchError, VersionError, WaitTimeout, WeightSyncError

MAGIC = 0x415346_57474854  # "ASF" "WGHT"
HEADER_WORDS = 8
CONTROL_WORDS = 512  # 4 KiB: the header and the checksums of up to INLINE_SUMS buckets
INLINE_SUMS = (CONTROL_WORDS - HEADER_WORDS) // 2
KIND_WEIGHTS = 1
KIND_STOP = 2
FLAG_TRAILER = 1  # header flags: the checksums follow the last bucket in a trailer message (streamed send)
TRAILER_MAGIC = 0x415346_53554D53  # "ASF" "SUMS"
TRAILER_HEAD = 4  # TRAILER_MAGIC, status, version, n_buckets
STATUS_OK = 0
STATUS_ABORTED = 1  # the sender's snapshot failed after the header went out: discard this version
WAIT_SLICE_S = 0.5
MIN_SLICE_S = 0.01
SLICE_TIMEOUT_MESSAGE = "Operation timed out!"  # what c10d's Work.wait(timeout) raises when a slice ends


@dataclass(frozen=True)
class Header:
    kind: int
    version: int
    layout_hash: int
    n_buckets: int
    total_bytes: int
    algorithm: int
    flags: int = 0  # FLAG_TRAILER: streamed, checksums in the trailer after the last bucket

    def encode(self) -> list[int]:
        return [MAGIC, self.kind, self.version, self.layout_hash, self.n_buckets, self.total_bytes,
                self.algorithm, self.flags]


def control_words(n_buckets: int) -> int:
    """Words of header + checksums of `n_buckets` buckets: the control message plus any overflow."""
    return CONTROL_WORDS + 2 * max(0, n_buckets - INLINE_SUMS)


def sum_slice(k: int) -> slice:
    """Where bucket k's (s1, s2) live in the control words."""
    return slice(HEADER_WORDS + 2 * k, HEADER_WORDS + 2 * k + 2)


def decode_header(words: list[int]) -> Header:
    if len(words) < HEADER_WORDS:
        raise ValueError(f"header has {len(words)} words, expected {HEADER_WORDS}")
    words = words[:HEADER_WORDS]
    kind = words[1] if words[0] == MAGIC else -1  # a bad magic is reported as a garbled header
    return Header(kind=kind, version=words[2], layout_hash=words[3], n_buckets=words[4],
                  total_bytes=words[5], algorithm=words[6], flags=words[7])


def trailer_words(n_buckets: int) -> int:
    """Words of the trailer of a streamed sync: its head plus (s1, s2) of every bucket."""
    return TRAILER_HEAD + 2 * n_buckets


def encode_trailer_head(status: int, version: int, n_buckets: int) -> list[int]:
    return [TRAILER_MAGIC, status, version, n_buckets]


def check_trailer(words: list[int], *, version: int, n_buckets: int, rank: int | None, role: str | None,
                  src: int) -> int:
    """The status (STATUS_OK | STATUS_ABORTED) of a trailer that belongs to `version`; else a named error."""
    if len(words) < TRAILER_HEAD or words[0] != TRAILER_MAGIC or words[1] not in (STATUS_OK, STATUS_ABORTED) \
            or words[2] != version or words[3] != n_buckets:
        raise WeightSyncError(f"garbled checksum trailer for weight version {version} from trainer leader rank "
                              f"{src} (got {words[:TRAILER_HEAD]}): sender and receiver are out of step on the "
                              "weight group; check that no other code issues collectives on it",
                              rank=rank, role=role, version=version)
    return words[1]


def check_header(h: Header, *, layout_hash: int, n_buckets: int, total_bytes: int, algorithm: str,
                 newest_version: int, rank: int | None, role: str | None, src: int) -> None:
    """Raise a named error unless `h` announces a newer version of exactly this layout."""
    where = f"from trainer leader rank {src}"
    if h.kind not in (KIND_WEIGHTS, KIND_STOP):
        raise WeightSyncError(f"garbled weight header {where} (bad magic or kind {h.kind}): sender and "
                              "receiver are out of step on the weight group; check that no other code "
                              "issues collectives on it", rank=rank, role=role)
    if h.kind == KIND_STOP:
        return
    if h.flags not in (0, FLAG_TRAILER):
        raise WeightSyncError(f"garbled weight header {where} (unknown flags {h.flags:#x}): sender and receiver "
                              "run different versions of asyncflow_hpc.weights", rank=rank, role=role,
                              version=h.version)
    if h.layout_hash != layout_hash or h.n_buckets != n_buckets or h.total_bytes != total_bytes:
        raise LayoutMismatchError(
            f"weight layout mismatch for version {h.version} {where}: sender has {h.n_buckets} buckets, "
            f"{h.total_bytes} bytes, hash {h.layout_hash:#x}; this rank planned {n_buckets} buckets, "
            f"{total_bytes} bytes, hash {layout_hash:#x}. Both sides must plan from the same named "
            "tensors (names, shapes, dtypes, order) and the same weights.bucket_mb/large_tensors",
            rank=rank, role=role, version=h.version)
    if h.algorithm != ALGORITHMS[algorithm]:
        names = {v: k for k, v in ALGORITHMS.items()}
        raise LayoutMismatchError(
            f"checksum algorithm mismatch for version {h.version} {where}: sender uses "
            f"{names.get(h.algorithm, h.algorithm)!r}, this rank {algorithm!r} (weights.checksum)",
            rank=rank, role=role, version=h.version)
    if h.version <= newest_version:
        raise VersionError(f"weight version {h.version} {where} is not newer than version {newest_version} "
                           "already staged/applied on this rank (versions must increase)",
                           rank=rank, role=role, version=h.version)


class Stopped(Exception):
    """Internal: a wait noticed a stop request (not an error the user sees)."""


def wait_work(work, *, timeout_s: float, what: str, rank: int | None, role: str | None,
              version: int | None = None, bucket: int | None = None, backend: str = "gloo",
              stop: threading.Event | None = None) -> None:
    """Wait for a torch.distributed Work until `timeout_s`, else raise WaitTimeout naming everything."""
    deadline = time.monotonic() + timeout_s
    pause = 0.0005
    while True:
        left = deadline - time.monotonic()
        if stop is not None and stop.is_set():
            raise Stopped()
        if left <= 0:
            tag = ", ".join(([f"version {version}"] if version is not None else []) +
                            ([f"bucket {bucket}"] if bucket is not None else []))
            raise WaitTimeout(f"weight sync timed out after {timeout_s:.1f} s waiting for {what}"
                              f"{f' ({tag})' if tag else ''}; "
                              "the peer rank may have died, hung, or never called the matching send/receive "
                              "(raise weights.timeout_s / weights.version_wait_s if it is just slow)",
                              rank=rank, role=role)
        try:
            if backend == "gloo":
                # Blocks on a condition variable; raises "timed out" when the slice ends. c10d rounds the
                # timeout to whole milliseconds and 0 ms means "no timeout": never pass less than 10 ms.
                if work.wait(timeout=datetime.timedelta(seconds=max(MIN_SLICE_S, min(left, WAIT_SLICE_S)))):
                    return
                if work.is_completed():
                    return
            else:
                if work.is_completed():
                    work.wait()
                    return
                time.sleep(min(pause, left))
                pause = min(pause * 2, 0.005)
        except RuntimeError as exc:
            if backend == "gloo" and str(exc).strip() == SLICE_TIMEOUT_MESSAGE:
                continue  # only our slice ended; the collective is still pending
            raise WeightSyncError(f"weight sync collective failed while waiting for {what} (version {version}, "
                                  f"bucket {bucket}): {str(exc).splitlines()[0] if str(exc) else exc!r}",
                                  rank=rank, role=role, version=version, bucket=bucket) from exc


def pipeline(n: int, post, finish, depth: int) -> None:
    """Call post(k) -> work for k = 0..n-1 in order with at most `depth` in flight; finish(k, work) in order.

    Every rank posts the same collectives in the same order; finishing k while k+1.. are already in
    flight keeps the link busy during the per-bucket checksum and copies.
    """
    from collections import deque

    inflight: deque = deque()
    for k in range(n):
        if len(inflight) >= max(1, depth):
            j, w = inflight.popleft()
            finish(j, w)
        inflight.append((k, post(k)))
    while inflight:
        j, w = inflight.popleft()
        finish(j, w)
