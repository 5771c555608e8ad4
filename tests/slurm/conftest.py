"""Session fixture for the real local Slurm: finds the one .ci/slurm_up.sh started, or starts it (and stops it after)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASE = Path(os.environ.get("ASYNCFLOW_SLURM_BASE", "/tmp/asyncflow-slurm"))
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
            "DEADLINE", "PREEMPTED")


@dataclass
class LocalSlurm:
    base: Path
    conf: Path

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for Slurm client commands and jobs: the venv first on PATH, one thread per rank."""
        env = dict(os.environ)
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
        env["OMP_NUM_THREADS"] = "1"
        for name in [k for k in env if k.startswith("SLURM_") and k != "SLURM_CONF"]:
            env.pop(name)  # never inherit an outer job's variables
        env.update(extra or {})
        return env

    def run(self, *cmd: str, timeout: float = 60, check: bool = True, **kw) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(cmd), env=kw.pop("env", None) or self.env(), capture_output=True, text=True,
                              timeout=timeout, cwd=kw.pop("cwd", ROOT), **kw)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def state(self, job_id: str) -> str | None:
        from asyncflow_hpc.launch.submitit_launch import slurm_state

        old = os.environ.get("SLURM_CONF")
        os.environ["SLURM_CONF"] = str(self.conf)
        try:
            return slurm_state(job_id)
        finally:
            if old is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = old

    def wait(self, job_id: str, timeout: float = 60, until: tuple[str, ...] = TERMINAL) -> str:
        """Poll until the job reaches one of `until`; fail with the job's record if it does not in time."""
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            state = self.state(job_id)
            if state and state.split()[0] in until:
                return state.split()[0]
            time.sleep(0.5)
        info = self.run("scontrol", "show", "job", job_id, check=False).stdout
        self.run("scancel", job_id, check=False)  # a stuck job would block every later test's job
        raise AssertionError(f"job {job_id} still {state} after {timeout} s (wanted {until}):\n{info}")

    def jobcomp_state(self, job_id: str, since: str, timeout: float = 20) -> str:
        """Final state of `job_id` in the jobcomp file (`sacct -c`: accounting is off), ended at or after `since`.

        `since` (local time, %Y-%m-%dT%H:%M:%S) skips records of an older job with the same id (ids restart
        at 1 when the state folder is wiped); the record is written just after the job ends, hence the wait.
        """
        deadline = time.monotonic() + timeout
        while True:
            out = self.run("sacct", "-c", "-n", "-P", "-o", "JobID,State,End", "-j", job_id).stdout
            rows = [line.split("|") for line in out.splitlines() if line.startswith(f"{job_id}|")]
            final = [state for _, state, end in rows if end >= since and state.split()[0] in TERMINAL]
            if final or time.monotonic() > deadline:
                assert final, f"no final jobcomp record for job {job_id} since {since}: {rows}"
                return final[-1]
            time.sleep(0.5)


def now() -> str:
    """Local time as Slurm prints it, for `LocalSlurm.jobcomp_state(since=...)`."""
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def _running(base: Path) -> bool:
    conf = base / "slurm.conf"
    if not (base / "env.sh").exists() or not conf.exists() or not shutil.which("scontrol"):
        return False
    env = dict(os.environ, SLURM_CONF=str(conf))
    ping = subprocess.run(["scontrol", "ping"], env=env, capture_output=True, text=True, timeout=30)
    if ping.returncode != 0 or "UP" not in ping.stdout:
        return False
    state = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=env, capture_output=True, text=True, timeout=30)
    return state.stdout.split()[:1] in (["idle"], ["mixed"], ["allocated"], ["completing"])


def _start(base: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to start a local Slurm (.ci/slurm_up.sh installs packages and runs slurmd), "
                    "and none is running")
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        pytest.skip("no Slurm installed and no apt-get to install it (Debian/Ubuntu packages slurmctld slurmd "
                    "slurm-client munge)")
    proc = subprocess.run(["bash", str(ROOT / ".ci" / "slurm_up.sh"), str(base)], capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        if "apt-get" in proc.stderr and ("update failed" in proc.stderr or "install" in proc.stderr):
            pytest.skip(f"apt unusable, cannot install Slurm: {proc.stderr.strip().splitlines()[-1]}")
        pytest.fail(f".ci/slurm_up.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}", pytrace=False)


@pytest.fixture(scope="session")
def local_slurm():
    """A running single-host Slurm; started here (and stopped at the end) only if none was running."""
    started = False
    if not _running(BASE):
        _start(BASE)
        started = True
    yield LocalSlurm(base=BASE, conf=BASE / "slurm.conf")
    if started:
        subprocess.run(["bash", str(ROOT / ".ci" / "slurm_down.sh"), str(BASE)], capture_output=True, timeout=60)


@pytest.fixture
def job_dir(local_slurm, request):
    """A fresh folder for job output under the Slurm base (not tmp_path: concurrent pytest sessions on
    this machine prune each other's old /tmp/pytest-of-* folders while jobs still write there)."""
    import shutil as _shutil
    import uuid

    path = local_slurm.base / "test-jobs" / f"{request.node.name[:40]}-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    yield path
    if not getattr(request.node, "rep_call_failed", False):
        _shutil.rmtree(path, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        item.rep_call_failed = True  # keep the job folder of a failed test for inspection


@pytest.fixture
def slurm_conf_env(local_slurm, monkeypatch):
    """SLURM_CONF (and no outer SLURM_* variables) in this process, for in-process submitit calls."""
    monkeypatch.setenv("SLURM_CONF", str(local_slurm.conf))
    for name in [k for k in os.environ if k.startswith("SLURM_") and k != "SLURM_CONF"]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return local_slurm
