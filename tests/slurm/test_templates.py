"""The sbatch templates as shell scripts, run outside Slurm with a stand-in command: arguments, env and checks."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.slurm.conftest import ROOT


def _run(template: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "NCCL_", "HCCL_", "ASCEND_"))}
    base.update({"SLURM_SUBMIT_DIR": str(ROOT), "SLURM_JOB_ID": "77", "ASYNCFLOW_CMD": "echo CMD"})
    base.update(env or {})
    return subprocess.run(["bash", f"slurm/{template}.sbatch", *args], cwd=ROOT, env=base, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("template,device", [("cpu", "cpu"), ("gpu", "cuda")])
def test_template_passes_config_then_device_then_user_overrides(template, device):
    proc = _run(template, "configs/smoke.yaml", "workflow.steps=2",
                env={"SLURM_NTASKS_PER_NODE": "8", "SLURM_GPUS_ON_NODE": "8"})
    assert proc.returncode == 0, proc.stderr
    assert f"CMD configs/smoke.yaml device.kind={device} workflow.steps=2" in proc.stdout, proc.stdout
    assert f"python {ROOT}/.venv/bin/python" in proc.stdout  # the repository's venv was activated


def test_gpu_template_sets_nccl_and_checks_one_rank_per_gpu():
    proc = _run("gpu", "configs/smoke.yaml", env={"SLURM_NTASKS_PER_NODE": "8", "SLURM_GPUS_ON_NODE": "8",
                                                  "NCCL_SOCKET_IFNAME": "ib0", "ASYNCFLOW_CMD": "bash -c env"})
    assert proc.returncode == 0, proc.stderr
    env = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line and not line.startswith("["))
    assert env["NCCL_SOCKET_IFNAME"] == "ib0" and env["GLOO_SOCKET_IFNAME"] == "ib0"  # the site's value wins
    assert env["NCCL_IB_HCA"] == "mlx5" and env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    bad = _run("gpu", "configs/smoke.yaml", env={"SLURM_NTASKS_PER_NODE": "4", "SLURM_GPUS_ON_NODE": "8"})
    assert bad.returncode == 2 and "one rank per GPU" in bad.stderr


def test_ascend_template_sources_cann_and_sets_hccl(tmp_path):
    toolkit = tmp_path / "ascend-toolkit"
    toolkit.mkdir()
    (toolkit / "set_env.sh").write_text("export FAKE_CANN_LOADED=1\n")
    env = {"ASCEND_TOOLKIT_HOME": str(toolkit), "ASCEND_NNAL_HOME": str(tmp_path / "none"),
           "SLURM_NTASKS_PER_NODE": "8", "ASYNCFLOW_CMD": "bash -c env"}
    proc = _run("ascend", "configs/smoke.yaml", env=env)
    assert proc.returncode == 0, proc.stderr
    got = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line and not line.startswith("["))
    assert got["FAKE_CANN_LOADED"] == "1" and got["ASCEND_RT_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7"
    assert got["HCCL_CONNECT_TIMEOUT"] == "1200" and "HCCL_EXEC_TIMEOUT" in got
    bad = _run("ascend", "configs/smoke.yaml", env={**env, "ASCEND_RT_VISIBLE_DEVICES": "0,1"})
    assert bad.returncode == 2 and "one rank per NPU" in bad.stderr
    missing = _run("ascend", "configs/smoke.yaml", env={**env, "ASCEND_TOOLKIT_HOME": str(tmp_path / "no")})
    assert missing.returncode == 2 and "set_env.sh" in missing.stderr


def test_template_usage_errors():
    assert "usage: sbatch slurm/<template>.sbatch" in _run("cpu").stderr
    proc = _run("cpu", "configs/nope.yaml")
    assert proc.returncode == 2 and "config file 'configs/nope.yaml' not found" in proc.stderr
    proc = _run("cpu", "configs/smoke.yaml", env={"ASYNCFLOW_VENV": "/nonexistent/venv"})
    assert proc.returncode == 2 and "no virtualenv at ASYNCFLOW_VENV=/nonexistent/venv" in proc.stderr
