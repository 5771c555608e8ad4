"""Configuration of the reward function."""

from __future__ import annotations

from dataclasses import dataclass

from asyncflow_hpc.configlib import opt


@dataclass(kw_only=True)
class RewardConfig:
    """How responses are scored."""

    fn: str = opt("", "Reward function by dotted path (module:function); empty = the dataset's verifier.")
