"""A hand-built 3-rank trace whose summary figures are known exactly (see EXPECTED)."""

from __future__ import annotations

import numpy as np

from asyncflow_hpc.trace import schema
from asyncflow_hpc.trace.merge import write_trace

STEPS = 5
ROWS_PER_STEP = 8
PROMPT_LEN, RESPONSE_LEN = 10, 20

# Per step v (period 1 s), on rank 0 (trainer): store_wait [v, v+.5) (idle kind), train_step
# [v+.5, v+.9) with a nested "loss" span [v+.6, v+.7), weight_send [v+.9, v+1).
# Ranks 1, 2 (rollout): generate [v, v+.5), weight_recv on thread 1 [v+.4, v+.55) (overlaps
# generate by .1), weight_swap [v+.55, v+.6).
EXPECTED = {
    "window_s": 5.0,
    "trainer_busy_s": 2.5,  # (.4 + .1) * 5; the nested span is not counted twice
    "trainer_idle_s": 2.5,
    "trainer_wait_s": 2.5,
    "rollout_busy_s": 6.0,  # [v, v+.6) * 5 steps * 2 ranks
    "rollout_idle_s": 4.0,
    "bubble_ratio": 6.5 / 15.0,
    "weight_exposed_trainer_s": 0.5,  # weight_send, nothing else busy then
    "weight_exposed_rollout_s": 1.0,  # [v+.5, v+.6) per step per rank: recv hidden behind generate until .5
    "rows": STEPS * ROWS_PER_STEP,
    "samples_per_s": STEPS * ROWS_PER_STEP / 5.0,
    "tokens_per_s": STEPS * ROWS_PER_STEP * (PROMPT_LEN + RESPONSE_LEN) / 5.0,
    "staleness": {0: ROWS_PER_STEP, 1: (STEPS - 1) * ROWS_PER_STEP},
    "mean_step_s": 0.4,
}


def _span(rank, thread, name, role, t0, t1, step=-1, version=-1, rows=-1, tokens=-1):
    return (rank, thread, schema.span_kind(name), name.encode(), role.encode(), t0, t1, step, version, rows,
            tokens, -1, -1)


def tables() -> dict[str, np.ndarray]:
    spans = []
    for v in range(STEPS):
        spans += [_span(0, 0, "store_wait", "trainer", v, v + .5, step=v),
                  _span(0, 0, "train_step", "trainer", v + .5, v + .9, step=v, rows=ROWS_PER_STEP,
                        tokens=ROWS_PER_STEP * (PROMPT_LEN + RESPONSE_LEN)),
                  _span(0, 0, "loss", "trainer", v + .6, v + .7, step=v),
                  _span(0, 0, "weight_send", "trainer", v + .9, v + 1.0, version=v + 1)]
        for r in (1, 2):
            spans += [_span(r, 0, "generate", "rollout", v, v + .5, version=max(v - 1, 0), rows=4, tokens=80),
                      _span(r, 1, "weight_recv", "rollout", v + .4, v + .55, version=v + 1),
                      _span(r, 0, "weight_swap", "rollout", v + .55, v + .6, version=v + 1)]
    sp = np.array(spans, dtype=schema.SPAN_DTYPE)
    sp = sp[np.argsort(sp["t_start"], kind="stable")]
    n = STEPS * ROWS_PER_STEP
    sa = np.zeros(n, dtype=schema.SAMPLE_DTYPE)
    sa["rank"] = 0
    sa["row"] = np.arange(n)
    sa["prompt_id"] = np.arange(n) // 4
    sa["sample_index"] = np.arange(n) % 4
    sa["seed"] = 1000 + np.arange(n)
    sa["version_consumed"] = np.arange(n) // ROWS_PER_STEP
    sa["version_produced"] = np.maximum(sa["version_consumed"] - 1, 0)
    sa["prompt_len"], sa["response_len"] = PROMPT_LEN, RESPONSE_LEN
    sa["reward"] = np.where(np.arange(n) % 2 == 0, 1.0, 0.0)
    sa["t"] = sa["version_consumed"] + 0.5
    me = np.array([(0, v + .9, v, b"reward", 0.1 * v) for v in range(STEPS)]
                  + [(0, v + .9, v, b"loss", 1.0 - 0.1 * v) for v in range(STEPS)], dtype=schema.METRIC_DTYPE)
    co = np.array([(0, v + .5, b"store_occupancy", 8.0) for v in range(STEPS)]
                  + [(0, v + .9, b"store_occupancy", 0.0) for v in range(STEPS)], dtype=schema.COUNTER_DTYPE)
    co = co[np.argsort(co["t"], kind="stable")]
    ranks = np.array([(0, b"trainer", b"host-a", 10, 0.0, 0.0), (1, b"rollout", b"host-a", 11, 0.001, 1e-5),
                      (2, b"rollout", b"host-b", 12, -0.002, 2e-5)], dtype=schema.RANK_DTYPE)
    return {"spans": sp, "samples": sa, "metrics": me, "counters": co, "ranks": ranks}


def write(path: str, **attrs_over) -> str:
    attrs = {"epoch_unix": 1.7e9, "world_size": 3, "job_id": "4242", "run_name": "synth", "created_unix": 1.7e9,
             "asyncflow_version": "test", "merged": True}
    attrs.update(attrs_over)
    write_trace(str(path), tables(), attrs, {"config": {"workflow": {"eta": 1, "mode": "async"}},
                                             "topology": "world=3 trainer=0 rollout=1,2", "versions": {"numpy": "x"},
                                             "extra": {}})
    return str(path)
