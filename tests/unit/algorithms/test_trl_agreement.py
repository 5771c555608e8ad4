"""Our objective against TRL's GRPOTrainer loss (trl==1.16.0) on identical inputs: loss value, gradient with
respect to the policy log-probs, clip fractions. Only the loss function of TRL runs: `GRPOTrainer._compute_loss`
is called on a stand-in `self` whose log-prob function returns our tensor, so no model, dataset or hub is
involved. Skipped when trl is not installed (it is a test-only dependency).

Name mapping (docs/algorithms.md): TRL loss_type grpo = loss_agg seq_mean_token_mean; dapo = token_mean;
dr_grpo = seq_mean_token_sum_norm; importance_sampling_level=sequence = policy_loss gspo; cispo = cispo
(TRL's epsilon_high is the absolute cap 1 + clip_eps_high, and TRL has no lower clip); beta = kl_coef;
use_bias_correction_kl = kl_is_correction.
"""

from collections import defaultdict
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from trl.trainer.grpo_trainer import GRPOTrainer  # noqa: E402

from asyncflow_hpc.algorithms.config import AlgorithmConfig  # noqa: E402
from asyncflow_hpc.algorithms.objective import Inputs, micro_objective  # noqa: E402

MAX_LEN = 6


class _Accelerator:
    num_processes = 1
    sync_gradients = True

    def reduce(self, x, reduction="sum"):
        return x

    def gather(self, x):
        return x

    def gather_for_metrics(self, x):
        return x


def _batch(seed=0, b=5, tmax=MAX_LEN):
    g = torch.Generator().manual_seed(seed)
    lengths = [tmax, 3, 1, 4, tmax][:b]  # padded rows, and rows of the maximum length (truncated)
    mask = torch.zeros((b, tmax), dtype=torch.float32)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    logp = -torch.rand((b, tmax), generator=g) * 3
    old = logp + 0.3 * torch.randn((b, tmax), generator=g)  # ratios from ~0.5 to ~2: some clipped
    ref = logp + 0.3 * torch.randn((b, tmax), generator=g)
    adv = torch.tensor([1.0, -0.5, 0.0, 0.8, -1.3][:b])  # a zero advantage (constant-reward group) too
    return logp, old, ref, adv, mask


def _trl(logp, old, ref, adv, mask, *, loss_type, level="token", eps_low=0.2, eps_high=0.2, beta=0.0,
         bias_kl=False):
    stub = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros_like(logp), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level=level, beta=beta,
        args=SimpleNamespace(use_bias_correction_kl=bias_kl, delta=None, steps_per_generation=1),
        loss_type=loss_type, epsilon_low=eps_low, epsilon_high=eps_high, use_vllm=False,
        vllm_importance_sampling_correction=False, model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1, max_completion_length=MAX_LEN, accelerator=_Accelerator(),
        _entropy_bonus_enabled=False, aux_loss_enabled=False, _metrics=defaultdict(lambda: defaultdict(list)))
    b, t = logp.shape
    inputs = {"prompt_ids": torch.zeros((b, 1), dtype=torch.long), "prompt_mask": torch.ones((b, 1)),
              "completion_ids": torch.zeros((b, t), dtype=torch.long), "completion_mask": mask,
              "advantages": adv, "old_per_token_logps": old, "ref_per_token_logps": ref,
              "num_items_in_batch": mask.sum()}
    return GRPOTrainer._compute_loss(stub, None, inputs), stub._metrics["train"]


def _ours(logp, old, ref, adv, mask, algo):
    algo.check_job(MAX_LEN)
    b = logp.shape[0]
    denom = {"token_mean": float(mask.sum()), "seq_mean_token_mean": float(b),
             "seq_mean_token_sum_norm": float(b * MAX_LEN)}[algo.loss_agg]
    out = micro_objective(algo, Inputs(logp, old, old, adv, mask, ref=ref), denom)
    return out.loss, out


CASES = [
    ("grpo", dict(loss_type="grpo"), dict(loss_agg="seq_mean_token_mean")),
    ("dapo", dict(loss_type="dapo", eps_high=0.28), dict(loss_agg="token_mean", clip_eps_high=0.28)),
    ("bnpo", dict(loss_type="bnpo"), dict(loss_agg="token_mean")),
    ("dr_grpo", dict(loss_type="dr_grpo"), dict(loss_agg="seq_mean_token_sum_norm", norm_adv_by_std=False)),
    ("gspo", dict(loss_type="grpo", level="sequence", eps_low=0.03, eps_high=0.04),
     dict(policy_loss="gspo", loss_agg="seq_mean_token_mean", clip_eps=0.03, clip_eps_high=0.04)),
    ("cispo", dict(loss_type="cispo", eps_high=1.2), dict(policy_loss="cispo", clip_eps=0.99, clip_eps_high=0.2)),
    ("kl", dict(loss_type="grpo", beta=0.05), dict(loss_agg="seq_mean_token_mean", kl_coef=0.05)),
    ("kl_is", dict(loss_type="dapo", beta=0.05, bias_kl=True),
     dict(loss_agg="token_mean", kl_coef=0.05, kl_is_correction=True)),
]


@pytest.mark.parametrize("name, trl_kw, our_kw", CASES, ids=[c[0] for c in CASES])
def test_loss_and_gradient_agree_with_trl(name, trl_kw, our_kw):
    logp0, old, ref, adv, mask = _batch()
    a, b = logp0.clone().requires_grad_(True), logp0.clone().requires_grad_(True)
    theirs, trl_metrics = _trl(a, old, ref, adv, mask, **trl_kw)
    ours, out = _ours(b, old, ref, adv, mask, AlgorithmConfig(**our_kw))
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-7)
    theirs.backward()
    ours.backward()
    assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-7)
    if trl_kw["loss_type"] in ("grpo", "dapo", "bnpo", "dr_grpo") and trl_kw.get("level", "token") == "token":
        n = float(mask.sum())  # TRL: token means of the active low / high clips
        assert out.sums["clip_frac_low"] / n == pytest.approx(trl_metrics["clip_ratio/low_mean"][0], abs=1e-7)
        assert out.sums["clip_frac_high"] / n == pytest.approx(trl_metrics["clip_ratio/high_mean"][0], abs=1e-7)
        assert (out.sums["clip_frac_low"] + out.sums["clip_frac_high"]) > 0  # the case does clip something
