"""Synthetic traces: run the simulator and write what it did as a trace file (tests, benchmarks, demos).

    write_simulated_trace("sim.h5", spec, costs)   # same schema as a recorded run

The file has the spans a real run records (generate, weight_swap, weight_recv on rollout ranks;
train_step, weight_send on trainer ranks) and the lineage of every consumed row, so the views,
the cost-model fit and the simulator can be checked against known ground truth.
"""

from __future__ import annotations

import time

import numpy as np

from asyncflow_hpc.trace import schema
from asyncflow_hpc.trace.schema import SpanName as N
from asyncflow_hpc.trace.costmodel import CostModel, costs_dict
from asyncflow_hpc.trace.merge import write_trace
from asyncflow_hpc.trace.simulator import SimSpec, run_async


def _spans(rows: list[tuple]) -> np.ndarray:
    out = np.zeros(len(rows), dtype=schema.SPAN_DTYPE)
    for i, (rank, thread, name, role, t0, t1, step, version, nrows, tokens) in enumerate(rows):
        out[i] = (rank, thread, schema.span_kind(name), name.encode(), role.encode(), t0, t1, step, version,
                  nrows, tokens, -1, -1)
    return out


def simulated_tables(spec: SimSpec, costs: CostModel, group_size: int = 4) -> dict[str, np.ndarray]:
    """Trace tables of one async simulation (trainer ranks first, then rollout ranks)."""
    sim = run_async(spec, costs)
    tr, tp = spec.trainer_ranks, spec.rollout_tp
    lens = np.diff(np.asarray(sim.cs))
    versions = sim.row_versions(sim.total)
    rows: list[tuple] = []
    for inst, t0, t1, r0, k in sim.calls:
        toks = int(round(lens[r0:r0 + k].sum()))
        for rank in range(tr + inst * tp, tr + (inst + 1) * tp):
            rows.append((rank, 0, N.GENERATE.value, "rollout", t0, t1, -1, int(versions[r0]), k, toks))
            if costs.fetch_s > 0:
                rows.append((rank, 0, N.PROMPT_WAIT.value, "rollout", t0 - costs.fetch_s, t0, -1, -1, -1, -1))
            if costs.put_s > 0:
                rows.append((rank, 0, N.STORE_PUT.value, "rollout", t1, t1 + costs.put_s, -1, -1, k, -1))
    for inst, t0, w in sim.swaps:
        for rank in range(tr + inst * tp, tr + (inst + 1) * tp):
            rows.append((rank, 0, N.WEIGHT_SWAP.value, "rollout", t0, t0 + costs.swap_s, -1, w, -1, -1))
    b = spec.batch_rows
    for v, (t0, t1) in enumerate(sim.busy_train):
        toks = int(round(b * spec.prompt_len + lens[v * b:(v + 1) * b].sum()))
        for rank in range(tr):
            rows.append((rank, 0, N.TRAIN_STEP.value, "trainer", t0, t1, v, v, b, toks))
            rows.append((rank, 0, N.WEIGHT_SEND.value, "trainer", t1, t1 + costs.sync_trainer_s, v, v + 1, -1, -1))
        for rank in range(tr, tr + spec.rollout_ranks):
            t_recv = t1 + costs.transfer_time(spec.rollout_ranks)
            rows.append((rank, 1, N.WEIGHT_RECV.value, "rollout", t1, t_recv, -1, v + 1, -1, -1))
    spans = _spans(rows)
    spans = spans[np.argsort(spans["t_start"], kind="stable")]
    n = spec.steps * b
    samples = np.zeros(n, dtype=schema.SAMPLE_DTYPE)
    samples["row"] = np.arange(n)
    samples["prompt_id"] = np.arange(n) // group_size
    samples["sample_index"] = np.arange(n) % group_size
    samples["seed"] = np.arange(n)
    samples["version_produced"] = versions[:n]
    samples["version_consumed"] = np.arange(n) // b
    samples["prompt_len"] = int(round(spec.prompt_len))
    samples["response_len"] = np.round(lens[:n]).astype(np.int32)
    samples["reward"] = (np.arange(n) % 2).astype(float)
    samples["t"] = np.array([sim.busy_train[v][0] for v in range(spec.steps)]).repeat(b)
    ranks = np.zeros(tr + spec.rollout_ranks, dtype=schema.RANK_DTYPE)
    ranks["rank"] = np.arange(len(ranks))
    ranks["role"] = [b"trainer"] * tr + [b"rollout"] * spec.rollout_ranks
    ranks["hostname"] = b"simulated"
    return {"spans": spans, "samples": samples, "ranks": ranks,
            "metrics": np.zeros(0, dtype=schema.METRIC_DTYPE), "counters": np.zeros(0, dtype=schema.COUNTER_DTYPE)}


def write_simulated_trace(path: str, spec: SimSpec, costs: CostModel, group_size: int = 4) -> str:
    tables = simulated_tables(spec, costs, group_size)
    config = {"workflow": {"eta": spec.eta, "mode": "async"},
              "topology": {"rollout_tp": spec.rollout_tp, "trainer_tp": spec.trainer_mp, "trainer_pp": 1}}
    attrs = {"epoch_unix": time.time(), "world_size": len(tables["ranks"]), "job_id": "", "run_name": "simulated",
             "created_unix": time.time(), "asyncflow_version": "synthetic", "merged": True}
    write_trace(path, tables, attrs, {"config": config, "topology": {"simulated": True}, "versions": {},
                                      "extra": {"costs": costs_dict(costs)}})
    return path
