"""Advantage estimators as pure functions on plain lists (no devices): GRPO group normalisation (group or batch
std, or none: Dr. GRPO), batch baseline, DAPO overlong reward shaping, the share of zero-signal groups."""

from __future__ import annotations

import math
from typing import Any, Sequence


def grpo_advantages(rewards: Sequence[float], group_ids: Sequence[int], *, norm_std: bool = True,
                    eps: float = 1e-6) -> list[float]:
    """A_i = (r_i - mean_g) / (std_g + eps), g the group of row i; std is the unbiased (n-1) sample std
    as in GRPO/verl, and 0 for a group of one. With norm_std=False: A_i = r_i - mean_g (Dr. GRPO)."""
    if len(rewards) != len(group_ids):
        raise ValueError(f"{len(rewards)} rewards but {len(group_ids)} group ids")
    groups: dict[int, list[float]] = {}
    for r, g in zip(rewards, group_ids):
        groups.setdefault(g, []).append(float(r))
    stats = {}
    for g, rs in groups.items():
        mean = math.fsum(rs) / len(rs)
        var = math.fsum((r - mean) ** 2 for r in rs) / (len(rs) - 1) if len(rs) > 1 else 0.0
        stats[g] = (mean, math.sqrt(var))
    out = []
    for r, g in zip(rewards, group_ids):
        mean, std = stats[g]
        if not norm_std:
            out.append(float(r) - mean)
        else:  # a group whose rewards are all equal has no signal (0 / eps = 0)
            out.append((float(r) - mean) / (std + eps) if std + eps > 0 else 0.0)
    return out


def batch_baseline_advantages(rewards: Sequence[float]) -> list[float]:
    """A_i = r_i - mean(r): the critic-free baseline used by algorithm.name=ppo."""
    if not rewards:
        return []
    mean = math.fsum(float(r) for r in rewards) / len(rewards)
    return [float(r) - mean for r in rewards]


def batch_std_advantages(rewards: Sequence[float], group_ids: Sequence[int], *, eps: float = 1e-6) -> list[float]:
    """A_i = (r_i - mean_g) / (std_batch + eps): group-centred, divided by the unbiased std of every reward in
    the batch (TRL scale_rewards='batch'; Liu et al. 2025 'Tricks or Traps', Lite PPO). Less sensitive than the
    group std to groups that are almost constant, where (r - mean) / std_g blows up small differences."""
    if len(rewards) != len(group_ids):
        raise ValueError(f"{len(rewards)} rewards but {len(group_ids)} group ids")
    centred = grpo_advantages(rewards, group_ids, norm_std=False)
    n = len(rewards)
    if n < 2:
        return [0.0] * n
    mean = math.fsum(float(r) for r in rewards) / n
    std = math.sqrt(math.fsum((float(r) - mean) ** 2 for r in rewards) / (n - 1))
    return [c / (std + eps) for c in centred]


def overlong_penalty(length: int, *, max_len: int, buffer: int, factor: float = 1.0) -> float:
    """DAPO soft overlong punishment (Yu et al. 2025, arXiv 2503.14476, eq. 13), added to the reward:
    0 if |y| <= L_max - L_cache; ((L_max - L_cache) - |y|) / L_cache * factor inside the buffer; -factor at
    and beyond L_max (L_max = rollout.max_new_tokens, L_cache = buffer)."""
    if buffer <= 0:
        return 0.0
    start = max_len - buffer
    if length <= start:
        return 0.0
    return -factor * min(length - start, buffer) / buffer


def zero_signal_groups(rewards: Sequence[float], group_ids: Sequence[int]) -> set[int]:
    """Prompt groups whose rewards are all equal: their group-normalised advantages are all 0, so they give
    no gradient (DAPO's dynamic sampling filters them out)."""
    groups: dict[int, set[float]] = {}
    for r, g in zip(rewards, group_ids):
        groups.setdefault(int(g), set()).add(float(r))
    return {g for g, v in groups.items() if len(v) == 1}


def zero_signal_share(rewards: Sequence[float], group_ids: Sequence[int]) -> float:
    """Share of prompt groups whose rewards are all equal (zero_signal_groups)."""
    n = len(set(int(g) for g in group_ids))
    return len(zero_signal_groups(rewards, group_ids)) / n if n else 0.0


def compute_advantages(rewards: Sequence[float], group_ids: Sequence[int], lengths: Sequence[int],
                       algo: Any) -> list[float]:
    """Advantages of a global batch under AlgorithmConfig `algo`: overlong shaping of the rewards (if on),
    then GRPO group normalisation (group or batch std, or none) or the ppo batch baseline."""
    if algo.overlong_buffer:
        if not algo.max_response_len:
            raise ValueError("algorithm.overlong_buffer needs the rollout's max_new_tokens (AlgorithmConfig."
                             "check_job, done by the job config)")
        rewards = [float(r) + overlong_penalty(n, max_len=algo.max_response_len, buffer=algo.overlong_buffer,
                                               factor=algo.overlong_penalty) for r, n in zip(rewards, lengths)]
    if algo.name != "grpo":
        return batch_baseline_advantages(rewards)
    if algo.adv_std == "batch":
        return batch_std_advantages(rewards, group_ids, eps=algo.adv_eps)
    return grpo_advantages(rewards, group_ids, norm_std=algo.norm_adv_by_std, eps=algo.adv_eps)
