"""Configuration of the policy model (a local HF-format directory, or the tiny embedded model)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from asyncflow_hpc.configlib import fail, opt


@dataclass(kw_only=True)
class ModelConfig:
    """The policy model."""

    path: str = opt("", "Local Hugging Face model directory (config.json + safetensors + tokenizer); "
                        "${VAR} is expanded; empty = the tiny embedded model (randomly initialised).")
    dtype: Literal["float32", "bfloat16", "float16"] = opt("float32", "Parameter dtype (float32 on CPU).")
    save_path: str = opt("", "If set, the trainer leader saves the final policy here (HF format, safetensors); "
                             "{run_dir} is substituted.")
    # The tiny embedded model (used only when `path` is empty).
    tiny_arch: Literal["llama", "qwen2"] = opt("llama", "Architecture of the tiny embedded model.")
    tiny_hidden: int = opt(64, "Hidden size of the tiny embedded model.")
    tiny_layers: int = opt(2, "Decoder layers of the tiny embedded model.")
    tiny_heads: int = opt(4, "Attention heads of the tiny embedded model.")
    tiny_max_positions: int = opt(64, "Maximum sequence length of the tiny embedded model.")
    init_seed: int = opt(1234, "Seed of the tiny model's random initialisation (identical on every rank).")

    def __post_init__(self) -> None:
        for name in ("tiny_hidden", "tiny_layers", "tiny_heads", "tiny_max_positions"):
            if getattr(self, name) < 1:
                raise fail(name, f"must be >= 1, got {getattr(self, name)}")
        if self.tiny_hidden % self.tiny_heads:
            raise fail("tiny_hidden", f"{self.tiny_hidden} is not divisible by tiny_heads={self.tiny_heads}")
