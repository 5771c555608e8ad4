"""submitit to local processes (no Slurm needed): one local task runs `asyncflow-hpc run`, i.e. real mpiexec ranks."""

from __future__ import annotations

import pytest

from tests.slurm.conftest import ROOT

SMOKE = "configs/smoke.yaml"


@pytest.fixture
def local_job_dir():
    """Not tmp_path: concurrent pytest sessions on this machine prune each other's /tmp/pytest-of-* folders."""
    import shutil
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp(prefix="asyncflow-submit-local-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.mpi
@pytest.mark.timeout(180)
def test_submit_local_runs_smoke_under_mpiexec(local_job_dir, monkeypatch, capsys):
    from asyncflow_hpc.config import load_config
    from asyncflow_hpc.launch.submitit_launch import submit, submit_job

    monkeypatch.chdir(ROOT)
    for name in [k for k in __import__("os").environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(name)  # outside any allocation, so `asyncflow-hpc run` picks mpiexec
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cfg = load_config(SMOKE, [f"launch.folder={local_job_dir}/%j"])
    assert submit(cfg, SMOKE, [], True, cluster="local") == 0
    printed = capsys.readouterr().out
    assert "to local processes" in printed and "completed" in printed, printed
    job_out = next(local_job_dir.glob("local-*/*/*_0_log.out")).read_text()
    assert "launching: " in job_out and "mpiexec -n 4" in job_out, job_out
    assert "smoke OK" in job_out and job_out.count("smoke: rank ") == 4, job_out

    # A failing run (an impossible topology, caught by `asyncflow-hpc run`) fails the submitit job.
    job = submit_job(cfg, SMOKE, ["topology.trainer_ranks=9"], cluster="local")
    with pytest.raises(Exception) as err:
        job.results()
    assert "exited with 2" in str(err.value), err.value
