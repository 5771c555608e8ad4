"""Native torch rollout: KV cache == no cache; a sample depends only on its seed and its group."""

import pytest

torch = pytest.importorskip("torch")

from asyncflow_hpc.engines.base import SamplingParams  # noqa: E402
from asyncflow_hpc.engines.torch_rollout import TorchRolloutEngine, filter_logits, group_runs  # noqa: E402
from asyncflow_hpc.models.config import ModelConfig  # noqa: E402
from asyncflow_hpc.models.hf import build_policy  # noqa: E402
from asyncflow_hpc.models.tokenizer import CharTokenizer  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model_tok():
    return build_policy(ModelConfig(tiny_hidden=32, tiny_layers=2, tiny_heads=2, init_seed=3),
                        CharTokenizer("0123456789+="))


def _params(tok, **kw):
    return SamplingParams(max_new_tokens=kw.pop("max_new_tokens", 12), stop_token_ids=(tok.eos_id,), **kw)


@pytest.mark.parametrize("kw", [dict(), dict(greedy=True), dict(temperature=0.7, top_k=5, top_p=0.9)])
def test_kv_cache_matches_no_cache(model_tok, kw):
    model, tok = model_tok
    prompts = [tok.encode("12+34=")] * 4 + [tok.encode("7+8=")] * 3
    seeds = list(range(100, 107))
    p = _params(tok, **kw)
    cached = TorchRolloutEngine(model, use_cache=True).generate(prompts, p, seeds)
    plain = TorchRolloutEngine(model, use_cache=False).generate(prompts, p, seeds)
    assert sum(g.length for g in cached) > 7  # really decoded several tokens
    for a, b in zip(cached, plain):
        assert a.response_ids == b.response_ids
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
        assert a.length == len(a.response_ids) == len(a.logprobs)


def test_sample_independent_of_batch_composition(model_tok):
    model, tok = model_tok
    eng = TorchRolloutEngine(model)
    g1, g2 = [tok.encode("1+2=")] * 3, [tok.encode("55+5=")] * 3
    p = _params(tok)
    both = eng.generate(g1 + g2, p, [1, 2, 3, 4, 5, 6])
    alone = eng.generate(g2, p, [4, 5, 6])
    swapped = eng.generate(g2 + g1, p, [4, 5, 6, 1, 2, 3])
    key = lambda gs: [(g.response_ids, g.logprobs) for g in gs]  # noqa: E731
    assert key(both[3:]) == key(alone) == key(swapped[:3])
    assert key(both[:3]) == key(swapped[3:])
    other = eng.generate(g2, p, [7, 8, 9])
    assert key(other) != key(alone)  # seeds matter


def test_behaviour_logprobs_are_log_softmax_of_scaled_logits(model_tok):
    model, tok = model_tok
    prompt = tok.encode("3+4=")
    (g,) = TorchRolloutEngine(model).generate([prompt], _params(tok, temperature=0.5, max_new_tokens=3), [11])
    ids = torch.tensor([prompt + g.response_ids])
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=ids).logits[0].float() / 0.5, -1)
    want = [float(lp[len(prompt) - 1 + j, t]) for j, t in enumerate(g.response_ids)]
    assert g.logprobs == pytest.approx(want, abs=1e-4)


def test_stop_token_ends_response(model_tok):
    model, tok = model_tok
    gens = TorchRolloutEngine(model).generate([tok.encode("1=")] * 8, _params(tok, max_new_tokens=40), list(range(8)))
    for g in gens:
        assert tok.eos_id not in g.response_ids[:-1]
        assert g.finished == (g.response_ids[-1] == tok.eos_id)
        assert g.finished or g.length == 40


def test_load_weights_and_errors(model_tok):
    model, tok = model_tok
    other, _ = build_policy(ModelConfig(tiny_hidden=32, tiny_layers=2, tiny_heads=2, init_seed=99),
                            CharTokenizer("0123456789+="))
    eng = TorchRolloutEngine(other)
    eng.load_weights(model.state_dict().items(), version=7)
    assert eng.version == 7
    assert torch.equal(other.state_dict()["lm_head.weight"], model.state_dict()["lm_head.weight"])
    with pytest.raises(KeyError):
        eng.load_weights([("nope", torch.zeros(1))], 8)
    with pytest.raises(ValueError, match="shape"):
        eng.load_weights([("model.norm.weight", torch.zeros(3))], 8)
    with pytest.raises(ValueError, match="seeds"):
        eng.generate([[1]], _params(tok), [])


def test_group_runs_and_filters():
    assert group_runs([[1], [1], [2], [1]]) == [(0, 2), (2, 3), (3, 4)]
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert torch.isinf(filter_logits(logits, 2, 1.0)).tolist() == [[True, False, False, True]]
    # softmax ~ [.09, .64, .24, .03]: top_p=0.7 keeps the two largest
    assert torch.isinf(filter_logits(logits, 0, 0.7)).tolist() == [[True, False, False, True]]
