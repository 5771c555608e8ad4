"""One micro-batch's objective from per-token log-probs: policy-loss variant x rollout correction x KL x aggregation,
with the step metrics as masked sums and maxima (pure torch; the trainer reduces them over ranks).

    out = micro_objective(algo, Inputs(logp, old, behav, adv, mask, ref=ref, before=before, entropy=ent), denom)
    out.loss.backward(); sums, maxes = out.sums, out.maxes   # sums / response tokens of the step = the metric

Metrics (token means unless said): loss, pg_loss (aggregated values); kl (to the reference, k-estimator);
ppo_kl (mean old - new log-prob); entropy (of the distribution each sampled token came from); clip_frac
(ratio outside the clip range), clip_frac_low / clip_frac_high (the clip is active there); ratio_max;
is_weight / is_weight_max / is_masked_frac (the rollout-correction weight applied, and the share of tokens
it truncated or masked); mismatch_* (trainer before the update vs rollout engine: correction.mismatch_sums;
with staleness this includes the policy lag), mismatch_onpolicy_* (the same over rows of staleness 0 only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from asyncflow_hpc.algorithms import correction, losses

SUM_KEYS = ("kl", "ppo_kl", "entropy", "clip_frac", "clip_frac_low", "clip_frac_high", "is_weight",
            "is_masked_frac", "mismatch_lp_mean", "mismatch_w_mean", "mismatch_w_outside")
# The same over the tokens of rows generated with the trainer's current weights (staleness 0): the engines'
# own difference, without the policy lag of stale rows; divided by their token count, ONPOLICY_TOKENS.
ONPOLICY_SUM_KEYS = ("mismatch_onpolicy_lp_mean", "mismatch_onpolicy_w_mean", "mismatch_onpolicy_w_outside")
ONPOLICY_TOKENS = "onpolicy_tokens"
MAX_KEYS = ("ratio_max", "is_weight_max", "mismatch_lp_max", "mismatch_w_max", "mismatch_onpolicy_lp_max",
            "mismatch_onpolicy_w_max")


@dataclass
class Inputs:
    """[B, T] tensors of one micro-batch (advantages [B] or [B, T]); padding where mask == 0."""

    logp: Any  # current policy, with grad
    old: Any  # the policy the ratio is taken against (behaviour or recomputed proximal)
    behav: Any  # the rollout engine's log-probs
    adv: Any
    mask: Any
    ref: Any = None  # reference policy (KL term)
    before: Any = None  # the trainer's log-probs before this step's update (mismatch metrics)
    entropy: Any = None
    onpolicy: Any = None  # [B] 1.0 for rows generated with the current weights (on-policy mismatch metrics)


@dataclass
class Output:
    loss: Any
    pg_loss: float
    sums: dict[str, float]
    maxes: dict[str, float]


def _masked_max(x: Any, mask: Any) -> float:
    keep = mask > 0
    return float(x[keep].max()) if bool(keep.any()) else 0.0


def micro_objective(a: Any, x: Inputs, denom: float) -> Output:
    """The loss to backpropagate (already divided by the GLOBAL `denom` of loss_agg) and the metric sums."""
    import torch

    m = x.mask.to(x.logp.dtype)
    pt = losses.policy_terms(a.policy_loss, x.logp, x.old, x.adv, m, clip_low=a.clip_eps, clip_high=a.upper_clip)
    if a.correction != "none":
        w, cut = correction.rollout_weights(x.old, x.behav, m, mode=a.correction, level=a.correction_level,
                                            low=a.lower_is, high=a.tis_cap)
    else:
        w, cut = torch.ones_like(pt.loss), torch.zeros_like(m, dtype=torch.bool)
    pg = pt.loss * w
    kl = torch.zeros_like(pg)
    if a.kl_term:
        kl = (losses.kl_penalty_is(x.logp, x.ref, x.old, a.kl_estimator) if a.kl_is_correction
              else losses.kl_penalty(x.logp, x.ref, a.kl_estimator))
    loss = losses.aggregate(pg + a.kl_coef * kl, m, a.loss_agg, denom)
    with torch.no_grad():
        f = lambda b: float((b.to(m.dtype) * m).sum())  # noqa: E731
        kl_raw = losses.kl_penalty(x.logp, x.ref, a.kl_estimator) if a.kl_term else kl
        sums = {"kl": f(kl_raw.detach()), "ppo_kl": f(x.old - x.logp.detach()),
                "entropy": f(x.entropy) if x.entropy is not None else 0.0,
                "clip_frac": f(pt.outside), "clip_frac_low": f(pt.clipped_low), "clip_frac_high": f(pt.clipped_high),
                "is_weight": f(w), "is_masked_frac": f(cut)}
        maxes = {"ratio_max": _masked_max(pt.ratio, m), "is_weight_max": _masked_max(w, m)}
        if x.before is not None:
            mm = correction.mismatch_sums(x.before, x.behav, m, low=a.lower_is, high=a.tis_cap)
            for k, v in mm.items():
                (maxes if k.endswith("_max") else sums)[k] = float(v)
            if x.onpolicy is not None:
                mo = m * x.onpolicy.to(dtype=m.dtype, device=m.device)[:, None]
                sums[ONPOLICY_TOKENS] = float(mo.sum())
                mm = correction.mismatch_sums(x.before, x.behav, mo, low=a.lower_is, high=a.tis_cap)
                for k, v in mm.items():
                    k = k.replace("mismatch_", "mismatch_onpolicy_")
                    (maxes if k.endswith("_max") else sums)[k] = float(v)
        pg_loss = float(losses.aggregate(pg.detach(), m, a.loss_agg, denom))
    return Output(loss=loss, pg_loss=pg_loss, sums=sums, maxes=maxes)
