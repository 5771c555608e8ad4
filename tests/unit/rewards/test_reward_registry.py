"""User reward functions by dotted path: signature and output checks."""

import pytest

from asyncflow_hpc.rewards.config import RewardConfig
from asyncflow_hpc.rewards.registry import RewardError, load_reward_fn, make_reward_fn


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "def good(prompt, response, reference):\n    return len(response) == len(reference)\n"
        "def scored(prompt, response, reference, *, scale=2.0):\n    return scale * 0.25\n"
        "def one_arg(response):\n    return 1.0\n"
        "def returns_text(prompt, response, reference):\n    return 'yes'\n"
        "def returns_nan(prompt, response, reference):\n    return float('nan')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_rewards"


def test_good_functions(user_module):
    assert load_reward_fn(f"{user_module}:good")("p", "ab", "cd") == 1.0
    assert load_reward_fn(f"{user_module}:scored")("p", "r", "x") == 0.5


def test_builtin_by_path():
    fn = load_reward_fn("asyncflow_hpc.rewards.math_verify:math_reward")
    assert fn("", "#### 5", "5") == 1.0


@pytest.mark.parametrize("name,match", [("one_arg", "must accept"), ("missing", "no function"),
                                        ("returns_text", "finite float"), ("returns_nan", "finite float")])
def test_bad_functions(user_module, name, match):
    with pytest.raises(RewardError, match=match):
        load_reward_fn(f"{user_module}:{name}")("p", "r", "x")


def test_bad_module_and_format():
    with pytest.raises(RewardError, match="cannot import"):
        load_reward_fn("no_such_module_xyz:fn")
    with pytest.raises(RewardError, match="package.module:function"):
        load_reward_fn("no_colon")
    with pytest.raises(ValueError, match="fn"):
        RewardConfig(fn="nocolon")


def test_builtin_scaled():
    fn = make_reward_fn(RewardConfig(correct=2.0, wrong=-1.0), lambda p, r, ref: float(r == ref))
    assert fn("", "a", "a") == 2.0 and fn("", "a", "b") == -1.0
