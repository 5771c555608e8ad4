"""HF-format causal LMs (Qwen2, Llama): load from / save to a local directory (safetensors), or build tiny.

    model, tok = build_policy(cfg.model, vocab_size_hint, device="cpu")
    save_pretrained(model, tok, "runs/x/final")        # config.json + model.safetensors + tokenizer
    model, tok = load_pretrained("runs/x/final")       # never touches a hub (local_files_only)
"""

from __future__ import annotations

import os
from typing import Any

from asyncflow_hpc.errors import ConfigError
from asyncflow_hpc.models.config import ModelConfig
from asyncflow_hpc.models.tokenizer import CharTokenizer, Tokenizer, load_tokenizer

SUPPORTED = ("LlamaForCausalLM", "Qwen2ForCausalLM")


def _dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def expand_path(path: str) -> str:
    """`${VAR}` and `~` expanded; an undefined variable is an error naming it."""
    out = os.path.expanduser(os.path.expandvars(path))
    if "$" in out:
        raise ConfigError(f"path {path!r}: environment variable in {out!r} is not set")
    return out


def tiny_config(cfg: ModelConfig, vocab_size: int, eos_id: int, pad_id: int) -> Any:
    """A small Llama/Qwen2 config for the embedded default."""
    from transformers import LlamaConfig, Qwen2Config

    common = dict(vocab_size=vocab_size, hidden_size=cfg.tiny_hidden, intermediate_size=2 * cfg.tiny_hidden,
                  num_hidden_layers=cfg.tiny_layers, num_attention_heads=cfg.tiny_heads,
                  num_key_value_heads=cfg.tiny_heads, max_position_embeddings=cfg.tiny_max_positions,
                  tie_word_embeddings=True, eos_token_id=eos_id, pad_token_id=pad_id, bos_token_id=None)
    return (LlamaConfig if cfg.tiny_arch == "llama" else Qwen2Config)(**common)


def tiny_model(cfg: ModelConfig, tokenizer: Tokenizer, device: str = "cpu") -> Any:
    """Randomly initialised tiny causal LM; the same `cfg.init_seed` gives the same weights on every rank."""
    import torch
    from transformers import AutoModelForCausalLM

    hf_cfg = tiny_config(cfg, tokenizer.vocab_size, tokenizer.eos_id, tokenizer.pad_id)
    with torch.random.fork_rng(devices=[]):  # initialised on the CPU, then moved: same weights everywhere
        torch.manual_seed(cfg.init_seed)
        model = AutoModelForCausalLM.from_config(hf_cfg, attn_implementation="eager")
    return model.to(device=device, dtype=_dtype(cfg.dtype))


def load_pretrained(path: str, *, dtype: str = "float32", device: str = "cpu") -> tuple[Any, Tokenizer]:
    """Model + tokenizer from a local directory. Errors name the directory and what is missing."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = expand_path(path)
    if not os.path.isdir(path):
        raise ConfigError(f"model.path: {path!r} is not a directory (expected a local HF model directory "
                          f"with config.json and *.safetensors)")
    if not os.path.exists(os.path.join(path, "config.json")):
        raise ConfigError(f"model.path: {path}/config.json not found; is this a Hugging Face model directory?")
    hf_cfg = AutoConfig.from_pretrained(path, local_files_only=True)
    archs = list(getattr(hf_cfg, "architectures", None) or [])
    if archs and not any(a in SUPPORTED for a in archs):
        raise ConfigError(f"model.path: {path} holds {archs}; supported architectures: {', '.join(SUPPORTED)}")
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=_dtype(dtype),
                                                 use_safetensors=True)
    return model.to(device), load_tokenizer(path)


def save_pretrained(model: Any, tokenizer: Tokenizer, path: str) -> None:
    """Save in the format `load_pretrained` (and vLLM) read: config.json, model.safetensors, tokenizer."""
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save(path)


def build_policy(cfg: ModelConfig, tokenizer: Tokenizer | None = None, device: str = "cpu") -> tuple[Any, Tokenizer]:
    """The configured policy: a local directory if `cfg.path`, else the tiny model with `tokenizer`
    (default: a CharTokenizer over the default alphabet)."""
    if cfg.path:
        return load_pretrained(cfg.path, dtype=cfg.dtype, device=device)
    tokenizer = tokenizer or CharTokenizer()
    return tiny_model(cfg, tokenizer, device), tokenizer


def forward_kwargs_cache_name(model: Any) -> str:
    """transformers 5 renamed `past_key_values` to `cache`; return the name this version accepts."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def broadcast_tensors(model: Any) -> list[tuple[str, Any]]:
    """The model's state dict without tied aliases (with tied embeddings `lm_head.weight` IS the embedding):
    what the weight broadcast sends. Every receiver, torch or vLLM, re-ties on load."""
    seen: set[tuple[int, int]] = set()
    out = []
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.device.type != "meta" else None
        if key is not None and key in seen:
            continue
        if key is None and name == "lm_head.weight" and getattr(model.config, "tie_word_embeddings", False):
            continue  # meta tensors have no storage to compare; the config says it is tied
        if key is not None:
            seen.add(key)
        out.append((name, t.detach()))
    return out


def shape_only_model(path: str, dtype: str = "float32") -> Any:
    """The model at `path` built on the meta device: names, shapes and dtypes, no weights (a rank whose
    engine loads the weights itself, e.g. vLLM, needs only the layout of the broadcast)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_cfg = AutoConfig.from_pretrained(expand_path(path), local_files_only=True)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(hf_cfg, dtype=_dtype(dtype))
