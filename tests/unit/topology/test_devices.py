"""Device and backend choice per rank, with availability injected (no GPU/NPU needed)."""

import pytest

from asyncflow_hpc.errors import LaunchError
from asyncflow_hpc.topology.comms import choose_device
from asyncflow_hpc.topology.config import DeviceConfig


def test_auto_prefers_cuda_then_npu_then_cpu():
    cfg = DeviceConfig()
    assert choose_device(cfg, 3, cuda_available=True, npu_available=False).torch_device == "cuda:3"
    d = choose_device(cfg, 1, cuda_available=False, npu_available=True)
    assert (d.kind, d.backend, d.torch_device) == ("npu", "hccl", "npu:1")
    d = choose_device(cfg, 2, cuda_available=False, npu_available=False)
    assert (d.kind, d.backend, d.torch_device) == ("cpu", "gloo", "cpu")


def test_backend_must_fit_device():
    with pytest.raises(LaunchError, match="nccl does not work with device.kind=cpu"):
        choose_device(DeviceConfig(kind="cpu", backend="nccl"), 0)


@pytest.mark.skipif(__import__("importlib").util.find_spec("torch_npu") is not None,
                    reason="torch_npu is installed: this checks the error on machines without it")
def test_npu_without_torch_npu_is_a_clear_error():
    # torch_npu is not installed on CPU machines: asking for it must say what to do.
    with pytest.raises(LaunchError, match="torch_npu"):
        choose_device(DeviceConfig(kind="npu"), 0)
