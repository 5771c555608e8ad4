"""Configuration of the RL algorithm (policy loss, aggregation, advantages, corrections); docs/algorithms.md maps it.

Named recipes are combinations of these keys (each refusal below names the key and says why):
  GRPO      name=grpo (defaults)
  Dr. GRPO  norm_adv_by_std=false loss_agg=seq_mean_token_sum_norm
  DAPO      clip_eps_high=0.28 loss_agg=token_mean overlong_buffer=N
  GSPO      policy_loss=gspo loss_agg=seq_mean_token_mean clip_eps=3e-4 clip_eps_high=4e-4
  CISPO     policy_loss=cispo clip_eps_high=4.0 loss_agg=token_mean
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from asyncflow_hpc.configlib import fail, opt


@dataclass(kw_only=True)
class AlgorithmConfig:
    """The RL objective."""

    name: Literal["grpo", "ppo"] = opt(
        "grpo", "grpo: group-normalised advantages, KL in the loss; ppo: PPO-clip with a batch-mean "
                "baseline advantage (no critic).")
    policy_loss: Literal["ppo_clip", "gspo", "cispo"] = opt(
        "ppo_clip", "ppo_clip: token ratio clipped (PPO/GRPO/DAPO); gspo: sequence ratio = geometric mean of the "
                    "token ratios, clipped per sequence (Zheng et al. 2025); cispo: clipped stop-gradient IS "
                    "weight times the log-prob (MiniMax-M1, 2025).")
    clip_eps: float = opt(0.2, "Clip range: ratio clipped to [1 - clip_eps, 1 + clip_eps_high] (GSPO: ~3e-4).")
    clip_eps_high: float = opt(-1.0, "Upper clip range (DAPO clip-higher, e.g. 0.28); -1 = clip_eps.")
    norm_adv_by_std: bool = opt(True, "GRPO: divide group-centred rewards by a std (false = Dr. GRPO).")
    adv_std: Literal["group", "batch"] = opt(
        "group", "The std that divides group-centred rewards: of the group (GRPO) or of the whole step's batch "
                 "(TRL scale_rewards=batch; 'Tricks or Traps' Lite PPO).")
    adv_eps: float = opt(1e-6, "Added to the std before dividing.")
    overlong_buffer: int = opt(
        0, "DAPO overlong reward shaping: responses longer than rollout.max_new_tokens - overlong_buffer tokens "
           "lose up to overlong_penalty, linearly over the buffer; 0 = off.")
    overlong_penalty: float = opt(1.0, "Reward lost by a response of rollout.max_new_tokens tokens (overlong_buffer).")
    kl_coef: float = opt(0.0, "Coefficient of the KL to the reference (initial) policy; 0 = no reference model.")
    kl_estimator: Literal["k1", "k2", "k3"] = opt("k3", "Per-token KL estimator (Schulman's k1/k2/k3).")
    kl_is_correction: bool = opt(
        False, "Weight the per-token KL by the ratio pi_theta/pi_old (gradient kept): an unbiased KL gradient "
               "from samples of pi_old (DeepSeek-V3.2; TRL use_bias_correction_kl).")
    loss_agg: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] = opt(
        "token_mean", "token_mean: mean over all response tokens of the global batch (DAPO); "
                      "seq_mean_token_mean: mean over rows of each row's token mean (original GRPO, GSPO); "
                      "seq_mean_token_sum_norm: token sum / (rows x rollout.max_new_tokens) (Dr. GRPO).")
    proximal: Literal["behaviour", "recompute"] = opt(
        "behaviour", "The policy the ratio is taken against: the behaviour log-probs the rollout recorded, or "
                     "the trainer's log-probs at the start of the step (recomputed).")
    correction: Literal["none", "decoupled", "tis", "mis"] = opt(
        "none", "Rollout correction with w = pi_prox/pi_behav, trainer over rollout engine log-probs (needs "
                "proximal=recompute): decoupled = w untruncated (decoupled PPO); tis = w truncated at tis_cap; "
                "mis = rows/tokens with w outside [is_low, tis_cap] masked out.")
    correction_level: Literal["token", "sequence"] = opt(
        "token", "Level of the rollout-correction weight: per token, or per sequence (product of the token "
                 "weights, one truncation/mask decision per row).")
    tis_cap: float = opt(2.0, "Upper threshold of the importance weight (tis truncates, mis masks); also the "
                              "threshold of the mismatch_w_outside metric.")
    is_low: float = opt(-1.0, "Lower threshold of the importance weight for correction=mis; -1 = 1/tis_cap.")
    dynamic_sampling: bool = opt(
        False, "DAPO dynamic sampling: prompt groups whose rewards are all equal (all right or all wrong: zero "
               "advantage, no gradient) are dropped from the step's batch, counted (zero_signal_dropped) and "
               "replaced by newly fed prompts, so every step trains on prompts_per_step informative groups "
               "(async mode; the staleness bound is unchanged).")
    dynamic_sampling_max_rounds: int = opt(
        8, "Dynamic sampling: batches drawn per step at most before the step fails with a named error "
           "(the task is too easy or too hard for the policy).")

    # Set by the job config (config.py) from rollout.max_new_tokens; the Dr. GRPO normaliser and the
    # overlong shaping measure against it. Not a key: it is the rollout's setting.
    max_response_len: ClassVar[int] = 0

    def __post_init__(self) -> None:
        self._check_ranges()
        self._check_combinations()

    def _check_ranges(self) -> None:
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
        if self.is_low != -1.0 and not 0 <= self.is_low < 1:
            raise fail("is_low", f"must be in [0, 1) or -1 (= 1/tis_cap), got {self.is_low}")
        if self.dynamic_sampling_max_rounds < 1:
            raise fail("dynamic_sampling_max_rounds", f"must be >= 1, got {self.dynamic_sampling_max_rounds}")
        if self.overlong_buffer < 0:
            raise fail("overlong_buffer", f"must be >= 0 tokens, got {self.overlong_buffer}")
        if self.overlong_penalty <= 0:
            raise fail("overlong_penalty", f"must be > 0, got {self.overlong_penalty}")

    def _check_combinations(self) -> None:
        """Refuse settings that would be accepted and do nothing, or that contradict each other."""
        if self.correction != "none" and self.proximal != "recompute":
            raise fail("correction", f"{self.correction} weights rows by pi_prox/pi_behav, which is 1 when the "
                                     f"proximal policy is the behaviour policy; set algorithm.proximal=recompute")
        if self.correction_level != "token" and self.correction in ("none", "decoupled"):
            raise fail("correction_level", f"{self.correction_level} applies to correction=tis or mis (got "
                                           f"correction={self.correction}; decoupled PPO is token-level)")
        if self.is_low != -1.0 and self.correction != "mis":
            raise fail("is_low", f"the lower threshold only masks (correction=mis), got correction={self.correction}")
        if self.adv_std == "batch" and (self.name != "grpo" or not self.norm_adv_by_std):
            raise fail("adv_std", "batch divides group-centred rewards by the batch std: it needs name=grpo and "
                                  "norm_adv_by_std=true")
        if self.kl_coef > 0 and self.name != "grpo":
            raise fail("kl_coef", f"the KL-to-reference term is part of the grpo loss; name={self.name} has none "
                                  f"(set kl_coef=0, or name=grpo)")
        if self.kl_is_correction and not self.kl_term:
            raise fail("kl_is_correction", "corrects the KL term, and there is none: set kl_coef > 0 with name=grpo")
        if self.dynamic_sampling and self.name != "grpo":
            raise fail("dynamic_sampling", "drops prompt groups with equal rewards (zero group-normalised "
                                           "advantage); name=ppo has no groups: set name=grpo")
        if self.dynamic_sampling_max_rounds != 8 and not self.dynamic_sampling:
            raise fail("dynamic_sampling_max_rounds", "has no effect with dynamic_sampling=false")
        if self.overlong_penalty != 1.0 and not self.overlong_buffer:
            raise fail("overlong_penalty", "has no effect with overlong_buffer=0; set overlong_buffer > 0")

    def check_job(self, max_new_tokens: int) -> None:
        """Cross-section checks against the rollout (called by the job config): binds max_response_len."""
        if self.overlong_buffer and self.overlong_buffer >= max_new_tokens:
            raise fail("overlong_buffer", f"{self.overlong_buffer} must be < rollout.max_new_tokens="
                                          f"{max_new_tokens} (the penalty starts that many tokens before it)")
        self.max_response_len = max_new_tokens

    @property
    def kl_term(self) -> bool:
        """The loss has a KL-to-reference term (GRPO with kl_coef > 0): reference log-probs are needed."""
        return self.name == "grpo" and self.kl_coef > 0

    @property
    def upper_clip(self) -> float:
        return self.clip_eps if self.clip_eps_high == -1.0 else self.clip_eps_high

    @property
    def lower_is(self) -> float:
        return 1.0 / self.tis_cap if self.is_low == -1.0 else self.is_low

    @property
    def group_local_advantages(self) -> bool:
        """Advantages depend on the row's group alone (the reward stage can store them): plain GRPO
        without batch std or length shaping."""
        return self.name == "grpo" and self.adv_std == "group" and not self.overlong_buffer
