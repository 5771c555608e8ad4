"""Torch trainer with each loss variant, and the rollout-trainer mismatch on identical weights.

The mismatch bound: the torch rollout engine samples with a KV-cached incremental forward (one position at a
time) and the trainer recomputes the log-probs with one full causal forward over prompt + response. On CPU in
fp32 with the same weights these are the same arithmetic in a different order, so they differ by float
rounding only. Measured (tiny Llamas of 1-4 layers, hidden 32-128, 4 seeds, 16 responses of up to 24 tokens):
max |difference| 4.8e-7 (two ulps of a log-prob between -2 and -4; fp32 eps is 1.2e-7), mean <= 1e-7. The test
allows 2e-6 (about 4x the worst measurement): a real mismatch (other weights, a wrong position, temperature
applied on one side only) is 1e-2 or more.
"""

import pytest

torch = pytest.importorskip("torch")

from asyncflow_hpc.algorithms.config import AlgorithmConfig  # noqa: E402
from asyncflow_hpc.engines.base import Row, SamplingParams  # noqa: E402
from asyncflow_hpc.engines.config import TrainerConfig  # noqa: E402
from asyncflow_hpc.engines.torch_rollout import TorchRolloutEngine  # noqa: E402
from asyncflow_hpc.engines.torch_trainer import TorchTrainerEngine  # noqa: E402
from asyncflow_hpc.models.config import ModelConfig  # noqa: E402
from asyncflow_hpc.models.hf import build_policy  # noqa: E402
from asyncflow_hpc.models.tokenizer import CharTokenizer  # noqa: E402
from asyncflow_hpc.workflow.common import assign_advantages  # noqa: E402

torch.set_num_threads(1)
TOK = CharTokenizer("0123456789+=")
MAX_NEW = 12
LP_BOUND = 2e-6


def _model(seed=3, hidden=32, layers=1):
    return build_policy(ModelConfig(tiny_hidden=hidden, tiny_layers=layers, tiny_heads=2, init_seed=seed), TOK)[0]


def _algo(**kw):
    a = AlgorithmConfig(**kw)
    a.check_job(MAX_NEW)
    return a


def _rows(model, groups=4, n=4, algo=None):
    eng = TorchRolloutEngine(model)
    p = SamplingParams(max_new_tokens=MAX_NEW, stop_token_ids=(TOK.eos_id,))
    rows = []
    for pid in range(groups):
        prompt = TOK.encode(f"{pid * 37}+{pid + 1}=")
        for k, g in enumerate(eng.generate([prompt] * n, p, [pid * 10 + k for k in range(n)])):
            rows.append(Row(prompt_id=pid, sample_index=k, prompt_ids=prompt, response_ids=g.response_ids,
                            behav_logprobs=g.logprobs, reward=float(len(g.response_ids) % 2)))
    assign_advantages(rows, algo or _algo())
    return rows


def _engine(model, algo, updates=1):
    return TorchTrainerEngine(model, trainer_cfg=TrainerConfig(lr=1e-2, micro_batch_rows=5, updates_per_step=updates),
                              algo_cfg=algo, temperature=1.0, pad_id=TOK.pad_id)


@pytest.mark.parametrize("hidden, layers, proximal, updates", [
    (32, 1, "behaviour", 1), (64, 2, "recompute", 1), (64, 2, "behaviour", 2)])
def test_mismatch_on_identical_weights_is_float_rounding(hidden, layers, proximal, updates):
    model = _model(hidden=hidden, layers=layers)
    rows = _rows(model)
    m = _engine(model, _algo(proximal=proximal), updates).train_step(rows)
    assert 0 <= m["mismatch_lp_max"] <= LP_BOUND
    assert m["mismatch_lp_mean"] <= m["mismatch_lp_max"]
    assert abs(m["mismatch_w_mean"] - 1) <= LP_BOUND and m["mismatch_w_max"] <= 1 + LP_BOUND
    assert m["mismatch_w_outside"] == 0.0
    # every row was generated with the trainer's weights (version 0): the on-policy figures are the same
    assert m["onpolicy_tokens"] == m["response_tokens"]
    assert m["mismatch_onpolicy_lp_max"] == m["mismatch_lp_max"]
    assert m["mismatch_onpolicy_lp_mean"] == pytest.approx(m["mismatch_lp_mean"])


def test_mismatch_detects_other_weights():
    model = _model()
    rows = _rows(_model(seed=11))  # sampled by another policy
    for r in rows[:8]:
        r.version = -1  # stale rows: counted in mismatch_*, not in mismatch_onpolicy_*
    m = _engine(model, _algo()).train_step(rows)
    assert m["mismatch_lp_max"] > 1e-2 and m["mismatch_w_max"] > 1.01
    assert m["onpolicy_tokens"] == sum(len(r.response_ids) for r in rows[8:])


@pytest.mark.parametrize("kw", [
    dict(policy_loss="gspo", loss_agg="seq_mean_token_mean", clip_eps=3e-4, clip_eps_high=4e-4),
    dict(policy_loss="cispo", clip_eps_high=4.0),
    dict(norm_adv_by_std=False, loss_agg="seq_mean_token_sum_norm"),
    dict(clip_eps_high=0.28, overlong_buffer=4),
    dict(adv_std="batch"),
    dict(kl_coef=0.1, kl_is_correction=True),
    dict(proximal="recompute", correction="tis", correction_level="sequence", tis_cap=1.5),
    dict(proximal="recompute", correction="mis", tis_cap=1.02),
])
def test_variants_train_on_stale_rows_and_report_metrics(kw):
    algo = _algo(**kw)
    model = _model()
    rows = _rows(model, algo=algo)
    stale = _model(seed=11)  # rows look stale: behaviour log-probs from another policy
    for r, lp in zip(rows, _engine(stale, _algo()).log_probs(rows)):
        r.behav_logprobs = lp
    m = _engine(model, algo).train_step(rows)
    assert all(v == v for v in m.values())  # no NaN
    for k in ("clip_frac", "clip_frac_low", "clip_frac_high", "is_weight", "is_weight_max", "is_masked_frac",
              "entropy", "kl", "ppo_kl", "zero_signal_groups", "mismatch_lp_mean", "mismatch_w_outside"):
        assert k in m, k
    assert m["clip_frac_low"] + m["clip_frac_high"] <= m["clip_frac"] + 1e-12
    assert m["entropy"] > 0 and 0 <= m["zero_signal_groups"] <= 1 and m["grad_norm"] > 0
    if kw.get("correction") == "mis":
        assert 0 < m["is_masked_frac"] < 1


def test_gspo_loss_value_is_the_sequence_objective_on_policy():
    # On-policy (ratio 1 everywhere) GSPO's loss is -mean_i A_i; with group-normalised advantages that is 0
    algo = _algo(policy_loss="gspo", loss_agg="seq_mean_token_mean")
    model = _model()
    rows = _rows(model, algo=algo)
    m = _engine(model, algo).train_step(rows)
    assert m["loss"] == pytest.approx(-sum(r.advantage for r in rows) / len(rows), abs=1e-6)
    assert m["ratio_max"] == pytest.approx(1.0, abs=1e-5)
