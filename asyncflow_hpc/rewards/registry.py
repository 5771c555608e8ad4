"""Reward functions: built-in verifiers and user functions named by dotted path 'module:function'.

Contract (checked when loaded and on every call): fn(prompt: str, response: str, reference: str)
-> float (bool and int accepted, NaN and inf rejected).
"""

from __future__ import annotations

import importlib
import inspect
import math
from typing import Callable

from asyncflow_hpc.errors import AsyncFlowError

RewardFn = Callable[[str, str, str], float]


class RewardError(AsyncFlowError):
    """A reward function cannot be loaded, has the wrong signature, or returned a bad value."""


def load_reward_fn(dotted: str) -> RewardFn:
    """Import 'package.module:function' and check it accepts (prompt, response, reference)."""
    if ":" not in dotted:
        raise RewardError(f"reward.fn: {dotted!r} must look like 'package.module:function'")
    mod_name, fn_name = dotted.split(":", 1)
    try:
        module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise RewardError(f"reward.fn: cannot import module {mod_name!r}: {exc}; is it on PYTHONPATH?") from None
    fn = getattr(module, fn_name, None)
    if fn is None or not callable(fn):
        raise RewardError(f"reward.fn: module {mod_name!r} has no function {fn_name!r}")
    try:
        inspect.signature(fn).bind("prompt", "response", "reference")
    except TypeError:
        raise RewardError(f"reward.fn: {dotted} must accept (prompt: str, response: str, reference: str), "
                          f"its signature is {inspect.signature(fn)}") from None
    return checked(fn, dotted)


def checked(fn: RewardFn, name: str) -> RewardFn:
    """Wrap `fn` so a non-numeric or non-finite result raises RewardError naming it."""

    def call(prompt: str, response: str, reference: str) -> float:
        value = fn(prompt, response, reference)
        if isinstance(value, bool):
            return float(value)
        if not isinstance(value, (int, float)) or not math.isfinite(float(value)):
            raise RewardError(f"reward.fn: {name} returned {value!r} ({type(value).__name__}); "
                              f"it must return a finite float")
        return float(value)

    call.__name__ = getattr(fn, "__name__", "reward")
    return call


def make_reward_fn(reward_cfg, default: RewardFn) -> RewardFn:
    """The configured reward: reward.fn if set, else `default` (the dataset's verifier), scaled to
    reward.correct / reward.wrong for built-in 0/1 verifiers."""
    if reward_cfg.fn:
        return load_reward_fn(reward_cfg.fn)
    hi, lo = reward_cfg.correct, reward_cfg.wrong

    def scaled(prompt: str, response: str, reference: str) -> float:
        return hi if default(prompt, response, reference) > 0.5 else lo

    return scaled
