"""Configuration of the RL algorithm (loss and advantages)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from asyncflow_hpc.configlib import fail, opt


@dataclass(kw_only=True)
class AlgorithmConfig:
    """The RL objective."""

    name: Literal["grpo", "ppo"] = opt(
        "grpo", "grpo: group-normalised advantages, KL in the loss; ppo: PPO-clip with a batch-mean "
                "baseline advantage (no critic) and the KL penalty folded into the reward.")
    clip_eps: float = opt(0.2, "PPO clip range: ratio clipped to [1 - clip_eps, 1 + clip_eps_high].")
    clip_eps_high: float = opt(-1.0, "Upper clip range (DAPO clip-higher); -1 = clip_eps.")
    norm_adv_by_std: bool = opt(True, "GRPO: divide group-centred rewards by the group std (false = Dr. GRPO).")
    adv_eps: float = opt(1e-6, "Added to the group std before dividing.")
    kl_coef: float = opt(0.0, "Coefficient of the KL to the reference (initial) policy; 0 = no reference model.")
    kl_estimator: Literal["k1", "k2", "k3"] = opt("k3", "Per-token KL estimator (Schulman's k1/k2/k3).")
    loss_agg: Literal["token_mean", "seq_mean_token_mean"] = opt(
        "token_mean", "token_mean: mean over all response tokens of the global batch; "
                      "seq_mean_token_mean: mean over rows of each row's token mean (original GRPO).")
    proximal: Literal["behaviour", "recompute"] = opt(
        "behaviour", "The policy the ratio is taken against: the behaviour log-probs the rollout recorded, or "
                     "the trainer's log-probs at the start of the step (recomputed).")
    correction: Literal["none", "decoupled", "tis"] = opt(
        "none", "Off-policy correction of stale rows (needs proximal=recompute): decoupled = decoupled PPO "
                "weight pi_prox/pi_behav; tis = that weight truncated at tis_cap.")
    tis_cap: float = opt(2.0, "Truncation of the importance weight (correction=tis).")

    def __post_init__(self) -> None:
        if not 0 < self.clip_eps < 1:
            raise fail("clip_eps", f"must be in (0, 1), got {self.clip_eps}")
        if self.clip_eps_high != -1.0 and self.clip_eps_high <= 0:
            raise fail("clip_eps_high", f"must be > 0 or -1 (= clip_eps), got {self.clip_eps_high}")
        if self.kl_coef < 0:
            raise fail("kl_coef", f"must be >= 0, got {self.kl_coef}")
        if self.adv_eps <= 0:
            raise fail("adv_eps", f"must be > 0, got {self.adv_eps}")
        if self.tis_cap < 1:
            raise fail("tis_cap", f"must be >= 1, got {self.tis_cap}")
        if self.correction != "none" and self.proximal != "recompute":
            raise fail("correction", f"{self.correction} weights rows by pi_prox/pi_behav, which is 1 when the "
                                     f"proximal policy is the behaviour policy; set algorithm.proximal=recompute")

    @property
    def kl_term(self) -> bool:
        """The loss has a KL-to-reference term (GRPO with kl_coef > 0): reference log-probs are needed."""
        return self.name == "grpo" and self.kl_coef > 0

    @property
    def upper_clip(self) -> float:
        return self.clip_eps if self.clip_eps_high == -1.0 else self.clip_eps_high
