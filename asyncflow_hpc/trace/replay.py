"""`asyncflow-hpc trace replay T.h5`: re-feed a trace's recorded rows to a fresh trainer; losses must match bit-for-bit.

    asyncflow-hpc trace replay runs/x/trace.h5            # table of recorded vs replayed loss per step
    asyncflow-hpc trace replay runs/x/trace.h5 --steps 3 --json

The job config stored in the trace rebuilds the same initial model and trainer (same seed, same
supervised warm-up), then for each step v the rows the trainer consumed at v (lineage
`version_consumed == v`, in the recorded order, with the token ids and behaviour log-probs of the
`/payloads` table) get their advantages (workflow.common.assign_advantages) and go through
`train_step`. Each step's loss is compared with the recorded `loss` metric as float64 bits: any
difference is a mismatch, reported with the step and both values (exit status 1). Replay stops at
the first mismatch, since every later step starts from different weights.

It runs in this one process (no trainer group), so it reproduces traces whose trainer had one
data-parallel replica: with dp > 1 the gradient all-reduce sums in another order, and the trace is
refused with an error saying so. Emulated device time (emulation.enabled) is not replayed.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from asyncflow_hpc.trace.reader import Trace, read_trace
from asyncflow_hpc.trace.schema import TraceError


@dataclass
class StepResult:
    step: int
    rows: int
    recorded: float
    replayed: float

    @property
    def match(self) -> bool:
        return np.float64(self.recorded).tobytes() == np.float64(self.replayed).tobytes()


@dataclass
class ReplayResult:
    path: str
    steps: list[StepResult] = field(default_factory=list)

    @property
    def first_mismatch(self) -> StepResult | None:
        return next((s for s in self.steps if not s.match), None)

    @property
    def ok(self) -> bool:
        return bool(self.steps) and self.first_mismatch is None


def job_config(t: Trace) -> Any:
    """The run's JobConfig, rebuilt from the JSON stored in the trace."""
    from asyncflow_hpc.config import config_from_dict
    from asyncflow_hpc.errors import AsyncFlowError

    if not t.config:
        raise TraceError(f"{t.path}: the trace stores no job config (/meta/config_json); it cannot be replayed")
    try:
        return config_from_dict(t.config)
    except AsyncFlowError as exc:
        raise TraceError(f"{t.path}: its stored job config does not load in this asyncflow_hpc ({exc}); "
                         f"replay it with the version that wrote it ({t.attrs.get('asyncflow_version', '?')})") from None


