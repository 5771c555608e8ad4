"""`bench simulator` logic on synthetic traces whose ground truth is known (no runs, no MPI)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from asyncflow_hpc.bench import simulator as bench
from asyncflow_hpc.trace.costmodel import CostModel, fit_costs, workload_of
from asyncflow_hpc.trace.reader import read_trace
from asyncflow_hpc.trace.simulator import SimSpec, simulate
from asyncflow_hpc.trace.synthetic import write_simulated_trace

TRUTH = CostModel(gen_overhead_s=0.02, gen_per_token_s=2e-3, train_per_token_s=1e-4, sync_trainer_s=0.01,
                  sync_transfer_s=0.02, swap_s=0.005, fetch_s=0.003, put_s=0.004, sync_fit_receivers=3)


def _trace(tmp_path, trainer: int, rollout: int, costs: CostModel = TRUTH) -> str:
    lens = np.random.default_rng(3).integers(10, 120, 400)
    spec = SimSpec(rollout_instances=rollout, trainer_dp=trainer, batch_rows=64, gen_rows=8, eta=1, steps=24,
                   prompt_len=12, response_len=float(lens.mean()), response_lens=lens)
    return write_simulated_trace(str(tmp_path / f"t{trainer}.h5"), spec, costs)


def test_cross_predictions_match_known_throughput(tmp_path):
    traces = [read_trace(_trace(tmp_path, 1, 3)), read_trace(_trace(tmp_path, 2, 2))]
    rows = bench.cross_predictions(traces)
    assert [(r["from"], r["to"], r["self"]) for r in rows] == [
        ("1+3", "1+3", True), ("1+3", "2+2", False), ("2+2", "1+3", False), ("2+2", "2+2", True)]
    for r in rows:  # the traces are simulations of the same cost model: predictions agree with them
        assert abs(r["error"]) < 0.05, r
    # the two splits really differ, so a wrong split in the prediction would show
    assert rows[0]["measured"] > 1.2 * rows[3]["measured"]


def test_prediction_error_exposes_a_wrong_model(tmp_path):
    """A trace whose rollout was 1.5x slower predicts the other split badly: the error is reported."""
    slow = CostModel(**{**{k: v for k, v in vars(TRUTH).items() if k not in ("notes", "gen_ratios")},
                        "gen_per_token_s": 3e-3})
    traces = [read_trace(_trace(tmp_path, 1, 3, slow)), read_trace(_trace(tmp_path, 2, 2))]
    rows, worst = bench.run_set(traces, "mixed")
    assert worst > 0.15


def test_fitted_costs_recover_loop_overheads(tmp_path):
    t = read_trace(_trace(tmp_path, 1, 3))
    c = fit_costs(t, workload_of(t))
    assert c.fetch_s == pytest.approx(0.003) and c.put_s == pytest.approx(0.004)
    assert c.transfer_time(3) == pytest.approx(0.02) and c.transfer_time(7) == pytest.approx(0.03)  # depth 2 -> 3


def test_call_time_spread_slows_a_balanced_pipeline():
    """Long-tailed generate calls (same mean) gate the trainer under eta: throughput drops, never rises."""
    spec = SimSpec(rollout_instances=3, trainer_dp=1, batch_rows=48, gen_rows=8, eta=1, steps=30, response_len=50)
    base = CostModel(gen_per_token_s=1e-3, train_per_token_s=3.2e-4)  # rollout 60 rows/s, trainer ~62 rows/s
    tail = CostModel(gen_per_token_s=1e-3, train_per_token_s=base.train_per_token_s,
                     gen_ratios=np.array([0.5, 0.5, 0.5, 2.5]))
    assert simulate(spec, tail).throughput < 0.97 * simulate(spec, base).throughput


def test_scaling_efficiency_on_a_known_model(tmp_path):
    t = read_trace(_trace(tmp_path, 1, 3))
    sc = bench.scaling(t, small=8, large=64, steps=8)
    assert 0.5 < sc["efficiency"] <= 1.05
    for k in ("small", "large"):
        s = sc[k]
        assert s["trainer_ranks"] + s["rollout_ranks"] == s["devices"]
    assert sc["large"]["weight_transfer_s"] > sc["small"]["weight_transfer_s"]  # deeper broadcast tree
    assert "weight broadcast" in sc["limits"]


def test_main_on_given_traces_prints_json_last(tmp_path, capsys):
    a, b = _trace(tmp_path, 1, 3), _trace(tmp_path, 2, 2)
    assert bench.main(["--traces", a, b, "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    d = json.loads(out[-1])
    assert d["prediction_error"] < 0.05 and 0 < d["scaling_efficiency_1024"] <= 1.05
    assert "worst cross-split relative error" in "\n".join(out)
