"""A run's checkpoint policy on one rank: what to resume from, when to write, and the stop decision.

    ck = Checkpointer(cfg, flag=StopFlag.install())   # resolves cfg.resume; the caller installs the USR2 handler
    start = ck.start                       # first step to run (0 when fresh)
    ... after step v (v + 1 steps done):
    why = ck.due(v + 1)                    # None | "periodic" | "end" | "stop" (local view)
    if why:
        shards = ck.write_shards(v + 1, trainer)    # EVERY trainer rank (a sharded trainer's pieces; else None)
        ck.save(v + 1, trainer, tokenizer, extra={...}, rows=rows, shards=shards)   # on the writing rank
    if why == "stop": leave the loop

Every rank resolves the same checkpoint (the run directory is shared); only the trainer leader writes the
checkpoint (a sharded trainer's ranks each write their own pieces first).
The stop decision must be agreed by the ranks that run in lock step (the workflows do that).
"""

from __future__ import annotations

import os
from typing import Any

from asyncflow_hpc.checkpoint.files import CheckpointError, read_meta, resolve_resume
from asyncflow_hpc.checkpoint.signals import StopFlag

# Settings a checkpoint must share with the run resuming it (else the schedule or the rows differ).
_MUST_MATCH = (("workflow.mode", "mode"), ("workflow.eta", "eta"), ("data.prompts_per_step", "prompts_per_step"),
               ("rollout.n", "n"), ("run.seed", "seed"))


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


class Checkpointer:
    def __init__(self, cfg: Any, *, verbose: bool = True, flag: StopFlag | None = None):
        """`flag`: the warning-signal flag the caller installed (workflow/driver.py, the one place that installs
        signal handlers in a rank); none = only checkpoint.stop_after_steps stops the run early."""
        self.cfg, self.ck = cfg, cfg.checkpoint
        self.root = self.ck.resolved_dir(cfg.run.resolved_dir)
        self.flag = flag if flag is not None else StopFlag()
        self.path = resolve_resume(cfg.resume, self.root, log=print if verbose else None)  # verified
        self.meta: dict[str, Any] = read_meta(self.path) if self.path else {}
        self.start = int(self.meta.get("step", 0))
        self.written: list[dict[str, Any]] = []
        self.stopped = False
        self.trace_segments: list[str] = list(self.meta.get("trace_segments", []))
        if self.path:
            self._check_compatible()

    def _check_compatible(self) -> None:
        from asyncflow_hpc.checkpoint.files import trainer_state_mismatch

        why = trainer_state_mismatch(self.path, self.cfg.trainer.engine)
        if why:
            raise CheckpointError(why)
        for key, name in _MUST_MATCH:
            if name in self.meta and self.meta[name] != _get(self.cfg, key):
                raise CheckpointError(f"{self.path}: written with {key}={self.meta[name]!r}, this run has "
                                      f"{_get(self.cfg, key)!r}; resume with the same {key} (or resume='' to "
                                      f"start fresh)")
        if self.start > self.cfg.workflow.steps:
            raise CheckpointError(f"{self.path}: checkpoint is at step {self.start}, beyond workflow.steps="
                                  f"{self.cfg.workflow.steps}; raise workflow.steps to continue training")

    @property
    def resuming(self) -> bool:
        return self.path is not None

    def history(self) -> list[dict[str, Any]]:
        return list(self.meta.get("history", []))

    def stop_requested(self, done: int) -> bool:
        seg = self.ck.stop_after_steps
        return self.flag.requested() or bool(seg and done - self.start >= seg)

    def due(self, done: int, stop: bool | None = None) -> str | None:
        """Why a checkpoint is due after `done` steps (stop: the agreed stop decision, else this rank's)."""
        steps = self.cfg.workflow.steps
        stop = self.stop_requested(done) if stop is None else stop
        if stop and done < steps:
            return "stop"
        if done == steps and self.ck.at_end:
            return "end"
        if self.ck.every_steps and done % self.ck.every_steps == 0:
            return "periodic"
        return None

    def base_meta(self) -> dict[str, Any]:
        return {"mode": self.cfg.workflow.mode, "eta": self.cfg.workflow.eta,
                "prompts_per_step": self.cfg.data.prompts_per_step, "n": self.cfg.rollout.n,
                "seed": self.cfg.run.seed, "run_name": self.cfg.run.name, "steps_planned": self.cfg.workflow.steps,
                "trace_segments": self.trace_segments, "resumed_from": self.path,
                "trainer_engine": self.cfg.trainer.engine}

    def write_shards(self, done: int, trainer: Any) -> str | None:
        """EVERY trainer rank, before save(): a sharded trainer's model + optimizer pieces (collective)."""
        from asyncflow_hpc.checkpoint.state import write_shards

        return write_shards(self.root, done, trainer)

    def save(self, done: int, why: str, *, trainer: Any, tokenizer: Any, history: list, extra: dict | None = None,
             rows: list | None = None, shards: str | None = None) -> str:
        from asyncflow_hpc.checkpoint.state import write_checkpoint

        meta = {**self.base_meta(), "history": history, "reason": why,
                "signal": self.flag.reason if why == "stop" else "", **(extra or {})}
        path, info = write_checkpoint(self.root, done, trainer=trainer, tokenizer=tokenizer, meta=meta, rows=rows,
                                      keep=self.ck.keep, shards=shards)
        self.written.append({"step": done, "path": path, "reason": why, **info})
        print(f"asyncflow-hpc: checkpoint ({why}) after step {done} -> {path} ({info['bytes'] / 1e6:.2f} MB, "
              f"{info['rows']} rows in flight, {info['seconds']:.2f} s)", flush=True)
        return path

    def summary(self) -> dict[str, Any]:
        return {"resumed_from": self.path, "start_step": self.start, "written": self.written,
                "stopped": self.stopped, "stop_reason": self.flag.reason, "trace_segments": self.trace_segments}


def already_complete(cfg: Any) -> bool:
    """resume=auto on a run whose result.json says every planned step is done (a requeue after the end)."""
    import json

    if cfg.resume != "auto":
        return False
    path = os.path.join(cfg.run.resolved_dir, "result.json")
    try:
        with open(path, encoding="utf-8") as fh:
            res = json.load(fh)
    except (OSError, ValueError):
        return False
    return int(res.get("completed_steps", -1)) >= cfg.workflow.steps and not res.get("stopped", False)
