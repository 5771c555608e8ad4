"""In-process twin of the weight broadcast: one sender and any number of receivers as threads of one process.

    link = LocalWeightLink()
    sender, rx = link.sender(), link.receiver()        # the WeightSender / WeightReceiver calls the workflow uses
    sender.send(model.named_parameters(), version=1)   # a snapshot (copies): the caller may train on at once
    rx.wait_staged(1); rx.swap(engine.load_weights)    # the engine loads version 1
    sender.close()                                     # receivers' `running` turns False

The semantics the workflow relies on are the real ones (weights/sender.py, receiver.py): versions strictly
increase, a receiver stages only the newest version, `poll()` names a staged version not yet applied,
`swap(fn)` applies it with fn(named, version), `wait_staged` raises a named WaitTimeout. No bytes, buckets
or checksums: for fast tests of the roles (tests/unit/workflow/test_roles_inprocess.py), never for a job.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterable

from asyncflow_hpc.weights.errors import VersionError, WaitTimeout, WeightSyncError


class LocalWeightLink:
    def __init__(self, timeout_s: float = 60.0):
        self.timeout_s = timeout_s
        self._cv = threading.Condition()
        self._version: int | None = None
        self._named: list[tuple[str, Any]] = []
        self._closed = False
        self.sends = 0

    def sender(self) -> "LocalSender":
        return LocalSender(self)

    def receiver(self) -> "LocalReceiver":
        return LocalReceiver(self)

    def _publish(self, named: Iterable[tuple[str, Any]], version: int) -> None:
        snap = [(n, t.detach().clone()) for n, t in named]  # taken now: the trainer may change its weights
        with self._cv:
            if self._closed:
                raise VersionError("send after close()", version=version)
            if self._version is not None and version <= self._version:
                raise VersionError(f"weight version {version} is not newer than the last one sent ({self._version})",
                                   version=version)
            self._version, self._named = version, snap
            self.sends += 1
            self._cv.notify_all()


class _Done:
    def __init__(self, version: int):
        self.version = version

    def wait(self, timeout_s: float | None = None) -> "_Done":
        return self

    def done(self) -> bool:
        return True


class LocalSender:
    def __init__(self, link: LocalWeightLink):
        self.link = link

    def send(self, named: Iterable[tuple[str, Any]], version: int) -> _Done:
        self.link._publish(named, version)
        return _Done(version)

    send_async = send

    def close(self) -> None:
        with self.link._cv:
            self.link._closed = True
            self.link._cv.notify_all()


class LocalReceiver:
    def __init__(self, link: LocalWeightLink):
        self.link = link
        self.applied: int | None = None

    def start(self) -> None:
        """Nothing to start: the link holds the newest version."""

    def take_recv_spans(self) -> list:
        """Nothing is received over a wire here."""
        return []

    def poll(self) -> int | None:
        v = self.link._version
        return v if v is not None and (self.applied is None or v > self.applied) else None

    def wait_staged(self, min_version: int, timeout_s: float | None = None) -> int:
        limit = self.link.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + limit
        with self.link._cv:
            while self.link._version is None or self.link._version < min_version:
                if self.link._closed:
                    raise WeightSyncError(f"the sender closed the weight link before version {min_version} "
                                          f"arrived (newest {self.link._version})", version=min_version)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeout(f"timed out after {limit:.1f} s waiting for weight version >= {min_version} "
                                      f"(newest {self.link._version})")
                self.link._cv.wait(min(left, 0.5))
            return self.link._version

    def swap(self, apply_fn: Callable[[list, int], object]) -> int | None:
        with self.link._cv:
            v, named = self.link._version, self.link._named
        if v is None or (self.applied is not None and v <= self.applied):
            return None
        apply_fn(named, v)
        self.applied = v
        return v

    @property
    def running(self) -> bool:
        return not self.link._closed

    def close(self, timeout_s: float = 10.0) -> None:
        """Nothing to join."""
