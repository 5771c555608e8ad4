"""`trace summary` shows the per-step algorithm metrics a run recorded (rollout-trainer mismatch, weights, clips)."""

from __future__ import annotations

import numpy as np

import trace_synth
from asyncflow_hpc.trace import schema
from asyncflow_hpc.trace.merge import write_trace
from asyncflow_hpc.trace.reader import read_trace
from asyncflow_hpc.trace.summary import format_summary, summarize


def test_summary_reports_recorded_algorithm_metrics(tmp_path):
    tables = trace_synth.tables()
    extra = [(0, v + .9, v, b"mismatch_lp_max", 1e-7 * (v + 1)) for v in range(3)]
    extra += [(0, v + .9, v, b"zero_signal_groups", 0.25 * v) for v in range(3)]
    tables["metrics"] = np.concatenate([tables["metrics"], np.array(extra, dtype=schema.METRIC_DTYPE)])
    path = str(tmp_path / "t.h5")
    write_trace(path, tables, {"epoch_unix": 1.7e9, "world_size": 3, "job_id": "1", "run_name": "synth",
                               "created_unix": 1.7e9, "asyncflow_version": "test", "merged": True},
                {"config": {}, "topology": "", "versions": {}, "extra": {}})
    s = summarize(read_trace(path))
    assert s.metrics["mismatch_lp_max"] == {"first": 1e-7, "mean": 2e-7, "max": 3e-7, "last": 3e-7}
    assert s.metrics["zero_signal_groups"]["last"] == 0.5
    assert "reward_mean" not in s.metrics  # only what the run recorded
    text = format_summary(s)
    assert "mismatch_lp_max" in text and "zero_signal_groups" in text
