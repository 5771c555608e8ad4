"""The run session both workflows share (sync.py, async_flow.py), so that they cannot drift apart.

    s = Session(cfg, comms, recorder, ckpt)       # the task (data, tokenizer, model, reward), resume position
    s.evaluate("start", engine, out)              # held-out accuracy (every rank: collective), span, printed
    ... the mode's loop ...
    s.finish(engine, trainer, out, stopped=...)   # final evaluation, the policy saved, engines closed, wall time

Resume and warm-up happen where each mode builds its trainer (`Session.resume_or_warm_up`): a checkpoint's
weights, optimizer, version and RNG, or the supervised warm-up, never both.
"""

from __future__ import annotations

import time
from typing import Any

from asyncflow_hpc.trace.schema import SpanName
from asyncflow_hpc.workflow import common
from asyncflow_hpc.workflow.metrics import print_eval, span


class Session:
    def __init__(self, cfg: Any, comms: Any, recorder: Any = None, ckpt: Any = None, *, weights: bool = True):
        """`weights=False`: the model on the meta device (a rank whose engine loads the weights itself)."""
        from asyncflow_hpc.engines.factory import sampling_params

        self.t0 = time.perf_counter()
        self.cfg, self.comms, self.recorder, self.ckpt = cfg, comms, recorder, ckpt
        self.task = common.build_task(cfg, comms.device.torch_device, weights=weights)
        if comms.rank == 0 and self.task.skipped_long:
            print(f"data: skipped {self.task.skipped_long} training prompts longer than data.max_prompt_tokens="
                  f"{cfg.data.max_prompt_tokens} tokens ({len(self.task.train)} kept)", flush=True)
        self.greedy = sampling_params(cfg.rollout, self.task.tokenizer.stop_ids, greedy=True)
        self.resuming = ckpt is not None and ckpt.resuming
        self.start = ckpt.start if self.resuming else 0

    def history(self) -> list[dict]:
        """The checkpoint's step history when resuming (a resumed run's result.json lists every step)."""
        return self.ckpt.history() if self.resuming else []

    def resume_or_warm_up(self, trainer: Any, *, lead: bool) -> None:
        """Every trainer rank: the checkpoint's state, or the supervised warm-up of a fresh run."""
        if self.resuming:
            from asyncflow_hpc.checkpoint.state import load_into

            load_into(self.ckpt.path, trainer)
        elif self.cfg.trainer.sft_warmup_steps:
            from asyncflow_hpc.workflow.stages import sft_warmup

            sft_warmup(self.cfg, trainer, self.task, self.recorder, lead=lead)

    def evaluate(self, when: str, engine: Any, out: dict) -> None:
        """Held-out accuracy at "start" or "end" into out["eval_<when>"] (collective over the world)."""
        from asyncflow_hpc.workflow.stages import evaluate

        if not self.cfg.data.eval_size:
            return
        step = -1 if when == "start" else self.cfg.workflow.steps
        with span(self.recorder, SpanName.EVALUATE, step=step):
            out[f"eval_{when}"] = evaluate(self.cfg, self.comms, engine, self.task, self.greedy)
        if self.comms.rank == 0:
            print_eval(when, out[f"eval_{when}"])

    def finish(self, engine: Any, trainer: Any, out: dict, *, stopped: bool, lead: bool) -> None:
        """After the loop: the final evaluation and the saved policy (not after an early stop), engines closed."""
        from asyncflow_hpc.workflow.stages import save_policy

        if not stopped:
            self.evaluate("end", engine, out)
            if trainer is not None:  # every trainer rank: a sharded trainer gathers onto the leader
                save_policy(self.cfg, self.task, trainer, lead=lead)
        if hasattr(engine, "close"):
            engine.close()  # a vLLM engine tears down its own process group before ours goes
        out["wall_s"] = time.perf_counter() - self.t0
