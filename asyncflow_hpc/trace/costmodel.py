"""Cost models of the pipeline's stages, fitted from a trace's spans and samples (pure numpy).

    costs = fit_costs(trace)       # CostModel: seconds per generate call / trainer step / weight sync
    shape = workload_of(trace)     # Workload: batch size, rows per generate call, lengths, split, eta

Models (least squares on the recorded spans, coefficients kept non-negative):
- generate call of k rows and n response tokens on one rollout instance: gen_overhead + gen_per_token*n
  (falls back to gen_per_row*k when spans carry no token counts);
- trainer step of k rows and n tokens with data parallelism dp:
  train_overhead + (train_per_token*n + train_per_row*k) * fit_dp/dp + allreduce * 2(dp-1)/dp,
  i.e. the token work divides over replicas, the overhead does not, and a ring all-reduce adds a
  bandwidth term; the per-token part is fitted at the traced dp (`fit_dp`);
- weight sync: the trainer is blocked `sync_trainer` per version (`weight_send` spans), new weights
  are usable by rollout `sync_transfer` after the step ends (end of `weight_recv`), and each rollout
  instance pays `swap` at its next generation boundary (`weight_swap` spans). A broadcast is a tree:
  with `sync_fit_receivers` > 0 the transfer scales with its depth, ceil(log2(receivers + 1)),
  relative to the depth at the traced receiver count;
- the rollout loop around each generate call: `fetch` (taking the next prompt from the store,
  `prompt_wait` spans without the admission stalls) and `put` (writing the rows, `store_put`);
  rows are ready for the trainer when the put ends;
- the trainer's own time between steps (`trainer_gap`: taking the batch, broadcasting it to the
  trainer group, lineage, metrics) beyond the weight send: the median gap from a step's end to the
  next step's start, less the batch wait.
When a trace cannot separate overhead from per-token cost (token counts nearly constant), the whole
duration is attributed to the per-token term (work that scales), and `notes` says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from asyncflow_hpc.trace.reader import Trace
from asyncflow_hpc.trace.schema import SpanName as N
from asyncflow_hpc.trace.schema import TraceError

# The spans `fit` reads; a real run records each of them (tests/mpi/test_trace_recorder_mpi.py), ALLREDUCE only
# with a replicated trainer of more than one rank.
READS = (N.GENERATE, N.TRAIN_STEP, N.ALLREDUCE, N.WEIGHT_SEND, N.WEIGHT_RECV, N.WEIGHT_SWAP, N.STORE_PUT,
         N.BATCH_WAIT, N.PROMPT_WAIT)


@dataclass(kw_only=True)
class CostModel:
    """Seconds per unit of work of each pipeline stage."""

    gen_overhead_s: float = 0.0
    gen_per_token_s: float = 0.0
    gen_per_row_s: float = 0.0
    train_overhead_s: float = 0.0
    train_per_token_s: float = 0.0
    train_per_row_s: float = 0.0
    allreduce_s: float = 0.0
    sync_trainer_s: float = 0.0
    sync_transfer_s: float = 0.0
    swap_s: float = 0.0
    fetch_s: float = 0.0
    put_s: float = 0.0
    trainer_gap_s: float = 0.0
    fit_dp: int = 1
    sync_fit_receivers: int = 0  # > 0: sync_transfer_s was measured with this many receivers (tree scaling)
    # Recorded generate durations / fitted durations, one per call: the simulator draws a call's factor
    # from them (the long tail a linear fit cannot explain); empty = every call takes the fitted time.
    gen_ratios: np.ndarray = field(default_factory=lambda: np.zeros(0))
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if isinstance(value, float) and (value < 0 or not np.isfinite(value)):
                raise ValueError(f"CostModel.{name} must be a finite number >= 0, got {value}")
        if self.sync_transfer_s < self.sync_trainer_s:
            self.sync_transfer_s = self.sync_trainer_s
        if self.fit_dp < 1:
            raise ValueError(f"CostModel.fit_dp must be >= 1, got {self.fit_dp}")

    def gen_time(self, rows: float, tokens: float) -> float:
        return self.gen_overhead_s + self.gen_per_token_s * tokens + self.gen_per_row_s * rows

    def transfer_time(self, receivers: int) -> float:
        """Time from a step's end until its weights are usable on `receivers` rollout ranks."""
        if self.sync_fit_receivers <= 0 or receivers < 1:
            return self.sync_transfer_s
        depth = lambda n: max(1, int(np.ceil(np.log2(n + 1))))  # noqa: E731
        return self.sync_transfer_s * depth(receivers) / depth(self.sync_fit_receivers)

    def train_time(self, rows: float, tokens: float, dp: int) -> float:
        work = (self.train_per_token_s * tokens + self.train_per_row_s * rows) * self.fit_dp / dp
        return self.train_overhead_s + work + self.allreduce_s * 2.0 * (dp - 1) / dp


