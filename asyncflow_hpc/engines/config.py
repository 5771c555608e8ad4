"""Configuration of the rollout and trainer engines."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from asyncflow_hpc.configlib import fail, opt


@dataclass(kw_only=True)
class RolloutConfig:
    """The inference engine that generates responses."""

    engine: Literal["torch", "vllm", "vllm_ascend"] = opt("torch", "Rollout engine.")
    n: int = opt(8, "Responses per prompt (the GRPO group size); a group is the engine's batching unit.")
    max_new_tokens: int = opt(64, "Maximum response length in tokens (the eos token counts).")
    temperature: float = opt(1.0, "Sampling temperature (behaviour and trainer log-probs use it too).")
    top_p: float = opt(1.0, "Nucleus sampling mass (1.0 = off).")
    top_k: int = opt(0, "Top-k sampling (0 = off).")
    eval_max_new_tokens: int = opt(-1, "Response length for held-out evaluation (greedy); -1 = max_new_tokens.")
    gpu_memory_utilization: float = opt(0.4, "vLLM on GPU/NPU: fraction of device memory for weights + KV cache.")
    kv_cache_gb: float = opt(1.0, "vLLM on CPU: GiB of KV cache per engine (VLLM_CPU_KVCACHE_SPACE).")
    max_model_len: int = opt(0, "vLLM: longest prompt + response in tokens; 0 = data.max_prompt_tokens + the "
                                "longest response (max_new_tokens or eval_max_new_tokens).")
    enforce_eager: bool = opt(True, "vLLM: run eagerly (no CUDA graphs / torch.compile); faster start-up.")

    def __post_init__(self) -> None:
        if self.n < 1:
            raise fail("n", f"must be >= 1, got {self.n}")
        if self.max_new_tokens < 1:
            raise fail("max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        if self.temperature <= 0:
            raise fail("temperature", f"must be > 0 (greedy evaluation is separate), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise fail("top_p", f"must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise fail("top_k", f"must be >= 0, got {self.top_k}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise fail("gpu_memory_utilization", f"must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.kv_cache_gb <= 0:
            raise fail("kv_cache_gb", f"must be > 0, got {self.kv_cache_gb}")
        if self.max_model_len < 0:
            raise fail("max_model_len", f"must be >= 0 (0 = derived), got {self.max_model_len}")

    @property
    def max_new_tokens_any(self) -> int:
        """The longest response either sampling or evaluation asks for."""
        return max(self.max_new_tokens, self.eval_max_new_tokens)


@dataclass(kw_only=True)
class TrainerConfig:
    """The training engine that updates the policy."""

    engine: Literal["auto", "torch", "fsdp", "mindspeed"] = opt(
        "auto", "Trainer engine: torch (a full replica per rank), fsdp (PyTorch FSDP2: parameters, gradients "
                "and optimizer state sharded over the trainer ranks), mindspeed; auto = fsdp for more than one "
                "trainer rank on cuda/npu devices, torch otherwise (decided on the ranks, from their device).")
    lr: float = opt(1e-5, "AdamW learning rate.")
    weight_decay: float = opt(0.0, "AdamW weight decay.")
    betas: list[float] = opt(factory=lambda: [0.9, 0.999], help="AdamW betas.")
    grad_clip: float = opt(1.0, "Global gradient-norm clip (0 = off).")
    micro_batch_rows: int = opt(16, "Rows per forward/backward on one data-parallel rank.")
    updates_per_step: int = opt(1, "Optimizer updates per trainer step (the global batch split into this many mini-batches).")
    allreduce_bucket_mb: float = opt(64.0, "Gradient all-reduce bucket size (MiB) over the trainer group.")
    fsdp_activation_checkpointing: bool = opt(
        False, "trainer.engine=fsdp: recompute each decoder layer's activations in backward (less memory, "
               "about one more forward).")
    fsdp_cpu_offload: bool = opt(
        False, "trainer.engine=fsdp: keep the sharded parameters, gradients and optimizer state in host memory "
               "and step the optimizer there (FSDP2 CPUOffloadPolicy).")
    sft_warmup_steps: int = opt(0, "Supervised warm-up steps on reference answers before RL (0 = none).")
    sft_lr: float = opt(1e-3, "Learning rate of the supervised warm-up.")
    sft_targets: Literal["shuffled", "reference"] = opt(
        "shuffled", "Warm-up targets: reference answers, or answers of other examples (teaches the answer "
                    "format only, so RL has the task left to learn).")
    sft_batch: int = opt(32, "Examples per supervised warm-up step (global, split over the trainer ranks).")

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.sft_lr <= 0:
            raise fail("lr", f"learning rates must be > 0, got lr={self.lr}, sft_lr={self.sft_lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise fail("betas", f"must be two numbers in [0, 1), got {self.betas}")
        for name in ("micro_batch_rows", "updates_per_step", "sft_batch"):
            if getattr(self, name) < 1:
                raise fail(name, f"must be >= 1, got {getattr(self, name)}")
        if self.grad_clip < 0:
            raise fail("grad_clip", f"must be >= 0, got {self.grad_clip}")
        if self.sft_warmup_steps < 0:
            raise fail("sft_warmup_steps", f"must be >= 0, got {self.sft_warmup_steps}")
        if self.allreduce_bucket_mb <= 0:
            raise fail("allreduce_bucket_mb", f"must be > 0, got {self.allreduce_bucket_mb}")
        for name in ("fsdp_activation_checkpointing", "fsdp_cpu_offload"):
            if getattr(self, name) and self.engine not in ("fsdp", "auto"):
                raise fail(name, f"applies to trainer.engine=fsdp only (engine is {self.engine!r}); set it to false")


@dataclass(kw_only=True)
class EmulationConfig:
    """Emulated accelerator time (benchmarks on CPU-only machines); off in real runs."""

    enabled: bool = opt(False, "Pad engine calls to an emulated device's time (bench e2e on CPU machines).")
    prefill_s: float = opt(0.002, "Emulated prefill time of one prompt group.")
    decode_s_per_token: float = opt(0.0005, "Emulated decode time per token position of a group (memory-bound).")
    train_s_per_token: float = opt(0.00002, "Emulated train time per response token on one device.")
    step_overhead_s: float = opt(0.005, "Emulated fixed cost of one train step (optimizer, launch).")
    length_mu: float = opt(3.0, "Virtual response length ~ lognormal(mu, sigma), tokens.")
    length_sigma: float = opt(1.0, "Lognormal sigma of virtual response lengths (the long tail).")
    length_max: int = opt(1024, "Cap of the virtual response length.")
    time_scale: float = opt(1.0, "Multiplies every emulated time: larger values make device time dominate host "
                                 "contention (the sync/async ratio of the cost model does not depend on it).")

    def __post_init__(self) -> None:
        if self.time_scale <= 0:
            raise fail("time_scale", f"must be > 0, got {self.time_scale}")
        for name in ("prefill_s", "decode_s_per_token", "train_s_per_token", "step_overhead_s", "length_sigma"):
            if getattr(self, name) < 0:
                raise fail(name, f"must be >= 0, got {getattr(self, name)}")
        if self.length_max < 1:
            raise fail("length_max", f"must be >= 1, got {self.length_max}")
