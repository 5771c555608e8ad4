"""Loss variants against hand-computed values: padded rows, a constant-reward group, a truncated row; gradients
checked with torch.autograd."""

import math
import statistics

import pytest

torch = pytest.importorskip("torch")

from asyncflow_hpc.algorithms import advantages as adv_mod  # noqa: E402
from asyncflow_hpc.algorithms import correction, losses  # noqa: E402
from asyncflow_hpc.algorithms.config import AlgorithmConfig  # noqa: E402
from asyncflow_hpc.algorithms.objective import Inputs, micro_objective  # noqa: E402

L = math.log


def t(x, grad=False):
    return torch.tensor(x, dtype=torch.float64, requires_grad=grad)


def close(x, want):
    return torch.allclose(x, t(want), rtol=1e-9, atol=1e-12)


# Two rows: row 0 has two response tokens (ratios 1.5 and 0.5), row 1 one token (ratio 1.1) and padding.
# Padded positions hold garbage that must not matter.
MASK = [[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
LOGP = [[L(1.5), L(0.5), -7.0], [L(1.1), -9.0, -3.0]]
OLD = [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]


def test_ppo_clip_token_mean_with_padding_and_gradient():
    logp = t(LOGP, grad=True)
    pt = losses.policy_terms("ppo_clip", logp, t(OLD), t([1.0, -1.0]), t(MASK), clip_low=0.2, clip_high=0.2)
    loss = losses.aggregate(pt.loss, t(MASK), "token_mean", 3.0)
    # row 0 (A=+1): min(1.5, 1.2) = 1.2 -> -1.2; min(0.5, 0.8) = 0.5 -> -0.5; row 1 (A=-1): r = 1.1 -> +1.1
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.1) / 3)
    loss.backward()
    # clipped token: no gradient; others -r A / 3; padding: none
    assert close(logp.grad, [[0.0, -0.5 / 3, 0.0], [1.1 / 3, 0.0, 0.0]])
    m = t(MASK).bool()
    assert pt.outside[m].tolist() == [True, True, False]
    assert pt.clipped_high[m].tolist() == [True, False, False]  # r > 1.2 with A > 0
    assert pt.clipped_low[m].tolist() == [False, False, False]  # r < 0.8 but A > 0: min() keeps r A


def test_gspo_sequence_ratio_is_geometric_mean_and_clipped_per_sequence():
    logp = t(LOGP, grad=True)
    adv = t([1.0, 1.0])
    pt = losses.policy_terms("gspo", logp, t(OLD), adv, t(MASK), clip_low=0.2, clip_high=0.05)
    s0 = math.sqrt(1.5 * 0.5)  # geometric mean of the row's token ratios: 0.866, inside [0.8, 1.05]
    assert pt.ratio[0, :2].tolist() == pytest.approx([s0, s0])
    assert pt.ratio[1, 0].item() == pytest.approx(1.1)
    assert pt.clipped_high[1, 0].item() and not pt.clipped_high[0].any()  # 1.1 > 1.05 with A > 0
    loss = losses.aggregate(pt.loss, t(MASK), "seq_mean_token_mean", 2.0)
    assert loss.item() == pytest.approx((-s0 - 1.05) / 2)
    loss.backward()
    # d/dlogp_t of -(1/G) s_i A_i = -s_i A_i / (G |y_i|) on every token of an unclipped row; 0 on the clipped row
    assert close(logp.grad, [[-s0 / 4, -s0 / 4, 0.0], [0.0, 0.0, 0.0]])


def _gspo_sequence_form(logp, old, adv, mask, lo, hi):
    """The paper's sequence-level objective written directly (no stop-gradient trick)."""
    s = torch.exp(((logp - old) * mask).sum(-1) / mask.sum(-1))
    return -torch.minimum(s * adv, torch.clamp(s, 1 - lo, 1 + hi) * adv).mean()


