"""Failure detection: ranks write heartbeats; the launcher watches them and the MPI child, and names the culprit.

Rank side (started by the driver when the launcher set ASYNCFLOW_HEARTBEAT_DIR):

    hb = Heartbeat.from_env(rank=3, role="rollout")     # None when not launched by `asyncflow-hpc run`
    hb.activity("generate step=2")                       # cheap: sets a string, a daemon thread writes it
    hb.finish("done") / hb.finish("failed: <one-line error>")

Launcher side (`asyncflow-hpc run`, launch/local.py):

    rc = watch(proc, hb_dir, world_size, cfg.monitor)    # returns the job's exit code; prints ONE error line

A rank that dies (its pid vanished on this host, without a final status), stops beating (frozen:
heartbeat older than monitor.stale_s; 3 x that for a local process that still runs, whose heartbeat
thread may just be starved) or sits in one activity longer than monitor.hang_s makes the
launcher print `asyncflow-hpc: error: rank R (role X) <what happened>; last activity: <A> (<t> s
before)` and kill the whole job. A rank that raised has written its own error into its heartbeat;
the launcher reports that one. The MPI child is started with `-disable-auto-cleanup` on MPICH so that
the dead rank is the only vanished pid when the monitor looks (docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from asyncflow_hpc.launch.config import MonitorConfig  # noqa: F401 (re-exported: its config lives in launch/config)

ENV_DIR = "ASYNCFLOW_HEARTBEAT_DIR"
ENV_INTERVAL = "ASYNCFLOW_HEARTBEAT_S"
ENV_LAUNCHER = "ASYNCFLOW_LAUNCHER"  # "<host>:<pid>" of `asyncflow-hpc run`: ranks end if it is gone


def hb_path(directory: str, rank: int) -> str:
    return os.path.join(directory, f"rank-{rank:05d}.json")


class Heartbeat:
    """This rank's heartbeat file, rewritten (atomically) by a daemon thread every interval."""

    current: "Heartbeat | None" = None  # this process's heartbeat (main._fail writes the error into it)

    def __init__(self, directory: str, *, rank: int, role: str, interval_s: float = 1.0):
        self.path, self.rank, self.role, self.interval = hb_path(directory, rank), rank, role, interval_s
        self.host, self.pid = socket.gethostname(), os.getpid()
        self._act, self._since, self.status = "starting", time.time(), "running"
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one writer at a time: a final status is never replaced by "running"
        os.makedirs(directory, exist_ok=True)
        self._write()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)
        self._thread.start()
        Heartbeat.current = self

    @classmethod
    def from_env(cls, *, rank: int, role: str) -> "Heartbeat | None":
        d = os.environ.get(ENV_DIR)
        if not d:
            return None
        tmp = os.environ.get("ASYNCFLOW_JOB_TMPDIR")
        if tmp:  # the job's temp folder (TMPDIR): made by the launcher on its host, here on every other one
            try:
                os.makedirs(tmp, mode=0o700, exist_ok=True)
            except OSError:
                pass  # tempfile then falls back to /tmp
        return cls(d, rank=rank, role=role, interval_s=float(os.environ.get(ENV_INTERVAL, "1.0")))

    def activity(self, what: str) -> None:
        if what != self._act:
            self._act, self._since = what, time.time()

    def set_role(self, role: str) -> None:
        self.role = role

    def finish(self, status: str) -> bool:
        """'done', 'stopped' or 'failed: <message>': written at once; the thread stops. False if unwritable."""
        self.status = " ".join(status.split())  # one line
        if self.status.startswith("failed"):
            # Peers already dead when this rank failed: then this failure is a consequence (a dead
            # peer breaks the collectives), and the launcher names the dead rank instead.
            beats = read_heartbeats(os.path.dirname(self.path))
            # A peer killed a moment ago may still be exiting (its sockets already closed, which is what made
            # this rank fail, but not yet a zombie): look again for a short while before blaming nobody else.
            deadline = time.monotonic() + DEAD_PEER_GRACE_S
            while True:
                self.dead_peers = sorted(r for r, b in beats.items() if r != self.rank and b.get("host") == self.host
                                         and b.get("status") == "running" and not _alive(int(b.get("pid", 0))))
                if self.dead_peers or time.monotonic() >= deadline:
                    break
                time.sleep(0.02)
        self._stop.set()
        try:
            self._write(final=True)
        except OSError:
            return False
        return True

    def _loop(self) -> None:
        launcher = os.environ.get(ENV_LAUNCHER, "")
        host, _, pid = launcher.rpartition(":")
        watch_pid = int(pid) if pid.isdigit() and host == self.host else 0
        while not self._stop.wait(self.interval):
            try:
                self._write()
            except OSError:
                pass  # a full or vanished disk must not kill the rank; the launcher will see staleness
            if watch_pid and not _alive(watch_pid):
                # The launcher was killed (e.g. SIGKILL): nobody would ever clean up this rank.
                print(f"asyncflow-hpc: rank {self.rank} ({self.role}): launcher pid {watch_pid} is gone; exiting",
                      file=sys.stderr, flush=True)
                from asyncflow_hpc.launch.cleanup import drop_own_files

                drop_own_files()  # nobody else will: the job's shared-memory segments must not outlive it
                os._exit(70)

    def _write(self, final: bool = False) -> None:
        with self._lock:
            if self._stop.is_set() and not final:
                return  # finish() has written (or is writing) the last record
            self._write_locked()

    def _write_locked(self) -> None:
        rec = {"rank": self.rank, "role": self.role, "host": self.host, "pid": self.pid, "time": time.time(),
               "activity": self._act, "since": self._since, "status": self.status,
               "dead_peers": getattr(self, "dead_peers", [])}
        tmp = f"{self.path}.tmp{self.pid}"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(rec, fh)
        os.replace(tmp, self.path)


