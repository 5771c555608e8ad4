"""Measure the recorder's overhead: cost per call, flush cost per event, and share of a step.

    python -m asyncflow_hpc.trace.overhead [--events-per-step 200] [--step-ms 50] [--json]

All times are CPU time of this process (time.process_time), not wall time, so other processes
sharing the cores do not inflate them; per-call costs are the best of several repeats. The share of
a step is (events per step x cost per event, flush included) / step time, and an A/B run of a
synthetic numpy step (fixed CPU work) with the Recorder against the NullRecorder checks it end to end.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

from asyncflow_hpc.trace.recorder import NullRecorder, Recorder


_cpu = time.process_time


def _best(fn, n: int, repeats: int = 5) -> float:
    """Best seconds per call of fn(n) over repeats."""
    best = float("inf")
    for _ in range(repeats):
        t0 = _cpu()
        fn(n)
        best = min(best, (_cpu() - t0) / n)
    return best


def per_call_costs(rec: Recorder, n: int = 20000) -> dict[str, float]:
    def spans(k):
        for i in range(k):
            with rec.span("store_get", step=i, rows=8):
                pass

    def begin_end(k):
        for i in range(k):
            rec.end(rec.begin("store_wait"), rows=1)

    def samples(k):
        for i in range(k):
            rec.sample(row=i, prompt_id=i // 8, sample_index=i % 8, seed=i, version_produced=3,
                       version_consumed=4, prompt_len=100, response_len=200, reward=1.0)

    def metrics(k):
        for i in range(k):
            rec.metric(i, "loss", 0.5)

    def counters(k):
        for i in range(k):
            rec.counter("store_occupancy", i)

    out = {}
    for name, fn in [("span", spans), ("begin_end", begin_end), ("sample", samples), ("metric", metrics),
                     ("counter", counters)]:
        out[name] = _best(fn, n)
        rec._tables()  # drop the rows so every repeat starts from an empty buffer
    return out


def flush_cost(path: str, n: int = 50000) -> float:
    """Seconds per event to convert and append a mixed buffer to the HDF5 file."""
    rec = Recorder(path, flush_rows=10 ** 9)
    for i in range(n // 2):
        with rec.span("generate", rows=8, tokens=1000):
            pass
        rec.sample(row=i, version_produced=1, response_len=10)
    t0 = _cpu()
    rec.flush()
    return (_cpu() - t0) / n


def _work(a: np.ndarray, step_s: float) -> None:
    end = _cpu() + step_s
    while _cpu() < end:
        a @ a


def ab_step(rec, steps: int, events: int, step_s: float, a: np.ndarray) -> float:
    """Mean wall time of a synthetic step that records `events` events (spans and samples)."""
    t0 = _cpu()
    for s in range(steps):
        with rec.span("train_step", step=s):
            _work(a, step_s)
            for i in range(events // 2):
                with rec.span("store_get", rows=1):
                    pass
                rec.sample(row=s * events + i, version_produced=s, version_consumed=s, response_len=10)
    return (_cpu() - t0) / steps


def measure(events_per_step: int = 200, step_ms: float = 50.0, steps: int = 20) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        rec = Recorder(os.path.join(tmp, "calls.h5"), flush_rows=10 ** 9)
        calls = per_call_costs(rec)
        flush = flush_cost(os.path.join(tmp, "flush.h5"))
        per_event = (calls["span"] + calls["sample"]) / 2 + flush
        share = events_per_step * per_event / (step_ms / 1e3)
        a = np.random.default_rng(0).standard_normal((64, 64))
        # A/B, interleaved so both see the same machine load; the step has fixed work time, so
        # the difference is the recording cost.
        t_null, t_rec = [], []
        for _ in range(3):
            t_null.append(ab_step(NullRecorder(), steps, events_per_step, step_ms / 1e3, a))
            r = Recorder(os.path.join(tmp, "ab.h5"))
            t_rec.append(ab_step(r, steps, events_per_step, step_ms / 1e3, a))
            r.close()
        ab = (min(t_rec) - min(t_null)) / min(t_null)
    return {**{f"{k}_us": v * 1e6 for k, v in calls.items()}, "flush_us_per_event": flush * 1e6,
            "events_per_step": events_per_step, "step_ms": step_ms, "overhead_share": share,
            "ab_overhead_share": ab}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m asyncflow_hpc.trace.overhead", description=__doc__.splitlines()[0])
    p.add_argument("--events-per-step", type=int, default=200)
    p.add_argument("--step-ms", type=float, default=50.0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    r = measure(args.events_per_step, args.step_ms)
    print(f"per call: span {r['span_us']:.2f} us, begin/end {r['begin_end_us']:.2f} us, sample {r['sample_us']:.2f} us, "
          f"metric {r['metric_us']:.2f} us, counter {r['counter_us']:.2f} us; flush {r['flush_us_per_event']:.2f} us/event")
    print(f"{args.events_per_step} events per {args.step_ms:.0f} ms step: {100 * r['overhead_share']:.3f}% of the step "
          f"(A/B run: {100 * r['ab_overhead_share']:+.3f}%)")
    if args.json:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
