"""Configuration of the RL workflow (what the ranks run, sync or async, staleness bound)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from asyncflow_hpc.configlib import fail, opt


@dataclass(kw_only=True)
class WorkflowConfig:
    """What the ranks of the job run."""

    job: Literal["smoke", "train"] = opt("train", "smoke: role report + weight broadcast + RMA round trip; train: RL.")
    mode: Literal["sync", "async"] = opt("sync", "sync: colocated generate-then-train; async: trainer and rollout groups stream through the store.")
    eta: int = opt(1, "Staleness bound: trainer step v consumes row r only if v - version(r) <= eta.")
    steps: int = opt(20, "Trainer steps (policy versions) to run.")

    def __post_init__(self) -> None:
        if self.eta < 0:
            raise fail("eta", f"must be >= 0, got {self.eta}")
        if self.steps < 0:
            raise fail("steps", f"must be >= 0, got {self.steps}")
