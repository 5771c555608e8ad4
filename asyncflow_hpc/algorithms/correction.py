"""Rollout correction and rollout-trainer mismatch: pure torch functions on [rows, tokens] tensors.

The rollout engine (vLLM, or the torch engine's KV-cached incremental forward) records behaviour
log-probs; the trainer recomputes them with its own kernels. Even on identical weights they differ,
and with staleness they differ more. w = pi_prox / pi_behav measures it (prox = the trainer's policy
at the start of the step):

    w, outside = rollout_weights(prox, behav, mask, mode="tis", level="token", low=0.5, high=2.0)
    stats = mismatch_sums(prox, behav, mask, low=0.5, high=2.0)   # masked sums and maxima (reduce, then divide)

Modes (Yao et al. 2025, 'Your efficient RL framework secretly brings you off-policy RL training' (TIS);
verl rollout_is / rollout_is_mode; Liu et al. 2025 'When speed kills stability' (MIS)):
  decoupled  w as is (decoupled PPO, Hilton et al. 2022)
  tis        min(w, high)                       truncated importance sampling
  mis        w where low <= w <= high, else 0   masked importance sampling (the token/row is dropped)
Levels: token (one w per token) or sequence (w_i = prod_t w_it = exp(sum_t log w_it), one decision per row).
"""

from __future__ import annotations

from typing import Any


def rollout_weights(prox_logp: Any, behav_logp: Any, mask: Any, *, mode: str, level: str, low: float,
                    high: float) -> tuple[Any, Any]:
    """(detached weights [B, T], bool [B, T] where the weight was truncated or masked)."""
    import torch

    m = mask.to(prox_logp.dtype)
    log_w = (prox_logp - behav_logp).detach() * m
    if level == "sequence":
        log_w = log_w.sum(-1, keepdim=True).expand_as(prox_logp)
    elif level != "token":
        raise ValueError(f"unknown correction level {level!r} (token, sequence)")
    w = torch.exp(log_w)
    if mode == "decoupled":
        return w, torch.zeros_like(w, dtype=torch.bool)
    if mode == "tis":
        return torch.clamp(w, max=high), w > high
    if mode == "mis":
        outside = (w > high) | (w < low)
        return torch.where(outside, torch.zeros_like(w), w), outside
    raise ValueError(f"unknown correction mode {mode!r} (decoupled, tis, mis)")


def mismatch_sums(trainer_logp: Any, behav_logp: Any, mask: Any, *, low: float, high: float) -> dict[str, Any]:
    """Masked sums and maxima of |trainer - behaviour log-prob| and of w = exp(trainer - behaviour) over the
    sampled tokens, and the count of tokens with w outside [low, high] (divide sums by the token count
    after reducing over data-parallel ranks). Keys: mismatch_lp_mean/_max, mismatch_w_mean/_max,
    mismatch_w_outside (sums under the _mean/_outside names, maxima under _max)."""
    import torch

    with torch.no_grad():
        m = mask.to(trainer_logp.dtype)
        keep = m > 0
        diff = (trainer_logp - behav_logp).detach()
        w = torch.exp(diff)
        zero = torch.zeros((), dtype=diff.dtype, device=diff.device)
        return {
            "mismatch_lp_mean": (diff.abs() * m).sum(),
            "mismatch_lp_max": torch.where(keep, diff.abs(), zero).max() if keep.any() else zero,
            "mismatch_w_mean": (w * m).sum(),
            "mismatch_w_max": torch.where(keep, w, zero).max() if keep.any() else zero,
            "mismatch_w_outside": (((w > high) | (w < low)).to(m.dtype) * m).sum(),
        }
