"""Configuration of the RL algorithm (loss and advantages)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from asyncflow_hpc.configlib import opt


@dataclass(kw_only=True)
class AlgorithmConfig:
    """The RL objective."""

    name: Literal["grpo", "ppo"] = opt("grpo", "Algorithm.")
