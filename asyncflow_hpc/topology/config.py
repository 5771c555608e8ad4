"""Configuration of the rank layout and of devices; checked before any process group exists."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from asyncflow_hpc.configlib import fail, opt


@dataclass(kw_only=True)
class TopologyConfig:
    """How the ranks of the job split into roles."""

    world_size: int = opt(4, "Ranks `asyncflow-hpc run` launches (ignored under srun/mpiexec, where the launcher decides).")
    trainer_ranks: int = opt(1, "Ranks in the trainer group (async mode). In sync mode every rank trains.")
    rollout_ranks: int = opt(-1, "Ranks in the rollout group; -1 = every rank not given another role.")
    reward_ranks: int = opt(0, "Dedicated reward-worker ranks (0 = rewards computed by rollout ranks).")
    reference_ranks: int = opt(0, "Dedicated reference-log-prob ranks (0 = computed by the trainer group).")
    store_ranks: int = opt(0, "Dedicated store (metadata/storage) ranks (0 = the store lives on the other ranks).")
    trainer_dp: int = opt(-1, "Data-parallel size of the trainer group; -1 = trainer_ranks / (trainer_tp * trainer_pp).")
    trainer_tp: int = opt(1, "Tensor-parallel size of the trainer (MindSpeed/Megatron engines).")
    trainer_pp: int = opt(1, "Pipeline-parallel size of the trainer (MindSpeed/Megatron engines).")
    rollout_tp: int = opt(1, "Ranks per rollout engine instance (tensor parallel inside vLLM); the first talks to the store.")
    colocate: bool = opt(False, "Every rank both rolls out and trains (the synchronous baseline).")
    placement: Literal["block", "spread"] = opt(
        "block", "block: roles take consecutive ranks (store, trainer, reference, reward, rollout); "
        "spread: store/reward/reference ranks are spread over nodes.")

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise fail("world_size", f"must be >= 1, got {self.world_size}")
        for name in ("trainer_tp", "trainer_pp", "rollout_tp"):
            if getattr(self, name) < 1:
                raise fail(name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("trainer_ranks", "reward_ranks", "reference_ranks", "store_ranks"):
            if getattr(self, name) < 0:
                raise fail(name, f"must be >= 0, got {getattr(self, name)}")
        if self.rollout_ranks < -1:
            raise fail("rollout_ranks", f"must be >= 0 or -1 (the rest), got {self.rollout_ranks}")
        if self.trainer_dp != -1 and self.trainer_dp < 1:
            raise fail("trainer_dp", f"must be >= 1 or -1 (derived), got {self.trainer_dp}")


@dataclass(kw_only=True)
class DeviceConfig:
    """Which accelerator each rank uses and which collective backend goes with it."""

    kind: Literal["auto", "cpu", "cuda", "npu"] = opt(
        "auto", "auto: CUDA if available, else Ascend NPU if torch_npu imports, else CPU.")
    backend: Literal["auto", "gloo", "nccl", "hccl"] = opt(
        "auto", "torch.distributed backend: auto = nccl on CUDA, hccl on NPU, gloo on CPU.")
    threads_per_rank: int = opt(1, "torch intra-op threads per rank on CPU (ranks share cores).")
    dist_timeout_s: float = opt(600.0, "Timeout of torch.distributed collectives (process-group timeout).")

    def __post_init__(self) -> None:
        if self.threads_per_rank < 1:
            raise fail("threads_per_rank", f"must be >= 1, got {self.threads_per_rank}")
        if self.dist_timeout_s <= 0:
            raise fail("dist_timeout_s", f"must be > 0, got {self.dist_timeout_s}")
