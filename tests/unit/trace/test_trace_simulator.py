"""The pipeline simulator on workloads with known answers, the cost-model fit, and `trace simulate`."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from asyncflow_hpc.trace import cli
from asyncflow_hpc.trace.costmodel import CostModel, fit_costs, fit_linear, workload_of
from asyncflow_hpc.trace.reader import read_trace
from asyncflow_hpc.trace.simulator import SimSpec, rate_bound, recommend_split, simulate, split_candidates
from asyncflow_hpc.trace.synthetic import write_simulated_trace

# 4 rollout instances generating 8 rows per call in g = 1 s; a step consumes B = 32 rows, i.e. one
# round of calls. Training a batch takes `train` seconds (per-row cost at dp=1).
G, B, B_CALL, INST = 1.0, 32, 8, 4


def _costs(train: float, **kw) -> CostModel:
    return CostModel(gen_per_row_s=G / B_CALL, train_per_row_s=train / B, **kw)


def _spec(eta: int, **kw) -> SimSpec:
    args = dict(rollout_instances=INST, trainer_dp=1, batch_rows=B, gen_rows=B_CALL, eta=eta, steps=20)
    args.update(kw)
    return SimSpec(**args)


def test_balanced_pipeline_overlaps_fully():
    r = simulate(_spec(1), _costs(1.0))
    assert r.step_time_s == pytest.approx(1.0) and r.throughput == pytest.approx(B / G)
    assert r.idle_frac["trainer"] == pytest.approx(0.0, abs=1e-9)
    assert r.idle_frac["rollout"] == pytest.approx(0.0, abs=1e-9)
    assert r.bubble_ratio == pytest.approx(0.0, abs=1e-9)
    assert max(r.staleness) == 1 and sum(r.staleness.values()) == 20 * B


def test_trainer_bound():
    r = simulate(_spec(1), _costs(3.0))
    assert r.throughput == pytest.approx(B / 3.0)
    assert r.idle_frac["trainer"] == pytest.approx(0.0, abs=1e-9)
    assert r.idle_frac["rollout"] == pytest.approx(2 / 3)


def test_rollout_bound():
    r = simulate(_spec(1), _costs(0.25))
    assert r.throughput == pytest.approx(B / G)
    assert r.idle_frac["trainer"] == pytest.approx(0.75)
    assert r.idle_frac["rollout"] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("train", [0.25, 1.0, 3.0])
def test_eta0_serialises_generate_train_sync(train):
    c = _costs(train, sync_trainer_s=0.1, sync_transfer_s=0.3, swap_s=0.05)
    r = simulate(_spec(0), c)
    # Nothing overlaps: swap + one round of generation + step + weight transfer, every step.
    assert r.step_time_s == pytest.approx(0.05 + G + train + 0.3)
    assert r.staleness == {0: 20 * B}
    assert r.exposed_sync_s == pytest.approx(0.1 * 1 + 0.05 * INST)  # trainer blocked + each instance's swap
    assert r.throughput == pytest.approx(rate_bound(_spec(0), c))


def test_sync_mode_generate_then_train():
    c = _costs(1.0, sync_trainer_s=0.1, swap_s=0.05)
    r = simulate(_spec(0, mode="sync", trainer_dp=INST), c)
    # All 4 devices generate one round (1 s), train with dp=4 (1/4 s), reload weights (0.15 s).
    assert r.step_time_s == pytest.approx(G + 1.0 / INST + 0.15)
    assert r.devices == INST and r.staleness == {0: 20 * B}


@pytest.mark.parametrize("eta", [0, 1, 2, 4])
def test_staleness_never_exceeds_eta(eta):
    lens = np.random.default_rng(eta).integers(10, 400, 300)
    spec = _spec(eta, rollout_instances=5, gen_rows=6, response_lens=lens, response_len=float(lens.mean()))
    r = simulate(spec, CostModel(gen_overhead_s=0.1, gen_per_token_s=1e-3, train_per_token_s=2e-4, swap_s=0.01,
                                 sync_transfer_s=0.05))
    assert min(r.staleness) >= 0 and max(r.staleness) <= eta
    assert sum(r.staleness.values()) == spec.steps * spec.batch_rows


def test_eta_above_zero_overlaps_generation_and_training():
    lens = np.random.default_rng(0).integers(10, 400, 300)
    c = CostModel(gen_overhead_s=0.1, gen_per_token_s=1e-3, train_per_token_s=1e-4, sync_transfer_s=0.2, swap_s=0.02)
    thr = [simulate(_spec(eta, response_lens=lens, response_len=float(lens.mean())), c).throughput
           for eta in range(4)]
    assert thr[1] > 1.3 * thr[0]
    # Beyond the first step of slack the gain is small; random lengths make it not strictly monotone.
    assert min(thr[1:]) >= 0.9 * max(thr[1:])


def test_data_parallel_divides_train_time():
    c = CostModel(gen_per_row_s=0.001, train_overhead_s=0.2, train_per_row_s=4.0 / B, allreduce_s=0.1)
    r1 = simulate(_spec(1, trainer_dp=1), c)
    r4 = simulate(_spec(1, trainer_dp=4), c)
    assert r1.step_time_s == pytest.approx(0.2 + 4.0)
    assert r4.step_time_s == pytest.approx(0.2 + 1.0 + 0.1 * 2 * 3 / 4)


def test_thousand_ranks_under_a_second():
    c = CostModel(gen_overhead_s=0.5, gen_per_token_s=1e-3, train_overhead_s=1.0, train_per_token_s=1e-5,
                  sync_trainer_s=0.2, sync_transfer_s=0.5, swap_s=0.1)
    spec = SimSpec(rollout_instances=768, trainer_dp=256, batch_rows=4096, gen_rows=16, eta=1, steps=12,
                   prompt_len=100, response_len=300)
    t0 = time.process_time()  # CPU time: other processes share this machine's cores
    r = simulate(spec, c)
    assert time.process_time() - t0 < 1.0
    assert r.devices == 1024 and r.throughput > 0


def test_recommend_split_finds_the_balance_point():
    # Rollout rate = 8 rows/s per instance; a 512-row step takes 48/dp s, i.e. 10.67*dp rows/s:
    # equal rates near dp = 27 of 64 devices.
    c = CostModel(gen_per_row_s=1 / 8, train_per_row_s=3.0 / 32)
    template = _spec(2, batch_rows=512, steps=12)
    best, scanned = recommend_split(c, template, 64)
    exhaustive = [(simulate(SimSpec(**{**template.__dict__, "trainer_dp": dp, "rollout_instances": n}), c).throughput, dp)
                  for dp, n in split_candidates(64)]
    top, top_dp = max(exhaustive)
    assert best.spec.devices == 64 and len(scanned) <= 20 < len(exhaustive)
    assert best.throughput >= 0.98 * top and abs(best.spec.trainer_dp - top_dp) <= 1
    assert 25 <= best.spec.trainer_dp <= 30


def test_split_candidates_respect_group_shapes():
    assert split_candidates(8, rollout_tp=2, trainer_mp=2) == [(1, 3), (2, 2), (3, 1)]
    with pytest.raises(ValueError, match="no trainer/rollout split"):
        recommend_split(CostModel(), _spec(1, rollout_tp=4, trainer_mp=4), 6)


def test_spec_and_costs_are_checked():
    with pytest.raises(ValueError, match="SimSpec.eta"):
        _spec(-1)
    with pytest.raises(ValueError, match="SimSpec.batch_rows"):
        _spec(1, batch_rows=0)
    with pytest.raises(ValueError, match="CostModel.swap_s"):
        CostModel(swap_s=-1.0)


def test_fit_linear():
    x = np.array([10.0, 50.0, 90.0, 200.0])
    a, b, sep = fit_linear(x, 0.5 + 0.01 * x)
    assert sep and a == pytest.approx(0.5) and b == pytest.approx(0.01)
    a, b, sep = fit_linear(np.full(5, 100.0), np.full(5, 2.0))
    assert not sep and (a, b) == (0.0, pytest.approx(0.02))


def _recorded(tmp_path, steps=20):
    truth = CostModel(gen_overhead_s=0.05, gen_per_token_s=1e-3, train_per_token_s=2e-5, sync_trainer_s=0.02,
                      sync_transfer_s=0.05, swap_s=0.01, fetch_s=0.004, put_s=0.006, sync_fit_receivers=3)
    lens = np.random.default_rng(1).integers(20, 200, 500)
    spec = SimSpec(rollout_instances=3, trainer_dp=1, batch_rows=32, gen_rows=4, eta=1, steps=steps,
                   prompt_len=30, response_len=float(lens.mean()), response_lens=lens)
    path = write_simulated_trace(str(tmp_path / "sim.h5"), spec, truth)
    return path, spec, truth


def test_costs_fitted_from_a_trace(tmp_path):
    path, spec, truth = _recorded(tmp_path)
    t = read_trace(path)
    shape = workload_of(t)
    assert (shape.batch_rows, shape.gen_rows, shape.eta, shape.trainer_ranks, shape.rollout_ranks) == (32, 4, 1, 1, 3)
    c = fit_costs(t, shape)
    assert c.gen_overhead_s == pytest.approx(0.05, rel=1e-6) and c.gen_per_token_s == pytest.approx(1e-3, rel=1e-6)
    assert c.sync_trainer_s == pytest.approx(0.02) and c.sync_transfer_s == pytest.approx(0.05)
    assert c.swap_s == pytest.approx(0.01)
    assert c.fetch_s == pytest.approx(0.004) and c.put_s == pytest.approx(0.006) and c.sync_fit_receivers == 3
    # The fitted model predicts another split as the true model does.
    other = SimSpec(**{**spec.__dict__, "rollout_instances": 6, "trainer_dp": 2, "response_lens": shape.response_lens})
    truth_other = SimSpec(**{**spec.__dict__, "rollout_instances": 6, "trainer_dp": 2})
    assert simulate(other, c).throughput == pytest.approx(simulate(truth_other, truth).throughput, rel=0.05)


def test_simulate_cli(tmp_path, capsys):
    path, spec, truth = _recorded(tmp_path)
    assert cli.main(["simulate", path, "--json", "--rollout-ranks", "5", "--trainer-ranks", "3", "--eta", "2"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    d = json.loads(out[-1])
    recorded, requested, recommended = d["cases"]
    assert recorded["samples_per_s"] == pytest.approx(d["measured_samples_per_s"], rel=0.02)
    assert (requested["rollout_ranks"], requested["trainer_ranks"], requested["eta"]) == (5, 3, 2)
    assert recommended["devices"] == 8 and recommended["samples_per_s"] >= requested["samples_per_s"] * 0.999
    assert any(line.startswith("recommended split of 8 devices") for line in out)
    assert cli.main(["simulate", path, "--devices", "64", "--no-recommend", "--json"]) == 0
    d = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert d["cases"][1]["devices"] == 64 and d["cases"][1]["batch_rows"] == 32 * 16
