"""The smoke job under real mpiexec ranks, through the same CLI a user runs."""

import subprocess
import sys

import pytest

from tests.mpi_util import ROOT, mpi_env


@pytest.mark.mpi
def test_smoke_job_via_asyncflow_run():
    p = subprocess.run([sys.executable, "-m", "asyncflow_hpc", "run", "configs/smoke.yaml"], cwd=ROOT,
                       env=mpi_env(), capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "launching: " in p.stdout and " -n 4 " in p.stdout
    for r, role in [(0, "trainer"), (1, "rollout"), (2, "rollout"), (3, "rollout")]:
        assert f"smoke: rank {r} role={role} " in p.stdout
    assert "smoke OK: 4 ranks, broadcast verified on 4 ranks, RMA round trip verified on 4 ranks" in p.stdout


@pytest.mark.mpi
def test_rank_failure_takes_the_job_down_with_a_named_error():
    # 2 trainer ranks need 2 rollout ranks: with world 3 the ranks themselves refuse, naming the key.
    from tests.mpi_util import run_mpi

    p = run_mpi(3, ["-m", "asyncflow_hpc.main", "configs/smoke.yaml", "topology.trainer_ranks=3"],
                check=False, timeout=120)
    assert p.returncode != 0
    assert "asyncflow-hpc: error:" in p.stderr and "topology:" in p.stderr
