"""Failure detection under mpiexec: a rank killed (kill -9) or frozen (SIGSTOP) mid-run makes `asyncflow-hpc run`
exit non-zero within 60 s with ONE error line naming the rank, its role and its last activity."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.mpi_util import ROOT, mpi_env

RUN = ["configs/default.yaml", "data.eval_size=0", "data.prompts_per_step=8", "rollout.n=4", "workflow.steps=400",
       "workflow.mode=async", "topology.colocate=false", "workflow.eta=1", "trace.enabled=false",
       "device.threads_per_rank=1"]


def _beat(hb_dir, rank):
    try:
        return json.loads((hb_dir / f"rank-{rank:05d}.json").read_text())
    except (OSError, ValueError):
        return None


def _start_and_wait_mid_run(tmp_path, *extra):
    proc = subprocess.Popen([sys.executable, "-m", "asyncflow_hpc", "run", *RUN, "run.name=f",
                             f"run.dir={tmp_path}/{{name}}", *extra], cwd=ROOT, env=mpi_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    hb = tmp_path / "f" / "heartbeat"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # mid-run: the trainer is past its second step
        b = _beat(hb, 0)
        if b and any(b["activity"].startswith(f"{w} step=") and int(b["activity"].split("step=")[1].split()[0]) >= 2
                     for w in ("train_step", "batch_wait")):
            return proc, hb
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("the job never got past step 2: " + "".join(proc.communicate()))


@pytest.mark.mpi
@pytest.mark.timeout(240)
@pytest.mark.parametrize("victim,role,sig,what", [
    (2, "rollout", signal.SIGKILL, "died"),
    (0, "trainer", signal.SIGKILL, "died"),
    (1, "rollout", signal.SIGSTOP, "stopped responding"),
])
def test_dead_or_frozen_rank_gives_one_named_error_within_60s(tmp_path, victim, role, sig, what):
    proc, hb = _start_and_wait_mid_run(tmp_path, "monitor.stale_s=8")
    beat = _beat(hb, victim)
    assert beat and beat["role"] == role
    t0 = time.monotonic()
    os.kill(beat["pid"], sig)
    try:
        out, err = proc.communicate(timeout=90)
    finally:
        if sig == signal.SIGSTOP:
            try:
                os.kill(beat["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
    elapsed = time.monotonic() - t0
    assert proc.returncode != 0, out[-2000:] + err[-2000:]
    assert elapsed < 60, f"detected after {elapsed:.1f} s"
    errors = [line for line in err.splitlines() if "asyncflow-hpc: error:" in line]
    assert len(errors) == 1, err[-4000:]
    line = errors[0]
    assert line.startswith("asyncflow-hpc: error:"), line  # on its own line, not after a progress bar
    assert f"rank {victim} (role {role}, pid {beat['pid']}" in line and what in line, line
    assert "last activity: " in line and " s before)" in line, line
    # every rank of the job is gone (the launcher killed what was left)
    from asyncflow_hpc.launch.monitor import _alive

    time.sleep(1)
    left = [r for r in range(4) if _alive(_beat(hb, r)["pid"])]
    assert not left, f"ranks {left} still alive after the launcher exited"
    print(f"{role} rank {victim} ({sig.name}): '{line}' after {elapsed:.1f} s")
