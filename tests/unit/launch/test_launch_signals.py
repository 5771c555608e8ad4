"""`asyncflow-hpc run` under a stand-in mpiexec (no MPI): the rank that raised is blamed with its own error,
never a rank the abort killed afterwards; Ctrl-C / SIGTERM end the job with one line and exit 130 / 143."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

# A stand-in for mpiexec: starts N ranks (FAKE_RANK=r) that beat like real ones; when one exits non-zero it
# SIGKILLs the others at once, as MPI_Abort does (these are the "innocent" ranks the launcher must not blame).
FAKE_MPIEXEC = r'''
import os, subprocess, sys, time
if "--version" in sys.argv:
    print("stand-in launcher"); sys.exit(0)
n = int(sys.argv[sys.argv.index("-n") + 1])
rank_code = os.environ["FAKE_RANK_CODE"]
procs = [subprocess.Popen([sys.executable, "-c", rank_code], env=dict(os.environ, FAKE_RANK=str(r)))
         for r in range(n)]
while True:
    codes = [p.poll() for p in procs]
    bad = [c for c in codes if c not in (None, 0)]
    if bad:
        for p in procs:
            if p.poll() is None:
                p.kill()
        sys.exit(bad[0])
    if all(c == 0 for c in codes):
        sys.exit(0)
    time.sleep(0.002)
'''

FAKE_RANK = r'''
import os, sys, time
from asyncflow_hpc.launch.monitor import Heartbeat
r = int(os.environ["FAKE_RANK"])
hb = Heartbeat.from_env(rank=r, role="trainer" if r == 0 else "rollout")
hb.activity("setup")
if r == int(os.environ.get("FAKE_BAD", "-1")):
    time.sleep(float(os.environ.get("FAKE_DELAY", "1.0")))
    from asyncflow_hpc.main import _fail
    sys.exit(_fail(f"rank {r}", FileNotFoundError("model.path='/nonexistent': no such directory"), tb=False))
time.sleep(120)
'''


def _start(tmp_path, **env):
    fake = tmp_path / "mpiexec"
    fake.write_text(f"#!{sys.executable}\n{FAKE_MPIEXEC}")
    fake.chmod(0o755)
    environ = dict(os.environ, FAKE_RANK_CODE=FAKE_RANK, PYTHONPATH=str(ROOT), **env)
    return subprocess.Popen([sys.executable, "-m", "asyncflow_hpc", "run", "configs/smoke.yaml",
                             f"launch.mpiexec={fake}", f"run.dir={tmp_path}/run", "monitor.poll_s=0.2"],
                            cwd=ROOT, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("attempt", range(8))
def test_the_rank_that_raised_is_blamed_with_its_own_error(tmp_path, attempt):
    bad = attempt % 4
    proc = _start(tmp_path, FAKE_BAD=str(bad), FAKE_DELAY=str(0.8 + 0.1 * attempt))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0, out + err
    errors = [line for line in err.splitlines() if line.startswith("asyncflow-hpc: error:")]
    assert len(errors) == 1, err
    role = "trainer" if bad == 0 else "rollout"
    assert f"error: rank {bad} (role {role}" in errors[0], errors[0]
    assert "raised: FileNotFoundError: model.path='/nonexistent': no such directory" in errors[0], errors[0]
    assert "died" not in errors[0] and "Traceback" not in err


def _wait_for_ranks(tmp_path, proc, n=4):
    hb = tmp_path / "run" / "heartbeat"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        beats = []
        for r in range(n):
            try:
                beats.append(json.loads((hb / f"rank-{r:05d}.json").read_text()))
            except (OSError, ValueError):
                pass
        if len(beats) == n:
            return [b["pid"] for b in beats]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the ranks never started")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_end_the_job_with_one_line(tmp_path, sig, code):
    from asyncflow_hpc.launch.monitor import _alive

    proc = _start(tmp_path)
    pids = _wait_for_ranks(tmp_path, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"asyncflow-hpc: stopped by {sig.name}"), err
    assert "Traceback" not in err + out and "died" not in err
    assert not [p for p in pids if _alive(p)], "ranks left running"
