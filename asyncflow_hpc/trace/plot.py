"""`trace plot`: per-rank timeline (Gantt) plus reward, staleness and store-occupancy curves, as a PNG.

`plot_data(trace)` is pure (numbers the tests check); `plot_trace(trace, out)` draws them with
matplotlib's Agg backend, imported only here and only when plotting.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from asyncflow_hpc.trace.reader import Trace
from asyncflow_hpc.trace.schema import IDLE, TraceError


@dataclass
class PlotData:
    ranks: list[int]
    labels: list[str]  # y-axis label per rank
    bars: dict[str, np.ndarray] = field(default_factory=dict)  # span name -> rows (rank, start, dur, depth)
    reward: tuple[np.ndarray, np.ndarray] = (np.zeros(0), np.zeros(0))  # (step, mean reward)
    staleness: tuple[np.ndarray, np.ndarray] = (np.zeros(0), np.zeros(0))  # (step, mean staleness)
    occupancy: tuple[np.ndarray, np.ndarray] = (np.zeros(0), np.zeros(0))  # (t, rows in store)


def span_depths(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Nesting depth of each interval among the intervals of one rank/thread (0 = outermost)."""
    order = np.argsort(starts, kind="stable")
    depth = np.zeros(len(starts), dtype=np.int64)
    stack: list[float] = []
    for i in order:
        while stack and stack[-1] <= starts[i]:
            stack.pop()
        depth[i] = len(stack)
        stack.append(ends[i])
    return depth


def _per_step_mean(steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ok = np.isfinite(values)
    steps, values = steps[ok], values[ok]
    keys, inv = np.unique(steps, return_inverse=True)
    if len(keys) == 0:
        return np.zeros(0), np.zeros(0)
    return keys.astype(float), np.bincount(inv, weights=values) / np.bincount(inv)


def plot_data(t: Trace) -> PlotData:
    ranks = sorted(set(t.ranks["rank"].tolist()) | set(t.spans["rank"].tolist()))
    labels = [f"{r} {t.role_of(r)}".strip() for r in ranks]
    sp = t.spans
    depth = np.zeros(len(sp), dtype=np.int64)
    for r in ranks:
        for th in np.unique(sp["thread"][sp["rank"] == r]):
            idx = np.flatnonzero((sp["rank"] == r) & (sp["thread"] == th))
            depth[idx] = span_depths(sp["t_start"][idx], sp["t_end"][idx]) + 2 * int(th)
    bars = {}
    for name in np.unique(sp["name"]):
        sel = sp["name"] == name
        bars[str(name)] = np.stack([sp["rank"][sel].astype(float), sp["t_start"][sel],
                                    sp["t_end"][sel] - sp["t_start"][sel], depth[sel].astype(float)], axis=1)
    out = PlotData(ranks=ranks, labels=labels, bars=bars)
    rew = t.metric("reward")
    sa = t.samples
    consumed = sa[sa["version_consumed"] >= 0]
    if len(rew):
        out.reward = _per_step_mean(rew["step"], rew["value"])
    elif len(consumed):
        out.reward = _per_step_mean(consumed["version_consumed"], consumed["reward"])
    ok = consumed[consumed["version_produced"] >= 0]
    if len(ok):
        out.staleness = _per_step_mean(ok["version_consumed"],
                                       (ok["version_consumed"] - ok["version_produced"]).astype(float))
    occ = t.counters[t.counters["name"] == "store_occupancy"]
    if len(occ):
        order = np.argsort(occ["t"], kind="stable")
        out.occupancy = (occ["t"][order], occ["value"][order])
    return out


def plot_trace(t: Trace, out_path: str, *, dpi: int = 110) -> PlotData:
    """Draw the timeline and curves of trace `t` to the PNG `out_path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = plot_data(t)
    fig = plt.figure(figsize=(13, 3 + 0.35 * len(d.ranks) + 2.5))
    grid = fig.add_gridspec(2, 3, height_ratios=[max(2.0, 0.35 * len(d.ranks)), 2.2])
    ax = fig.add_subplot(grid[0, :])
    cmap = plt.get_cmap("tab20")
    idle_names = {n for n in d.bars if len(t.spans_named(n)) and t.spans_named(n)["kind"][0] == IDLE}
    for i, (name, rows) in enumerate(sorted(d.bars.items())):
        height = np.maximum(0.8 * 0.7 ** rows[:, 3], 0.1)
        ax.barh(rows[:, 0], rows[:, 2], left=rows[:, 1], height=height, color=cmap(i % 20), label=name,
                alpha=0.35 if name in idle_names else 0.9, hatch="//" if name in idle_names else None,
                edgecolor="none")
    ax.set_yticks(d.ranks, d.labels)
    ax.invert_yaxis()
    ax.set_xlabel("time since run start (s, rank 0 clock)")
    ax.set_title(f"{t.path}: per-rank timeline")
    ax.legend(loc="upper right", fontsize=7, ncol=min(6, max(1, len(d.bars))))
    for j, (title, (x, y), xl) in enumerate([("reward (mean per step)", d.reward, "trainer step"),
                                             ("staleness (mean per step)", d.staleness, "trainer step"),
                                             ("store occupancy (rows)", d.occupancy, "time (s)")]):
        cax = fig.add_subplot(grid[1, j])
        if len(x):
            cax.plot(x, y, marker="." if len(x) < 60 else None)
        else:
            cax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=cax.transAxes)
        cax.set_title(title, fontsize=9)
        cax.set_xlabel(xl, fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(out_path, dpi=dpi)
    except OSError as exc:
        raise TraceError(f"{out_path}: cannot write plot: {exc}") from None
    finally:
        plt.close(fig)
    return d
