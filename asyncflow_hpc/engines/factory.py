"""Build the configured rollout and trainer engines (heavy adapters imported only when chosen)."""

from __future__ import annotations

from typing import Any

from asyncflow_hpc.engines.base import RolloutEngine, SamplingParams, TrainerEngine


def sampling_params(rollout_cfg: Any, stop_ids: int | tuple[int, ...], *, greedy: bool = False) -> SamplingParams:
    """Sampling (or greedy evaluation) parameters; `stop_ids` is the tokenizer's stop ids (eos first)."""
    max_new = rollout_cfg.max_new_tokens
    if greedy and rollout_cfg.eval_max_new_tokens > 0:
        max_new = rollout_cfg.eval_max_new_tokens
    stop = (stop_ids,) if isinstance(stop_ids, int) else tuple(stop_ids)
    return SamplingParams(max_new_tokens=max_new, temperature=rollout_cfg.temperature, top_p=rollout_cfg.top_p,
                          top_k=rollout_cfg.top_k, greedy=greedy, stop_token_ids=stop)


def make_rollout(cfg: Any, model: Any, device: str, *, seed: int = 0) -> RolloutEngine:
    """`cfg` is the JobConfig. The torch engine shares `model`; vLLM engines load cfg.model.path."""
    engine = cfg.rollout.engine
    if engine == "torch":
        from asyncflow_hpc.engines.torch_rollout import TorchRolloutEngine

        return TorchRolloutEngine(model, device=device)
    from asyncflow_hpc.engines.vllm_rollout import VLLMOptions, VLLMRolloutEngine
    from asyncflow_hpc.errors import ConfigError
    from asyncflow_hpc.models.hf import expand_path

    if not cfg.model.path:
        raise ConfigError(f"rollout.engine={engine} needs model.path (a local HF model directory)")
    r = cfg.rollout
    opts = VLLMOptions(model_path=expand_path(cfg.model.path), dtype=cfg.model.dtype, seed=seed,
                       max_model_len=r.max_model_len or cfg.data.max_prompt_tokens + r.max_new_tokens_any,
                       gpu_memory_utilization=r.gpu_memory_utilization, kv_cache_gb=r.kv_cache_gb,
                       enforce_eager=r.enforce_eager)
    kind = device.split(":")[0]
    if engine == "vllm_ascend" and kind != "npu":
        raise ConfigError(f"rollout.engine=vllm_ascend needs device.kind=npu (this rank has {device})")
    return VLLMRolloutEngine(opts, platform=kind)


def trainers_evaluate(cfg: Any) -> bool:
    """Whether trainer ranks answer held-out prompts: with a torch rollout engine sharing their whole model.
    A vLLM engine lives on rollout ranks only; a sharded (fsdp) model must never run a forward on one rank alone."""
    return cfg.rollout.engine == "torch" and cfg.trainer.engine != "fsdp"


def owns_engine(cfg: Any, layout: Any, rank: int) -> bool:
    """Whether `rank` builds a rollout engine: every rollout rank; trainer ranks too when the engine is the
    torch one sharing the trainer's whole model (evaluation uses it for free; see stages.trainers_evaluate).
    A vLLM engine holds device memory and its own process group: only rollout ranks (and colocated ranks)
    own one; a sharded trainer's model cannot run a forward on one rank alone."""
    from asyncflow_hpc.topology.roles import Role

    if layout.has(rank, Role.ROLLOUT):
        return True
    return trainers_evaluate(cfg) and layout.has(rank, Role.TRAINER)


def auto_trainer_engine(device_kind: str, trainer_ranks: int) -> str:
    """trainer.engine=auto: the sharded trainer where sharding pays (several trainer ranks on accelerators)."""
    return "fsdp" if device_kind in ("cuda", "npu") and trainer_ranks > 1 else "torch"


def resolve_trainer_engine(cfg: Any, device_kind: str, trainer_ranks: int) -> str:
    """Every rank, before anything reads cfg.trainer.engine: replace `auto` by the engine it stands for. With
    fsdp_* keys set, auto must become fsdp (else a named error)."""
    from asyncflow_hpc.errors import ConfigError

    t = cfg.trainer
    if t.engine == "auto":
        t.engine = auto_trainer_engine(device_kind, trainer_ranks)
        if t.engine != "fsdp" and (t.fsdp_cpu_offload or t.fsdp_activation_checkpointing):
            raise ConfigError(f"trainer.engine=auto chose {t.engine} ({trainer_ranks} trainer rank(s) on "
                              f"{device_kind}), but trainer.fsdp_* keys are set; set trainer.engine=fsdp",
                              key="trainer.engine")
    return t.engine


def make_trainer(cfg: Any, model: Any, *, pad_id: int, group: Any, device: str,
                 reference: bool | None = None) -> TrainerEngine:
    """reference=False: hold no reference copy (dedicated reference ranks send its log-probs)."""
    if cfg.trainer.engine == "auto":  # outside a job (tools, tests): decided from this device and group
        import torch.distributed as dist

        size = dist.get_world_size(group) if group is not None and dist.is_initialized() else 1
        resolve_trainer_engine(cfg, device.split(":")[0], size)
    kwargs = dict(trainer_cfg=cfg.trainer, algo_cfg=cfg.algorithm, temperature=cfg.rollout.temperature,
                  pad_id=pad_id, group=group, device=device, reference=reference)
    if cfg.trainer.engine == "mindspeed":
        from asyncflow_hpc.engines.mindspeed_trainer import MindSpeedTrainerEngine

        return MindSpeedTrainerEngine(model, **kwargs)
    if cfg.trainer.engine == "fsdp":
        from asyncflow_hpc.engines.fsdp_trainer import FSDPTrainerEngine

        return FSDPTrainerEngine(model, **kwargs)
    from asyncflow_hpc.engines.torch_trainer import TorchTrainerEngine

    return TorchTrainerEngine(model, **kwargs)


def maybe_emulate(cfg: Any, rollout: Any = None, trainer: Any = None, *, dp: int = 1) -> tuple[Any, Any]:
    """Wrap engines with emulated accelerator time when `emulation.enabled` (benchmarks on CPU machines)."""
    if not cfg.emulation.enabled:
        return rollout, trainer
    from asyncflow_hpc.engines.emulated import EmulatedRollout, EmulatedTrainer

    if rollout is not None:
        rollout = EmulatedRollout(rollout, cfg.emulation)
    if trainer is not None:
        trainer = EmulatedTrainer(trainer, cfg.emulation, cfg.run.seed, cfg.data.prompts_per_step, dp)
    return rollout, trainer
