"""Losses against hand-computed values."""

import math

import pytest

torch = pytest.importorskip("torch")

from asyncflow_hpc.algorithms import losses  # noqa: E402


def t(x):
    return torch.tensor(x, dtype=torch.float64)


def test_ppo_clip_positive_and_negative_advantage():
    ratios = [0.5, 1.0, 1.5]
    logp = t([[math.log(r) for r in ratios]])
    old = t([[0.0, 0.0, 0.0]])
    pos = losses.ppo_clip_loss(logp, old, t([1.0]), clip_low=0.2, clip_high=0.2)
    # min(r A, clip(r) A) with A=+1: min(.5,.8)=.5, 1, min(1.5,1.2)=1.2
    assert pos.flatten().tolist() == pytest.approx([-0.5, -1.0, -1.2])
    neg = losses.ppo_clip_loss(logp, old, t([-1.0]), clip_low=0.2, clip_high=0.2)
    # A=-1: min(-.5,-.8)=-.8, -1, min(-1.5,-1.2)=-1.5
    assert neg.flatten().tolist() == pytest.approx([0.8, 1.0, 1.5])


def test_ppo_clip_asymmetric_clip_higher():
    logp = t([[math.log(1.5)]])
    out = losses.ppo_clip_loss(logp, t([[0.0]]), t([2.0]), clip_low=0.2, clip_high=0.28)
    assert out.item() == pytest.approx(-1.28 * 2.0)


def test_ppo_clip_gradient_is_zero_when_clipped():
    logp = t([[math.log(1.5), math.log(1.1)]]).requires_grad_(True)
    losses.ppo_clip_loss(logp, t([[0.0, 0.0]]), t([1.0]), clip_low=0.2, clip_high=0.2).sum().backward()
    # clipped token: no gradient; unclipped: d(-r)/dlogp = -r = -1.1
    assert logp.grad.flatten().tolist() == pytest.approx([0.0, -1.1])


def test_importance_weights_truncated_and_decoupled():
    prox, behav = t([[math.log(3.0), math.log(0.5)]]), t([[0.0, 0.0]])
    assert losses.importance_weights(prox, behav).flatten().tolist() == pytest.approx([3.0, 0.5])
    assert losses.importance_weights(prox, behav, cap=2.0).flatten().tolist() == pytest.approx([2.0, 0.5])


def test_kl_estimators():
    logp, ref = t([[math.log(2.0)]]), t([[0.0]])
    lr = math.log(2.0)
    assert losses.kl_penalty(logp, ref, "k1").item() == pytest.approx(lr)
    assert losses.kl_penalty(logp, ref, "k2").item() == pytest.approx(0.5 * lr * lr)
    assert losses.kl_penalty(logp, ref, "k3").item() == pytest.approx(0.5 - 1 + lr)
    assert losses.kl_penalty(ref, ref, "k3").item() == 0.0
    with pytest.raises(ValueError):
        losses.kl_penalty(logp, ref, "k9")


def test_aggregate_modes():
    per_tok = t([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = t([[1, 1, 1], [1, 0, 0]])
    # token_mean over 4 tokens: (1+2+3+4)/4
    assert losses.aggregate(per_tok, mask, "token_mean", 4.0).item() == pytest.approx(2.5)
    # seq_mean_token_mean: (mean(1,2,3) + 4) / 2 rows
    assert losses.aggregate(per_tok, mask, "seq_mean_token_mean", 2.0).item() == pytest.approx(3.0)
    # Shards with the global denominator sum to the global value.
    a = losses.aggregate(per_tok[:1], mask[:1], "token_mean", 4.0) + losses.aggregate(per_tok[1:], mask[1:], "token_mean", 4.0)
    assert a.item() == pytest.approx(2.5)


def test_clip_fraction_counts_masked_tokens_only():
    logp = t([[math.log(1.5), 0.0, math.log(0.5)]])
    mask = t([[1, 1, 0]])
    assert losses.clip_fraction(logp, t([[0.0] * 3]), mask, clip_low=0.2, clip_high=0.2).item() == 1.0
