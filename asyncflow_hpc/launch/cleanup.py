"""Job-scoped temporary files: find what this job's processes hold, remove what an aborted job left.

    key = job_key()                                     # slurm-<SLURM_JOB_ID> (kept across requeues) or local-<pid>
    clean_stale(run_dir, key)                           # start-up, before MPI_Init: what a killed run of this job left
    temps = JobTemps(record=record_path(run_dir, key), heartbeat_dir=hb, tmpdir=job_tmpdir(key), key=key).start()
    ...
    temps.stop(); temps.clean()                         # on every exit path: remove the noted files still there

A job killed before MPI_Finalize leaves MPICH's shared-memory segments (/dev/shm/mpich_shm_<hash>_N, the
hash derived from the PMI job name: a requeued Slurm job, same id and step, maps the same name and hangs in
MPI_Init on the stale contents) and hydra's topology file (/tmp/hydra_hwloc_xmlfile_*); vLLM leaves its
rendezvous files (vllm_dist_*) and ipc sockets in the temp folder. Other jobs on the host use the same
names. Ownership is proved, never guessed from names or times: a file is this job's only if one of its
processes (below this launcher, or a rank whose heartbeat names its pid) had it mapped or open; the noted
names are written to a record in the run dir (`jobtemps/<key>@<host>@<pid>.json`) while the job runs, so a
later start of the same job (a requeue, a restart after kill -9) can remove them before MPI_Init. The ranks'
own temp folder (TMPDIR) is a job-scoped folder removed as a whole. A file that some live process still holds
is never removed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
from typing import Iterable, Mapping

PATTERNS = ("/dev/shm/mpich_shm_", "/tmp/hydra_hwloc_xmlfile_")
ENV_TMPDIR = "ASYNCFLOW_JOB_TMPDIR"  # the job's temp folder (also TMPDIR of the ranks), set by the launcher
_KEY = re.compile(r"^(slurm-[0-9]+|local-[0-9]+)$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


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


def job_key(env: Mapping[str, str] | None = None, pid: int | None = None) -> str:
    """`slurm-<SLURM_JOB_ID>` inside a Slurm job (a requeued job keeps its id), else `local-<launcher pid>`."""
    env = os.environ if env is None else env
    jid = env.get("SLURM_JOB_ID", "")
    return f"slurm-{jid}" if jid.isdigit() else f"local-{pid or os.getpid()}"


def record_path(run_dir: str, key: str, host: str | None = None, pid: int | None = None) -> str:
    """Where launcher `pid` on `host` notes the temp files of job `key`: `<run dir>/jobtemps/<key>@<host>@<pid>.json`
    (one file per launch, so two launches inside one allocation do not share it)."""
    return os.path.join(run_dir, "jobtemps", f"{key}@{host or socket.gethostname()}@{pid or os.getpid()}.json")


def job_tmpdir(key: str, base: str | None = None, pid: int | None = None) -> str:
    """The ranks' temp folder for job `key` started by launcher `pid` (node-local: `$TMPDIR` or /tmp, not the
    shared run dir). Slurm keys get the launcher's pid too: two launches inside one allocation share the key."""
    name = f"asyncflow-job-{key}" if key.startswith("local-") else f"asyncflow-job-{key}-{pid or os.getpid()}"
    return os.path.join(base or tempfile.gettempdir(), name)


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


def _all_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()] if os.path.isdir("/proc") else []


def held_by_anyone(paths: Iterable[str]) -> set[str]:
    """Which of `paths` (files, or folders: anything below them) some live process on this host maps or holds."""
    paths = [p.rstrip("/") for p in paths]
    if not paths:
        return set()
    found: set[str] = set()
    for pid in _all_pids():
        names: list[str] = []
        try:
            with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as fh:
                names += [line.rstrip("\n").split(None, 5)[-1] for line in fh if "/" in line]
        except OSError:
            pass
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    names.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
                except OSError:
                    continue
        except OSError:
            pass
        for name in names:
            for p in paths:
                if name == p or name.startswith(p + "/"):
                    found.add(p)
    return found


def heartbeat_pids(directory: str | None, host: str | None = None) -> list[int]:
    """Pids of the ranks on this host, from their heartbeat files (srun's ranks are not the launcher's children)."""
    if not directory:
        return []
    from asyncflow_hpc.launch.monitor import read_heartbeats

    host = host or socket.gethostname()
    out = []
    for rec in read_heartbeats(directory).values():
        try:
            if rec.get("host") == host:
                out.append(int(rec["pid"]))
        except (KeyError, TypeError, ValueError):
            continue
    return out


def _safe_file(path: object) -> bool:
    """A name this clean-up may remove: one of PATTERNS plus a plain file name, nothing else (the record is a file
    in the run dir, which must not be able to make the launcher delete anything else)."""
    if not isinstance(path, str):
        return False
    for pat in PATTERNS:
        if path.startswith(pat):
            return bool(_NAME.match(path[len(pat):])) and ".." not in path
    return False


