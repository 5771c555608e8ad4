"""Weight sync from the trainer leader to rollout ranks: buckets, sender, receiver (version, checksum, timeout).

Pure, torch-free:  buckets.py (plan_buckets, TensorSpec, BucketPlan), stagger.py (swap policy), config.py.
torch at the edge: checksum.py, flat.py, wire.py, sender.py (WeightSender), receiver.py (WeightReceiver).
Names below resolve lazily, so `import asyncflow_hpc.weights` does not import torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "WeightSyncConfig": "config", "TensorSpec": "buckets", "BucketPlan": "buckets", "plan_buckets": "buckets",
    "SwapGate": "stagger", "should_swap": "stagger", "swap_schedule": "stagger",
    "WeightSender": "sender", "SendHandle": "sender", "SendStats": "sender",
    "WeightReceiver": "receiver", "RecvStats": "receiver", "plan_for": "flat",
    "WeightSyncError": "errors", "ChecksumError": "errors", "LayoutMismatchError": "errors",
    "VersionError": "errors",
}


def __getattr__(name: str):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'asyncflow_hpc.weights' has no attribute {name!r}")
    return getattr(importlib.import_module(f"asyncflow_hpc.weights.{mod}"), name)


__all__ = sorted(_EXPORTS)