class ActivityRecorder:
    """A trace recorder proxy whose spans also set the heartbeat's activity ('generate step=3')."""

    def __init__(self, inner: Any, hb: Heartbeat):
        self._inner, self._hb = inner, hb

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def span(self, name: str, **attrs: Any) -> Any:
        self._hb.activity(_label(name, attrs))
        return self._inner.span(name, **attrs)

    def begin(self, name: str, **attrs: Any) -> Any:
        self._hb.activity(_label(name, attrs))
        return self._inner.begin(name, **attrs)


def _label(name: str, attrs: dict[str, Any]) -> str:
    extra = " ".join(f"{k}={v}" for k, v in attrs.items() if k in ("step", "version") and v not in (-1, None))
    return f"{name} {extra}".strip()


def read_heartbeats(directory: str) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    try:
        names = os.listdir(directory)
    except OSError:
        return out
    for name in names:
        if not (name.startswith("rank-") and name.endswith(".json")):
            continue
        try:
            with open(os.path.join(directory, name), encoding="utf-8") as fh:
                rec = json.load(fh)
            out[int(rec["rank"])] = rec
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being replaced right now: read it next time
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (dead, not yet reaped by its MPI proxy) counts as dead
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


DEAD_PEER_GRACE_S = 0.5  # how long a failing rank looks for a peer that died just before it (Heartbeat.finish)
STARVED_GRACE = 3  # x monitor.stale_s for a stale rank whose local process runs (not stopped)


