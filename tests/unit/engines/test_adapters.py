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


@pytest.mark.skipif(not (_cuda() and _has("vllm")), reason="needs CUDA GPU and vllm")
def test_vllm_generate_and_load_weights(tmp_path):
    import torch

    from asyncflow_hpc.engines.base import SamplingParams
    from asyncflow_hpc.engines.vllm_rollout import VLLMRolloutEngine
    from asyncflow_hpc.models.config import ModelConfig
    from asyncflow_hpc.models.hf import build_policy, save_pretrained
    from asyncflow_hpc.models.tokenizer import CharTokenizer

    model, tok = build_policy(ModelConfig(tiny_hidden=64, tiny_heads=4), CharTokenizer())
    save_pretrained(model, tok, str(tmp_path))
    eng = VLLMRolloutEngine(str(tmp_path), gpu_memory_utilization=0.2)
    p = SamplingParams(max_new_tokens=6, stop_token_ids=(tok.eos_id,))
    a = eng.generate([tok.encode("12=")] * 2, p, [1, 2])
    b = eng.generate([tok.encode("12=")] * 2, p, [1, 2])
    assert [g.response_ids for g in a] == [g.response_ids for g in b]
    eng.load_weights([(k, torch.zeros_like(v)) for k, v in model.state_dict().items()], version=3)
    assert eng.version == 3


@pytest.mark.skipif(not (_has("torch_npu") and _has("vllm_ascend")), reason="needs Ascend NPU")
def test_vllm_ascend_imports():
    from asyncflow_hpc.engines.vllm_rollout import _import_vllm

    assert _import_vllm(ascend=True) is not None


@pytest.mark.skipif(not (_has("torch_npu") and _has("mindspeed")), reason="needs Ascend NPU and mindspeed")
def test_mindspeed_imports():
    from asyncflow_hpc.engines.mindspeed_trainer import import_mindspeed

    assert import_mindspeed() is not None


@pytest.mark.skipif(_has("vllm"), reason="vllm is installed here")
def test_vllm_missing_is_a_clear_error():
    from asyncflow_hpc.engines.vllm_rollout import VLLMRolloutEngine

    with pytest.raises(ConfigError, match="rollout.engine=vllm: cannot import"):
        VLLMRolloutEngine("/nonexistent")


@pytest.mark.skipif(_has("mindspeed"), reason="mindspeed is installed here")
def test_mindspeed_missing_is_a_clear_error():
    from asyncflow_hpc.engines.mindspeed_trainer import MindSpeedTrainerEngine

    with pytest.raises(ConfigError, match="trainer.engine=mindspeed"):
        MindSpeedTrainerEngine(None, device="npu:0")
