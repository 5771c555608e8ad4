"""Checkpoint and resume: trainer (HF safetensors) + optimizer, RNG, store rows in flight, prompt schedule.

    from asyncflow_hpc.checkpoint import CheckpointConfig, latest, resolve_resume, read_meta
    path = resolve_resume(cfg.resume, cfg.checkpoint.resolved_dir(cfg.run.resolved_dir))

Torch-dependent parts live in `asyncflow_hpc.checkpoint.state` (imported by the workflows only).
See docs/reliability.md.
"""

from __future__ import annotations

from asyncflow_hpc.checkpoint.config import CheckpointConfig
from asyncflow_hpc.checkpoint.files import (CheckpointError, latest, list_checkpoints, prune, read_meta,
                                            resolve_resume, staged_dir)
from asyncflow_hpc.checkpoint.signals import StopFlag

__all__ = ["CheckpointConfig", "CheckpointError", "latest", "list_checkpoints", "prune", "read_meta",
           "resolve_resume", "staged_dir", "StopFlag"]
