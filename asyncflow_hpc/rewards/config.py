"""Configuration of the reward function."""

from __future__ import annotations

from dataclasses import dataclass

from asyncflow_hpc.configlib import fail, opt


@dataclass(kw_only=True)
class RewardConfig:
    """How responses are scored."""

    fn: str = opt("", "Reward function by dotted path 'package.module:function' with signature "
                      "fn(prompt: str, response: str, reference: str) -> float; empty = the dataset's verifier.")
    correct: float = opt(1.0, "Reward of a verified-correct answer (built-in verifiers).")
    wrong: float = opt(0.0, "Reward of a wrong or missing answer (built-in verifiers).")

    def __post_init__(self) -> None:
        if self.fn and (":" not in self.fn or not all(self.fn.split(":", 1))):
            raise fail("fn", f"must look like 'package.module:function', got {self.fn!r}")
