"""Discrete-event simulator of the AsyncFlow pipeline (pure: no MPI, no torch) and the split planner.

    res = simulate(SimSpec(rollout_instances=6, trainer_dp=2, batch_rows=64, gen_rows=8, eta=1), costs)
    res.throughput, res.idle_frac["rollout"], res.staleness
    best, scanned = recommend_split(costs, template_spec, devices=1024)

Async mode (separate trainer and rollout groups): each rollout instance loops: at a generation
boundary it swaps in the newest weights that have arrived (cost `swap_s`), then starts a generate
call of up to `gen_rows` rows if rollout admission control allows (staleness.admission_quota: rows
started with weights w may only be used by steps w..w+eta), else waits for the next version.
Trainer step v consumes rows [v*B, (v+1)*B) (rows are numbered in admission order) once all are
generated, takes `train_time`, is then blocked `sync_trainer_s` by the weight send, and version v+1
becomes usable by rollout `sync_transfer_s` after the step ends (delayed parameter update).
Sync mode (colocated, generate-then-train): all devices generate B rows, then all train, then
reload the weights; nothing overlaps.
Throughput is measured in the steady state (after the pipeline has filled).
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from asyncflow_hpc import staleness
from asyncflow_hpc.trace.costmodel import CostModel


@dataclass(kw_only=True)
class SimSpec:
    """One configuration to simulate. Devices = rollout_instances*rollout_tp + trainer_dp*trainer_mp
    in async mode; in sync mode every device both generates and trains (instances = devices/rollout_tp)."""

    rollout_instances: int
    trainer_dp: int
    batch_rows: int
    gen_rows: int
    eta: int = 1
    steps: int = 20
    mode: Literal["async", "sync"] = "async"
    prompt_len: float = 0.0
    response_len: float = 0.0
    response_lens: np.ndarray | None = None  # empirical lengths, drawn per row with `seed`
    rollout_tp: int = 1
    trainer_mp: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("rollout_instances", "trainer_dp", "batch_rows", "gen_rows", "rollout_tp", "trainer_mp"):
            if getattr(self, name) < 1:
                raise ValueError(f"SimSpec.{name} must be >= 1, got {getattr(self, name)}")
        if self.eta < 0:
            raise ValueError(f"SimSpec.eta must be >= 0, got {self.eta}")
        if self.steps < 2:
            raise ValueError(f"SimSpec.steps must be >= 2, got {self.steps}")
        if self.mode not in ("async", "sync"):
            raise ValueError(f"SimSpec.mode must be 'async' or 'sync', got {self.mode!r}")

    @property
    def rollout_ranks(self) -> int:
        return self.rollout_instances * self.rollout_tp

    @property
    def trainer_ranks(self) -> int:
        return self.trainer_dp * self.trainer_mp

    @property
    def devices(self) -> int:
        if self.mode == "sync":
            return self.rollout_ranks
        return self.rollout_ranks + self.trainer_ranks


@dataclass
class SimResult:
    spec: SimSpec
    throughput: float  # rows (samples) per second, steady state
    tokens_per_s: float  # prompt + response tokens per second
    step_time_s: float  # steady-state time per trainer step
    makespan_s: float
    step_end: np.ndarray
    busy: dict[str, float] = field(default_factory=dict)  # rank-seconds per role in the steady window
    idle: dict[str, float] = field(default_factory=dict)
    idle_frac: dict[str, float] = field(default_factory=dict)
    bubble_ratio: float = 0.0
    exposed_sync_s: float = 0.0  # rank-seconds of exposed weight sync per step
    staleness: dict[int, int] = field(default_factory=dict)

    @property
    def devices(self) -> int:
        return self.spec.devices

    @property
    def per_device(self) -> float:
        return self.throughput / self.devices


def _row_lengths(spec: SimSpec, steps: int | None = None) -> np.ndarray:
    n = (steps or spec.steps) * spec.batch_rows
    if spec.response_lens is not None and len(spec.response_lens):
        rng = np.random.default_rng(spec.seed)
        return rng.choice(np.asarray(spec.response_lens, float), size=n)
    return np.full(n, float(spec.response_len))


def _clipped(intervals: list[tuple[float, float]], lo: float, hi: float) -> float:
    if not intervals:
        return 0.0
    a = np.asarray(intervals, float)
    return float(np.clip(np.minimum(a[:, 1], hi) - np.maximum(a[:, 0], lo), 0.0, None).sum())


def _call_factors(costs: CostModel, seed: int, calls: int):
    """A function giving each generate call's duration factor, drawn from costs.gen_ratios (else 1)."""
    ratios = np.asarray(costs.gen_ratios, float)
    if len(ratios) == 0:
        return lambda: 1.0
    draws = iter(np.random.default_rng(seed + 7919).choice(ratios, size=calls + 16).tolist())
    return lambda: next(draws, 1.0)