def trainer_dp(t: Trace, cfg: Any) -> int:
    """Data-parallel replicas of the traced trainer (ranks whose role includes 'trainer' / tp*pp)."""
    ranks = sum(1 for r in t.ranks["role"] if "trainer" in str(r).split("+"))
    mp = max(1, cfg.topology.trainer_tp * cfg.topology.trainer_pp)
    return max(1, ranks // mp)


def recorded_losses(t: Trace) -> dict[int, float]:
    m = t.metric("loss")
    return {int(s): float(v) for s, v in zip(m["step"], m["value"])}


def step_rows(t: Trace, version: int, payload_index: dict[int, int]) -> list:
    """The rows consumed at trainer step `version`, in recorded order (by rank, then time), as engine Rows."""
    from asyncflow_hpc.engines.base import Row

    sa = t.samples
    sel = sa[sa["version_consumed"] == version]
    sel = sel[np.lexsort((sel["t"], sel["rank"]))]  # stable: ties keep the file order
    rows = []
    for s in sel:
        i = payload_index.get(int(s["row"]))
        if i is None:
            raise TraceError(f"{t.path}: row {int(s['row'])} (step {version}) has no payload; the trace was recorded "
                             f"with trace.payloads=false or by a workflow that does not call recorder.payload()")
        prompt, response, lps = t.payload_of(i)
        rows.append(Row(prompt_id=int(s["prompt_id"]), sample_index=int(s["sample_index"]), prompt_ids=prompt,
                        response_ids=response, behav_logprobs=lps, version=int(s["version_produced"]),
                        reward=float(s["reward"])))
    return rows


def _check_payloads(t: Trace) -> None:
    if t.schema_version < 2 or len(t.payloads) == 0:
        raise TraceError(f"{t.path}: the trace holds no row payloads (schema_version {t.schema_version}); record "
                         f"the run with trace.payloads=true (schema_version 2) to replay it")


def _check_replayable(t: Trace, cfg: Any) -> None:
    dp = trainer_dp(t, cfg)
    if dp > 1:
        raise TraceError(f"{t.path}: its trainer had {dp} data-parallel replicas; replay runs one trainer "
                         f"process, whose gradient sums in another order, so losses cannot match bit-for-bit. "
                         f"Replay traces of runs with one trainer replica (async: topology.trainer_ranks=1; "
                         f"sync: topology.world_size=1)")
    if cfg.trainer.engine not in ("torch", "auto"):
        raise TraceError(f"{t.path}: trainer.engine={cfg.trainer.engine}; replay supports the torch trainer")


def build_trainer(cfg: Any) -> Any:
    """The run's initial trainer on CPU: same model seed, same supervised warm-up, no trainer group."""
    import torch

    from asyncflow_hpc.engines.factory import make_trainer
    from asyncflow_hpc.workflow import common
    from asyncflow_hpc.workflow.stages import sft_warmup

    torch.set_num_threads(cfg.device.threads_per_rank)  # intra-op threads change float reduction order
    task = common.build_task(cfg, "cpu")
    trainer = make_trainer(cfg, task.model, pad_id=task.tokenizer.pad_id, group=None, device="cpu")
    sft_warmup(cfg, trainer, task)  # the same warm-up as the recorded run
    return trainer


def replay(path: str, steps: int | None = None, on_step: Any = None) -> ReplayResult:
    """Replay the first `steps` recorded steps (default all with a recorded loss); stop at the first mismatch."""
    from asyncflow_hpc.workflow.common import assign_advantages

    t = read_trace(path)
    _check_payloads(t)
    cfg = job_config(t)
    _check_replayable(t, cfg)
    losses = recorded_losses(t)
    if not losses:
        raise TraceError(f"{t.path}: no 'loss' metrics recorded; nothing to compare a replay with")
    todo = sorted(losses)[: steps if steps is not None else None]
    if todo != list(range(len(todo))):
        raise TraceError(f"{t.path}: recorded losses are for steps {todo[:8]}..., expected 0, 1, 2, ...")
    index: dict[int, int] = {}
    for i, r in enumerate(t.payloads["row"]):
        index.setdefault(int(r), i)
    trainer = build_trainer(cfg)
    out = ReplayResult(path=t.path)
    for v in todo:
        rows = step_rows(t, v, index)
        if not rows:
            raise TraceError(f"{t.path}: no rows recorded as consumed at step {v} (samples.version_consumed)")
        assign_advantages(rows, cfg.algorithm)
        metrics = trainer.train_step(rows)
        res = StepResult(step=v, rows=len(rows), recorded=losses[v], replayed=float(metrics["loss"]))
        out.steps.append(res)
        if on_step is not None:
            on_step(res)
        if not res.match:
            break
    return out


def _line(s: StepResult) -> str:
    return f"{s.step:>5}{s.rows:>7}  {s.recorded:>+24.17e}  {s.replayed:>+24.17e}  {'ok' if s.match else 'MISMATCH'}"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="asyncflow-hpc trace replay", description=__doc__.splitlines()[0])
    p.add_argument("trace", help="trace file (HDF5) of a run recorded with trace.payloads=true")
    p.add_argument("--steps", type=int, help="replay only the first N steps (default: every recorded step)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = p.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        p.error("--steps must be >= 1")
    print(f"{'step':>5}{'rows':>7}  {'recorded loss':>24}  {'replayed loss':>24}  match", flush=True)
    res = replay(args.trace, args.steps, on_step=lambda s: print(_line(s), flush=True))
    bad = res.first_mismatch
    if bad is None:
        print(f"replay of {res.path}: {len(res.steps)} steps, every loss identical bit-for-bit")
    else:
        print(f"replay of {res.path}: MISMATCH at step {bad.step}: recorded loss {bad.recorded!r}, replayed "
              f"{bad.replayed!r} (stopped there; later steps start from other weights)", file=sys.stderr)
    if args.json:
        print(json.dumps({"trace": res.path, "ok": res.ok, "steps": len(res.steps),
                          "mismatch_step": bad.step if bad else None,
                          "losses": [[s.step, s.recorded, s.replayed] for s in res.steps]}))
    return 0 if res.ok else 1
