"""Engine interfaces: a rollout engine generates, a trainer engine computes log-probs and updates.

Rows travel as `Row`s (one response to one prompt). The contract that makes runs reproducible:
a sample's tokens depend only on (weights, prompt, sampling params, its seed, its group): engines
batch one prompt group (the n consecutive samples of one prompt) at a time and draw each sample
from its own `torch.Generator`, so neither the rank that generated it nor other prompts matter.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Iterable


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    greedy: bool = False
    stop_token_ids: tuple[int, ...] = ()


@dataclass
class Generation:
    """One sampled response: ids (eos included if emitted), behaviour log-prob per token, length."""

    response_ids: list[int]
    logprobs: list[float]
    length: int
    finished: bool  # stopped on a stop token (False: hit max_new_tokens)


@dataclass
class Row:
    """One sample: a response to one prompt, with everything the trainer needs."""

    prompt_id: int
    sample_index: int
    prompt_ids: list[int]
    response_ids: list[int]
    behav_logprobs: list[float]
    version: int = 0
    reward: float = 0.0
    advantage: float = 0.0
    ref_logprobs: list[float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[int, int]:
        return (self.prompt_id, self.sample_index)


def sorted_rows(rows: Iterable[Row]) -> list[Row]:
    """The deterministic order of a global batch: by (prompt id, sample index)."""
    rows = sorted(rows, key=lambda r: r.key)
    for a, b in zip(rows, rows[1:]):
        if a.key == b.key:
            raise ValueError(f"batch holds row (prompt {a.prompt_id}, sample {a.sample_index}) twice")
    return rows


class RolloutEngine(abc.ABC):
    """Generates responses; receives new weights by name."""

    version: int = 0

    @abc.abstractmethod
    def generate(self, prompts: list[list[int]], params: SamplingParams, seeds: list[int]) -> list[Generation]:
        """One Generation per prompt entry. Consecutive identical prompts form a group that is
        batched together; pass each group's samples consecutively and whole."""

    @abc.abstractmethod
    def load_weights(self, named_tensors: Iterable[tuple[str, Any]], version: int) -> None:
        """Replace the weights (full tensors, HF parameter names) and set `version`."""


class TrainerEngine(abc.ABC):
    """Computes log-probs and updates the policy over a data-parallel trainer group."""

    version: int = 0

    @abc.abstractmethod
    def log_probs(self, rows: list[Row]) -> list[list[float]]:
        """Per-token log-probs of each row's response under the current policy (no grad)."""

    @abc.abstractmethod
    def train_step(self, rows: list[Row]) -> dict[str, float]:
        """One trainer step on the GLOBAL batch (the same rows on every trainer rank); returns metrics."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Model + optimizer + version, for checkpoints."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    def named_parameters_for_broadcast(self) -> list[tuple[str, Any]]:
        """Full weights (HF names) as held by the trainer leader, for the weight broadcast."""