def _proc_state(pid: int) -> str | None:
    """The one-letter state of a local process (R, S, D, T, t, Z...), None if unknown or gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def describe(rec: dict[str, Any], now: float, what: str) -> str:
    ago = now - float(rec.get("since", now))
    return (f"rank {rec['rank']} (role {rec.get('role', '?')}, pid {rec.get('pid')} on {rec.get('host')}) {what}; "
            f"last activity: {rec.get('activity', '?')} ({ago:.1f} s before)")


def find_culprit(beats: dict[int, dict[str, Any]], cfg: MonitorConfig, now: float,
                 host: str | None = None, first_dead: int | None = None, gone: set[int] | None = None) -> str | None:
    """One line naming the first failed rank, or None while every rank looks healthy (pure but for pid checks).

    `first_dead`: the rank whose exit the launcher saw first (pidfd), when several died in a cascade.
    `gone`: ranks whose process was found gone BEFORE `beats` was read (see judge); None: check pids now."""
    host = host or socket.gethostname()
    failed = [r for r in beats.values() if str(r.get("status", "")).startswith("failed")]
    dead_peers = sorted({p for r in failed for p in r.get("dead_peers", [])} & set(beats))
    if dead_peers:  # a rank failed because a peer had died: the dead peer is the cause
        cause = first_dead if first_dead in dead_peers else dead_peers[0]
        return describe(beats[cause], now, "died (process gone without an error: killed, e.g. kill -9 or "
                                           "the OOM killer); its peers then failed")
    if failed:
        r = min(failed, key=lambda x: x.get("time", now))
        return describe(r, now, f"raised: {str(r['status'])[len('failed: '):]}")
    running = [r for r in beats.values() if r.get("status") == "running"]
    dead = [r for r in running if r.get("host") == host and
            (r["rank"] in gone if gone is not None else not _alive(int(r.get("pid", 0))))]
    if dead:
        first = [r for r in dead if r["rank"] == first_dead] or sorted(dead, key=lambda x: x.get("time", now))
        return describe(first[0], now, "died (process gone without an error: killed, "
                                                                  "e.g. kill -9 or the OOM killer)")
    stale = [r for r in running if now - float(r.get("time", now)) > cfg.stale_s]
    # A live process on this host that is not stopped gets STARVED_GRACE x stale_s: its heartbeat thread
    # can go unscheduled for a while (a C call holding the GIL during set-up, 4 ranks on 2 loaded cores)
    # without the rank being frozen. Stopped (SIGSTOP, a debugger) or on another host: stale_s.
    late = [r for r in stale if r.get("host") != host or _proc_state(int(r.get("pid", 0))) in ("T", "t", None)
            or now - float(r["time"]) > STARVED_GRACE * cfg.stale_s]
    if late:
        r = min(late, key=lambda x: x.get("time", now))
        quiet = now - float(r["time"])
        why = ("frozen or stopped" if quiet <= STARVED_GRACE * cfg.stale_s else
               f"more than {STARVED_GRACE} x that while its process still ran: frozen inside a call that holds "
               "the GIL, or starved of CPU")
        return describe(r, now, f"stopped responding (no heartbeat for {quiet:.0f} s > "
                                f"monitor.stale_s={cfg.stale_s:g}: {why})")
    if cfg.hang_s > 0:
        hung = [r for r in running if now - float(r.get("since", now)) > cfg.hang_s]
        if hung:
            return describe(min(hung, key=lambda x: x["since"]), now, f"hung (same activity for more than "
                                                                        f"monitor.hang_s={cfg.hang_s:g} s)")
    return None


def judge(directory: str, cfg: MonitorConfig, first_dead: int | None = None) -> tuple[str | None, dict]:
    """find_culprit on a consistent view: which local ranks are gone is decided first, the heartbeats are read
    after. A rank that raises writes its error before it aborts the job, so every rank killed by that abort
    is seen gone only together with the error of the rank that caused it (never blamed in its place)."""
    host = socket.gethostname()
    before = read_heartbeats(directory)
    gone = {r for r, b in before.items() if b.get("host") == host and not _alive(int(b.get("pid", 0)))}
    beats = read_heartbeats(directory)
    return find_culprit(beats, cfg, time.time(), host=host, first_dead=first_dead, gone=gone), beats


@dataclass
class StopRequest:
    """Ctrl-C / SIGTERM on `asyncflow-hpc run`: set by its signal handler, acted on by watch()."""

    signum: int = 0
    srun: bool = False  # srun is asked to end its step (it forwards to the tasks); mpiexec is killed quietly


def stop_job(proc: subprocess.Popen, directory: str, stop: StopRequest, cfg: MonitorConfig, t0: float) -> int:
    """End the job the user stopped: one line, exit 128 + signal, no rank blamed, no traceback from a rank.

    mpiexec (hydra) is killed first so that it prints no banner about its terminated ranks; then the ranks
    get SIGTERM (Python's default: exit without a traceback), SIGKILL after monitor.kill_grace_s."""
    name = signal.Signals(stop.signum).name
    beats = read_heartbeats(directory)
    try:
        if stop.srun:
            proc.send_signal(signal.SIGTERM)
        elif proc.poll() is None:
            proc.kill()
    except ProcessLookupError:
        pass
    kill_job(proc, beats, cfg.kill_grace_s)
    print(f"\nasyncflow-hpc: stopped by {name}: the job's ranks were ended ({time.time() - t0:.1f} s after launch)",
          file=sys.stderr, flush=True)
    return 128 + stop.signum


def kill_job(proc: subprocess.Popen, beats: dict[int, dict[str, Any]], grace_s: float) -> None:
    """SIGTERM the launcher child's process group and the ranks on this host; SIGKILL what is left."""
    host = socket.gethostname()
    pids = [int(r["pid"]) for r in beats.values() if r.get("host") == host and r.get("pid")]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for target in [-proc.pid, *pids]:
            try:
                (os.killpg(-target, sig) if target < 0 else os.kill(target, sig))
            except (ProcessLookupError, PermissionError):
                pass
        # Wait for the launcher child AND the ranks (hydra's proxies do not reap them at once): a rank still
        # unmapping its memory would keep its shared-memory segment from being cleaned up.
        deadline = time.monotonic() + (grace_s if sig == signal.SIGTERM else 10)
        while time.monotonic() < deadline:
            if proc.poll() is not None and all(not _alive(p) for p in pids):
                return
            time.sleep(0.05)


def watch(proc: subprocess.Popen, directory: str, world_size: int, cfg: MonitorConfig,
          stop: StopRequest | None = None) -> int:
    """Wait for the MPI child; on a rank failure print one named error, kill the job, return non-zero.
    `stop`: set by the launcher's Ctrl-C / SIGTERM handler (then exit 130 / 143 with one line)."""
    t0 = time.time()
    exits = _ExitWatch()
    try:
        return _watch(proc, directory, world_size, cfg, exits, t0, stop or StopRequest())
    finally:
        for fd in exits.fds.values():
            os.close(fd)


def _watch(proc, directory: str, world_size: int, cfg: MonitorConfig, exits: "_ExitWatch", t0: float,
           stop: StopRequest) -> int:
    while True:
        if stop.signum:
            return stop_job(proc, directory, stop, cfg, t0)
        rc = proc.poll()
        exits.wait(read_heartbeats(directory), cfg.poll_s, directory)  # returns at once when a rank exits
        if stop.signum:
            continue
        culprit, beats = judge(directory, cfg, exits.first)  # a fresh view, never the one from before the wait
        if culprit is None and rc is not None and rc != 0:
            time.sleep(min(1.0, 5 * cfg.poll_s))  # the failing rank's last status may still be on its way
            culprit, beats = judge(directory, cfg, exits.first)
            culprit = culprit or _exit_reason(rc, beats, world_size)
        if culprit is not None:
            print(f"\nasyncflow-hpc: error: {culprit} [detected {time.time() - t0:.1f} s after launch]",
                  file=sys.stderr, flush=True)
            if proc.poll() is None:
                kill_job(proc, beats, cfg.kill_grace_s)
            return rc if rc not in (None, 0) else 1
        if rc is not None:
            return rc


class _ExitWatch:
    """pidfds of the ranks on this host: the kernel wakes us at the first exit, so when one killed rank
    takes others down (a peer's gloo call aborts its process) the first one is known, not guessed."""

    def __init__(self) -> None:
        self.fds: dict[int, int] = {}
        self.first: int | None = None
        self.host = socket.gethostname()

    def wait(self, beats: dict[int, dict[str, Any]], timeout: float, directory: str) -> None:
        import select

        for r, b in beats.items():
            if r not in self.fds and b.get("host") == self.host and b.get("status") == "running" \
                    and hasattr(os, "pidfd_open"):
                try:
                    self.fds[r] = os.pidfd_open(int(b["pid"]))
                except (OSError, ValueError, KeyError):
                    pass
        if not self.fds or self.first is not None:
            time.sleep(timeout)
            return
        self.fds = {r: fd for r, fd in self.fds.items() if beats.get(r, {}).get("status") == "running" or
                    os.close(fd)}  # (os.close returns None: finished ranks drop out)
        ready = set(select.select(list(self.fds.values()), [], [], timeout)[0])
        if ready:
            gone = [r for r, fd in self.fds.items() if fd in ready]
            # A rank that finished or raised wrote its status before exiting: only silent exits count.
            fresh = read_heartbeats(directory)
            silent = [r for r in gone if fresh.get(r, {}).get("status") == "running"]
            if silent:
                self.first = min(silent, key=lambda r: fresh[r].get("time", 0.0))
            for r in gone:
                os.close(self.fds.pop(r))


def _exit_reason(rc: int, beats: dict[int, dict[str, Any]], world_size: int) -> str:
    missing = sorted(set(range(world_size)) - set(beats))
    unfinished = sorted(r for r, b in beats.items() if b.get("status") == "running")
    if missing:
        return f"the MPI launcher exited {rc} before rank(s) {missing} started (see the lines above)"
    if unfinished:
        b = beats[unfinished[0]]
        return describe(b, time.time(), f"ended without finishing (launcher exit code {rc}; ranks still "
                                        f"running at the end: {unfinished})")
    return f"the MPI launcher exited {rc} after every rank finished"