def test_gspo_token_form_gradient_equals_sequence_form_and_gradcheck():
    g = torch.Generator().manual_seed(0)
    logp0 = -torch.rand((3, 4), generator=g, dtype=torch.float64) * 2
    old = logp0 + 0.05 * torch.randn((3, 4), generator=g, dtype=torch.float64)
    mask = t([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    adv = t([0.7, -1.2, 0.4])
    a, b = logp0.clone().requires_grad_(True), logp0.clone().requires_grad_(True)
    ours = losses.aggregate(losses.gspo_loss(a, old, adv, mask, clip_low=0.2, clip_high=0.2), mask,
                            "seq_mean_token_mean", 3.0)
    ref = _gspo_sequence_form(b, old, adv, mask, 0.2, 0.2)
    assert ours.item() == pytest.approx(ref.item())
    ours.backward()
    ref.backward()
    assert torch.allclose(a.grad, b.grad)
    f = lambda x: losses.aggregate(losses.gspo_loss(x, old, adv, mask, clip_low=0.2, clip_high=0.2),  # noqa: E731
                                   mask, "seq_mean_token_mean", 3.0)
    assert torch.autograd.gradcheck(f, (logp0.clone().requires_grad_(True),))


def test_cispo_keeps_gradient_of_clipped_tokens():
    logp = t(LOGP, grad=True)
    adv = t([1.0, -1.0])
    pt = losses.policy_terms("cispo", logp, t(OLD), adv, t(MASK), clip_low=0.2, clip_high=0.2)
    # w = clamp(r, 0.8, 1.2) detached: [1.2, 0.8], [1.1]; loss_t = -w A log pi
    want = [-1.2 * L(1.5), -0.8 * L(0.5), 1.1 * L(1.1)]
    assert pt.loss[t(MASK).bool()].tolist() == pytest.approx(want)
    loss = losses.aggregate(pt.loss, t(MASK), "token_mean", 3.0)
    loss.backward()
    assert close(logp.grad, [[-1.2 / 3, -0.8 / 3, 0.0], [1.1 / 3, 0.0, 0.0]])
    assert pt.clipped_high[0, 0].item() and pt.clipped_low[0, 1].item()  # CISPO clips whatever A's sign


def test_dr_grpo_constant_normaliser_and_no_std():
    per_tok = t([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = t([[1, 1, 1], [1, 0, 0]])
    # rows x max response length (5), not the token count (4): (1+2+3+4) / (2 * 5)
    assert losses.aggregate(per_tok, mask, "seq_mean_token_sum_norm", 2 * 5.0).item() == pytest.approx(1.0)
    a = AlgorithmConfig(norm_adv_by_std=False, loss_agg="seq_mean_token_sum_norm")
    got = adv_mod.compute_advantages([1, 0, 0, 0, 1, 1], [0, 0, 0, 0, 1, 1], [3] * 6, a)
    assert got == pytest.approx([0.75, -0.25, -0.25, -0.25, 0.0, 0.0])  # constant-reward group: 0


def test_batch_std_advantages():
    rewards, groups = [1, 0, 0, 0, 1, 1, 1, 1], [0] * 4 + [1] * 4
    a = AlgorithmConfig(adv_std="batch", adv_eps=1e-6)
    got = adv_mod.compute_advantages(rewards, groups, [1] * 8, a)
    sd = statistics.stdev(rewards)  # the batch's unbiased std, not the group's
    assert got == pytest.approx([0.75 / sd, -0.25 / sd, -0.25 / sd, -0.25 / sd, 0, 0, 0, 0], rel=1e-5)


def test_overlong_penalty_and_truncated_row():
    pen = [adv_mod.overlong_penalty(n, max_len=10, buffer=4) for n in (5, 6, 7, 8, 10)]
    assert pen == pytest.approx([0.0, 0.0, -0.25, -0.5, -1.0])  # a truncated row (10 = max_new_tokens): -1
    assert adv_mod.overlong_penalty(8, max_len=10, buffer=4, factor=0.5) == pytest.approx(-0.25)
    a = AlgorithmConfig(overlong_buffer=4)
    a.check_job(10)
    # equal verifier rewards, but the truncated row is shaped to 0: the group now has signal
    got = adv_mod.compute_advantages([1.0, 1.0], [0, 0], [5, 10], a)
    assert got == pytest.approx([1 / (2 ** 0.5 / 2 + 1e-6) / 2, -1 / (2 ** 0.5 / 2 + 1e-6) / 2])
    assert adv_mod.zero_signal_share([1.0, 1.0, 0.0, 1.0], [0, 0, 1, 1]) == 0.5


def test_kl_is_correction_value_and_gradient():
    logp0, ref, old = t([[-1.0, -2.0]]), t([[-1.5, -1.0]]), t([[-1.2, -2.1]])
    logp = logp0.clone().requires_grad_(True)
    k = losses.kl_penalty_is(logp, ref, old, "k3")
    r = torch.exp(logp0 - old)
    k3 = torch.exp(ref - logp0) - (ref - logp0) - 1
    assert torch.allclose(k, r * k3)
    k.sum().backward()
    # d/dlogp [r k3] = r k3 + r (1 - exp(ref - logp))
    assert torch.allclose(logp.grad, r * k3 + r * (1 - torch.exp(ref - logp0)))
    assert torch.autograd.gradcheck(lambda x: losses.kl_penalty_is(x, ref, old, "k3"), (logp0.clone().requires_grad_(True),))


def test_rollout_weights_token_and_sequence_truncate_and_mask():
    prox, behav, mask = t([[L(3.0), L(0.5), 5.0]]), t([[0.0, 0.0, -5.0]]), t([[1, 1, 0]])  # padding: garbage
    w, cut = correction.rollout_weights(prox, behav, mask, mode="tis", level="token", low=0.5, high=2.0)
    assert w[0, :2].tolist() == pytest.approx([2.0, 0.5]) and cut[0, :2].tolist() == [True, False]
    w, cut = correction.rollout_weights(prox, behav, mask, mode="mis", level="token", low=0.5, high=2.0)
    assert w[0, :2].tolist() == pytest.approx([0.0, 0.5]) and cut[0, :2].tolist() == [True, False]
    # sequence level: product of the row's token weights (3 * 0.5 = 1.5), one decision for the row
    w, cut = correction.rollout_weights(prox, behav, mask, mode="tis", level="sequence", low=0.5, high=2.0)
    assert w[0, :2].tolist() == pytest.approx([1.5, 1.5]) and not cut[0, :2].any()
    w, cut = correction.rollout_weights(prox, behav, mask, mode="mis", level="sequence", low=0.8, high=1.2)
    assert w[0, :2].tolist() == [0.0, 0.0] and cut[0, :2].all()


def test_mismatch_sums():
    trainer, behav, mask = t([[-1.0, -2.0, 0.0]]), t([[-1.1, -1.0, -50.0]]), t([[1, 1, 0]])
    s = correction.mismatch_sums(trainer, behav, mask, low=0.5, high=2.0)
    assert s["mismatch_lp_mean"].item() == pytest.approx(0.1 + 1.0)
    assert s["mismatch_lp_max"].item() == pytest.approx(1.0)  # the padded 50 is not counted
    assert s["mismatch_w_mean"].item() == pytest.approx(math.exp(0.1) + math.exp(-1.0))
    assert s["mismatch_w_max"].item() == pytest.approx(math.exp(0.1))
    assert s["mismatch_w_outside"].item() == 1.0  # exp(-1) = 0.37 < 0.5


def test_micro_objective_combines_mis_and_kl_and_reports_metrics():
    a = AlgorithmConfig(proximal="recompute", correction="mis", tis_cap=2.0, kl_coef=0.1, kl_is_correction=True)
    logp = t([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]], grad=True)
    old, behav = t([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]]), t([[-1.0, -3.0, 0.0], [-0.6, 0.0, 0.0]])
    ref = t([[-1.2, -2.0, 0.0], [-0.5, 0.0, 0.0]])
    mask, adv = t([[1, 1, 0], [1, 0, 0]]), t([1.0, -1.0])
    ent = t([[0.5, 1.0, 9.0], [1.5, 9.0, 9.0]])
    out = micro_objective(a, Inputs(logp, old, behav, adv, mask, ref=ref, before=old, entropy=ent), 3.0)
    # w = exp(old - behav) = [1, e, 1.105]: e > 2 is masked; ratio 1 everywhere -> pg = -A w
    w = [1.0, 0.0, math.exp(0.1)]
    k3 = [math.exp(-0.2) - 1 + 0.2, 0.0, 0.0]
    want = (-w[0] + 0.1 * k3[0] + 0.0 + w[2]) / 3
    assert out.loss.item() == pytest.approx(want)
    assert out.sums["is_masked_frac"] == 1.0 and out.sums["entropy"] == pytest.approx(3.0)
    assert out.maxes["is_weight_max"] == pytest.approx(math.exp(0.1))
    assert out.sums["mismatch_lp_mean"] == pytest.approx(1.1) and out.maxes["mismatch_lp_max"] == pytest.approx(1.0)
    assert out.sums["kl"] == pytest.approx(k3[0])
    out.loss.backward()
    assert logp.grad[0, 2].item() == 0.0 and logp.grad[1, 1].item() == 0.0  # padding gets no gradient
