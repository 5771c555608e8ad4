"""Advantage estimators as pure functions on plain lists (no devices): GRPO group normalisation, batch baseline."""

from __future__ import annotations

import math
from typing import Sequence


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
