"""Per-rank time accounting (busy, idle, exposed weight sync) and the end-of-run role table."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Any, Iterator

from asyncflow_hpc.trace.schema import SpanName


class _NoSpan:
    def set(self, **attrs: Any) -> "_NoSpan":
        return self


def span(recorder: Any, name: SpanName, **attrs: Any):
    """The recorder's span (attributes: step, version, rows, tokens, bytes, peer), or nothing."""
    return recorder.span(name.value, **attrs) if recorder is not None else contextlib.nullcontext(_NoSpan())


class RoleClock:
    """Seconds spent busy (useful work), idle (waiting for data/work) and exposed (weight-sync waits)."""

    def __init__(self) -> None:
        self.busy_s: dict[str, float] = defaultdict(float)
        self.idle_s: dict[str, float] = defaultdict(float)
        self.exposed_s: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.host_overrun_s = 0.0  # emulated runs: host time beyond the emulated device time

    def note_overrun(self, *engines: Any) -> None:
        """Take the host overrun of emulated engines (engines/emulated.py); 0 for real engines."""
        self.host_overrun_s = sum(float(getattr(e, "overrun_s", 0.0) or 0.0) for e in engines if e is not None)

    @contextlib.contextmanager
    def _acc(self, table: dict[str, float], key: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            table[key] += time.perf_counter() - t

    def busy(self, key: str):
        return self._acc(self.busy_s, key)

    def idle(self, key: str):
        return self._acc(self.idle_s, key)

    def exposed(self, key: str):
        return self._acc(self.exposed_s, key)

    def count(self, key: str, n: int) -> None:
        self.counts[key] += int(n)

    def summary(self, wall_s: float) -> dict[str, Any]:
        busy, idle, exposed = sum(self.busy_s.values()), sum(self.idle_s.values()), sum(self.exposed_s.values())
        return {"wall_s": wall_s, "busy_s": busy, "idle_s": idle, "exposed_s": exposed,
                "busy_fraction": busy / wall_s if wall_s > 0 else 0.0,
                "exposed_fraction": exposed / wall_s if wall_s > 0 else 0.0,
                "busy": dict(self.busy_s), "idle": dict(self.idle_s), "exposed": dict(self.exposed_s),
                "counts": dict(self.counts), "host_overrun_s": self.host_overrun_s}


def staleness_histogram(counts: dict[str, int]) -> dict[int, int]:
    return {int(k.split("_", 1)[1]): v for k, v in counts.items() if k.startswith("staleness_")}


def host_overrun_fraction(clocks: list[dict]) -> float:
    """Emulated runs: host time past the emulated device time, as a share of the ranks' loop time."""
    wall = sum(c["wall_s"] for c in clocks)
    return sum(c.get("host_overrun_s", 0.0) for c in clocks) / wall if wall > 0 else 0.0


def aggregate(per_rank: list[tuple[int, str, dict]], wall_s: float) -> dict[str, Any]:
    """Job-level figures from every rank's clock summary."""
    by_role: dict[str, list[dict]] = defaultdict(list)
    for _, role, c in per_rank:
        by_role[role].append(c)
    trainer = by_role.get("trainer", [])
    counts = trainer[0]["counts"] if trainer else {}
    rows = counts.get("rows", 0)
    tokens = sum(c["counts"].get("tokens", 0) for c in by_role.get("rollout", []))
    working = [c for role, cs in by_role.items() if role in ("trainer", "rollout") for c in cs]
    busy = sum(c["busy_s"] for c in working)
    exposed = sum(c["exposed_s"] for c in by_role.get("rollout", []))
    rollout_wall = sum(c["wall_s"] for c in by_role.get("rollout", []))
    return {
        "wall_s": wall_s, "rows": rows, "samples_per_s": rows / wall_s if wall_s > 0 else 0.0,
        "tokens_per_s": tokens / wall_s if wall_s > 0 else 0.0,
        "busy_fraction": busy / sum(c["wall_s"] for c in working) if working else 0.0,
        "busy_fraction_by_role": {r: sum(c["busy_s"] for c in cs) / max(sum(c["wall_s"] for c in cs), 1e-9)
                                  for r, cs in by_role.items()},
        "exposed_sync_fraction": exposed / rollout_wall if rollout_wall > 0 else 0.0,
        "staleness_histogram": staleness_histogram(counts),
        "host_overrun_fraction": host_overrun_fraction(working),
        "idle_by_role": {r: _sum_tables([c["idle"] for c in cs]) for r, cs in by_role.items()},
    }


def _sum_tables(tables: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for t in tables:
        for k, v in t.items():
            out[k] += v
    return dict(out)


def format_role_table(per_rank: list[tuple[int, str, dict]], wall_s: float) -> str:
    agg = aggregate(per_rank, wall_s)
    lines = [f"{'rank':>4} {'role':<9} {'busy%':>6} {'idle%':>6} {'sync%':>6}  busiest / longest wait"]
    for rank, role, c in sorted(per_rank):
        w = max(c["wall_s"], 1e-9)
        top_busy = max(c["busy"].items(), key=lambda kv: kv[1], default=("-", 0.0))
        top_idle = max(c["idle"].items(), key=lambda kv: kv[1], default=("-", 0.0))
        lines.append(f"{rank:>4} {role:<9} {100 * c['busy_s'] / w:6.1f} {100 * c['idle_s'] / w:6.1f} "
                     f"{100 * c['exposed_s'] / w:6.1f}  {top_busy[0]} {top_busy[1]:.1f}s / {top_idle[0]} "
                     f"{top_idle[1]:.1f}s")
    hist = " ".join(f"{k}:{v}" for k, v in sorted(agg["staleness_histogram"].items())) or "-"
    lines.append(f"samples/s {agg['samples_per_s']:.2f}  tokens/s {agg['tokens_per_s']:.1f}  busy {agg['busy_fraction']:.2f}"
                 f"  exposed weight sync {agg['exposed_sync_fraction']:.3f}  staleness {hist}")
    return "\n".join(lines)


def record_rows(recorder: Any, rows: list, consumer_version: int, run_seed: int, prompts_per_step: int,
                n: int) -> None:
    """Sample lineage: one trace record per consumed row (row id = prompt id * n + sample index)."""
    if recorder is None:
        return
    from asyncflow_hpc.workflow.common import derive_seed

    payload = getattr(recorder, "payload", None)
    for r in rows:
        if payload is not None:  # the rows' data, so `trace replay` can re-feed them to a trainer
            payload(row=r.prompt_id * n + r.sample_index, prompt_ids=r.prompt_ids, response_ids=r.response_ids,
                    behav_logprobs=r.behav_logprobs)
        recorder.sample(row=r.prompt_id * n + r.sample_index, prompt_id=r.prompt_id, sample_index=r.sample_index,
                        seed=derive_seed(run_seed, r.prompt_id // prompts_per_step, r.prompt_id, r.sample_index),
                        version_produced=r.version, version_consumed=consumer_version,
                        prompt_len=len(r.prompt_ids), response_len=len(r.response_ids), reward=float(r.reward))


def record_step(recorder: Any, step: int, metrics: dict) -> None:
    """Per-step metrics (loss, reward, ...) as trace metrics; `trace replay` compares against `loss`."""
    if recorder is None:
        return
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and k != "step":
            recorder.metric(step, k, float(v))


def print_eval(when: str, ev: dict) -> None:
    print(f"held-out accuracy at {when}: {ev['accuracy']:.3f}  (mean reward {ev['mean_reward']:.3f}, "
          f"{ev['count']} prompts, greedy)", flush=True)


def algo_postfix(metrics: dict) -> dict[str, str]:
    """Progress-line fields of a train step: rollout-trainer mismatch (dlp = mean/max |log-prob difference|,
    w_max = max importance weight), share of zero-signal groups, clip fraction, entropy."""
    out = {}
    if "mismatch_lp_max" in metrics:
        out["dlp"] = f"{metrics['mismatch_lp_mean']:.1e}/{metrics['mismatch_lp_max']:.1e}"
        out["w_max"] = f"{metrics['mismatch_w_max']:.3f}"
    if "zero_signal_groups" in metrics:
        out["zero"] = f"{metrics['zero_signal_groups']:.2f}"
    if "zero_signal_dropped" in metrics:  # dynamic sampling: groups dropped (and replaced) so far
        out["dropped"] = f"{int(metrics['zero_signal_dropped'])}"
    if "clip_frac" in metrics:
        out["clip"] = f"{metrics['clip_frac']:.3f}"
    if "entropy" in metrics:
        out["ent"] = f"{metrics['entropy']:.2f}"
    return out
