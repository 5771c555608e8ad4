"""Torch trainer engine on CPU (no process group): step, order invariance, log-probs, state, broadcast names."""

import random

import pytest

torch = pytest.importorskip("torch")

from asyncflow_hpc.algorithms.config import AlgorithmConfig  # noqa: E402
from asyncflow_hpc.engines.base import Row, SamplingParams  # noqa: E402
from asyncflow_hpc.engines.batching import split_even  # noqa: E402
from asyncflow_hpc.engines.config import TrainerConfig  # noqa: E402
from asyncflow_hpc.engines.torch_rollout import TorchRolloutEngine  # noqa: E402
from asyncflow_hpc.engines.torch_trainer import TorchTrainerEngine  # noqa: E402
from asyncflow_hpc.models.config import ModelConfig  # noqa: E402
from asyncflow_hpc.models.hf import build_policy  # noqa: E402
from asyncflow_hpc.models.tokenizer import CharTokenizer  # noqa: E402
from asyncflow_hpc.workflow.common import assign_advantages  # noqa: E402

torch.set_num_threads(1)
TOK = CharTokenizer("0123456789+=")


def _model(seed=3):
    return build_policy(ModelConfig(tiny_hidden=32, tiny_layers=1, tiny_heads=2, init_seed=seed), TOK)[0]


def _rows(model, groups=4, n=4):
    eng = TorchRolloutEngine(model)
    p = SamplingParams(max_new_tokens=5, stop_token_ids=(TOK.eos_id,))
    rows = []
    for pid in range(groups):
        prompt = TOK.encode(f"{pid}+{pid + 1}=")
        for k, g in enumerate(eng.generate([prompt] * n, p, [pid * 10 + k for k in range(n)])):
            rows.append(Row(prompt_id=pid, sample_index=k, prompt_ids=prompt, response_ids=g.response_ids,
                            behav_logprobs=g.logprobs, reward=float(len(g.response_ids) % 2)))
    assign_advantages(rows, AlgorithmConfig())
    return rows


def _engine(model, **algo):
    return TorchTrainerEngine(model, trainer_cfg=TrainerConfig(lr=1e-2, micro_batch_rows=5),
                              algo_cfg=AlgorithmConfig(**algo), temperature=1.0, pad_id=TOK.pad_id)


def test_log_probs_match_behaviour():
    model = _model()
    rows = _rows(model)
    for r, lp in zip(rows, _engine(model).log_probs(rows)):
        assert lp == pytest.approx(r.behav_logprobs, abs=1e-4)


def test_train_step_same_result_for_any_arrival_order():
    rows = _rows(_model())
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    a, b = _model(), _model()
    ma, mb = _engine(a).train_step(rows), _engine(b).train_step(shuffled)
    assert ma["loss"] == mb["loss"] and ma["grad_norm"] == mb["grad_norm"]
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k
    assert ma["rows"] == 16 and ma["clip_frac"] == 0.0  # on-policy: ratio 1, nothing clipped
    assert ma["ratio_max"] == pytest.approx(1.0, abs=1e-4)


def test_train_step_moves_positive_rows_up():
    model = _model()
    rows = _rows(model)
    eng = _engine(model)
    pos = [r for r in rows if r.advantage > 0]
    before = [sum(x) for x in eng.log_probs(pos)]
    m = eng.train_step(rows)
    after = [sum(x) for x in eng.log_probs(pos)]
    assert eng.version == 1 and m["grad_norm"] > 0
    assert sum(after) > sum(before)


def test_duplicate_rows_rejected():
    model = _model()
    rows = _rows(model, groups=1, n=2)
    with pytest.raises(ValueError, match="twice"):
        _engine(model).train_step(rows + rows[:1])


@pytest.mark.parametrize("algo", [dict(proximal="recompute", correction="decoupled"),
                                  dict(proximal="recompute", correction="tis", tis_cap=1.5),
                                  dict(kl_coef=0.1), dict(name="ppo"), dict(loss_agg="seq_mean_token_mean")])
def test_algorithm_variants_run(algo):
    model = _model()
    rows = _rows(model)
    # make rows look stale: behaviour log-probs from another policy
    stale = _model(seed=11)
    for r, lp in zip(rows, _engine(stale).log_probs(rows)):
        r.behav_logprobs = lp
    m = _engine(model, **algo).train_step(rows)
    assert all(v == v for v in m.values())  # no NaN
    if algo.get("correction"):
        assert m["is_weight"] != pytest.approx(1.0)
    if algo.get("kl_coef"):
        assert m["kl"] == pytest.approx(0.0, abs=1e-6)  # first step: policy == reference


def test_state_dict_round_trip_and_broadcast_names():
    model = _model()
    eng = _engine(model)
    eng.train_step(_rows(model))
    state = eng.state_dict()
    other = _engine(_model(seed=7))
    other.load_state_dict(state)
    assert other.version == 1
    assert torch.equal(other.model.state_dict()["lm_head.weight"], model.state_dict()["lm_head.weight"])
    target = TorchRolloutEngine(_model(seed=8))
    target.load_weights(eng.named_parameters_for_broadcast(), eng.version)
    assert torch.equal(target.model.state_dict()["model.norm.weight"], model.state_dict()["model.norm.weight"])


def test_sft_step_lowers_loss():
    model = _model()
    eng = _engine(model)
    pairs = [(TOK.encode(f"{i}="), TOK.encode(str(i)) + [TOK.eos_id]) for i in range(10)]
    first = eng.sft_step(pairs)
    for _ in range(10):
        last = eng.sft_step(pairs)
    assert last < first


def test_split_even():
    assert split_even(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert split_even([1], 3) == [[1], [], []]


def test_trainer_without_reference_copy_uses_rows_reference_logprobs():
    # Two trainers from the same weights: one holds its own frozen reference, the other none and
    # takes the rows' ref_logprobs (what dedicated reference ranks put in the store). Same step.
    from asyncflow_hpc.engines.torch_trainer import ReferencePolicy

    rows = _rows(_model())
    ref = ReferencePolicy(_model(), micro_batch_rows=3, temperature=1.0, pad_id=TOK.pad_id)
    for r, lp in zip(rows, ref.log_probs(rows)):
        r.ref_logprobs = lp
    own = _engine(_model(), kl_coef=0.1)
    given = TorchTrainerEngine(_model(), trainer_cfg=TrainerConfig(lr=1e-2, micro_batch_rows=5),
                               algo_cfg=AlgorithmConfig(kl_coef=0.1), temperature=1.0, pad_id=TOK.pad_id,
                               reference=False)
    assert given.ref_model is None and own.ref_model is not None
    bare = [Row(**{**r.__dict__, "ref_logprobs": None, "extra": {}}) for r in rows]
    for _ in range(2):  # the second step is off the reference: kl > 0
        a, b = own.train_step(bare), given.train_step(rows)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-9) and a["kl"] == pytest.approx(b["kl"], abs=1e-9)
    assert b["kl"] > 1e-6
    with pytest.raises(ValueError, match="reference_ranks"):  # no column, no copy: a named error, not kl=0
        given.train_step([Row(**{**r.__dict__, "ref_logprobs": None, "extra": {}}) for r in rows])
