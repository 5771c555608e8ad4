"""trace summary / export / plot and the trace CLI on a hand-built trace with known figures."""

from __future__ import annotations

import json

import numpy as np
import pytest

import trace_synth
from asyncflow_hpc.trace import cli
from asyncflow_hpc.trace.export import trace_events
from asyncflow_hpc.trace.plot import plot_data, span_depths
from asyncflow_hpc.trace.reader import read_trace
from asyncflow_hpc.trace.summary import format_summary, summarize, union_length

E = trace_synth.EXPECTED


@pytest.fixture()
def synth(tmp_path):
    return trace_synth.write(tmp_path / "t.h5")


def test_union_length_counts_overlaps_once():
    assert union_length(np.array([0.0, 1.0, 1.5, 5.0]), np.array([2.0, 1.2, 3.0, 6.0])) == pytest.approx(4.0)
    assert union_length(np.array([]), np.array([])) == 0.0
    assert union_length(np.array([3.0, 0.0]), np.array([4.0, 1.0])) == pytest.approx(2.0)


def test_summary_figures(synth):
    s = summarize(read_trace(synth))
    roles = {r.role: r for r in s.roles}
    assert s.window_s == pytest.approx(E["window_s"])
    assert roles["trainer"].busy_s == pytest.approx(E["trainer_busy_s"])
    assert roles["trainer"].idle_s == pytest.approx(E["trainer_idle_s"])
    assert roles["trainer"].wait_s == pytest.approx(E["trainer_wait_s"])
    assert roles["rollout"].ranks == 2
    assert roles["rollout"].busy_s == pytest.approx(E["rollout_busy_s"])
    assert roles["rollout"].idle_s == pytest.approx(E["rollout_idle_s"])
    assert s.bubble_ratio == pytest.approx(E["bubble_ratio"])
    assert roles["trainer"].weight_exposed_s == pytest.approx(E["weight_exposed_trainer_s"])
    assert roles["rollout"].weight_exposed_s == pytest.approx(E["weight_exposed_rollout_s"])
    assert s.rows == E["rows"]
    assert s.samples_per_s == pytest.approx(E["samples_per_s"])
    assert s.tokens_per_s == pytest.approx(E["tokens_per_s"])
    assert s.staleness == E["staleness"]
    assert s.steps == 5 and s.mean_step_s == pytest.approx(E["mean_step_s"])
    assert s.weight_syncs == 5
    text = format_summary(s)
    assert "8.00 samples/s" in text and "240.0 tokens/s" in text and "0.433" in text


def test_summary_cli_json(synth, capsys):
    assert cli.main(["summary", synth, "--json"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    d = json.loads(last)
    assert d["samples_per_s"] == pytest.approx(E["samples_per_s"])
    assert d["staleness"] == {"0": 8, "1": 32}


def test_export_chrome_events(synth, tmp_path, capsys):
    out = tmp_path / "t.json"
    assert cli.main(["export", synth, "-o", str(out)]) == 0
    doc = json.loads(out.read_text())
    ev = doc["traceEvents"]
    x = [e for e in ev if e["ph"] == "X"]
    t = read_trace(synth)
    assert len(x) == len(t.spans)
    gen = sorted((e for e in x if e["name"] == "generate" and e["pid"] == 2), key=lambda e: e["ts"])
    assert [round(e["ts"]) for e in gen] == [0, 1_000_000, 2_000_000, 3_000_000, 4_000_000]
    assert all(e["dur"] == pytest.approx(500_000) for e in gen)
    assert gen[0]["args"]["rows"] == 4 and gen[0]["args"]["tokens"] == 80 and "step" not in gen[0]["args"]
    recv = [e for e in x if e["name"] == "weight_recv"]
    assert {e["tid"] for e in recv} == {1}
    names = {e["pid"]: e["args"]["name"] for e in ev if e["ph"] == "M" and e["name"] == "process_name"}
    assert names == {0: "rank 0 (trainer)", 1: "rank 1 (rollout)", 2: "rank 2 (rollout)"}
    occ = [e for e in ev if e["ph"] == "C" and e["name"] == "store_occupancy"]
    assert len(occ) == 10 and occ[0]["args"]["store_occupancy"] in (8.0, 0.0)
    assert len([e for e in ev if e["ph"] == "C" and e["name"] == "metric:reward"]) == 5


def test_export_nan_metric_is_null(synth):
    t = read_trace(synth)
    t.metrics["value"][0] = np.nan
    doc = trace_events(t)
    json.dumps(doc, allow_nan=False)  # raises on NaN


def test_plot_data_and_png(synth, tmp_path):
    t = read_trace(synth)
    d = plot_data(t)
    assert d.ranks == [0, 1, 2] and d.labels[0] == "0 trainer"
    loss = d.bars["loss"]
    assert loss[:, 3].tolist() == [1.0] * 5  # nested in train_step: depth 1
    assert d.bars["train_step"][:, 3].tolist() == [0.0] * 5
    assert d.bars["weight_recv"][:, 3].min() >= 2  # second thread drawn below the first
    np.testing.assert_allclose(d.reward[0], np.arange(5))
    np.testing.assert_allclose(d.reward[1], 0.1 * np.arange(5))
    np.testing.assert_allclose(d.staleness[1], [0, 1, 1, 1, 1])
    assert d.occupancy[1].tolist() == [8.0, 0.0] * 5
    out = tmp_path / "timeline.png"
    assert cli.main(["plot", synth, "-o", str(out)]) == 0
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_span_depths():
    depth = span_depths(np.array([0.0, 1.0, 2.0, 5.0]), np.array([10.0, 3.0, 2.5, 6.0]))
    assert depth.tolist() == [0, 1, 2, 1]


def test_cli_dispatch(capsys, synth):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    for verb in ("summary", "plot", "export", "simulate"):
        assert verb in out
    assert cli.main(["nosuchverb"]) == 2
    cli.register_verb("echo_test", "asyncflow_hpc.trace.cli:summary_main", "test verb")
    try:
        assert cli.main(["echo_test", synth]) == 0
    finally:
        cli.VERBS.pop("echo_test")
