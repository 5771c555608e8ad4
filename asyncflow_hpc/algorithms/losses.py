"""Policy losses as pure torch functions on [rows, tokens] tensors with a response mask.

    pt = policy_terms("ppo_clip", logp, old_logp, adv, mask, clip_low=0.2, clip_high=0.28)  # or gspo / cispo
    w, outside = correction.rollout_weights(prox, behav, mask, mode="tis", level="token", low=0.5, high=2.0)
    loss = aggregate(pt.loss * w + kl_coef * kl_penalty(logp, ref_logp, "k3"), mask, "token_mean", denom)

Sign convention: every function returns a quantity to MINIMISE. r = exp(logp - old_logp) throughout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def ppo_clip_loss(logp: Any, old_logp: Any, adv: Any, *, clip_low: float, clip_high: float) -> Any:
    """Per-token -min(r A, clip(r, 1-clip_low, 1+clip_high) A) (PPO, Schulman et al. 2017; GRPO, Shao et al.
    2024; with clip_high > clip_low: DAPO clip-higher, Yu et al. 2025). `adv` is per row ([B]) or per token."""
    import torch

    if adv.dim() == 1:
        adv = adv[:, None]
    ratio = torch.exp(logp - old_logp)
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    return -torch.minimum(ratio * adv, clipped * adv)


def sequence_log_ratio(logp: Any, old_logp: Any, mask: Any) -> Any:
    """[B] mean over each row's response tokens of log r: log of the geometric mean of the token ratios."""
    m = mask.to(logp.dtype)
    return ((logp - old_logp) * m).sum(-1) / m.sum(-1).clamp(min=1.0)


def gspo_loss(logp: Any, old_logp: Any, adv: Any, mask: Any, *, clip_low: float, clip_high: float) -> Any:
    """GSPO (Zheng et al. 2025, 'Group Sequence Policy Optimization', arXiv 2507.18071), in its GSPO-token form:
    s_i = exp( (1/|y_i|) sum_t log r_it ) (the geometric mean of the token ratios), and per token
    s_it = sg[s_i] * pi(y_t) / sg[pi(y_t)], loss_it = -min(s_it A_i, clip(s_it, 1-clip_low, 1+clip_high) A_i).
    Every token of a row carries the row's value and the clip decision is per sequence; aggregated with
    seq_mean_token_mean this is exactly J_GSPO = (1/G) sum_i min(s_i A_i, clip(s_i) A_i), gradients included."""
    import torch

    if adv.dim() != 1:
        raise ValueError("gspo_loss: advantages must be one per row ([B]), GSPO has no token-level advantage")
    seq = sequence_log_ratio(logp, old_logp, mask).detach()
    s_tok = torch.exp(logp - logp.detach() + seq[:, None])  # value s_i, gradient s_i * grad log pi(y_t)
    a = adv[:, None]
    return -torch.minimum(s_tok * a, torch.clamp(s_tok, 1.0 - clip_low, 1.0 + clip_high) * a)


def cispo_loss(logp: Any, old_logp: Any, adv: Any, *, clip_low: float, clip_high: float) -> Any:
    """CISPO (MiniMax-M1, Chen et al. 2025, arXiv 2506.13585): loss_it = -sg[clip(r_it, 1-clip_low, 1+clip_high)]
    A_i log pi(y_t). The IS weight is clipped and detached, so no token's gradient is ever dropped (PPO zeroes
    the clipped ones). As in verl's cispo; TRL's has no lower clip (clip_low close to 1 approximates it)."""
    import torch

    if adv.dim() == 1:
        adv = adv[:, None]
    w = torch.clamp(torch.exp(logp - old_logp), 1.0 - clip_low, 1.0 + clip_high).detach()
    return -w * adv * logp


@dataclass
class PolicyTerms:
    """Per-token loss of a policy-loss variant and what its clip did (all [B, T]; the masks detached, bool)."""

    loss: Any
    ratio: Any  # the ratio the clip acts on (GSPO: the row's sequence ratio on every token)
    clipped_low: Any  # clip active at the low side: the loss no longer follows the ratio there
    clipped_high: Any
    outside: Any  # ratio outside [1 - clip_low, 1 + clip_high] whatever the advantage's sign


def policy_terms(kind: str, logp: Any, old_logp: Any, adv: Any, mask: Any, *, clip_low: float,
                 clip_high: float) -> PolicyTerms:
    """The per-token loss of `kind` (ppo_clip, gspo, cispo) with its clip statistics."""
    import torch

    a = adv[:, None] if adv.dim() == 1 else adv
    if kind == "ppo_clip":
        loss = ppo_clip_loss(logp, old_logp, adv, clip_low=clip_low, clip_high=clip_high)
        ratio = torch.exp(logp - old_logp).detach()
    elif kind == "gspo":
        loss = gspo_loss(logp, old_logp, adv, mask, clip_low=clip_low, clip_high=clip_high)
        ratio = torch.exp(sequence_log_ratio(logp, old_logp, mask)).detach()[:, None].expand_as(logp)
    elif kind == "cispo":
        loss = cispo_loss(logp, old_logp, adv, clip_low=clip_low, clip_high=clip_high)
        ratio = torch.exp(logp - old_logp).detach()
    else:
        raise ValueError(f"unknown policy loss {kind!r} (ppo_clip, gspo, cispo)")
    low, high = ratio < 1.0 - clip_low, ratio > 1.0 + clip_high
    if kind != "cispo":  # PPO-style min(): a clip only bites when it lowers the objective
        low, high = low & (a < 0), high & (a > 0)
    return PolicyTerms(loss, ratio, low, high, (ratio < 1.0 - clip_low) | (ratio > 1.0 + clip_high))


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


def kl_penalty_is(logp: Any, ref_logp: Any, old_logp: Any, estimator: str = "k3") -> Any:
    """The KL estimate weighted by r = pi_theta/pi_old with the gradient kept (DeepSeek-V3.2 report, 2025, 'unbiased
    KL estimate'; TRL use_bias_correction_kl): E_old[r k] = E_theta[k], so the gradient is that of KL(pi_theta || pi_ref)
    although the tokens were sampled from pi_old (without r, the k3 gradient is biased)."""
    import torch

    return torch.exp(logp - old_logp) * kl_penalty(logp, ref_logp, estimator)


def aggregate(per_token: Any, mask: Any, mode: str, denom: float) -> Any:
    """Sum of the masked per-token loss of THIS shard divided by the GLOBAL denominator, so that
    summing the results of all data-parallel shards gives the global loss:
    token_mean -> denom = response tokens in the global batch (DAPO);
    seq_mean_token_mean -> each row's token mean, denom = rows in the global batch (GRPO, GSPO);
    seq_mean_token_sum_norm -> token sum, denom = rows x max response length, a constant (Dr. GRPO,
    Liu et al. 2025, arXiv 2503.20783: no per-row length normalisation, no length bias)."""
    mask = mask.to(per_token.dtype)
    if mode in ("token_mean", "seq_mean_token_sum_norm"):
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
