"""Job-scoped clean-up: files this job's processes held are removed after it was killed; others' stay."""

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from asyncflow_hpc.launch.cleanup import JobTemps

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc") or not os.path.isdir("/dev/shm"), reason="needs Linux")

HOLDER = r'''
import mmap, os, sys, time
shm, xml = sys.argv[1], sys.argv[2]
fd = os.open(shm, os.O_RDWR | os.O_CREAT, 0o600)
os.ftruncate(fd, 4096)
m = mmap.mmap(fd, 4096)          # mapped, as an MPICH rank maps its segment
os.close(fd)
fh = open(xml, "w")              # open, as hydra's proxy holds its topology file
print("ready", flush=True)
time.sleep(120)
'''


def test_an_aborted_jobs_files_are_removed_and_no_others(tmp_path):
    tag = uuid.uuid4().hex[:8]
    ours = f"/dev/shm/mpich_shm_test{tag}_0"
    xml = f"/tmp/hydra_hwloc_xmlfile_test{tag}"
    other = f"/dev/shm/mpich_shm_test{tag}_other_0"  # another job's segment: same name pattern, not ours
    open(other, "w").close()
    child = subprocess.Popen([sys.executable, "-c", HOLDER, ours, xml], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        temps = JobTemps()
        assert {ours, xml} <= temps.scan() and other not in temps.paths
        assert temps.clean() == [] and os.path.exists(ours)  # still held: kept
        child.send_signal(signal.SIGKILL)  # the job is aborted: nothing unlinks its files
        child.wait()
        time.sleep(0.1)
        assert os.path.exists(ours) and os.path.exists(xml)
        assert sorted(temps.clean()) == sorted([ours, xml])
        assert not os.path.exists(ours) and not os.path.exists(xml) and os.path.exists(other)
    finally:
        child.kill()
        for p in (ours, xml, other):
            if os.path.exists(p):
                os.remove(p)