def costs_dict(c: CostModel) -> dict:
    """The scalar coefficients (JSON-able), with the spread of generate calls as percentiles."""
    out = {k: v for k, v in vars(c).items() if k not in ("notes", "gen_ratios")}
    r = np.asarray(c.gen_ratios, float)
    out["gen_ratio_p50_p90_max"] = [float(np.percentile(r, q)) for q in (50, 90, 100)] if len(r) else []
    return out


@dataclass(kw_only=True)
class Workload:
    """The shape of the recorded run: what the simulator replays at other splits."""

    batch_rows: int  # rows per trainer step
    gen_rows: int  # rows per generate call of one rollout instance
    prompt_len: float
    response_len: float
    response_lens: np.ndarray = field(default_factory=lambda: np.zeros(0))  # empirical distribution
    trainer_ranks: int = 1
    rollout_ranks: int = 1
    rollout_tp: int = 1
    trainer_mp: int = 1  # tp * pp of one trainer replica
    eta: int = 1
    steps: int = 0
    mode: str = "async"


def fit_linear(x: np.ndarray, y: np.ndarray) -> tuple[float, float, bool]:
    """y ~ a + b*x with a, b >= 0. Returns (a, b, separable); when x barely varies, (0, mean y/mean x, False)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) == 0:
        return 0.0, 0.0, False
    mx = float(np.mean(x))
    if len(x) < 3 or mx <= 0 or float(np.std(x)) < 0.05 * mx:
        return 0.0, (float(np.mean(y)) / mx if mx > 0 else 0.0), False
    b, a = np.polyfit(x, y, 1)
    if b < 0:
        return float(np.mean(y)), 0.0, True
    if a < 0:
        return 0.0, float(np.dot(x, y) / np.dot(x, x)), True
    return float(a), float(b), True


def _dur(sp: np.ndarray) -> np.ndarray:
    return sp["t_end"] - sp["t_start"]


def _count_roles(t: Trace) -> tuple[int, int]:
    roles = [str(r) for r in t.ranks["role"]]
    trainers = sum(1 for r in roles if "trainer" in r)
    rollouts = sum(1 for r in roles if "rollout" in r)
    return max(trainers, 1), max(rollouts, 1)


def _cfg(t: Trace, section: str, key: str, default):
    sec = t.config.get(section) if isinstance(t.config, dict) else None
    value = sec.get(key, default) if isinstance(sec, dict) else default
    return value if isinstance(value, type(default)) and not isinstance(value, bool) else default


def workload_of(t: Trace) -> Workload:
    """Batch size, call size, lengths, split and eta of the traced run."""
    steps_sp = t.spans_named(N.TRAIN_STEP.value)
    if len(steps_sp) == 0:
        raise TraceError(f"{t.path}: no 'train_step' spans; the simulator needs a trace of a training run")
    lead = steps_sp[steps_sp["rank"] == steps_sp["rank"].min()]
    sa = t.samples
    consumed = sa[sa["version_consumed"] >= 0]
    if (lead["rows"] > 0).any():
        batch = int(np.median(lead["rows"][lead["rows"] > 0]))
    elif len(consumed):
        batch = int(np.median(np.unique(consumed["version_consumed"], return_counts=True)[1]))
    else:
        raise TraceError(f"{t.path}: train_step spans carry no 'rows' and no consumed samples were recorded")
    gen = t.spans_named(N.GENERATE.value)
    gen_rows = int(np.median(gen["rows"][gen["rows"] > 0])) if len(gen) and (gen["rows"] > 0).any() else batch
    rows = consumed if len(consumed) else sa
    resp = rows["response_len"][rows["response_len"] >= 0].astype(float)
    prompt = rows["prompt_len"][rows["prompt_len"] >= 0].astype(float)
    if len(resp) == 0 and len(gen) and (gen["tokens"] > 0).any():
        ok = (gen["tokens"] > 0) & (gen["rows"] > 0)
        resp = np.array([gen["tokens"][ok].sum() / gen["rows"][ok].sum()])
    trainers, rollouts = _count_roles(t)
    tp = _cfg(t, "topology", "trainer_tp", 1) * _cfg(t, "topology", "trainer_pp", 1)
    return Workload(batch_rows=batch, gen_rows=max(1, min(gen_rows, batch)),
                    prompt_len=float(prompt.mean()) if len(prompt) else 0.0,
                    response_len=float(resp.mean()) if len(resp) else 0.0, response_lens=resp,
                    trainer_ranks=trainers, rollout_ranks=rollouts,
                    rollout_tp=_cfg(t, "topology", "rollout_tp", 1), trainer_mp=max(1, tp),
                    eta=_cfg(t, "workflow", "eta", 1), steps=len(lead), mode=_cfg(t, "workflow", "mode", "async"))


def fit_costs(t: Trace, shape: Workload | None = None) -> CostModel:
    """Fit every stage's cost from the trace's spans."""
    shape = shape or workload_of(t)
    notes: list[str] = []
    gen = t.spans_named(N.GENERATE.value)
    if len(gen) == 0:
        raise TraceError(f"{t.path}: no 'generate' spans; cannot fit the rollout cost")
    g_ov = g_tok = g_row = 0.0
    if (gen["tokens"] > 0).all():
        g_ov, g_tok, sep = fit_linear(gen["tokens"], _dur(gen))
        if not sep:
            notes.append("generate: token counts barely vary; whole duration taken as per-token cost")
    else:
        rows = np.where(gen["rows"] > 0, gen["rows"], shape.gen_rows)
        g_ov, g_row, sep = fit_linear(rows, _dur(gen))
        notes.append("generate: no token counts recorded; fitted per row")
    steps = t.spans_named(N.TRAIN_STEP.value)
    lead = steps[steps["rank"] == steps["rank"].min()]
    # The first step pays one-off costs (allocation, compilation): fit on the rest when there are enough.
    fit_on = lead[1:] if len(lead) >= 4 else lead
    rows = np.where(fit_on["rows"] > 0, fit_on["rows"], shape.batch_rows)
    tokens = np.where(fit_on["tokens"] > 0, fit_on["tokens"], rows * (shape.prompt_len + shape.response_len))
    dp = max(1, shape.trainer_ranks // shape.trainer_mp)
    ar = t.spans_named(N.ALLREDUCE.value)
    ar_med = float(np.median(_dur(ar))) if len(ar) and dp > 1 else 0.0  # nested inside train_step
    t_ov, t_tok, sep = fit_linear(tokens, np.maximum(_dur(fit_on) - ar_med, 0.0))
    if not sep:
        notes.append("train_step: token counts barely vary; whole step taken as work that divides over replicas")
    send = t.spans[(t.spans["name"] == N.WEIGHT_SEND.value)]
    recv = t.spans[(t.spans["name"] == N.WEIGHT_RECV.value)]
    swap = t.spans[(t.spans["name"] == N.WEIGHT_SWAP.value)]
    puts = t.spans_named(N.STORE_PUT.value)
    sync_trainer = float(np.median(_dur(send))) if len(send) else 0.0
    transfer = sync_trainer
    if len(recv) and len(lead):
        # Usable at rollout: end of the receive, measured from the end of the step that produced it.
        ends = {int(s): float(e) for s, e in zip(lead["step"], lead["t_end"]) if s >= 0}
        lags = [float(e) - ends[int(v) - 1] for v, e in zip(recv["version"], recv["t_end"]) if int(v) - 1 in ends]
        lags = [x for x in lags if x >= 0]
        transfer = max(transfer, float(np.median(lags))) if lags else max(transfer, float(np.median(_dur(recv))))
    fitted = g_ov + g_tok * gen["tokens"] + g_row * np.where(gen["rows"] > 0, gen["rows"], shape.gen_rows)
    ratios = _dur(gen) / fitted if (fitted > 0).all() else np.zeros(0)
    return CostModel(gen_overhead_s=g_ov, gen_per_token_s=g_tok, gen_per_row_s=g_row, train_overhead_s=t_ov,
                     train_per_token_s=t_tok, allreduce_s=ar_med / (2.0 * (dp - 1) / dp) if dp > 1 else 0.0,
                     sync_trainer_s=sync_trainer, sync_transfer_s=transfer,
                     swap_s=float(np.median(_dur(swap))) if len(swap) else 0.0, fit_dp=dp, notes=notes,
                     fetch_s=_fetch_cost(t), put_s=float(np.mean(_dur(puts))) if len(puts) else 0.0,
                     trainer_gap_s=max(0.0, _trainer_gap(lead, t.spans_named(N.BATCH_WAIT.value))
                                       - sync_trainer),
                     sync_fit_receivers=shape.rollout_ranks if len(send) else 0,
                     gen_ratios=ratios / ratios.mean() if len(ratios) else ratios)


def _fetch_cost(t: Trace) -> float:
    """Mean time to take a prompt from the store, without the waits that admission control causes
    (those the simulator produces itself): prompt_wait spans longer than 4x their median are stalls."""
    d = _dur(t.spans_named(N.PROMPT_WAIT.value))
    if len(d) == 0:
        return 0.0
    return float(np.mean(d[d <= 4.0 * np.median(d)]))


def _trainer_gap(lead: np.ndarray, waits: np.ndarray) -> float:
    """The trainer's own time per step outside train_step: from a step's end to the next step's start,
    less the time spent waiting for the batch (median over steps): turning the batch into rows, the
    batch broadcast inside a data-parallel trainer group, advantages, lineage and metrics."""
    if len(lead) < 2 or len(waits) == 0:  # without wait spans, waiting and work cannot be told apart
        return 0.0
    lead = lead[np.argsort(lead["t_start"])]
    waits = waits[waits["rank"] == lead["rank"][0]] if len(waits) else waits
    gaps = []
    for a, b in zip(lead[:-1], lead[1:]):
        inside = waits[(waits["t_start"] >= a["t_end"]) & (waits["t_end"] <= b["t_start"])]
        gaps.append(float(b["t_start"] - a["t_end"]) - float(np.sum(_dur(inside))))
    return max(0.0, float(np.median(gaps)))
