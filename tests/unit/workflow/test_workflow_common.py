"""Seeds, prompt schedule and batch helpers shared by the sync and async workflows."""

import pytest

from asyncflow_hpc.algorithms.config import AlgorithmConfig
from asyncflow_hpc.engines.base import Row, sorted_rows
from asyncflow_hpc.workflow.common import assign_advantages, derive_seed, example_index, step_prompt_ids


def test_derive_seed_stable_and_distinct():
    assert derive_seed(0, 1, 2, 3) == derive_seed(0, 1, 2, 3)
    seeds = {derive_seed(s, st, p, k) for s in range(2) for st in range(3) for p in range(4) for k in range(5)}
    assert len(seeds) == 120 and all(0 <= x < 2 ** 63 for x in seeds)


def test_prompt_schedule_walks_permutations():
    assert step_prompt_ids(2, 3) == [6, 7, 8]
    n = 7
    epoch0 = [example_index(5, pid, n) for pid in range(n)]
    epoch1 = [example_index(5, pid, n) for pid in range(n, 2 * n)]
    assert sorted(epoch0) == sorted(epoch1) == list(range(n))
    assert epoch0 != epoch1 or n < 3
    assert epoch0 == [example_index(5, pid, n) for pid in range(n)]


def test_advantages_on_global_batch():
    rows = [Row(prompt_id=p, sample_index=k, prompt_ids=[1], response_ids=[2], behav_logprobs=[0.0],
                reward=float(k == 0)) for p in (3, 1) for k in range(2)]
    assign_advantages(rows, AlgorithmConfig(adv_eps=1e-9))
    assert [r.advantage for r in rows] == pytest.approx([0.7071, -0.7071] * 2, abs=1e-4)
    assert [r.key for r in sorted_rows(rows)] == [(1, 0), (1, 1), (3, 0), (3, 1)]


@pytest.mark.parametrize("name", ["default", "gsm8k_gpu", "gsm8k_ascend"])
def test_shipped_configs_load(name, monkeypatch):
    from pathlib import Path

    from asyncflow_hpc.config import load_config

    root = Path(__file__).resolve().parents[3]
    cfg = load_config(str(root / "configs" / f"{name}.yaml"))
    # The shipped configs run AsyncFlow: separate trainer and rollout groups under a staleness bound.
    assert cfg.workflow.mode == "async" and not cfg.topology.colocate and cfg.workflow.eta >= 1
    assert 1 <= cfg.topology.trainer_ranks < cfg.topology.world_size
    if name == "default":
        assert cfg.topology.world_size == 4 and cfg.device.threads_per_rank == 1 and not cfg.data.train_path
    else:
        assert "${ASYNCFLOW_GSM8K_DIR}" in cfg.data.train_path and cfg.model.path


@pytest.mark.parametrize("norm_std", [True, False])
def test_group_advantages_equal_the_batch_computation_bit_for_bit(norm_std):
    # The reward stage stores each group's GRPO advantages as soon as the group is scored; the trainer
    # uses them instead of computing over the batch. Same float64 values, whatever the batch order.
    import random

    import numpy as np

    from asyncflow_hpc.workflow.common import group_advantages

    algo = AlgorithmConfig(norm_adv_by_std=norm_std)
    rng = random.Random(5)
    groups = {pid: np.asarray([rng.choice([0.0, 1.0, 0.3, 1 / 3]) for _ in range(6)], dtype=np.float32)
              for pid in range(7)}
    groups[7] = np.full(6, 0.5, dtype=np.float32)  # no signal: all zero
    stored = {pid: group_advantages(r, algo) for pid, r in groups.items()}
    rows = [Row(prompt_id=pid, sample_index=k, prompt_ids=[], response_ids=[], behav_logprobs=[],
                reward=float(r[k])) for pid, r in groups.items() for k in range(len(r))]
    rng.shuffle(rows)
    assign_advantages(rows, algo)
    for row in rows:
        assert row.advantage == stored[row.prompt_id][row.sample_index]
    assert stored[7].tolist() == [0.0] * 6 and stored[0].dtype == np.float64
