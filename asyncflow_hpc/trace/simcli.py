"""`asyncflow-hpc trace simulate T.h5`: fit cost models from a trace, predict another split/eta/size, recommend a split.

    asyncflow-hpc trace simulate T.h5                         # recorded split: measured vs predicted
    asyncflow-hpc trace simulate T.h5 --rollout-ranks 6 --trainer-ranks 2 --eta 2
    asyncflow-hpc trace simulate T.h5 --devices 1024          # weak scaling: batch grows with devices

With --devices different from the recorded run, the batch (rows per step) scales with the device
count unless --batch-rows is given. --json prints one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import numpy as np

from asyncflow_hpc.trace.costmodel import CostModel, Workload, costs_dict, fit_costs, workload_of
from asyncflow_hpc.trace.reader import Trace, read_trace
from asyncflow_hpc.trace.schema import TraceError
from asyncflow_hpc.trace.simulator import SimResult, SimSpec, recommend_split, simulate


def measured_steady(t: Trace, shape: Workload) -> tuple[float, float]:
    """(rows/s, s/step) of the traced run over the same steady window the simulator uses."""
    steps = t.spans_named("train_step")
    lead = np.sort(steps[steps["rank"] == steps["rank"].min()]["t_end"])
    if len(lead) < 3:
        return float("nan"), float("nan")
    w = min(len(lead) // 2, shape.eta + 2)
    window = lead[-1] - lead[w]
    n = len(lead) - 1 - w
    return (n * shape.batch_rows / window, window / n) if window > 0 else (float("nan"), float("nan"))


def _split(args: argparse.Namespace, shape: Workload) -> tuple[int, int, int]:
    """(devices, trainer ranks, rollout ranks) asked for, filling gaps from the recorded run."""
    rec_total = shape.trainer_ranks + shape.rollout_ranks
    n, m = args.rollout_ranks, args.trainer_ranks
    if n is not None and m is not None:
        if args.devices is not None and args.devices != n + m:
            raise TraceError(f"--devices {args.devices} but --trainer-ranks {m} + --rollout-ranks {n} = {n + m}")
        return n + m, m, n
    d = args.devices if args.devices is not None else rec_total
    if n is not None:
        m = d - n
    elif m is None:
        mp = shape.trainer_mp
        m = shape.trainer_ranks if d == rec_total else max(mp, round(shape.trainer_ranks * d / rec_total / mp) * mp)
    n = d - m
    if m < 1 or n < 1:
        raise TraceError(f"a split of {d} devices into {m} trainer and {n} rollout ranks leaves a group empty")
    return d, m, n


def _spec(shape: Workload, devices: int, trainer: int, rollout: int, eta: int, batch: int, steps: int,
          mode: str) -> SimSpec:
    if trainer % shape.trainer_mp or rollout % shape.rollout_tp:
        raise TraceError(f"trainer ranks {trainer} must divide into replicas of {shape.trainer_mp} and rollout "
                         f"ranks {rollout} into instances of rollout_tp={shape.rollout_tp}")
    if mode == "sync":
        return SimSpec(rollout_instances=devices // shape.rollout_tp, trainer_dp=devices // shape.trainer_mp,
                       batch_rows=batch, gen_rows=shape.gen_rows, eta=0, steps=steps, mode="sync",
                       prompt_len=shape.prompt_len, response_len=shape.response_len,
                       response_lens=shape.response_lens, rollout_tp=shape.rollout_tp, trainer_mp=shape.trainer_mp)
    return SimSpec(rollout_instances=rollout // shape.rollout_tp, trainer_dp=trainer // shape.trainer_mp,
                   batch_rows=batch, gen_rows=shape.gen_rows, eta=eta, steps=steps, prompt_len=shape.prompt_len,
                   response_len=shape.response_len, response_lens=shape.response_lens,
                   rollout_tp=shape.rollout_tp, trainer_mp=shape.trainer_mp)


def _row(label: str, r: SimResult) -> dict:
    st = r.staleness
    n = sum(st.values())
    return {"case": label, "mode": r.spec.mode, "devices": r.devices, "trainer_ranks": r.spec.trainer_ranks,
            "rollout_ranks": r.spec.rollout_ranks, "eta": r.spec.eta, "batch_rows": r.spec.batch_rows,
            "samples_per_s": r.throughput, "tokens_per_s": r.tokens_per_s, "step_s": r.step_time_s,
            "idle_frac": r.idle_frac, "bubble_ratio": r.bubble_ratio, "exposed_sync_s_per_step": r.exposed_sync_s,
            "mean_staleness": sum(k * v for k, v in st.items()) / n if n else 0.0}


def _table(rows: list[dict]) -> str:
    head = (f"{'case':<12}{'mode':<6}{'dev':>6}{'train':>6}{'roll':>6}{'eta':>4}{'B':>7}{'rows/s':>10}"
            f"{'tok/s':>11}{'step s':>9}{'idle T%':>8}{'idle R%':>8}{'bubble':>7}{'sync s':>8}{'stale':>6}")
    lines = [head]
    for d in rows:
        idle = d["idle_frac"]
        it = idle.get("trainer", idle.get("colocated", 0.0))
        ir = idle.get("rollout", idle.get("colocated", 0.0))
        lines.append(f"{d['case']:<12}{d['mode']:<6}{d['devices']:>6}{d['trainer_ranks']:>6}{d['rollout_ranks']:>6}"
                     f"{d['eta']:>4}{d['batch_rows']:>7}{d['samples_per_s']:>10.2f}{d['tokens_per_s']:>11.1f}"
                     f"{d['step_s']:>9.3f}{100 * it:>8.1f}{100 * ir:>8.1f}{d['bubble_ratio']:>7.3f}"
                     f"{d['exposed_sync_s_per_step']:>8.3f}{d['mean_staleness']:>6.2f}")
    return "\n".join(lines)


def _costs_text(c: CostModel) -> str:
    return (f"cost model: generate {c.gen_overhead_s * 1e3:.2f} ms + {c.gen_per_token_s * 1e6:.2f} us/token"
            f" + {c.gen_per_row_s * 1e3:.2f} ms/row per call; train step {c.train_overhead_s * 1e3:.2f} ms + "
            f"{c.train_per_token_s * 1e6:.3f} us/token at dp={c.fit_dp} (divided by dp); weight sync: trainer "
            f"{c.sync_trainer_s * 1e3:.2f} ms, usable after {c.sync_transfer_s * 1e3:.2f} ms, swap {c.swap_s * 1e3:.2f} ms")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="asyncflow-hpc trace simulate", description=__doc__.splitlines()[0])
    p.add_argument("trace")
    p.add_argument("--rollout-ranks", type=int)
    p.add_argument("--trainer-ranks", type=int)
    p.add_argument("--eta", type=int, help="staleness bound (default: the recorded one)")
    p.add_argument("--devices", type=int, help="total trainer + rollout ranks (default: the recorded count)")
    p.add_argument("--batch-rows", type=int, help="rows per trainer step (default: recorded, scaled with devices)")
    p.add_argument("--steps", type=int, default=20, help="trainer steps to simulate (default 20)")
    p.add_argument("--mode", choices=["async", "sync"], default="async")
    p.add_argument("--no-recommend", action="store_true", help="skip the split scan")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = p.parse_args(argv)
    t = read_trace(args.trace)
    shape = workload_of(t)
    costs = fit_costs(t, shape)
    rec_total = shape.trainer_ranks + shape.rollout_ranks
    devices, trainer, rollout = _split(args, shape)
    eta = shape.eta if args.eta is None else args.eta
    scaled = round(shape.batch_rows * devices / rec_total / shape.gen_rows) * shape.gen_rows  # weak scaling
    batch = args.batch_rows or max(shape.gen_rows, scaled)
    try:
        recorded = simulate(_spec(shape, rec_total, shape.trainer_ranks, shape.rollout_ranks, shape.eta,
                                  shape.batch_rows, args.steps, shape.mode if shape.mode == "sync" else "async"), costs)
        target = simulate(_spec(shape, devices, trainer, rollout, eta, batch, args.steps, args.mode), costs)
        rows = [_row("recorded", recorded), _row("requested", target)]
        if not args.no_recommend:
            best, scanned = recommend_split(costs, replace(target.spec, mode="async"), devices)
            rows.append(_row("recommended", best))
    except ValueError as exc:
        raise TraceError(f"{args.trace}: cannot simulate: {exc}") from None
    thr, step = measured_steady(t, shape)
    print(f"trace {t.path}: {rec_total} ranks ({shape.trainer_ranks} trainer, {shape.rollout_ranks} rollout), "
          f"eta={shape.eta}, {shape.batch_rows} rows/step, {shape.gen_rows} rows per generate call")
    print(_costs_text(costs))
    for note in costs.notes:
        print(f"note: {note}")
    print(f"measured (steady): {thr:.2f} rows/s, {step:.3f} s/step; predicted for the recorded split: "
          f"{recorded.throughput:.2f} rows/s ({100 * (recorded.throughput / thr - 1):+.1f}%)")
    print(_table(rows))
    if not args.no_recommend:
        b = rows[-1]
        print(f"recommended split of {devices} devices: {b['trainer_ranks']} trainer + {b['rollout_ranks']} rollout "
              f"ranks ({b['samples_per_s']:.2f} rows/s, {len(scanned)} splits simulated)")
    if args.json:
        print(json.dumps({"measured_samples_per_s": thr, "measured_step_s": step, "cases": rows,
                          "costs": costs_dict(costs)}, default=float))
    return 0
