"""HF-format models: tiny Llama/Qwen2 save -> load round trip (safetensors), and clear errors."""

import json
import os

import pytest

torch = pytest.importorskip("torch")

from asyncflow_hpc.errors import ConfigError  # noqa: E402
from asyncflow_hpc.models.config import ModelConfig  # noqa: E402
from asyncflow_hpc.models.hf import build_policy, load_pretrained, save_pretrained  # noqa: E402
from asyncflow_hpc.models.tokenizer import CharTokenizer  # noqa: E402


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_save_load_round_trip(tmp_path, arch):
    cfg = ModelConfig(tiny_arch=arch, tiny_hidden=32, tiny_layers=1, tiny_heads=2, tiny_max_positions=32)
    model, tok = build_policy(cfg, CharTokenizer("0123456789="))
    save_pretrained(model, tok, str(tmp_path))
    assert os.path.exists(tmp_path / "model.safetensors") and os.path.exists(tmp_path / "config.json")
    arch_name = json.load(open(tmp_path / "config.json"))["architectures"][0]
    assert arch_name == {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[arch]
    back, tok2 = load_pretrained(str(tmp_path))
    ids = torch.tensor([tok.encode("12=3")])
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, back(input_ids=ids).logits, atol=1e-5)
    assert tok2.encode("12=") == tok.encode("12=")


def test_same_seed_same_weights_different_seed_differs():
    a, _ = build_policy(ModelConfig(tiny_hidden=32, tiny_heads=2, init_seed=5))
    b, _ = build_policy(ModelConfig(tiny_hidden=32, tiny_heads=2, init_seed=5))
    c, _ = build_policy(ModelConfig(tiny_hidden=32, tiny_heads=2, init_seed=6))
    wa, wb, wc = (m.state_dict()["model.embed_tokens.weight"] for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_load_errors(tmp_path):
    with pytest.raises(ConfigError, match="not a directory"):
        load_pretrained(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="config.json not found"):
        load_pretrained(str(tmp_path))
    with pytest.raises(ConfigError, match="tiny_hidden"):
        ModelConfig(tiny_hidden=30, tiny_heads=4)


def test_hf_tokenizer_dir_round_trip(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from asyncflow_hpc.models.tokenizer import HFTokenizer, load_tokenizer

    vocab = {"<pad>": 0, "</s>": 1, "the": 2, "answer": 3, "is": 4, "42": 5, "[UNK]": 6}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="</s>", pad_token="<pad>", unk_token="[UNK]")
    fast.save_pretrained(str(tmp_path))
    tok = load_tokenizer(str(tmp_path))
    assert isinstance(tok, HFTokenizer) and tok.eos_id == 1 and tok.pad_id == 0
    ids = tok.encode("the answer is 42")
    assert ids == [2, 3, 4, 5]
    assert tok.decode(ids + [tok.eos_id, 2]) == "the answer is 42"
    model, _ = build_policy(ModelConfig(tiny_hidden=32, tiny_heads=2), CharTokenizer("abc"))
    save_pretrained(model, tok, str(tmp_path / "m"))
    _, tok2 = load_pretrained(str(tmp_path / "m"))
    assert isinstance(tok2, HFTokenizer) and tok2.encode("is 42") == [4, 5]
