"""Job-scoped clean-up: files this job's processes held are removed after it was killed; others' stay."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from asyncflow_hpc.launch.cleanup import JobTemps

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

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


def _record(run_dir, key, files, pid=999999999, host=None, tmpdir=None):
    from asyncflow_hpc.launch.cleanup import record_path, write_record

    path = record_path(str(run_dir), key, host, pid)
    write_record(path, {"key": key, "pid": pid, "files": files, "tmpdir": tmpdir})
    return path


def test_start_up_removes_this_jobs_stale_files_only(tmp_path, monkeypatch):
    """A requeued job (same SLURM_JOB_ID) removes what its killed run noted, before MPI_Init; never files of another
    job, files a live process holds, or paths a crafted record names outside the known patterns."""
    import tempfile

    from asyncflow_hpc.launch.cleanup import clean_stale, job_tmpdir

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    tag = uuid.uuid4().hex[:8]
    stale = f"/dev/shm/mpich_shm_test{tag}_0"          # the killed step's segment: no process maps it
    held = f"/dev/shm/mpich_shm_test{tag}_held_0"       # noted, but some live process still maps it
    other = f"/dev/shm/mpich_shm_test{tag}_other_0"     # another job's (its own record)
    victim = tmp_path / "precious"                     # a crafted record must not reach it
    for p in (stale, held, other, victim):
        open(p, "w").close()
    tmpdir = job_tmpdir("slurm-123", pid=999999999)
    os.makedirs(tmpdir)
    open(os.path.join(tmpdir, f"vllm_dist_{tag}"), "w").close()
    other_dir = tmp_path / "not-a-job-folder"
    other_dir.mkdir()
    run = tmp_path / "run"
    mine = _record(run, "slurm-123", [stale, held, str(victim), "/dev/shm/mpich_shm_../../etc/x"], tmpdir=tmpdir)
    _record(run, "slurm-123", [], pid=999999998, host="h2", tmpdir=str(other_dir))  # other host: not read
    _record(run, "slurm-123", [], pid=999999997, tmpdir=str(other_dir))  # a folder name it never gives: kept
    _record(run, "slurm-77", [other])
    (run / "jobtemps" / "slurm-123@elsewhere@1.json").write_text(json.dumps({"pid": 1, "files": [other]}))
    (run / "jobtemps" / f"local-1@{os.uname().nodename}@1.json").write_text("{not json")
    child = subprocess.Popen([sys.executable, "-c", HOLDER, held, str(tmp_path / "x.xml")], stdout=subprocess.PIPE,
                             text=True)
    logs = []
    try:
        assert child.stdout.readline().strip() == "ready"
        gone = clean_stale(str(run), "slurm-123", log=logs.append)
        assert sorted(gone) == sorted([stale, tmpdir])
        assert not os.path.exists(stale) and not os.path.exists(tmpdir)
        assert os.path.exists(held) and os.path.exists(other) and victim.exists() and other_dir.is_dir()
        assert os.path.exists(mine)  # kept while a noted file is still there
        assert any("not a job temp-file record" in m for m in logs), logs
        assert any("removed 2 temp file(s)" in m and "(slurm-123@999999999)" in m for m in logs), logs
    finally:
        child.kill()
        child.wait()
        for p in (stale, held, other):
            if os.path.exists(p):
                os.remove(p)


def test_a_rank_whose_launcher_died_unlinks_its_segments(tmp_path):
    """The exit path without a launcher (it was killed -9): the rank unlinks the job files it maps."""
    tag = uuid.uuid4().hex[:8]
    shm = f"/dev/shm/mpich_shm_test{tag}_0"
    code = HOLDER.replace('print("ready", flush=True)\ntime.sleep(120)',
                          "from asyncflow_hpc.launch.cleanup import drop_own_files\nprint(sorted(drop_own_files()))")
    try:
        p = subprocess.run([sys.executable, "-c", code, shm, str(tmp_path / "x.xml")], capture_output=True,
                           text=True, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT))
        assert p.returncode == 0, p.stderr
        assert shm in p.stdout and not os.path.exists(shm)
    finally:
        if os.path.exists(shm):
            os.remove(shm)


FAKE_MPIEXEC = r'''
import os, subprocess, sys
if "--version" in sys.argv:
    print("stand-in launcher"); sys.exit(0)
code = "import tempfile, uuid; open(tempfile.gettempdir() + '/vllm_dist_' + uuid.uuid4().hex, 'w').close()"
sys.exit(subprocess.run([sys.executable, "-c", code]).returncode)  # what vLLM's in-process executor does
'''


@pytest.mark.parametrize("monitored", [True, False])
def test_vllm_temp_files_of_this_job_are_removed_and_no_others(tmp_path, monitored):
    """vLLM leaves file-store rendezvous files (vllm_dist_<uuid>) in the temp folder: the ranks get a job-scoped
    TMPDIR, removed with everything in it when the job ends; another job's vllm_dist_* in /tmp stays."""
    base = tmp_path / "tmp"
    base.mkdir()
    other = base / f"vllm_dist_{uuid.uuid4().hex}"  # another job's
    other.write_text("")
    fake = tmp_path / "mpiexec"
    fake.write_text(f"#!{sys.executable}\n{FAKE_MPIEXEC}")
    fake.chmod(0o755)
    env = dict(os.environ, PYTHONPATH=ROOT, TMPDIR=str(base))
    env.pop("SLURM_JOB_ID", None)
    p = subprocess.run([sys.executable, "-m", "asyncflow_hpc", "run", "configs/smoke.yaml", f"launch.mpiexec={fake}",
                        f"run.dir={tmp_path}/run", f"monitor.enabled={str(monitored).lower()}"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert sorted(os.listdir(base)) == [other.name], os.listdir(base)  # the job's folder went, with its file
    assert not os.listdir(tmp_path / "run" / "jobtemps")  # and its record
