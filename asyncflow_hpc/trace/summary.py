"""`trace summary`: throughput, busy/idle per role, bubble ratio, staleness histogram, exposed weight sync.

Definitions (all over the traced window = first span start .. last span end, every rank):
- busy time of a rank: length of the union of its BUSY spans (nested/overlapping spans count once);
  idle time: window - busy. Wait spans (`*_wait`, `idle`) are IDLE kind and only attribute idle time.
- bubble ratio: sum of idle over all ranks / (ranks x window).
- throughput: distinct rows consumed by the trainer (samples with version_consumed >= 0; rows
  produced if none were consumed) / window; tokens/s counts prompt + response tokens of those rows.
- staleness of a consumed row: version_consumed - version_produced.
- exposed weight-sync time of a rank: time inside `weight_*` spans not overlapped by any other busy
  span of that rank (a receive hidden behind generation costs nothing; a swap that stalls it does).
- algorithm metrics: first / mean / max / last over the trainer steps of the per-step metrics the run
  recorded (algorithms/objective.py defines them): rollout-trainer mismatch, importance weights, clipping,
  entropy, KL, zero-signal groups.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from asyncflow_hpc.trace import schema
from asyncflow_hpc.trace.reader import Trace


def union_length(starts: np.ndarray, ends: np.ndarray) -> float:
    """Total length covered by intervals [starts[i], ends[i]) (overlaps counted once)."""
    if len(starts) == 0:
        return 0.0
    order = np.argsort(starts, kind="stable")
    s, e = np.asarray(starts, float)[order], np.asarray(ends, float)[order]
    # Running max of ends: an interval starts a new block when it begins after everything before it ended.
    reach = np.maximum.accumulate(e)
    new_block = np.empty(len(s), dtype=bool)
    new_block[0] = True
    new_block[1:] = s[1:] > reach[:-1]
    block_id = np.cumsum(new_block) - 1
    block_start = s[new_block]
    block_end = np.zeros(block_id[-1] + 1)
    np.maximum.at(block_end, block_id, e)
    return float(np.sum(block_end - block_start))


@dataclass
class RoleStats:
    role: str
    ranks: int
    busy_s: float  # summed over the role's ranks
    idle_s: float
    wait_s: float  # time inside explicit wait spans
    weight_exposed_s: float

    @property
    def busy_frac(self) -> float:
        total = self.busy_s + self.idle_s
        return self.busy_s / total if total > 0 else 0.0


@dataclass
class Summary:
    path: str
    window_s: float
    ranks: int
    steps: int
    rows: int
    tokens: int
    samples_per_s: float
    tokens_per_s: float
    mean_step_s: float
    bubble_ratio: float
    weight_exposed_s: float
    weight_syncs: int
    roles: list[RoleStats] = field(default_factory=list)
    staleness: dict[int, int] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)


# Per-step metrics shown by `trace summary` when the run recorded them (algorithms/objective.py).
ALGO_METRICS = ("reward_mean", "zero_signal_groups", "mismatch_lp_mean", "mismatch_lp_max", "mismatch_w_mean",
                "mismatch_w_max", "mismatch_w_outside", "mismatch_onpolicy_lp_mean", "mismatch_onpolicy_lp_max",
                "mismatch_onpolicy_w_max", "is_weight", "is_weight_max", "is_masked_frac",
                "ratio_max", "clip_frac", "clip_frac_low", "clip_frac_high", "entropy", "kl", "ppo_kl")


def algorithm_metrics(t: Trace) -> dict[str, dict[str, float]]:
    """first / mean / max / last of each recorded ALGO_METRICS metric over the steps."""
    out = {}
    for name in ALGO_METRICS:
        m = t.metric(name)
        if len(m):
            v = m["value"].astype(float)
            out[name] = {"first": float(v[0]), "mean": float(v.mean()), "max": float(v.max()), "last": float(v[-1])}
    return out


def _rank_roles(t: Trace) -> dict[int, str]:
    roles = {int(r): str(role) for r, role in zip(t.ranks["rank"], t.ranks["role"])}
    for r in np.unique(t.spans["rank"]):
        if int(r) not in roles:
            first = t.spans[t.spans["rank"] == r][0]
            roles[int(r)] = str(first["role"])
    return roles


def _rows_used(t: Trace) -> np.ndarray:
    sa = t.samples
    consumed = sa[sa["version_consumed"] >= 0]
    rows = consumed if len(consumed) else sa
    _, first = np.unique(rows["row"], return_index=True)
    return rows[np.sort(first)]


def staleness_histogram(t: Trace) -> dict[int, int]:
    sa = t.samples
    ok = (sa["version_consumed"] >= 0) & (sa["version_produced"] >= 0)
    values, counts = np.unique(sa["version_consumed"][ok] - sa["version_produced"][ok], return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


def summarize(t: Trace) -> Summary:
    t0, t1 = t.duration()
    window = max(t1 - t0, 0.0)
    roles = _rank_roles(t)
    per_role: dict[str, RoleStats] = {}
    for rank, role in sorted(roles.items()):
        sp = t.spans[t.spans["rank"] == rank]
        busy = sp[sp["kind"] == schema.BUSY]
        busy_s = union_length(busy["t_start"], busy["t_end"])
        waits = sp[sp["kind"] == schema.IDLE]
        is_weight = np.char.startswith(busy["name"], schema.WEIGHT_PREFIX)
        other = busy[~is_weight]
        exposed = busy_s - union_length(other["t_start"], other["t_end"])
        rs = per_role.setdefault(role, RoleStats(role, 0, 0.0, 0.0, 0.0, 0.0))
        rs.ranks += 1
        rs.busy_s += busy_s
        rs.idle_s += max(window - busy_s, 0.0)
        rs.wait_s += union_length(waits["t_start"], waits["t_end"])
        rs.weight_exposed_s += exposed
    rows = _rows_used(t)
    tokens = int(np.clip(rows["prompt_len"], 0, None).sum() + np.clip(rows["response_len"], 0, None).sum())
    steps_sp = t.spans_named("train_step")
    if len(steps_sp):
        lead = steps_sp[steps_sp["rank"] == steps_sp["rank"].min()]
        steps, mean_step = len(lead), float(np.mean(lead["t_end"] - lead["t_start"]))
    else:
        steps, mean_step = 0, 0.0
    weight = t.spans[np.char.startswith(t.spans["name"], schema.WEIGHT_PREFIX)]
    versions = np.unique(weight["version"][weight["version"] >= 0])
    n_ranks = len(roles)
    idle_total = sum(r.idle_s for r in per_role.values())
    return Summary(
        path=t.path, window_s=window, ranks=n_ranks, steps=steps, rows=len(rows), tokens=tokens,
        samples_per_s=len(rows) / window if window > 0 else 0.0,
        tokens_per_s=tokens / window if window > 0 else 0.0, mean_step_s=mean_step,
        bubble_ratio=idle_total / (n_ranks * window) if window > 0 and n_ranks else 0.0,
        weight_exposed_s=sum(r.weight_exposed_s for r in per_role.values()),
        weight_syncs=len(versions) if len(versions) else len(weight), roles=list(per_role.values()),
        staleness=staleness_histogram(t), metrics=algorithm_metrics(t))


def format_summary(s: Summary) -> str:
    lines = [f"trace {s.path}",
             f"  window {s.window_s:.3f} s, {s.ranks} ranks, {s.steps} trainer steps (mean {s.mean_step_s * 1e3:.1f} ms)",
             f"  throughput {s.samples_per_s:.2f} samples/s, {s.tokens_per_s:.1f} tokens/s "
             f"({s.rows} rows, {s.tokens} tokens)",
             f"  bubble ratio {s.bubble_ratio:.3f} (idle share of all rank-time)",
             f"  exposed weight sync {s.weight_exposed_s:.3f} rank-s over {s.weight_syncs} syncs", "",
             f"  {'role':<12}{'ranks':>6}{'busy s':>10}{'idle s':>10}{'busy %':>8}{'wait s':>10}{'wsync s':>10}"]
    for r in s.roles:
        lines.append(f"  {r.role:<12}{r.ranks:>6}{r.busy_s:>10.3f}{r.idle_s:>10.3f}{100 * r.busy_frac:>8.1f}"
                     f"{r.wait_s:>10.3f}{r.weight_exposed_s:>10.3f}")
    lines += ["", "  staleness  rows"]
    total = sum(s.staleness.values())
    for k, n in sorted(s.staleness.items()):
        bar = "#" * max(1, round(30 * n / total)) if total else ""
        lines.append(f"  {k:>9}  {n:>5}  {bar}")
    if not s.staleness:
        lines.append("  (no consumed rows with versions recorded)")
    if s.metrics:
        lines += ["", f"  {'per-step metric':<22}{'first':>12}{'mean':>12}{'max':>12}{'last':>12}"]
        for k, v in s.metrics.items():
            lines.append(f"  {k:<22}{v['first']:>12.4g}{v['mean']:>12.4g}{v['max']:>12.4g}{v['last']:>12.4g}")
    return "\n".join(lines)
