"""Rollout side of the weight sync: receive version v+1 in the background, swap it in at a generation boundary.

    receiver = WeightReceiver(comms.weight_group, plan, src=leader, rank=rank, cfg=cfg, last_version=0)
    receiver.start()                        # background thread: control (header + checksums) -> buckets -> staged
    ... generate with the current weights ...
    if receiver.poll() is not None:         # a newer version is staged (raises the thread's error, if any)
        receiver.swap(engine.load_weights)  # load_weights(named_tensors, version); the only exposed cost
    receiver.close()

Deferred update: the thread writes into a host staging buffer the engine does not read, checksums
each bucket while later buckets are still arriving (compared at once when the checksums came inline
in the control message, or when the trailer of a streamed sync arrives), then marks the version
staged. A streamed sync whose trailer says ABORTED (the sender's snapshot failed) is discarded and
counted in `aborted_versions`; the thread keeps receiving. Once it
has validated one header of the sender, it posts bucket 0 together with each control message (into a
staging buffer that is neither staged nor being swapped), so the header's round trip is hidden behind
bucket 0's transfer; the sender's close() follows STOP with bucket 0's bytes, which are dropped. With
two staging buffers (weights.staging_buffers=2) version v+2 can arrive while v+1 waits for its swap;
the newest staged version wins and the skipped one is counted. Tensors handed to `apply_fn` are views
into the staging buffer, valid only during the call: the engine must copy them (load_weights does).

Threading rule: while the thread runs it is the only user of the weight group on this rank; the main
thread only touches the staging buffers through poll/swap/wait_staged (a lock guards them).
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Callable

from asyncflow_hpc.topology.pg import group_backend, group_broadcast
from asyncflow_hpc.weights.buckets import BucketPlan
from asyncflow_hpc.weights.checksum import bucket_checksum
from asyncflow_hpc.weights.config import WeightSyncConfig
from asyncflow_hpc.weights.errors import ChecksumError, WaitTimeout, WeightSyncError
from asyncflow_hpc.weights.flat import FlatBuffer
from asyncflow_hpc.weights.wire import (CONTROL_WORDS, FLAG_TRAILER, HEADER_WORDS, KIND_STOP, STATUS_ABORTED,
                                        TRAILER_HEAD, Stopped, check_header, check_trailer, control_words,
                                        decode_header, pipeline, trailer_words, wait_work)

_ABORTED = object()  # _receive_one: the sender's snapshot failed mid-stream; nothing staged, keep receiving


@dataclass
class RecvStats:
    version: int
    nbytes: int
    recv_s: float  # header received -> last bucket verified (background)
    verify_s: float  # checksum time inside recv_s (overlapped with later buckets)
    t_header: float = 0.0  # time.monotonic() when the header arrived
    t_staged: float = 0.0  # time.monotonic() when the version was staged
    swap_s: float = 0.0  # apply_fn time (the exposed cost)


class WeightReceiver:
    """Receives weights broadcast by `src` over `group` into host staging buffers."""

    def __init__(self, group, plan: BucketPlan, *, src: int, rank: int, role: str = "rollout",
                 cfg: WeightSyncConfig | None = None, last_version: int = -1, comm_device: str = "cpu",
                 backend: str | None = None):
        import torch

        self.group, self.plan, self.src, self.rank, self.role = group, plan, src, rank, role
        self.cfg = cfg or WeightSyncConfig()
        self.backend = backend or group_backend(group)
        self.comm_device = comm_device
        self.buffers = [FlatBuffer(plan, "cpu", pin=comm_device != "cpu") for _ in range(self.cfg.staging_buffers)]
        biggest = max((b.nbytes for b in plan.buckets), default=0)
        self._dev = ([torch.empty(biggest, dtype=torch.uint8, device=comm_device) for _ in range(2)]
                     if comm_device != "cpu" else None)
        self.applied_version = last_version
        self.skipped_versions = 0
        self.aborted_versions = 0  # streamed syncs the sender aborted (its snapshot failed): never staged
        self.stats: list[RecvStats] = []
        self.recv_spans: collections.deque = collections.deque()  # filled by the thread, drained by take_recv_spans
        self._staged: tuple[int, int] | None = None  # (buffer index, version)
        self._in_use: int | None = None  # buffer being swapped
        self._newest = last_version  # newest version staged or applied
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._ended = False  # the sender sent STOP
        self._pending: dict[int, RecvStats] = {}
        self._layout_ok = False  # a header of this sender was validated: bucket 0 may be posted early

    # -- main-thread API ------------------------------------------------------------------------
    def start(self) -> None:
        """Start the background thread that receives every version until the sender's close()."""
        if self._thread is not None:
            raise RuntimeError("WeightReceiver.start() called twice")
        self._thread = threading.Thread(target=self._loop, name=f"weight-recv-r{self.rank}", daemon=True)
        self._thread.start()

    def poll(self) -> int | None:
        """The newest staged (received, verified, not yet swapped) version, or None. Raises the thread's error."""
        with self._cond:
            self._raise_error()
            return self._staged[1] if self._staged else None

    def wait_staged(self, min_version: int, timeout_s: float | None = None) -> int:
        """Block until a version >= min_version is staged (or applied); for a rollout the staleness bound stops."""
        limit = self.cfg.version_wait_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + limit
        with self._cond:
            while True:
                self._raise_error()
                if self._staged and self._staged[1] >= min_version:
                    return self._staged[1]
                if self.applied_version >= min_version:
                    return self.applied_version
                if self._ended:
                    raise WeightSyncError(f"the trainer leader (rank {self.src}) closed the weight sync before "
                                          f"version {min_version} arrived", rank=self.rank, role=self.role,
                                          version=min_version)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeout(f"timed out after {limit:.1f} s waiting for weight version >= {min_version} "
                                      f"from trainer leader rank {self.src} (newest here: {self._newest})",
                                      rank=self.rank, role=self.role)
                self._cond.wait(min(left, 1.0))

    def swap(self, apply_fn: Callable[[list, int], object]) -> int | None:
        """At a generation boundary: hand the staged version to apply_fn(named_tensors, version)."""
        with self._cond:
            self._raise_error()
            if self._staged is None:
                return None
            idx, version = self._staged
            self._staged, self._in_use = None, idx
        t0 = time.perf_counter()
        try:
            apply_fn(self.buffers[idx].named(), version)
        finally:
            with self._cond:
                self._in_use = None
                self._cond.notify_all()
        swap_s = time.perf_counter() - t0
        with self._cond:
            self.applied_version = version
            st = self._pending.pop(version, None)
            if st is not None:
                st.swap_s = swap_s
                self.stats.append(st)
        return version

    def take_recv_spans(self) -> list[tuple[int, float, float, int]]:
        """(version, perf_counter start, end, thread ident) of every version received since the last call."""
        out = []
        while self.recv_spans:
            out.append(self.recv_spans.popleft())
        return out

    def receive(self) -> int | None:
        """Receive one version in the caller's thread (no background thread); None when the sender closed."""
        if self._thread is not None:
            raise RuntimeError("receive() while the background thread runs; use poll()/wait_staged()")
        while True:
            got = self._receive_one()
            if got is not _ABORTED:
                return got

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the thread (it ends by itself after the sender's close()); pending receives are abandoned."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    # -- background thread ----------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                if self._receive_one() is None:
                    break
        except Stopped:
            pass
        except BaseException as exc:  # surfaced in the main thread by poll/swap/wait_staged
            with self._cond:
                self._error = exc
                self._cond.notify_all()

    def _receive_one(self) -> int | None:
        import torch

        # One fixed-size control message (header + inline checksums). Nothing whose size depends on the
        # layout is posted before a header of this sender has been validated; after that the layout is
        # fixed for the rest of the stream (the next message is the same layout, or STOP followed by
        # bucket 0's bytes), so bucket 0 is posted together with the control message and the header's
        # turnaround hides behind bucket 0's transfer.
        n = len(self.plan.buckets)
        words = torch.zeros(control_words(n), dtype=torch.int64)
        ctl_t, ctl_w = self._post_control(words[:CONTROL_WORDS])
        early = self._post_early() if self._layout_ok and n else None
        wait_work(ctl_w, timeout_s=self.cfg.version_wait_s, rank=self.rank, role=self.role, backend=self.backend,
                  what=f"the header of the next weight version (> {self._newest}) from trainer leader rank "
                       f"{self.src}", stop=self._stop)
        if self._dev is not None:
            words[:CONTROL_WORDS].copy_(ctl_t)
        h = decode_header(words[:HEADER_WORDS].tolist())
        check_header(h, layout_hash=self.plan.layout_hash, n_buckets=n, total_bytes=self.plan.total_bytes,
                     algorithm=self.cfg.checksum, newest_version=self._newest, rank=self.rank, role=self.role,
                     src=self.src)
        if h.kind == KIND_STOP:
            self._drain_after_stop(early, h.version)
            with self._cond:
                self._ended = True
                self._cond.notify_all()
            return None
        self._layout_ok = True
        t0, t_header = time.perf_counter(), time.monotonic()
        idx = early[0] if early is not None and early[0] is not None else self._free_buffer(h.version)
        verify_s = self._receive_buckets(self.buffers[idx], words, h.version, None if early is None else early[1],
                                         trailer=bool(h.flags & FLAG_TRAILER))
        if verify_s is None:  # the sender aborted this version: nothing staged, the group is in step
            with self._cond:
                self.aborted_versions += 1
            return _ABORTED
        t1 = time.perf_counter()
        st = RecvStats(version=h.version, nbytes=self.plan.total_bytes, recv_s=t1 - t0,
                       verify_s=verify_s, t_header=t_header, t_staged=time.monotonic())
        # (version, start, end, thread) for the trace: the caller's thread records it (take_recv_spans), this
        # background thread never touches the recorder.
        self.recv_spans.append((h.version, t0, t1, threading.get_ident()))
        with self._cond:
            if self._staged is not None:
                self.skipped_versions += 1  # the older staged version is never applied
                self._pending.pop(self._staged[1], None)
            self._staged = (idx, h.version)
            self._newest = h.version
            self._pending[h.version] = st
            self._cond.notify_all()
        return h.version

    def _post_early(self) -> tuple[int | None, object] | None:
        """Post bucket 0 before the header: into the device buffer, or a staging buffer that is neither
        staged nor being swapped (the main thread only touches those two). None when there is none free."""
        if self._dev is not None:
            return None, self._bcast(self._dev[0][: self.plan.buckets[0].nbytes])
        with self._cond:
            busy = {self._in_use} | ({self._staged[0]} if self._staged is not None else set())
            free = [i for i in range(len(self.buffers)) if i not in busy]
        if not free:  # one buffer, holding an unswapped version: post bucket 0 after the header
            return None
        return free[0], self._bcast(self.buffers[free[0]].bucket(0))

    def _drain_after_stop(self, early, version: int) -> None:
        """A sender that has sent weights follows STOP with bucket 0 (see _receive_one): receive and drop it."""
        if not self._layout_ok or not self.plan.buckets:
            return
        if early is None:  # not posted early: a scratch buffer, so a staged version stays intact
            import torch

            early = None, self._bcast(torch.empty(self.plan.buckets[0].nbytes, dtype=torch.uint8,
                                                  device=self.comm_device))
        wait_work(early[1], timeout_s=self.cfg.timeout_s, rank=self.rank, role=self.role, backend=self.backend,
                  what=f"bucket 0 after the stop header from trainer leader rank {self.src}", version=version,
                  stop=self._stop)

    def _bcast(self, tensor):
        return group_broadcast(self.group, tensor, self.src)

    def _post_control(self, cpu_tensor):
        t = cpu_tensor if self._dev is None else cpu_tensor.to(self.comm_device)
        return t, self._bcast(t)

    def _free_buffer(self, version: int) -> int:
        """A staging buffer neither staged nor being swapped (waits for a running swap, with a timeout)."""
        deadline = time.monotonic() + self.cfg.timeout_s
        with self._cond:
            while True:
                busy = {self._in_use}
                if self._staged is not None and len(self.buffers) > 1:
                    busy.add(self._staged[0])  # keep the staged version swappable while receiving
                free = [i for i in range(len(self.buffers)) if i not in busy]
                if free:
                    if self._staged is not None and self._staged[0] == free[0]:
                        self._staged = None  # single buffer: overwrite the unswapped version
                        self.skipped_versions += 1
                    return free[0]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeout(f"timed out after {self.cfg.timeout_s:.1f} s waiting for a free staging "
                                      f"buffer for version {version} (a swap did not finish)",
                                      rank=self.rank, role=self.role)
                self._cond.wait(min(left, 1.0))

    def _receive_buckets(self, buf: FlatBuffer, words, version: int, first, trailer: bool = False) -> float | None:
        """Buckets in order (bucket 0 may be in flight already: `first`); the checksum overflow, if any,
        follows bucket 0 on the wire. Bucket k is checksummed while k+1.. are still arriving. trailer=True
        (a streamed sync): the checksums follow the last bucket; None when the sender aborted the version."""
        import torch

        n = len(self.plan.buckets)
        bad: list[int] = []
        verify = [0.0]
        sums: list[int] = []
        got_sums: list[tuple[int, int]] = []  # streamed: computed on arrival, compared with the trailer
        overflow = None
        tail = None  # streamed: (tensor, work) of the trailer, posted right after the last bucket
        if trailer:
            tail_words = torch.zeros(trailer_words(n), dtype=torch.int64)
            if n == 0:
                tail = self._post_control(tail_words)

        def load_sums() -> None:  # once, before the first verify: the overflow (if any) arrives first
            if overflow is not None:
                ovf_t, ovf_w = overflow
                wait_work(ovf_w, timeout_s=self.cfg.timeout_s, rank=self.rank, role=self.role, backend=self.backend,
                          what=f"overflow bucket checksums from trainer leader rank {self.src}", version=version,
                          stop=self._stop)
                if self._dev is not None:
                    words[CONTROL_WORDS:].copy_(ovf_t)
            sums.extend(words[HEADER_WORDS: HEADER_WORDS + 2 * n].tolist())

        def post(k: int):
            nonlocal overflow, tail
            target = buf.bucket(k) if self._dev is None else self._dev[k % 2][: self.plan.buckets[k].nbytes]
            work = first if k == 0 and first is not None else self._bcast(target)
            if k == 0 and not trailer and words.numel() > CONTROL_WORDS:  # very many buckets: the rest of the sums
                overflow = self._post_control(words[CONTROL_WORDS:])
            if trailer and k == n - 1:
                tail = self._post_control(tail_words)
            return work

        def finish(k: int, work) -> None:
            wait_work(work, timeout_s=self.cfg.timeout_s, what=f"bucket {k}/{n} from trainer leader rank {self.src}",
                      rank=self.rank, role=self.role, version=version, bucket=k, backend=self.backend,
                      stop=self._stop)
            if not sums and not trailer:
                load_sums()
            t0 = time.perf_counter()
            data = buf.bucket(k) if self._dev is None else self._dev[k % 2][: self.plan.buckets[k].nbytes]
            got = bucket_checksum(data, self.cfg.checksum)
            if self._dev is not None:
                buf.bucket(k).copy_(data)
            verify[0] += time.perf_counter() - t0
            if trailer:
                got_sums.append(tuple(got))
            elif list(got) != sums[2 * k: 2 * k + 2]:
                bad.append(k)

        # Keep receiving after a bad bucket so sender and receivers stay in step on the group.
        pipeline(n, post, finish, depth=n if self._dev is None else 2)
        if trailer:
            wait_work(tail[1], timeout_s=self.cfg.timeout_s, rank=self.rank, role=self.role, backend=self.backend,
                      what=f"the checksum trailer from trainer leader rank {self.src}", version=version,
                      stop=self._stop)
            if self._dev is not None:
                tail_words.copy_(tail[0])
            head = tail_words[:TRAILER_HEAD].tolist()
            if check_trailer(head, version=version, n_buckets=n, rank=self.rank, role=self.role,
                             src=self.src) == STATUS_ABORTED:
                return None
            sums = tail_words[TRAILER_HEAD:].tolist()
            bad = [k for k, got in enumerate(got_sums) if list(got) != sums[2 * k: 2 * k + 2]]
        if bad:
            b = self.plan.buckets[bad[0]]
            raise ChecksumError(
                f"weight version {version}: bucket {bad[0]} of {n} (bytes {b.start}..{b.end}, tensors "
                f"{', '.join(b.names[:3])}{'...' if len(b.names) > 3 else ''}) failed its checksum"
                f"{f' ({len(bad)} buckets bad: {bad[:8]})' if len(bad) > 1 else ''}; the staged copy is "
                "discarded -- check the interconnect / host memory of this rank and the trainer leader",
                rank=self.rank, role=self.role, version=version, bucket=bad[0])
        return verify[0]
