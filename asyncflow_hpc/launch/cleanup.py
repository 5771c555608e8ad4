"""Job-scoped temporary files: find what this job's processes hold, remove what an aborted job left.

    temps = JobTemps()          # in the launcher (`asyncflow-hpc run`), after starting the MPI child
    temps.start()               # a sleeping thread notes the job's files while its processes live
    ...
    temps.stop(); temps.clean() # on every exit path: remove the noted files that are still there

A job killed before MPI_Finalize leaves MPICH's shared-memory segments (/dev/shm/mpich_shm_*) and hydra's
topology file (/tmp/hydra_hwloc_xmlfile_*); other jobs on the host use the same names. Ownership is
proved, never guessed from names or times: a file is this job's only if a process descending from this
launcher had it mapped or open. A normal exit removes them itself (nothing is left to clean).
"""

from __future__ import annotations

import os
import threading
from typing import Iterable

PATTERNS = ("/dev/shm/mpich_shm_", "/tmp/hydra_hwloc_xmlfile_")


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (through /proc/<pid>/task/*/children; hydra's proxies setsid but stay
    children of mpiexec)."""
    out, todo = [], [pid]
    while todo:
        cur = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{cur}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{cur}/task/{t}/children", encoding="ascii") as fh:
                    kids = [int(x) for x in fh.read().split()]
            except (OSError, ValueError):
                continue
            out.extend(kids)
            todo.extend(kids)
    return out


def held_files(pids: Iterable[int], patterns: tuple[str, ...] = PATTERNS) -> set[str]:
    """Paths matching `patterns` that these processes have mapped (maps) or open (fd)."""
    found: set[str] = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    if "/dev/shm/" in line or "/tmp/" in line:
                        path = line.rstrip("\n").split(None, 5)[-1]
                        if path.startswith(patterns) and not path.endswith("(deleted)"):
                            found.add(path)
        except OSError:
            pass
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                path = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if path.startswith(patterns) and not path.endswith("(deleted)"):
                found.add(path)
    return found


class JobTemps:
    """The temporary files of the job below `root_pid` (default: this launcher)."""

    def __init__(self, root_pid: int | None = None, interval_s: float = 1.0):
        self.root = root_pid or os.getpid()
        self.interval = interval_s
        self.paths: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def scan(self) -> set[str]:
        self.paths |= held_files(descendants(self.root))
        return self.paths

    def start(self) -> "JobTemps":
        if os.path.isdir("/proc"):
            self._thread = threading.Thread(target=self._loop, name="job-temps", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.scan()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def clean(self) -> list[str]:
        """Remove the noted files that are still there and that no process of this job still holds."""
        still = held_files(descendants(self.root))
        gone = []
        for path in sorted(self.paths - still):
            try:
                os.remove(path)
                gone.append(path)
            except FileNotFoundError:
                pass  # removed by the job itself (MPI_Finalize, hydra's own clean-up)
            except OSError:
                pass  # not ours to remove after all (permissions): leave it
        return gone
