"""Torch side of a BucketPlan: one flat uint8 buffer with bucket views and typed per-tensor views."""

from __future__ import annotations

from typing import Iterable

from asyncflow_hpc.weights.buckets import BucketPlan, TensorSpec, dtype_name, plan_buckets
from asyncflow_hpc.weights.config import WeightSyncConfig


def torch_dtype(name: str):
    import torch

    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"torch has no dtype {name!r}")
    return dt


def spec_of(name: str, tensor) -> TensorSpec:
    return TensorSpec(name=name, shape=tuple(tensor.shape), dtype=dtype_name(tensor.dtype))


def plan_for(named: Iterable[tuple[str, object]] | Iterable[TensorSpec], cfg: WeightSyncConfig) -> BucketPlan:
    """The plan both sides build from the same (name, tensor) pairs or TensorSpecs and config."""
    specs = [x if isinstance(x, TensorSpec) else spec_of(x[0], x[1]) for x in named]
    return plan_buckets(specs, cfg.bucket_bytes, cfg.large_tensors)


class FlatBuffer:
    """`plan.total_bytes` of memory; `bucket(k)` and `tensor(i)` are views into it (no copies)."""

    def __init__(self, plan: BucketPlan, device: str = "cpu", *, pin: bool = False):
        import torch

        self.plan = plan
        # zeros, not empty: the alignment padding is covered by the checksum on both sides.
        self.data = torch.zeros(plan.total_bytes, dtype=torch.uint8, device=device)
        if pin and device == "cpu" and torch.cuda.is_available():
            self.data = self.data.pin_memory()
        self._views = [self._typed(i) for i in range(len(plan.tensors))]

    def _typed(self, i: int):
        p = self.plan.tensors[i]
        raw = self.data[p.offset: p.offset + p.nbytes]
        return raw.view(torch_dtype(p.spec.dtype)).view(p.spec.shape)

    def bucket(self, k: int):
        b = self.plan.buckets[k]
        return self.data[b.start: b.end]

    def tensor(self, i: int):
        return self._views[i]

    def named(self) -> list[tuple[str, object]]:
        return [(p.name, v) for p, v in zip(self.plan.tensors, self._views)]
