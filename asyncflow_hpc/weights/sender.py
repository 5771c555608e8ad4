"""Trainer-leader side of the weight sync: snapshot full weights into buckets, broadcast them in the background.

    plan = plan_for(model.named_parameters(), cfg)           # the same plan on every rank of the group
    sender = WeightSender(comms.weight_group, plan, src=leader, rank=rank, cfg=cfg)
    handle = sender.send_async(model.named_parameters(), version=step + 1)   # returns after the snapshot
    ... keep training ...
    handle.wait()                                            # SendStats; raises WaitTimeout/WeightSyncError
    sender.close()                                           # tells receivers the run is over

Threading rule: one background thread per sender owns the weight group while a send is in flight;
`send_async` first waits for the previous send, and no other code may issue collectives on the weight
group meanwhile (other groups and MPI are fine). The snapshot (one copy of the weights into the host
buffer) runs in the caller's thread, so the caller may change the weights as soon as `send_async`
returns; each bucket's checksum is taken as soon as the bucket is full, before it goes on the wire.

Two forms on the wire (see wire.py):
- streamed, `send_async(named, v)`: the background thread starts first and posts bucket k the moment
  the caller's snapshot has filled it (a per-bucket ready count) and the thread has checksummed it, so
  the copy -- and, from a sharded trainer, the gather -- of bucket k+1 overlaps the checksum and
  broadcast of bucket k. The checksums follow the last bucket in a trailer. If the caller's iterator
  fails after the header went out, the remaining buckets and a trailer marked ABORTED still go out
  (receivers discard the version, the group stays in step) and send_async raises the error.
- inline, `pack(named)` then `send_async(None, v)`: the snapshot is complete before the send, so the
  checksums travel inside the control message, as before: one collective fewer.
After a sync has been sent, close() sends STOP followed by bucket 0 (receivers that know the layout
have bucket 0 posted already).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Iterable

from asyncflow_hpc.topology.pg import group_backend, group_broadcast
from asyncflow_hpc.weights.buckets import BucketPlan, check_named, dtype_name
from asyncflow_hpc.weights.checksum import ALGORITHMS, bucket_checksum
from asyncflow_hpc.weights.config import WeightSyncConfig
from asyncflow_hpc.weights.errors import VersionError, WaitTimeout, WeightSyncError
from asyncflow_hpc.weights.flat import FlatBuffer
from asyncflow_hpc.weights.wire import (CONTROL_WORDS, FLAG_TRAILER, HEADER_WORDS, KIND_STOP, KIND_WEIGHTS,
                                        STATUS_ABORTED, STATUS_OK, TRAILER_HEAD, Header, control_words,
                                        encode_trailer_head, pipeline, trailer_words, wait_work)


@dataclass
class SendStats:
    version: int
    nbytes: int
    n_buckets: int
    pack_s: float  # the snapshot in the caller's thread (exposed to the trainer): copy (+ checksums when inline)
    send_s: float  # background thread start to last bucket (and trailer) delivered
    streamed: bool = False  # buckets posted while the snapshot was still being packed (checksum trailer)


class SendHandle:
    """A send in flight: `wait(timeout_s)` returns SendStats or raises the send's error."""

    def __init__(self, version: int, limit_s: float, rank: int, role: str):
        self.version = version
        self.stats: SendStats | None = None
        self.error: BaseException | None = None
        self._limit_s, self._rank, self._role = limit_s, rank, role
        self._thread: threading.Thread | None = None
        self._caller_error: BaseException | None = None  # already raised by send_async (failed snapshot)

    def done(self) -> bool:
        return self._thread is None or not self._thread.is_alive()

    def wait(self, timeout_s: float | None = None) -> SendStats:
        limit = self._limit_s if timeout_s is None else timeout_s
        if self._thread is not None:
            self._thread.join(limit)
            if self._thread.is_alive():
                raise WaitTimeout(f"timed out after {limit:.1f} s waiting for the background send of weight "
                                  f"version {self.version} to finish", rank=self._rank, role=self._role)
        if self.error is not None:
            raise self.error
        assert self.stats is not None
        return self.stats


