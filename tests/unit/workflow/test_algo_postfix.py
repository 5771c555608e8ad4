"""The progress line carries the step's rollout-trainer mismatch, zero-signal share, clip fraction and entropy."""

from asyncflow_hpc.workflow.metrics import algo_postfix


def test_algo_postfix_fields():
    m = {"mismatch_lp_mean": 3e-8, "mismatch_lp_max": 4.8e-7, "mismatch_w_max": 1.0000005,
         "zero_signal_groups": 0.25, "clip_frac": 0.0125, "entropy": 1.234, "loss": 0.1}
    assert algo_postfix(m) == {"dlp": "3.0e-08/4.8e-07", "w_max": "1.000", "zero": "0.25", "clip": "0.013",
                               "ent": "1.23"}
    assert algo_postfix({"loss": 0.1}) == {}  # an engine that reports none of them (emulated, mindspeed)