class _AsyncSim:
    """State of one async simulation; `run()` processes events in time order."""

    def __init__(self, spec: SimSpec, costs: CostModel):
        self.s, self.c = spec, costs
        # Rollout keeps producing past the last simulated step (as in a longer run), so the steady
        # window is not cut short by rollout running out of work.
        self.extra_steps = spec.steps + spec.eta + 2
        self.total = self.extra_steps * spec.batch_rows
        # Python lists, not numpy, on the hot path: scalar numpy indexing costs ~10x more.
        self.cs = np.concatenate([[0.0], np.cumsum(_row_lengths(spec, self.extra_steps))]).tolist()
        self.admissions: list[tuple[int, int, int]] = []  # (first row, rows, version)
        self.calls: list[tuple[int, float, float, int, int]] = []  # (instance, start, end, first row, rows)
        self.swaps: list[tuple[int, float, int]] = []  # (instance, start, new version)
        self.ready_cnt = [0] * self.extra_steps
        self.ready_t = [0.0] * self.extra_steps
        self.step_end = np.zeros(spec.steps)
        self.avail = [0.0]  # time each policy version becomes usable by rollout
        self.next_step, self.trainer_free, self.admitted = 0, 0.0, 0
        self.factor = _call_factors(costs, spec.seed, self.total)  # at most one call per row
        self.inst_w = [0] * spec.rollout_instances
        self.waiting: list[int] = []
        self.heap: list[tuple] = []
        self.seq = 0
        self.busy_roll: list[tuple[float, float]] = []
        self.busy_train: list[tuple[float, float]] = []
        self.sync_roll: list[tuple[float, float]] = []
        self.sync_train: list[tuple[float, float]] = []

    def _push(self, t: float, inst: int, r0: int = -1, r1: int = -1) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, inst, r0, r1))

    def _free(self, inst: int, t: float) -> None:
        """Instance `inst` is at a generation boundary at time t."""
        s, c = self.s, self.c
        w_new = bisect_right(self.avail, t) - 1
        if w_new > self.inst_w[inst]:
            if c.swap_s > 0:
                self.sync_roll.append((t, t + c.swap_s))
                self.swaps.append((inst, t, w_new))
                t += c.swap_s
            self.inst_w[inst] = w_new
        if self.admitted >= self.total:
            return
        w = self.inst_w[inst]
        quota = staleness.admission_quota(w, s.eta, s.batch_rows)
        k = min(s.gen_rows, quota - self.admitted, self.total - self.admitted)
        if k <= 0:
            if w + 1 < len(self.avail):
                self._push(max(self.avail[w + 1], t), inst)
            else:
                self.waiting.append(inst)
            return
        t += c.fetch_s  # take the prompt from the store
        r0 = self.admitted
        self.admitted += k
        dur = c.gen_time(k, self.cs[r0 + k] - self.cs[r0]) * self.factor()
        self.admissions.append((r0, k, w))
        self.busy_roll.append((t - c.fetch_s, t + dur + c.put_s))
        self.calls.append((inst, t, t + dur, r0, k))
        self._push(t + dur + c.put_s, inst, r0, r0 + k)  # rows are ready once written to the store

    def _done(self, t: float, inst: int, r0: int, r1: int) -> None:
        b = self.s.batch_rows
        for step in range(r0 // b, (r1 - 1) // b + 1):
            self.ready_cnt[step] += min(r1, (step + 1) * b) - max(r0, step * b)
            if t > self.ready_t[step]:
                self.ready_t[step] = t
        self._advance_trainer()
        self._free(inst, t)

    def _advance_trainer(self) -> None:
        s, c, b = self.s, self.c, self.s.batch_rows
        while self.next_step < s.steps and self.ready_cnt[self.next_step] == b:
            v = self.next_step
            start = max(self.trainer_free, self.ready_t[v])
            tokens = b * s.prompt_len + self.cs[(v + 1) * b] - self.cs[v * b]
            end = start + c.train_time(b, tokens, s.trainer_dp)
            self.busy_train.append((start, end))
            if c.sync_trainer_s > 0:
                self.sync_train.append((end, end + c.sync_trainer_s))
            if c.trainer_gap_s > 0:
                self.busy_train.append((end + c.sync_trainer_s, end + c.sync_trainer_s + c.trainer_gap_s))
            self.trainer_free = end + c.sync_trainer_s + c.trainer_gap_s
            self.step_end[v] = end
            self.avail.append(end + c.transfer_time(s.rollout_ranks))
            self.next_step += 1
            for inst in self.waiting:  # they all hold the newest version and wait for the next
                self._push(self.avail[-1], inst)
            self.waiting.clear()

    def run(self) -> "_AsyncSim":
        for inst in range(self.s.rollout_instances):
            self._push(0.0, inst)
        while self.heap:
            t, _, inst, r0, r1 = heapq.heappop(self.heap)
            if r0 >= 0:
                self._done(t, inst, r0, r1)
            else:
                self._free(inst, t)
        if self.next_step != self.s.steps:
            raise RuntimeError(f"simulator stalled at step {self.next_step} of {self.s.steps} (bug)")
        return self

    def row_versions(self, n: int) -> np.ndarray:
        """Policy version each of the first n rows was generated with."""
        out = np.full(self.total, -1, dtype=np.int64)
        for r0, k, w in self.admissions:
            out[r0:r0 + k] = w
        return out[:n]


def _warmup(spec: SimSpec) -> int:
    return min(spec.steps // 2, spec.eta + 2)


Load = list[tuple[list[tuple[float, float]], int]]  # (intervals, ranks each occupies)


def _load(parts: Load, lo: float, hi: float) -> float:
    return sum(_clipped(iv, lo, hi) * n for iv, n in parts)


def _result(spec: SimSpec, step_end: np.ndarray, busy: dict[str, Load], sync: dict[str, Load],
            devices: dict[str, int], row_stale: np.ndarray, mean_tokens: float) -> SimResult:
    """Steady-state figures from the busy and weight-sync intervals of each role (devices[r] ranks)."""
    w = _warmup(spec)
    lo, hi = float(step_end[w]), float(step_end[-1])
    window = hi - lo
    steps_in = spec.steps - 1 - w
    thr = steps_in * spec.batch_rows / window if window > 0 else float("inf")
    res = SimResult(spec=spec, throughput=thr, tokens_per_s=thr * mean_tokens,
                    step_time_s=window / steps_in if steps_in else 0.0, makespan_s=float(step_end[-1]),
                    step_end=step_end)
    for role, n in devices.items():
        b = _load(busy[role], lo, hi) + _load(sync[role], lo, hi)
        res.busy[role] = b
        res.idle[role] = max(n * window - b, 0.0)
        res.idle_frac[role] = res.idle[role] / (n * window) if window > 0 else 0.0
    total = sum(devices.values())
    res.bubble_ratio = sum(res.idle.values()) / (total * window) if window > 0 else 0.0
    exposed = sum(_load(sync[r], lo, hi) for r in devices)
    res.exposed_sync_s = exposed / steps_in if steps_in else 0.0
    values, counts = np.unique(row_stale, return_counts=True)
    res.staleness = {int(v): int(c) for v, c in zip(values, counts)}
    return res


def run_async(spec: SimSpec, costs: CostModel) -> _AsyncSim:
    """The raw event record of an async simulation (calls, swaps, steps), e.g. to write a trace."""
    return _AsyncSim(spec, costs).run()


def _simulate_async(spec: SimSpec, costs: CostModel) -> SimResult:
    sim = _AsyncSim(spec, costs).run()
    used = spec.steps * spec.batch_rows
    consumed = np.arange(used) // spec.batch_rows
    mean_tokens = spec.prompt_len + sim.cs[used] / used
    tp, tr = spec.rollout_tp, spec.trainer_ranks
    return _result(spec, sim.step_end, {"rollout": [(sim.busy_roll, tp)], "trainer": [(sim.busy_train, tr)]},
                   {"rollout": [(sim.sync_roll, tp)], "trainer": [(sim.sync_train, tr)]},
                   {"rollout": spec.rollout_ranks, "trainer": tr}, consumed - sim.row_versions(used), mean_tokens)


def _simulate_sync(spec: SimSpec, costs: CostModel) -> SimResult:
    """Colocated generate-then-train: all devices generate, then all train, then reload weights."""
    b, n_inst = spec.batch_rows, spec.rollout_instances
    cs = np.concatenate([[0.0], np.cumsum(_row_lengths(spec))])
    dp = max(1, spec.devices // spec.trainer_mp)
    t, step_end, busy_gen, busy_train, sync = 0.0, np.zeros(spec.steps), [], [], []
    factor = _call_factors(costs, spec.seed, spec.steps * b)
    for v in range(spec.steps):
        free = [(t, i) for i in range(n_inst)]  # all instances start the step together
        row, gen_end = v * b, t
        while row < (v + 1) * b:
            t_i, i = heapq.heappop(free)
            k = min(spec.gen_rows, (v + 1) * b - row)
            dur = costs.gen_time(k, cs[row + k] - cs[row]) * factor()
            busy_gen.append((t_i, t_i + dur))
            gen_end = max(gen_end, t_i + dur)
            heapq.heappush(free, (t_i + dur, i))
            row += k
        end = gen_end + costs.train_time(b, b * spec.prompt_len + cs[(v + 1) * b] - cs[v * b], dp)
        busy_train.append((gen_end, end))
        step_end[v] = end
        reload = costs.sync_trainer_s + costs.swap_s
        sync.append((end, end + reload))
        t = end + reload
    # One device pool: an instance's ranks are busy while it generates; every rank trains and reloads.
    d = spec.devices
    return _result(spec, step_end, {"colocated": [(busy_gen, spec.rollout_tp), (busy_train, d)]},
                   {"colocated": [(sync, d)]}, {"colocated": d}, np.zeros(spec.steps * b, dtype=np.int64),
                   spec.prompt_len + cs[-1] / (spec.steps * b))


def simulate(spec: SimSpec, costs: CostModel) -> SimResult:
    """Predict throughput, idle time per role, exposed weight sync and staleness of `spec`."""
    return _simulate_sync(spec, costs) if spec.mode == "sync" else _simulate_async(spec, costs)


def split_candidates(devices: int, rollout_tp: int = 1, trainer_mp: int = 1) -> list[tuple[int, int]]:
    """Every (trainer_dp, rollout_instances) that uses exactly `devices` ranks."""
    out = []
    for dp in range(1, devices // trainer_mp + 1):
        rest = devices - dp * trainer_mp
        if rest >= rollout_tp and rest % rollout_tp == 0:
            out.append((dp, rest // rollout_tp))
    return out


def rate_bound(spec: SimSpec, costs: CostModel) -> float:
    """Closed-form steady throughput bound (rows/s): min(rollout rate, trainer rate). With eta=0 the
    stages serialise, so the bound is B / (generation time of a batch + step + sync + swap)."""
    b, big_b = spec.gen_rows, spec.batch_rows
    lens = spec.response_lens
    resp = float(np.mean(lens)) if lens is not None and len(lens) else spec.response_len
    tokens_row = spec.prompt_len + resp
    t_gen = costs.gen_time(b, b * resp) + costs.fetch_s + costs.put_s
    step = costs.train_time(big_b, big_b * tokens_row, spec.trainer_dp) + costs.sync_trainer_s + costs.trainer_gap_s
    rounds = -(-big_b // (b * spec.rollout_instances))  # generate calls per instance per batch
    if spec.eta == 0:
        return big_b / (rounds * t_gen + step - costs.sync_trainer_s - costs.trainer_gap_s
                        + costs.transfer_time(spec.rollout_ranks) + costs.swap_s)
    return min(spec.rollout_instances * b / t_gen if t_gen > 0 else float("inf"), big_b / step)


def recommend_split(costs: CostModel, template: SimSpec, devices: int,
                    max_evals: int = 32) -> tuple[SimResult, list[SimResult]]:
    """Scan trainer/rollout splits of `devices` ranks (async mode); return the fastest and all simulated.

    Screens every split with `rate_bound`, simulates its best split and a coarse grid, then pattern-
    searches (step halving) around the best simulated split; throughput is unimodal in the split
    (rollout rate rises and trainer rate falls as ranks move to rollout). Scan simulations use fewer
    steps; the winner is simulated again with the template's steps."""
    cands = split_candidates(devices, template.rollout_tp, template.trainer_mp)
    if not cands:
        raise ValueError(f"no trainer/rollout split of {devices} devices with rollout_tp={template.rollout_tp}, "
                         f"trainer tp*pp={template.trainer_mp}")
    scan_steps = min(template.steps, max(8, _warmup(template) + 6))
    specs = [replace(template, mode="async", trainer_dp=dp, rollout_instances=n, steps=scan_steps) for dp, n in cands]
    done: dict[int, SimResult] = {}

    def run(i: int) -> float:
        if 0 <= i < len(specs) and i not in done:
            done[i] = simulate(specs[i], costs)
        return done[i].throughput if i in done else float("-inf")

    n = len(cands)
    centre = int(np.argmax([rate_bound(sp, costs) for sp in specs]))
    for i in {centre, *np.linspace(0, n - 1, num=min(n, 5)).round().astype(int).tolist()}:
        run(i)
    best = max(done, key=lambda i: (done[i].throughput, -i))
    step = max(1, n // 8)
    while len(done) < max_evals:
        moved = False
        for j in (best - step, best + step):
            if run(j) > done[best].throughput:
                best, moved = j, True
        if not moved:
            if step == 1:
                break
            step //= 2
    final = simulate(replace(specs[best], steps=template.steps), costs)
    scanned = [done[i] for i in sorted(done)]
    return final, scanned
