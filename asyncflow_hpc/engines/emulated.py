"""Accelerator-time emulation for benchmarks on CPU-only machines: each rank acts as one device.

On a 2-core machine four ranks cannot show what overlapping four accelerators gives: their host
compute shares two cores. With `emulation.enabled`, the engines still run the real (tiny) model and
produce real rows, but each generate/train call is padded with sleep to the time a device would
take under a simple cost model, with response lengths drawn from a long-tailed (lognormal)
distribution as in reasoning RL. Sleeping ranks do not use the cores, so the wall clock measures the
pipeline (who waits for whom), not the host. The cost model, not the tiny model, sets the pace:
benchmarks that use it say so in their output.

Host overrun: a call whose real host work takes longer than its emulated device time is not padded,
and the excess is host contention, not device time (e.g. 4 colocated ranks all computing on 2 cores).
Each wrapper adds that excess to `overrun_s`; the workflows report it per role and `bench e2e` warns
when it is a noticeable share of the loop, since it biases the comparison towards whichever mode
computes on fewer ranks at once.

Cost model (seconds, all multiplied by time_scale):
  generate call (one or more prompt groups, batched) = prefill_s + decode_s_per_token * max(virtual lengths)
  train step                = step_overhead_s + train_s_per_token * sum(virtual lengths) / dp
"""

from __future__ import annotations

import math
import random
import time
from typing import Any, Iterable

from asyncflow_hpc.engines.config import EmulationConfig  # noqa: F401 (re-exported: its config lives in engines/config)


def virtual_length(cfg: EmulationConfig, seed: int) -> int:
    """The emulated response length of the sample with this seed (deterministic)."""
    x = random.Random(seed ^ 0x5EED5EED).gauss(cfg.length_mu, cfg.length_sigma)
    return max(1, min(cfg.length_max, int(round(math.exp(x)))))


def group_time(cfg: EmulationConfig, seeds: Iterable[int]) -> float:
    """Device time of one generate call: prefill, then decode until its longest response ends (batched)."""
    return cfg.time_scale * (cfg.prefill_s + cfg.decode_s_per_token * max(virtual_length(cfg, s) for s in seeds))


def train_time(cfg: EmulationConfig, seeds: Iterable[int], dp: int) -> float:
    """Device time of one train step over these rows on each of `dp` data-parallel devices."""
    tokens = sum(virtual_length(cfg, s) for s in seeds)
    return cfg.time_scale * (cfg.step_overhead_s + cfg.train_s_per_token * tokens / max(dp, 1))


def _pad(started: float, target_s: float) -> float:
    """Sleep until `target_s` after `started`; returns the host overrun (seconds past the target)."""
    left = target_s - (time.perf_counter() - started)
    if left > 0:
        time.sleep(left)
        return 0.0
    return -left


class EmulatedRollout:
    """Wraps a rollout engine; generate() takes the emulated device time (at least)."""

    def __init__(self, inner: Any, cfg: EmulationConfig):
        self.inner, self.cfg = inner, cfg
        self.overrun_s = 0.0  # host time beyond the emulated device time, summed over calls

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def version(self) -> int:
        return self.inner.version

    @version.setter
    def version(self, v: int) -> None:
        self.inner.version = v

    def generate(self, prompts, params, seeds):
        t = time.perf_counter()
        out = self.inner.generate(prompts, params, seeds)
        if not params.greedy:  # evaluation is not part of the emulated pipeline
            self.overrun_s += _pad(t, group_time(self.cfg, seeds))
        return out

    def load_weights(self, named_tensors, version: int) -> None:
        self.inner.load_weights(named_tensors, version)


class EmulatedTrainer:
    """Wraps a trainer engine; train_step() takes the emulated device time (at least)."""

    def __init__(self, inner: Any, cfg: EmulationConfig, run_seed: int, prompts_per_step: int, dp: int):
        self.inner, self.cfg, self.run_seed, self.P, self.dp = inner, cfg, run_seed, prompts_per_step, dp
        self.overrun_s = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def train_step(self, rows):
        from asyncflow_hpc.seeds import derive_seed

        t = time.perf_counter()
        out = self.inner.train_step(rows)
        seeds = [derive_seed(self.run_seed, r.prompt_id // self.P, r.prompt_id, r.sample_index) for r in rows]
        self.overrun_s += _pad(t, train_time(self.cfg, seeds, self.dp))
        return out
