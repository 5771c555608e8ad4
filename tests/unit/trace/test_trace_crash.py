"""Traces survive crashes: a rank killed with -9 leaves a readable per-rank file (periodic flush)."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("h5py")

ROOT = Path(__file__).resolve().parents[3]

KILLED_RANK = r'''
import os, signal, sys, time
from asyncflow_hpc.trace.recorder import Recorder
rec = Recorder(sys.argv[1], rank=1, role="rollout", world_size=2, flush_s=float(sys.argv[2]))
t0 = time.monotonic()
step = 0
while time.monotonic() - t0 < 1.0:
    with rec.span("generate", step=step):
        time.sleep(0.02)
    step += 1
os.kill(os.getpid(), signal.SIGKILL)  # no close(), no atexit: as kill -9 or the OOM killer
'''


def _run(tmp_path, flush_s):
    path = tmp_path / "trace.rank00001.h5"
    p = subprocess.run([sys.executable, "-c", KILLED_RANK, str(path), str(flush_s)], cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr
    return path


def test_a_killed_rank_leaves_a_readable_per_rank_file(tmp_path):
    from asyncflow_hpc.trace.reader import read_trace

    path = _run(tmp_path, 0.2)
    t = read_trace(path)
    assert len(t.spans) >= 10 and set(t.spans["name"]) == {"generate"}


def test_without_the_periodic_flush_nothing_is_left(tmp_path):
    assert not _run(tmp_path, 0).exists()  # the failure this flush prevents


def test_the_config_key_reaches_the_recorder(tmp_path):
    from asyncflow_hpc.config import load_config
    from asyncflow_hpc.trace.recorder import make_recorder

    cfg = load_config(None, ["trace.flush_s=2.5"])
    rec = make_recorder(cfg.trace, final_path=str(tmp_path / "trace.h5"), rank=0, role="trainer", world_size=1)
    assert rec.flush_s == 2.5
