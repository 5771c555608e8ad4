"""The CLI as a user runs it: one-line errors, exit codes, resolved config, the launch command."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "asyncflow_hpc", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, env=env)


def test_config_show_resolves_overrides():
    p = cli("config", "show", "configs/smoke.yaml", "workflow.eta=3", "--layout")
    assert p.returncode == 0, p.stderr
    assert "eta: 3" in p.stdout and "# layout: world=4" in p.stdout and "rank 0: trainer" in p.stdout


def test_config_keys_have_help():
    p = cli("config", "show", "--keys")
    assert p.returncode == 0
    line = next(l for l in p.stdout.splitlines() if l.startswith("workflow.eta "))
    assert "Staleness bound" in line


def test_bad_key_is_one_line_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("topology:\n  trainer_rank: 2\n")
    p = cli("config", "show", str(bad))
    assert p.returncode == 2
    assert p.stderr.strip() == (f"asyncflow-hpc: error: {bad}: topology.trainer_rank: unknown key; "
                                f"did you mean 'topology.trainer_ranks'?")
    assert "Traceback" not in p.stderr


def test_impossible_topology_fails_before_launch():
    p = cli("run", "configs/smoke.yaml", "topology.trainer_ranks=4", "--dry-run")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "topology:" in p.stderr and "job has 4" in p.stderr and "launching" not in p.stdout


def test_run_prints_the_mpiexec_command():
    p = cli("run", "configs/smoke.yaml", "topology.world_size=3", "--dry-run")
    assert p.returncode == 0, p.stderr
    line = p.stdout.strip().splitlines()[-1]
    assert line.startswith("asyncflow-hpc: launching: ") and "mpiexec -n 3 " in line
    assert line.endswith("-m asyncflow_hpc.main configs/smoke.yaml topology.world_size=3")


def test_run_inside_allocation_uses_srun(tmp_path):
    import os

    fake = tmp_path / "bin"
    fake.mkdir()
    srun = fake / "srun"
    srun.write_text("#!/bin/sh\nexit 0\n")
    srun.chmod(0o755)
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}", SLURM_JOB_ID="77", SLURM_NTASKS="4")
    env.pop("SLURM_STEP_ID", None)
    p = cli("run", "configs/smoke.yaml", "--dry-run", env=env)
    assert p.returncode == 0, p.stderr
    assert "launching: srun --mpi=pmi2 -n 4 --kill-on-bad-exit=1 " in p.stdout


def test_missing_config_file():
    p = cli("run", "configs/nope.yaml")
    assert p.returncode == 2 and p.stderr.strip() == "asyncflow-hpc: error: configs/nope.yaml: config file not found"


def test_import_without_heavy_modules():
    code = ("import sys, asyncflow_hpc.cli, asyncflow_hpc.config; "
            "bad = [m for m in ('torch', 'mpi4py', 'h5py', 'vllm', 'torch_npu', 'transformers') if m in sys.modules]; "
            "print(bad)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert p.stdout.strip() == "[]", p.stdout + p.stderr
