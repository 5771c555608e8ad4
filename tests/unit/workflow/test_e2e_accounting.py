"""bench e2e accounting: the emulated cost model's time scale and host overrun, and the cost-model bound."""

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from asyncflow_hpc.config import load_config
from asyncflow_hpc.engines.emulated import (
    EmulatedTrainer,
    EmulationConfig,
    group_time,
    train_time,
)
from asyncflow_hpc.errors import ConfigError
from asyncflow_hpc.workflow.metrics import RoleClock, aggregate, host_overrun_fraction


def test_time_scale_multiplies_every_emulated_cost():
    base, tripled = EmulationConfig(), EmulationConfig(time_scale=3.0)
    seeds = [11, 12, 13, 14]
    assert group_time(tripled, seeds) == pytest.approx(3 * group_time(base, seeds))
    assert train_time(tripled, seeds, dp=2) == pytest.approx(3 * train_time(base, seeds, dp=2))
    with pytest.raises(ConfigError, match="time_scale"):
        load_config(None, ["emulation.time_scale=0"])


class _SlowTrainer:
    def __init__(self, host_s: float):
        self.host_s = host_s

    def train_step(self, rows):
        time.sleep(self.host_s)
        return {"loss": 0.0}


def _rows(k: int):
    return [SimpleNamespace(prompt_id=p, sample_index=i) for p in range(k) for i in range(2)]


def test_emulated_trainer_pads_or_counts_host_overrun():
    cfg = EmulationConfig(step_overhead_s=0.02, train_s_per_token=0.0)
    fast = EmulatedTrainer(_SlowTrainer(0.0), cfg, run_seed=0, prompts_per_step=2, dp=1)
    t = time.perf_counter()
    fast.train_step(_rows(2))
    assert time.perf_counter() - t >= 0.02 and fast.overrun_s == 0.0  # padded to the device time
    slow = EmulatedTrainer(_SlowTrainer(0.06), cfg, run_seed=0, prompts_per_step=2, dp=1)
    slow.train_step(_rows(2))
    assert 0.03 <= slow.overrun_s < 0.2  # the host took ~40 ms longer than the emulated device


def test_overrun_reaches_the_summary_as_a_fraction_of_rank_time():
    clock = RoleClock()
    clock.note_overrun(SimpleNamespace(overrun_s=0.5), None, SimpleNamespace(overrun_s=0.25), object())
    assert clock.host_overrun_s == pytest.approx(0.75)
    trainer, rollout = clock.summary(10.0), RoleClock().summary(10.0)
    assert host_overrun_fraction([trainer, rollout]) == pytest.approx(0.75 / 20)
    agg = aggregate([(0, "trainer", trainer), (1, "rollout", rollout)], 10.0)
    assert agg["host_overrun_fraction"] == pytest.approx(0.75 / 20)


def _bench_cfg(*overrides: str):
    return load_config(str(Path(__file__).resolve().parents[3] / "configs" / "bench_e2e.yaml"), list(overrides))


def test_ideal_loop_without_stragglers_is_the_closed_form():
    from asyncflow_hpc.bench.e2e import ideal_loop_s

    # sigma 0: every response has the same length, so no rank straggles (s = 1).
    cfg = _bench_cfg("emulation.length_sigma=0", "topology.world_size=4", "topology.trainer_ranks=1",
                     "data.prompts_per_step=4", "emulation.time_scale=2")
    e, steps, n = cfg.emulation, 5, cfg.rollout.n
    length = round(2.718281828459045 ** e.length_mu)
    g = 2 * (e.prefill_s + e.decode_s_per_token * length)

    def train(dp):
        return 2 * (e.step_overhead_s + e.train_s_per_token * 4 * n * length / dp)

    ideal = ideal_loop_s(cfg, steps)
    assert ideal["sync"] == pytest.approx(steps * (g + train(4)))
    assert ideal["async_rollout"] == pytest.approx(steps * 4 * g / 3)
    assert ideal["async"] == pytest.approx(max(steps * 4 * g / 3, steps * train(1)))


def test_ideal_loop_bound_grows_with_stragglers():
    from asyncflow_hpc.bench.e2e import ideal_loop_s

    flat, tailed = _bench_cfg("emulation.length_sigma=0"), _bench_cfg()
    r_flat = ideal_loop_s(flat, 8)
    r_tail = ideal_loop_s(tailed, 8)
    # With equal lengths the colocated baseline loses nothing to stragglers; with the long tail of
    # the shipped config each step waits for its slowest rank, so the bound is well above 1.
    assert r_tail["sync"] / r_tail["async"] > 1.5 * r_flat["sync"] / r_flat["async"]