def write_record(path: str, rec: dict) -> None:
    """Write the job's temp-file record atomically (temporary file + rename)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(rec, fh)
    os.replace(tmp, path)


def remove_noted(files: Iterable[str], tmpdir: str | None = None) -> list[str]:
    """Remove `files` (names checked against PATTERNS) and the job's temp folder, except what a live process
    still holds. Returns what was removed."""
    files = sorted({f for f in files if _safe_file(f)})
    targets = [f for f in files if os.path.lexists(f)]
    if tmpdir and os.path.isdir(tmpdir):
        targets.append(tmpdir)
    held = held_by_anyone(targets)
    gone = []
    for path in targets:
        if path in held:
            continue
        try:
            if path == tmpdir:
                shutil.rmtree(path)
            else:
                os.remove(path)
            gone.append(path)
        except FileNotFoundError:
            pass  # removed by the job itself (MPI_Finalize, hydra's own clean-up)
        except OSError:
            pass  # not ours to remove after all (permissions): leave it
    return gone


def clean_stale(run_dir: str, key: str, host: str | None = None, *, log=None) -> list[str]:
    """Start-up of job `key` (before MPI_Init): remove what an earlier, killed launch of the same job left on this
    host, as noted in its record(s) under `<run dir>/jobtemps/`.

    A record is stale when its launcher is not running: the same Slurm job id (a requeue), or a local run in the
    same run dir whose launcher pid is gone. The temp folder goes only if it has the name its launcher gave it.
    Files another live process holds are kept (never another job's); a record that cannot be read is reported
    and left alone. Returns the removed paths."""
    host = host or socket.gethostname()
    folder = os.path.join(run_dir, "jobtemps")
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    gone: list[str] = []
    whose: list[str] = []  # key@launcher pid of the killed launches whose files went
    for name in names:
        parts = name.removesuffix(".json").split("@")
        if not name.endswith(".json") or len(parts) != 3 or parts[1] != host or not _KEY.match(parts[0]):
            continue
        rkey = parts[0]
        path = os.path.join(folder, name)
        try:
            with open(path, encoding="utf-8") as fh:
                rec = json.load(fh)
            files, pid = rec["files"], int(rec["pid"])
            if not isinstance(files, list):
                raise TypeError("'files' is not a list")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            if log:
                log(f"asyncflow-hpc: warning: {path}: not a job temp-file record ({type(exc).__name__}: {exc}); "
                    "left alone")
            continue
        if rkey != key and not rkey.startswith("local-"):
            continue  # another Slurm job's record
        if pid == os.getpid() or _launcher_alive(pid, rkey):
            continue  # its launcher still runs (a local run, or a second launch inside one allocation)
        tmpdir = rec.get("tmpdir")
        want = os.path.basename(job_tmpdir(rkey, pid=pid))
        if not (isinstance(tmpdir, str) and os.path.isabs(tmpdir) and os.path.basename(tmpdir) == want
                and not os.path.islink(tmpdir)):
            tmpdir = None  # only a folder with the name this job's launcher gives it
        removed = remove_noted(files, tmpdir)
        gone += removed
        if removed and f"{rkey}@{pid}" not in whose:
            whose.append(f"{rkey}@{pid}")
        if not [f for f in files if _safe_file(f) and os.path.lexists(f)]:
            try:
                os.remove(path)
            except OSError:
                pass
    if gone and log:
        log(f"asyncflow-hpc: removed {len(gone)} temp file(s) left by a killed run of this job ({', '.join(whose)}): "
            + " ".join(gone))
    return gone


def _launcher_alive(pid: int, key: str) -> bool:
    """Whether `pid` is a live launcher of job `key` on this host (a reused pid running something else is not;
    for a Slurm key it must run in that job). Unreadable: assumed alive (nothing is removed)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            if b"asyncflow" not in fh.read():
                return False
        if key.startswith("slurm-"):
            with open(f"/proc/{pid}/environ", "rb") as fh:
                return f"SLURM_JOB_ID={key[6:]}".encode() in fh.read().split(b"\0")
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return True


class JobTemps:
    """The temporary files of the job below `root_pid` (default: this launcher) and of the ranks whose heartbeats
    are in `heartbeat_dir`; noted in `record` (a JSON file) whenever the set grows."""

    def __init__(self, root_pid: int | None = None, interval_s: float = 1.0, *, record: str | None = None,
                 heartbeat_dir: str | None = None, tmpdir: str | None = None, key: str = ""):
        self.root = root_pid or os.getpid()
        self.interval = interval_s
        self.record, self.heartbeat_dir, self.tmpdir, self.key = record, heartbeat_dir, tmpdir, key
        self.paths: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if record:
            self._save()  # the record exists from the start (the temp folder is noted even if nothing else is)

    def scan(self) -> set[str]:
        before = len(self.paths)
        self.paths |= held_files(descendants(self.root) + heartbeat_pids(self.heartbeat_dir))
        if self.record and len(self.paths) != before:
            self._save()
        return self.paths

    def _save(self) -> None:
        rec = {"key": self.key, "host": socket.gethostname(), "pid": self.root, "time": time.time(),
               "tmpdir": self.tmpdir, "files": sorted(self.paths)}
        try:
            write_record(self.record, rec)
        except OSError as exc:
            print(f"asyncflow-hpc: warning: cannot write {self.record}: {exc}", file=sys.stderr, flush=True)

    def start(self) -> "JobTemps":
        if os.path.isdir("/proc"):
            self._thread = threading.Thread(target=self._loop, name="job-temps", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        # Often at first: MPI_Init creates the segments within a second or two of the start.
        waits = [0.1] * 20 + [0.5] * 10
        while not self._stop.wait(waits.pop(0) if waits else self.interval):
            self.scan()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def clean(self) -> list[str]:
        """Remove the noted files that are still there and the job's temp folder, unless a live process still
        holds them; the record goes too once nothing noted is left."""
        gone = remove_noted(self.paths, self.tmpdir)
        if self.record and not [p for p in self.paths if os.path.lexists(p)] and not (
                self.tmpdir and os.path.isdir(self.tmpdir)):
            try:
                os.remove(self.record)
            except OSError:
                pass
        return gone


def drop_own_files() -> list[str]:
    """A rank exiting because its launcher is gone: unlink the job files this process maps (other ranks keep their
    mappings; the names go, so a restart of the same job cannot attach to the stale segment)."""
    gone = []
    for path in held_files([os.getpid()]):
        try:
            os.remove(path)
            gone.append(path)
        except OSError:
            pass
    return gone
