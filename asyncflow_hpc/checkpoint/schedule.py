"""Async mode: the prompt schedule and the store's rows in flight, checkpointed at a trainer step boundary.

At a checkpoint after `done` steps the trainer leader records:
  fed       prompt ids [0, fed) were handed to the prompt store so far;
  consumed  the prompt groups the train task consumed (as ranges);
  rows      the rows generated but not yet trained on: a copy of what the sample store holds for the
            train task (`store.peek`; a stopping checkpoint first drains the prompt store and waits for
            every rollout rank to finish its current group, so nothing is in flight);
  pending   fed prompt ids that are neither consumed nor in `rows` (claimed by a rollout rank, still
            queued, or discarded by the store as too stale, which is counted, not consumed): they
            are generated again after a resume, with the same seeds.
On resume the leader puts `pending` back into the prompt store and `rows` into the sample store
before its first step, so every sample is consumed exactly once and nothing consumed is regenerated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


def to_ranges(ids: set[int]) -> list[list[int]]:
    """{0,1,2,5,6} -> [[0,3],[5,7]] (half-open)."""
    out: list[list[int]] = []
    for i in sorted(ids):
        if out and out[-1][1] == i:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1])
    return out


def from_ranges(ranges: list[list[int]]) -> set[int]:
    return {i for a, b in ranges for i in range(int(a), int(b))}


@dataclass
class Schedule:
    """The trainer leader's view of which prompts were fed and consumed."""

    fed: int = 0
    done_groups: set[int] = field(default_factory=set)

    def consumed(self, rows: list, fed: int) -> None:
        self.fed = fed
        self.done_groups.update(int(r.prompt_id) for r in rows)

    @classmethod
    def restore(cls, ctx: Any) -> "Schedule":
        """Leader: queue the pending prompts and the checkpoint's rows again; every trainer rank: the counters."""
        meta = ctx.ckpt.meta
        sched = cls(fed=int(meta.get("fed", 0)), done_groups=from_ranges(meta.get("consumed", [])))
        if ctx.rank != ctx.comms.layout.trainer_leader:
            return sched
        from asyncflow_hpc.checkpoint.state import load_rows

        rows = load_rows(ctx.ckpt.path)
        pending = [int(p) for p in meta.get("pending", [])]
        if pending:
            put_prompts(ctx, pending)
        restore_rows(ctx, rows)
        print(f"asyncflow-hpc: resuming from {ctx.ckpt.path}: step {ctx.ckpt.start}, {len(rows)} rows restored to "
              f"the store, {len(pending)} prompts queued again, {len(sched.done_groups)} prompt groups already "
              f"trained on", flush=True)
        return sched


def put_prompts(ctx: Any, pids: list[int]) -> None:
    from asyncflow_hpc import staleness
    from asyncflow_hpc.store import RowMeta

    eta = ctx.cfg.workflow.eta
    meta = [RowMeta(index=p, group=p, version=staleness.required_version(p, eta, ctx.P)) for p in pids]
    ctx.prompts.put({"prompt_id": np.asarray(pids, dtype=np.int64)}, meta)


def restore_rows(ctx: Any, rows: list) -> None:
    """Put rows back, one prompt group per put (as a rollout rank does); rewards again via reward ranks if any."""
    from asyncflow_hpc.topology.roles import Role
    from asyncflow_hpc.workflow.rows import rows_to_store

    reward_inline = not ctx.comms.layout.ranks(Role.REWARD)
    groups: dict[int, list] = {}
    for r in rows:
        groups.setdefault(int(r.prompt_id), []).append(r)
    for pid in groups:
        cols, meta = rows_to_store(groups[pid], reward_inline, ctx.n, ctx.cfg.algorithm)
        ctx.samples.put(cols, meta)


def drain(ctx: Any) -> list:
    """Stopping checkpoint: no new prompts start, every group in generation lands, take all rows out."""
    from asyncflow_hpc.store import EndOfStream
    from asyncflow_hpc.workflow.rows import rows_from_batch, train_columns

    try:
        while ctx.prompts.try_get("rollout", ["prompt_id"], 1, policy="fifo") is not None:
            pass  # claimed here = never started: they stay `pending` and run after the resume
    except EndOfStream:
        pass
    ctx.prompts.mark_done()
    rows: list = []
    while True:
        try:
            b = ctx.samples.get("train", train_columns(ctx.cfg, ctx.comms.layout), ctx.P * ctx.n, policy="fifo")
        except EndOfStream:
            return rows
        rows.extend(rows_from_batch(b, ctx.n))


def snapshot(ctx: Any) -> list:
    """Periodic checkpoint: a copy of the rows the train task has not consumed (nothing is claimed)."""
    from asyncflow_hpc.workflow.rows import rows_from_batch, train_columns

    return rows_from_batch(ctx.samples.peek("train", train_columns(ctx.cfg, ctx.comms.layout)), ctx.n)


def checkpoint_step(ctx: Any, trainer: Any, sched: Schedule, done: int, history: list, fed: int) -> bool:
    """Trainer ranks after step done-1: agree on stop (leader decides), leader writes. True = leave the loop."""
    lay, ck = ctx.comms.layout, ctx.ckpt
    lead = ctx.rank == lay.trainer_leader
    stop = ck.stop_requested(done) if lead else False
    if len(lay.trainer_ranks) > 1:
        stop = ctx.comms.role_comm.bcast(stop, root=0)
    why = ck.due(done, stop=stop)
    if why is None:
        return False
    shards = ck.write_shards(done, trainer)  # every trainer rank, before the leader drains the store
    if lead:
        sched.fed = fed
        rows = drain(ctx) if why == "stop" else snapshot(ctx)
        in_rows = {int(r.prompt_id) for r in rows}
        pending = sorted(set(range(sched.fed)) - sched.done_groups - in_rows)
        extra = {"fed": sched.fed, "consumed": to_ranges(sched.done_groups), "pending": pending,
                 "total_prompts": ctx.total_prompts}
        ck.save(done, why, trainer=trainer, tokenizer=ctx.task.tokenizer, history=history, extra=extra, rows=rows,
                shards=shards)
    if why == "stop":
        ck.stopped = True
        if lead:
            print(f"asyncflow-hpc: stopped after step {done} ({ck.flag.reason or 'checkpoint.stop_after_steps'}); "
                  f"continue with resume=auto", flush=True)
        return True
    return False
