"""The right rank blamed, under real mpiexec: every rank raises at set-up (model.path=/nonexistent with the
preflight bypassed); the one error line names a rank that raised, with its own error, never a rank that
MPI_Abort killed afterwards ("died ... killed"). Repeated, because the wrong blame was a race."""

import subprocess
import sys

import pytest

from tests.mpi_util import ROOT, mpi_env


@pytest.mark.mpi
@pytest.mark.timeout(400)
@pytest.mark.parametrize("attempt", range(3))
def test_a_raising_rank_is_blamed_with_its_own_error(tmp_path, attempt):
    p = subprocess.run([sys.executable, "-m", "asyncflow_hpc", "run", "configs/smoke.yaml", "workflow.job=train",
                        "model.path=/nonexistent", f"run.dir={tmp_path}/run", "trace.enabled=false"],
                       cwd=ROOT, env=mpi_env({"ASYNCFLOW_PREFLIGHT": "0"}), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode != 0
    errors = [line for line in p.stderr.splitlines() if line.startswith("asyncflow-hpc: error:")]
    assert len(errors) == 1, p.stderr[-3000:]
    assert " raised: " in errors[0] and "/nonexistent" in errors[0], errors[0]
    assert "died" not in errors[0], errors[0]
