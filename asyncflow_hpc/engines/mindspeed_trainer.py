"""MindSpeed trainer adapter for Ascend NPUs; mindspeed and torch_npu are imported only here.

MindSpeed's adaptor patches torch/transformers with NPU fused kernels (RMSNorm, rotary, flash
attention); the update itself is the torch engine's data-parallel step over the HCCL trainer group.
Megatron tensor/pipeline parallelism (topology.trainer_tp/pp > 1) is not wired in yet.
"""

from __future__ import annotations

from typing import Any

from asyncflow_hpc.engines.torch_trainer import TorchTrainerEngine
from asyncflow_hpc.errors import ConfigError


def import_mindspeed() -> Any:
    try:
        import torch_npu  # noqa: F401
        import mindspeed.megatron_adaptor  # noqa: F401  (applies MindSpeed's patches)
        import mindspeed
    except ImportError as exc:
        raise ConfigError(f"trainer.engine=mindspeed: cannot import torch_npu/mindspeed: {exc}; run on an "
                          f"Ascend node with CANN and `pip install mindspeed`, or set trainer.engine=torch") from None
    return mindspeed


class MindSpeedTrainerEngine(TorchTrainerEngine):
    uses_ddp = False  # MindSpeed brings its own parallelism; the explicit all-reduce path stays
    def __init__(self, model: Any, **kwargs: Any):
        import_mindspeed()
        if not str(kwargs.get("device", "")).startswith("npu"):
            raise ConfigError("trainer.engine=mindspeed needs device.kind=npu")
        super().__init__(model, **kwargs)