class WeightSender:
    """Broadcasts full weights from `src` (this rank) to the rest of `group`, bucket by bucket."""

    def __init__(self, group, plan: BucketPlan, *, src: int, rank: int, role: str = "trainer",
                 cfg: WeightSyncConfig | None = None, comm_device: str = "cpu", backend: str | None = None):
        import torch

        if src != rank:
            raise ValueError(f"WeightSender runs on the source rank {src}, not on rank {rank}")
        self.group, self.plan, self.src, self.rank, self.role = group, plan, src, rank, role
        self.cfg = cfg or WeightSyncConfig()
        self.backend = backend or group_backend(group)
        self.flat = FlatBuffer(plan, "cpu", pin=comm_device != "cpu")
        # Header + checksums in one int64 buffer: words [0, CONTROL_WORDS) travel as the one control
        # message of a sync, the rest (only for very many buckets) as its overflow.
        self.control = torch.zeros(control_words(len(plan.buckets)), dtype=torch.int64)
        self.checksums = self.control[HEADER_WORDS: HEADER_WORDS + 2 * len(plan.buckets)]
        self.comm_device = comm_device
        biggest = max((b.nbytes for b in plan.buckets), default=0)
        # Off the host (NCCL/HCCL) buckets go through two device buffers; on CPU they are sent in place.
        self._dev = ([torch.empty(biggest, dtype=torch.uint8, device=comm_device) for _ in range(2)]
                     if comm_device != "cpu" else None)
        self._last_version: int | None = None
        self._handle: SendHandle | None = None
        self._corrupt_next: int | None = None
        self._closed = False
        self._packed_s: float | None = None
        self._sent_weights = False

    # -- snapshot -------------------------------------------------------------------------------
    def pack(self, named: Iterable[tuple[str, object]]) -> float:
        """Copy (name, tensor) pairs, in plan order, into the flat buffer and checksum every bucket; the next
        `send_async(None, v)` sends this snapshot with its checksums inline.

        Waits first for a send still in flight: its bytes live in the same buffer.
        """
        import torch

        self._finish_previous()
        t0 = time.perf_counter()
        self._packed_s = None
        sums = self._fill(named)
        if sums:
            self.checksums.copy_(torch.tensor(sums, dtype=torch.int64))
        self._packed_s = time.perf_counter() - t0
        return self._packed_s

    def _fill(self, named: Iterable[tuple[str, object]], on_ready=None, checksum: bool = True) -> list[int]:
        """The snapshot: copy into the flat buffer, checksum each bucket as soon as it is full (its tail is
        still in cache) and call on_ready(k + 1) once bucket k's bytes and checksum are final. Returns
        (s1, s2) per bucket; raises WeightSyncError for tensors that differ from the plan. checksum=False
        (the streamed send): on_ready(k + 1) once the bytes are final; the sending thread checksums bucket k
        while this thread gathers and copies bucket k+1."""
        names = []
        index = {p.name: i for i, p in enumerate(self.plan.tensors)}
        buckets = self.plan.buckets
        sums: list[int] = []

        def complete_upto(filled: int) -> None:
            while len(sums) < 2 * len(buckets) and buckets[len(sums) // 2].end <= filled:
                k = len(sums) // 2
                sums.extend(self._checksum(k) if checksum else (0, 0))
                if on_ready is not None:
                    on_ready(k + 1)

        write_into = getattr(named, "write_into", None)
        if write_into is not None:  # e.g. a GatherStream: full tensors assembled straight into the flat buffer

            def dest(name: str, shape: tuple, dtype) -> object:
                i = index.get(name)
                spec = self.plan.tensors[i].spec if i is not None else None
                if spec is None or tuple(shape) != spec.shape or dtype_name(dtype) != spec.dtype:
                    return None  # yielded as a tensor instead, and reported below
                return self.flat.tensor(i)

            named = write_into(dest)
        for name, tensor in named:
            names.append(name)
            i = index.get(name)
            if i is None:
                continue  # reported below with the whole difference
            if tensor is None:  # written in place by write_into
                if i == len(names) - 1:
                    complete_upto(self.plan.tensors[i + 1].offset if i + 1 < len(self.plan.tensors)
                                  else self.plan.total_bytes)
                continue
            spec = self.plan.tensors[i].spec
            if tuple(tensor.shape) != spec.shape or dtype_name(tensor.dtype) != spec.dtype:
                raise WeightSyncError(f"tensor {name!r} is {dtype_name(tensor.dtype)}{list(tensor.shape)} but the "
                                      f"weight plan says {spec.dtype}{list(spec.shape)}; rebuild the plan "
                                      "from the model being sent", rank=self.rank, role=self.role)
            self.flat.tensor(i).copy_(tensor.detach())
            if i == len(names) - 1:  # in plan order so far: buckets before the next tensor are complete
                complete_upto(self.plan.tensors[i + 1].offset if i + 1 < len(self.plan.tensors)
                              else self.plan.total_bytes)
        diff = check_named(self.plan, names)
        if diff:
            raise WeightSyncError(f"named tensors given to the weight sender differ from the plan: {diff}",
                                  rank=self.rank, role=self.role)
        complete_upto(self.plan.total_bytes)  # a layout without tensors, or trailing empty tensors
        return sums

    def _checksum(self, k: int) -> tuple[int, int]:
        """Bucket k's checksum; the test hook then damages the bucket (AFTER its checksum was taken)."""
        got = bucket_checksum(self.flat.bucket(k), self.cfg.checksum)
        if self._corrupt_next == k:
            b = self.plan.buckets[k]
            self.flat.data[b.start + b.nbytes // 2] ^= 0x5A
            self._corrupt_next = None
        return got

    def inject_corruption(self, bucket: int) -> None:
        """Test hook: flip bits in `bucket` of the next send after its checksum is computed."""
        if not 0 <= bucket < len(self.plan.buckets):
            raise ValueError(f"bucket {bucket} outside 0..{len(self.plan.buckets) - 1}")
        self._corrupt_next = bucket

    # -- sending --------------------------------------------------------------------------------
    def send(self, named: Iterable[tuple[str, object]], version: int) -> SendStats:
        return self.send_async(named, version).wait()

    def send_async(self, named: Iterable[tuple[str, object]] | None, version: int) -> SendHandle:
        """Snapshot now (caller's thread) while a background thread broadcasts each bucket as soon as it is
        packed; returns once the snapshot is complete. One send in flight at a time.

        named=None sends the snapshot taken by the last `pack()` call (pack early, send later; checksums inline).
        """
        if self._closed:
            raise WeightSyncError("send after close()", rank=self.rank, role=self.role, version=version)
        if self._last_version is not None and version <= self._last_version:
            raise VersionError(f"weight version {version} is not newer than the last one sent "
                               f"({self._last_version})", rank=self.rank, role=self.role, version=version)
        self._finish_previous()
        handle = SendHandle(version, self._limit_s(), self.rank, self.role)
        if named is None:
            if self._packed_s is None:
                raise WeightSyncError("send_async(None, ...) without a preceding pack()", rank=self.rank,
                                      role=self.role, version=version)
            pack_s, self._packed_s = self._packed_s, None  # a snapshot is sent once
            self._last_version = version
            handle._thread = threading.Thread(target=self._run, args=(handle, version, pack_s),
                                              name=f"weight-send-v{version}", daemon=True)
            self._handle = handle
            handle._thread.start()
            return handle
        self._packed_s = None
        self._last_version = version
        snap = _Snapshot(len(self.plan.buckets))
        handle._thread = threading.Thread(target=self._run_streamed, args=(handle, version, snap),
                                          name=f"weight-send-v{version}", daemon=True)
        self._handle = handle
        handle._thread.start()
        t0 = time.perf_counter()
        try:
            self._fill(named, on_ready=snap.advance, checksum=False)
        except BaseException as exc:
            handle._caller_error = exc
            snap.finish(time.perf_counter() - t0, failed=exc)
            raise
        snap.finish(time.perf_counter() - t0)
        return handle

    def close(self) -> None:
        """Wait for the last send, then broadcast a STOP header so receiver threads end cleanly."""
        if self._closed:
            return
        self._finish_previous()
        self._closed = True
        self._header(Header(kind=KIND_STOP, version=self._last_version or 0, layout_hash=self.plan.layout_hash,
                            n_buckets=0, total_bytes=0, algorithm=0), what="stop header delivery to rollout ranks")
        if self._sent_weights and self.plan.buckets:
            # Receivers that have seen our layout post bucket 0 together with each control message:
            # complete that collective (its bytes are dropped) so nothing stays pending on the group.
            n0 = self.plan.buckets[0].nbytes
            data = self.flat.bucket(0) if self._dev is None else self._dev[0][:n0]
            self._wait(self._post(data), what="bucket 0 after the stop header", version=self._last_version)

    def _finish_previous(self) -> None:
        if self._handle is not None:
            prev, self._handle = self._handle, None
            try:
                prev.wait()
            except BaseException as exc:
                if exc is not prev._caller_error:  # a failed snapshot was raised by send_async already
                    raise

    def _limit_s(self) -> float:
        return self.cfg.timeout_s * (len(self.plan.buckets) + 2) + 10.0

    def _run(self, handle: SendHandle, version: int, pack_s: float) -> None:
        import torch

        try:
            t0 = time.perf_counter()
            h = Header(kind=KIND_WEIGHTS, version=version, layout_hash=self.plan.layout_hash,
                       n_buckets=len(self.plan.buckets), total_bytes=self.plan.total_bytes,
                       algorithm=ALGORITHMS[self.cfg.checksum])
            self.control[:HEADER_WORDS] = torch.tensor(h.encode(), dtype=torch.int64)
            # One control message (header + checksums), any overflow and (on the host) every bucket are
            # posted at once and awaited in order: no round trip between them. Receivers validate the
            # header before posting anything else.
            control = [(self._post(self._control(self.control[:CONTROL_WORDS])),
                        "header and checksum delivery to rollout ranks")]
            self._sent_weights = True  # from now on receivers may post bucket 0 before the header
            self._send_buckets(version, control)
            handle.stats = SendStats(version=version, nbytes=self.plan.total_bytes, n_buckets=len(self.plan.buckets),
                                     pack_s=pack_s, send_s=time.perf_counter() - t0)
        except BaseException as exc:  # surfaced by handle.wait() in the caller's thread
            handle.error = exc

    def _run_streamed(self, handle: SendHandle, version: int, snap: "_Snapshot") -> None:
        import torch

        try:
            t0 = time.perf_counter()
            n = len(self.plan.buckets)
            # The header waits for bucket 0 (or the end of the snapshot): a snapshot that fails on its first
            # tensors puts nothing on the wire.
            self._wait_snapshot(snap, 0, version)
            if snap.failed is not None and snap.ready == 0:
                handle.error = snap.failed
                return
            h = Header(kind=KIND_WEIGHTS, version=version, layout_hash=self.plan.layout_hash, n_buckets=n,
                       total_bytes=self.plan.total_bytes, algorithm=ALGORITHMS[self.cfg.checksum], flags=FLAG_TRAILER)
            words = torch.zeros(CONTROL_WORDS, dtype=torch.int64)
            words[:HEADER_WORDS] = torch.tensor(h.encode(), dtype=torch.int64)
            control = [(self._post(self._control(words)), "header delivery to rollout ranks")]
            self._sent_weights = True  # from now on receivers may post bucket 0 before the header
            sums: list[int] = []  # taken here, just before each bucket is posted, while the caller packs the next
            self._send_buckets(version, control, snap, sums)
            self._wait_snapshot(snap, n, version)  # the end of the snapshot: every checksum, or a failure
            trailer = torch.zeros(trailer_words(n), dtype=torch.int64)
            failed = snap.failed is not None
            trailer[:TRAILER_HEAD] = torch.tensor(encode_trailer_head(STATUS_ABORTED if failed else STATUS_OK,
                                                                      version, n), dtype=torch.int64)
            if not failed and sums:
                trailer[TRAILER_HEAD:] = torch.tensor(sums, dtype=torch.int64)
            self._wait(self._post(self._control(trailer)), what="checksum trailer delivery to rollout ranks",
                       version=version)
            if failed:
                handle.error = snap.failed
                return
            handle.stats = SendStats(version=version, nbytes=self.plan.total_bytes, n_buckets=n,
                                     pack_s=snap.pack_s, send_s=time.perf_counter() - t0, streamed=True)
        except BaseException as exc:  # surfaced by handle.wait() in the caller's thread
            handle.error = exc

    def _wait_snapshot(self, snap: "_Snapshot", k: int, version: int) -> None:
        """Until bucket k is packed (k = n: the whole snapshot finished) or the snapshot failed."""
        if not snap.wait(k, self.cfg.timeout_s):
            n = len(self.plan.buckets)
            what = f"bucket {k}/{n}" if k < n else "the end"
            raise WaitTimeout(f"weight sync timed out after {self.cfg.timeout_s:.1f} s waiting for the snapshot of "
                              f"{what} of version {version} (the caller's gather/copy of the weights into the "
                              "send buffer stalled or stopped)", rank=self.rank, role=self.role)

    def _control(self, tensor):
        """Small control tensors travel on the comm device off the host (NCCL/HCCL cannot send host memory)."""
        return tensor if self._dev is None else tensor.to(self.comm_device)

    def _header(self, h: Header, *, what: str, version: int | None = None) -> None:
        import torch

        words = torch.zeros(CONTROL_WORDS, dtype=torch.int64)
        words[:HEADER_WORDS] = torch.tensor(h.encode(), dtype=torch.int64)
        work = self._post(self._control(words))
        self._wait(work, what=what, version=version)

    def _post(self, tensor):
        return group_broadcast(self.group, tensor, self.src)

    def _wait(self, work, *, what: str, version: int | None, bucket: int | None = None) -> None:
        wait_work(work, timeout_s=self.cfg.timeout_s, what=what, rank=self.rank, role=self.role,
                  version=version, bucket=bucket, backend=self.backend)

    def _send_buckets(self, version: int, control: list, snap: "_Snapshot | None" = None,
                      sums: list[int] | None = None) -> None:
        n = len(self.plan.buckets)

        def wait_control() -> None:
            for work, what in control:
                self._wait(work, what=what, version=version)
            control.clear()

        def post(k: int):
            if snap is not None:  # streamed: bucket k goes out as soon as it is packed (a failed snapshot
                self._wait_snapshot(snap, k, version)  # still sends every bucket: receivers stay in step)
                if snap.failed is None or snap.ready > k:
                    sums.extend(self._checksum(k))
            if self._dev is None:
                work = self._post(self.flat.bucket(k))
            else:
                buf = self._dev[k % 2][: self.plan.buckets[k].nbytes]
                buf.copy_(self.flat.bucket(k), non_blocking=True)
                work = self._post(buf)
            if k == 0 and snap is None and self.control.numel() > CONTROL_WORDS:  # inline: overflow after bucket 0
                control.append((self._post(self._control(self.control[CONTROL_WORDS:])),
                                "overflow checksum delivery to rollout ranks"))
            return work

        def finish(k: int, work) -> None:
            wait_control()
            self._wait(work, what=f"delivery of bucket {k}/{n} to rollout ranks", version=version, bucket=k)

        if self._dev is not None:
            wait_control()
        pipeline(n, post, finish, depth=n if self._dev is None else 2)
        wait_control()  # a layout without buckets


class _Snapshot:
    """A snapshot being packed by the caller while the background thread streams it: `ready` buckets
    hold their final bytes; `done` once the fill ended (`failed` set if it raised)."""

    def __init__(self, n_buckets: int):
        self.n = n_buckets
        self.ready = 0
        self.done = False
        self.failed: BaseException | None = None
        self.pack_s = 0.0
        self._cond = threading.Condition()

    def advance(self, ready: int) -> None:
        with self._cond:
            self.ready = ready
            self._cond.notify_all()

    def finish(self, pack_s: float, failed: BaseException | None = None) -> None:
        with self._cond:
            self.pack_s, self.failed, self.done = pack_s, failed, True
            if failed is None:
                self.ready = self.n
            self._cond.notify_all()

    def wait(self, k: int, timeout_s: float) -> bool:
        """True once bucket k is ready (k = n: the snapshot is done) or the snapshot ended; False at the timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self.done or (k < self.n and self.ready > k), timeout_s)
