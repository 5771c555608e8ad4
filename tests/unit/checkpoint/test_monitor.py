"""The launcher's failure detection, driven with heartbeat records (no MPI)."""

import os
import signal
import subprocess
import sys
import time

import pytest

from asyncflow_hpc.errors import ConfigError
from asyncflow_hpc.launch.monitor import Heartbeat, MonitorConfig, find_culprit, read_heartbeats, watch


def _rec(rank, role="rollout", **kw):
    now = time.time()
    base = {"rank": rank, "role": role, "host": "h", "pid": os.getpid(), "time": now, "activity": "generate step=3",
            "since": now - 2.0, "status": "running"}
    base.update(kw)
    return base


def test_culprits():
    cfg = MonitorConfig(stale_s=10, hang_s=60)
    now = time.time()
    assert find_culprit({0: _rec(0), 1: _rec(1)}, cfg, now, host="h") is None
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    msg = find_culprit({0: _rec(0, "trainer"), 2: _rec(2, pid=dead.pid)}, cfg, now, host="h")
    assert msg.startswith(f"rank 2 (role rollout, pid {dead.pid} on h) died") and "last activity: generate step=3 (" in msg
    # a pid on another host is never judged by liveness
    assert find_culprit({2: _rec(2, pid=dead.pid, host="other")}, cfg, now, host="h") is None
    # stale on another host: judged by the heartbeat alone
    msg = find_culprit({1: _rec(1, time=now - 11, host="other")}, cfg, now, host="h")
    assert "stopped responding (no heartbeat for 11 s > monitor.stale_s=10: frozen or stopped)" in msg
    # stale here, but the process runs (this one): a starved heartbeat thread gets 3 x stale_s
    assert find_culprit({1: _rec(1, time=now - 29)}, cfg, now, host="h") is None
    msg = find_culprit({1: _rec(1, time=now - 31)}, cfg, now, host="h")
    assert "stopped responding (no heartbeat for 31 s" in msg and "while its process still ran" in msg
    # stale here and stopped (SIGSTOP): at stale_s
    frozen = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        frozen.send_signal(signal.SIGSTOP)
        deadline = time.time() + 10
        while open(f"/proc/{frozen.pid}/stat").read().rsplit(")", 1)[1].split()[0] not in "Tt":
            assert time.time() < deadline
            time.sleep(0.01)
        msg = find_culprit({1: _rec(1, time=now - 11, pid=frozen.pid)}, cfg, now, host="h")
        assert "stopped responding (no heartbeat for 11 s > monitor.stale_s=10: frozen or stopped)" in msg
    finally:
        frozen.kill()
        frozen.wait()
    msg = find_culprit({1: _rec(1, since=now - 100)}, cfg, now, host="h")
    assert "hung (same activity for more than monitor.hang_s=60" in msg
    # a rank that raised wins over the others, and its own message is kept
    msg = find_culprit({0: _rec(0, "trainer", status="failed: WaitTimeout: store: waited 5s"), 2: _rec(2, pid=dead.pid)},
                       cfg, now, host="h")
    assert msg.startswith("rank 0 (role trainer") and "raised: WaitTimeout: store: waited 5s" in msg
    assert find_culprit({0: _rec(0, status="done", pid=dead.pid)}, cfg, now, host="h") is None


def test_config_checks():
    with pytest.raises(ConfigError, match="stale_s"):
        MonitorConfig(interval_s=5, stale_s=10)


def test_heartbeat_file_and_watch(tmp_path):
    hb = Heartbeat(str(tmp_path), rank=0, role="trainer", interval_s=0.05)
    hb.activity("train_step step=1")
    time.sleep(0.2)
    rec = read_heartbeats(str(tmp_path))[0]
    assert rec["activity"] == "train_step step=1" and rec["status"] == "running" and rec["pid"] == os.getpid()
    assert hb.finish("failed: boom\nsecond line")
    assert read_heartbeats(str(tmp_path))[0]["status"] == "failed: boom second line"
    # watch(): a child that exits non-zero after its rank wrote a failure -> that failure, named
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"], start_new_session=True)
    child.wait()  # (the heartbeat's pid is this test process: the monitor must not be asked to kill it)
    t0 = time.monotonic()
    assert watch(child, str(tmp_path), 1, MonitorConfig(poll_s=0.05)) == 3
    assert time.monotonic() - t0 < 5


def test_a_failure_caused_by_a_dead_peer_names_the_dead_peer():
    cfg = MonitorConfig()
    now = time.time()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    beats = {0: _rec(0, "trainer", status="failed: WeightSyncError: collective failed", dead_peers=[2]),
             2: _rec(2, pid=dead.pid)}
    msg = find_culprit(beats, cfg, now, host="h")
    assert msg.startswith(f"rank 2 (role rollout, pid {dead.pid}") and "died" in msg
