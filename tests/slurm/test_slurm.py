"""The launch paths on the real local Slurm: sbatch template, srun rank placement, submitit, requeue wiring."""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap
import time

import pytest

from tests.slurm.conftest import ROOT, now

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(300)]
SMOKE = "configs/smoke.yaml"


def _sbatch(slurm, job_dir, *args: str, env: dict[str, str] | None = None) -> tuple[str, str]:
    """Submit from the repository root; returns (job id, path of the job's output file)."""
    out = job_dir / "job-%j.out"
    proc = slurm.run("sbatch", "--parsable", f"--output={out}", *args, env=slurm.env(env))
    job_id = proc.stdout.strip().split(";")[0]
    assert job_id.isdigit(), proc.stdout
    return job_id, str(out).replace("%j", job_id)


def _check_smoke_output(text: str, job_id: str, nranks: int = 4) -> None:
    assert "smoke OK" in text, text
    roles = {}
    for m in re.finditer(r"^smoke: rank (\d+) role=(\w+) .* env=(\w+) job=(\S+)$", text, flags=re.M):
        roles[int(m.group(1))] = (m.group(2), m.group(3), m.group(4))
    assert sorted(roles) == list(range(nranks)), text
    # configs/smoke.yaml: one trainer (rank 0), the rest roll out; every rank knows the Slurm job.
    assert roles[0][0] == "trainer" and all(roles[r][0] == "rollout" for r in range(1, nranks)), roles
    assert all(src == "slurm" and job == job_id for _, src, job in roles.values()), roles


def test_sbatch_cpu_template_runs_smoke_under_srun(local_slurm, job_dir):
    t0 = now()
    job_id, out = _sbatch(local_slurm, job_dir, "slurm/cpu.sbatch", SMOKE)
    assert local_slurm.wait(job_id, timeout=150) == "COMPLETED", open(out).read()
    text = open(out).read()
    # The template called `asyncflow-hpc run`, which chose srun with the MPICH wheel's plugin.
    assert re.search(r"launching: srun --mpi=pmi2 -n 4 .*-m asyncflow_hpc\.main configs/smoke\.yaml", text), text
    _check_smoke_output(text, job_id)
    assert local_slurm.jobcomp_state(job_id, since=t0) == "COMPLETED"


def test_sbatch_template_rejects_missing_config(local_slurm, job_dir):
    job_id, out = _sbatch(local_slurm, job_dir, "slurm/cpu.sbatch", "configs/no-such-file.yaml")
    assert local_slurm.wait(job_id, timeout=60) == "FAILED"
    assert "config file 'configs/no-such-file.yaml' not found" in open(out).read()


RANK_PROBE = textwrap.dedent("""
    import json
    from mpi4py import MPI
    from asyncflow_hpc.env import read_env
    e = read_env()
    print(json.dumps(dict(rank=e.rank, size=e.world_size, local=e.local_rank, lsize=e.local_world_size,
                          node=e.node_rank, nodes=e.num_nodes, job=e.job_id, source=e.source,
                          mpi_rank=MPI.COMM_WORLD.Get_rank(), mpi_size=MPI.COMM_WORLD.Get_size())), flush=True)
""")


