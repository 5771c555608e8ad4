"""GRPO and baseline advantages on hand-computed cases."""

import math

import pytest

from asyncflow_hpc.algorithms.advantages import batch_baseline_advantages, grpo_advantages


def test_grpo_group_normalised_unbiased_std():
    adv = grpo_advantages([1, 0, 0, 1, 5], [7, 7, 7, 7, 8], eps=0.0)
    s = math.sqrt(1 / 3)  # mean 0.5, sum of squares 1.0 over n-1 = 3
    assert adv[:4] == pytest.approx([0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s])
    assert adv[4] == 0.0  # a group of one has no signal


def test_grpo_all_equal_rewards_give_zero():
    assert grpo_advantages([1, 1, 1], [0, 0, 0]) == [0.0, 0.0, 0.0]


def test_grpo_without_std_and_interleaved_groups():
    adv = grpo_advantages([1, 3, 0, 2], [0, 1, 0, 1], norm_std=False)
    assert adv == pytest.approx([0.5, 0.5, -0.5, -0.5])


def test_grpo_length_mismatch():
    with pytest.raises(ValueError):
        grpo_advantages([1.0], [0, 1])


def test_batch_baseline():
    assert batch_baseline_advantages([1, 2, 3, 6]) == pytest.approx([-2, -1, 0, 3])
    assert batch_baseline_advantages([]) == []
