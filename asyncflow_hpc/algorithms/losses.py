"""Policy losses as pure torch functions on [rows, tokens] tensors with a response mask.

    per_tok = ppo_clip_loss(logp, old_logp, adv, mask, clip_low=0.2, clip_high=0.2)
    w = importance_weights(prox_logp, behav_logp, cap=2.0)    # truncated IS / decoupled PPO
    loss = aggregate(per_tok * w + kl_coef * kl_penalty(logp, ref_logp, "k3"), mask, "token_mean", denom)

Sign convention: every function returns a quantity to MINIMISE.
"""

from __future__ import annotations

from typing import Any


def ppo_clip_loss(logp: Any, old_logp: Any, adv: Any, *, clip_low: float, clip_high: float) -> Any:
    """Per-token -min(r A, clip(r, 1-clip_low, 1+clip_high) A), r = exp(logp - old_logp).
    `adv` is per row ([B]) or per token ([B, T])."""
    import torch

    if adv.dim() == 1:
        adv = adv[:, None]
    ratio = torch.exp(logp - old_logp)
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    return -torch.minimum(ratio * adv, clipped * adv)


def importance_weights(prox_logp: Any, behav_logp: Any, *, cap: float | None = None) -> Any:
    """Per-token pi_prox / pi_behav (detached), truncated at `cap` if given (truncated IS).
    Decoupled PPO (Hilton et al. 2022; AReaL) multiplies the clipped objective by it untruncated."""
    import torch

    w = torch.exp((prox_logp - behav_logp).detach())
    return torch.clamp(w, max=cap) if cap is not None else w


def kl_penalty(logp: Any, ref_logp: Any, estimator: str = "k3") -> Any:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi: k1 = log r, k2 = (log r)^2 / 2,
    k3 = exp(-log r) - 1 + log r, with log r = logp - ref_logp (Schulman, 'Approximating KL')."""
    import torch

    log_r = logp - ref_logp
    if estimator == "k1":
        return log_r
    if estimator == "k2":
        return 0.5 * log_r ** 2
    if estimator == "k3":
        return torch.exp(-log_r) - 1.0 + log_r
    raise ValueError(f"unknown KL estimator {estimator!r} (k1, k2, k3)")


def aggregate(per_token: Any, mask: Any, mode: str, denom: float) -> Any:
    """Sum of the masked per-token loss of THIS shard divided by the GLOBAL denominator, so that
    summing the results of all data-parallel shards gives the global loss:
    token_mean -> denom = response tokens in the global batch;
    seq_mean_token_mean -> each row's token mean, denom = rows in the global batch."""
    mask = mask.to(per_token.dtype)
    if mode == "token_mean":
        return (per_token * mask).sum() / denom
    if mode == "seq_mean_token_mean":
        row = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        return row.sum() / denom
    raise ValueError(f"unknown loss aggregation {mode!r}")


def clip_fraction(logp: Any, old_logp: Any, mask: Any, *, clip_low: float, clip_high: float) -> Any:
    """Sum over masked tokens of 1[ratio outside the clip range] (divide by the token count yourself)."""
    import torch

    ratio = torch.exp(logp - old_logp)
    out = (ratio < 1.0 - clip_low) | (ratio > 1.0 + clip_high)
    return (out.to(mask.dtype) * mask).sum()