@pytest.mark.mpi
def test_srun_pmi2_places_ranks_as_env_reads_them(local_slurm):
    t0 = now()
    proc = local_slurm.run("srun", "--mpi=pmi2", "-n", "4", "--kill-on-bad-exit=1", sys.executable, "-c", RANK_PROBE,
                           timeout=90)
    rows = sorted((json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")),
                  key=lambda r: r["rank"])
    assert [r["rank"] for r in rows] == [0, 1, 2, 3], proc.stdout + proc.stderr
    jobs = {r["job"] for r in rows}
    assert len(jobs) == 1 and next(iter(jobs)).isdigit(), jobs
    for r in rows:
        # SLURM_* as parsed by asyncflow_hpc.env agree with what MPI itself says under srun --mpi=pmi2.
        assert (r["source"], r["size"], r["mpi_size"]) == ("slurm", 4, 4), r
        assert r["mpi_rank"] == r["rank"] and r["local"] == r["rank"], r
        assert (r["lsize"], r["node"], r["nodes"]) == (4, 0, 1), r
    assert local_slurm.jobcomp_state(next(iter(jobs)), since=t0) == "COMPLETED"


def test_submitit_runs_smoke_on_slurm_and_returns_ranks(slurm_conf_env, job_dir, monkeypatch):
    import submitit

    from asyncflow_hpc.config import load_config
    from asyncflow_hpc.launch.submitit_launch import submit_job, wait_results

    monkeypatch.chdir(ROOT)
    t0 = now()
    cfg = load_config(SMOKE, ["launch.time_min=5", f"launch.folder={job_dir}/%j"])
    job = submit_job(cfg, SMOKE, [], cluster="slurm")
    assert isinstance(job, submitit.SlurmJob)
    # A fresh folder per Slurm instance: <folder>/<ClusterName>-<controller boot time>/<job id>.
    assert job.paths.folder.parent.parent == job_dir and job.paths.folder.name == str(job.job_id)
    try:
        results = wait_results(job, timeout_s=150)
    except Exception:
        job.cancel(check=False)  # a stuck job would block every later test's job
        raise
    assert [r["rank"] for r in results] == [0, 1, 2, 3]
    for r in results:
        assert r["job_id"] == str(job.job_id) and r["source"] == "slurm" and r["world_size"] == 4, r
        # submitit's JobEnvironment sees the same placement as asyncflow_hpc.env.
        je = r["submitit"]
        assert (je["global_rank"], je["local_rank"], je["num_tasks"]) == (r["rank"], r["local_rank"], 4), r
    _check_smoke_output(job.task(0).stdout(), str(job.job_id))
    # Results arrive before the ranks (and then the job) have exited.
    assert slurm_conf_env.wait(str(job.job_id), timeout=150) == "COMPLETED"
    assert slurm_conf_env.jobcomp_state(str(job.job_id), since=t0) == "COMPLETED"


def test_submit_launcher_script_asks_for_ranks_signal_and_requeue(local_slurm, job_dir):
    """`python launchers/submit.py` (the CLI's submit verb): the job Slurm holds has the requeue-friendly settings."""
    proc = local_slurm.run(sys.executable, "launchers/submit.py", SMOKE, "launch.time_min=5", "launch.signal_delay_s=45",
                           f"launch.folder={job_dir}/%j", "launch.slurm_extra.begin=now+1hour", timeout=60)
    m = re.search(r"submitted job (\d+) to Slurm; logs in (\S+)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    job_id = m.group(1)
    try:
        info = local_slurm.run("scontrol", "show", "job", job_id).stdout
        assert re.search(r"\bNumTasks=4\b", info) and re.search(r"\bRequeue=1\b", info), info
        assert "JobState=PENDING" in info and "TimeLimit=00:05:00" in info, info
        script = local_slurm.run("scontrol", "write", "batch_script", job_id, "-").stdout
        assert "#SBATCH --signal=USR2@45" in script and "#SBATCH --requeue" in script, script
        assert "--mpi=pmi2 --kill-on-bad-exit=1" in script and "submitit.core._submit" in script, script
        assert m.group(2).startswith(str(job_dir)) and m.group(2).endswith(f"/{job_id}"), m.group(2)
    finally:
        local_slurm.run("scancel", job_id, check=False)


def test_submit_rejects_misspelled_slurm_option(slurm_conf_env):
    from asyncflow_hpc.config import load_config
    from asyncflow_hpc.errors import ConfigError
    from asyncflow_hpc.launch.submitit_launch import make_executor

    cfg = load_config(str(ROOT / SMOKE), ["launch.slurm_extra.acount=abc"])
    with pytest.raises(ConfigError) as err:
        make_executor(cfg, "slurm", ROOT / "runs" / "never-created")
    msg = str(err.value)
    assert "launch.slurm_extra.acount" in msg and "did you mean account" in msg and "valid names:" in msg
    assert "\n" not in msg
    # A correctly spelled sbatch-only option (not a submitit parameter) is accepted as a flag.
    cfg = load_config(str(ROOT / SMOKE), ["launch.slurm_extra.overcommit="])
    ex = make_executor(cfg, "slurm", ROOT / "runs" / "never-created")
    assert ex._executor.parameters["additional_parameters"]["overcommit"] is True


FAKE_JOB = textwrap.dedent("""\
    #!/bin/bash
    # Stand-in for `asyncflow-hpc run` (no rank-side USR2 handler exists yet: issue 7).
    exec srun -n "$SLURM_NTASKS" python -c '
    import os, signal, sys, time
    got = []
    signal.signal(signal.SIGUSR2, lambda s, f: got.append(s))
    r, restart = os.environ["SLURM_PROCID"], os.environ.get("SLURM_RESTART_COUNT", "0")
    print(f"fake rank {r} restart {restart} args {sys.argv[1:]}", flush=True)
    if restart == "0":
        t = time.time()
        while not got and time.time() - t < 60:
            time.sleep(0.1)
        print(f"fake rank {r} got USR2 {bool(got)}", flush=True)
    ' "$@"
""")


def test_sbatch_warning_signal_reaches_ranks_and_requeues(local_slurm, job_dir):
    """USR2 to the batch shell -> forwarded to the ranks -> step ends -> job requeues itself -> resume override."""
    fake = job_dir / "fake_run.sh"
    fake.write_text(FAKE_JOB)
    fake.chmod(0o755)
    env = {"ASYNCFLOW_CMD": str(fake), "ASYNCFLOW_RESUME_OVERRIDE": "resume=auto"}
    job_id, out = _sbatch(local_slurm, job_dir, "slurm/cpu.sbatch", SMOKE, "run.name=x", env=env)
    local_slurm.wait(job_id, timeout=60, until=("RUNNING",))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # every rank has installed its handler once it printed its line
        if os.path.exists(out) and open(out).read().count("restart 0 args") == 4:
            break
        time.sleep(0.2)
    local_slurm.run("scancel", "--signal=USR2", "--batch", job_id)
    # Slurm holds a requeued batch job for ~2 minutes (BeginTime); release it now.
    local_slurm.wait(job_id, timeout=60, until=("PENDING",))
    # Releasing the hold in the same second as the requeue races slurmd's revocation of the old
    # job credential ("Killing non-startable batch job: Job credential revoked"): let it pass first.
    time.sleep(3)
    deadline = time.monotonic() + 60
    while local_slurm.state(job_id) == "PENDING" and time.monotonic() < deadline:
        # Repeated: an update while the requeue is still completing is overwritten by the hold.
        local_slurm.run("scontrol", "update", f"jobid={job_id}", "StartTime=now", check=False)
        time.sleep(1)
    assert local_slurm.wait(job_id, timeout=60) == "COMPLETED", open(out).read()
    text = open(out).read()
    assert text.count("got USR2 True") == 4, text
    assert "requeueing job" in text, text
    # The requeued run (SLURM_RESTART_COUNT=1) got the resume override before the user's overrides.
    assert text.count("restart 1 args ['configs/smoke.yaml', 'device.kind=cpu', 'resume=auto', 'run.name=x']") == 4, text
