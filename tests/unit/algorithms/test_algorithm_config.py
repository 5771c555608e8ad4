"""AlgorithmConfig: every variant key is accepted where it acts and refused, naming the key, where it would not."""

import pytest

from asyncflow_hpc.algorithms.config import AlgorithmConfig
from asyncflow_hpc.config import load_config
from asyncflow_hpc.errors import ConfigError


@pytest.mark.parametrize("kw, key", [
    (dict(correction="tis"), "correction"),  # needs proximal=recompute
    (dict(correction_level="sequence"), "correction_level"),  # no correction to apply it to
    (dict(proximal="recompute", correction="decoupled", correction_level="sequence"), "correction_level"),
    (dict(proximal="recompute", correction="tis", is_low=0.3), "is_low"),  # only mis masks below
    (dict(adv_std="batch", norm_adv_by_std=False), "adv_std"),
    (dict(adv_std="batch", name="ppo"), "adv_std"),
    (dict(kl_is_correction=True), "kl_is_correction"),  # no KL term
    (dict(name="ppo", kl_coef=0.1), "kl_coef"),
    (dict(overlong_penalty=0.5), "overlong_penalty"),  # overlong_buffer=0
    (dict(overlong_buffer=-1), "overlong_buffer"),
    (dict(is_low=1.5, proximal="recompute", correction="mis"), "is_low"),
])
def test_refused_combinations_name_the_key(kw, key):
    with pytest.raises(ConfigError, match=rf"^{key}:"):
        AlgorithmConfig(**kw)


@pytest.mark.parametrize("kw", [
    dict(policy_loss="gspo", loss_agg="seq_mean_token_mean", clip_eps=3e-4, clip_eps_high=4e-4),
    dict(policy_loss="cispo", clip_eps_high=4.0),
    dict(norm_adv_by_std=False, loss_agg="seq_mean_token_sum_norm"),
    dict(clip_eps_high=0.28, overlong_buffer=4, overlong_penalty=0.5),
    dict(proximal="recompute", correction="mis", correction_level="sequence", tis_cap=3.0, is_low=0.2),
    dict(kl_coef=0.01, kl_is_correction=True),
    dict(adv_std="batch"),
])
def test_recipes_accepted(kw):
    AlgorithmConfig(**kw)


def test_job_config_binds_max_new_tokens_and_checks_the_buffer():
    cfg = load_config(None, ["rollout.max_new_tokens=16", "algorithm.overlong_buffer=4"])
    assert cfg.algorithm.max_response_len == 16
    assert not cfg.algorithm.group_local_advantages  # shaping needs lengths: the trainer computes advantages
    with pytest.raises(ConfigError, match=r"algorithm\.overlong_buffer: 16 must be < rollout\.max_new_tokens"):
        load_config(None, ["rollout.max_new_tokens=16", "algorithm.overlong_buffer=16"])


def test_example_configs_load():
    g = load_config("configs/default_gspo.yaml").algorithm
    assert g.policy_loss == "gspo" and g.loss_agg == "seq_mean_token_mean"
    d = load_config("configs/default_dapo.yaml").algorithm
    assert d.upper_clip > d.clip_eps and d.loss_agg == "token_mean" and d.overlong_buffer > 0


def test_advantages_stored_by_the_reward_stage_only_when_group_local():
    from asyncflow_hpc.workflow.rows import group_advantages_stored

    assert group_advantages_stored(AlgorithmConfig())
    assert group_advantages_stored(AlgorithmConfig(norm_adv_by_std=False))  # Dr. GRPO: still per group
    for kw in (dict(adv_std="batch"), dict(overlong_buffer=2), dict(name="ppo")):
        assert not group_advantages_stored(AlgorithmConfig(**kw)), kw
