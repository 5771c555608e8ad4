"""Stages both workflows (sync and async) and trace replay share: warm-up, evaluation, progress, save."""

from __future__ import annotations

from typing import Any

from asyncflow_hpc.engines.batching import split_even
from asyncflow_hpc.engines.factory import trainers_evaluate
from asyncflow_hpc.workflow import common
from asyncflow_hpc.trace.schema import SpanName
from asyncflow_hpc.workflow.metrics import span


def eval_share(examples: list, layout: Any, rank: int, trainers: bool = True) -> list:
    """This rank's part of the held-out set: split over the ranks that hold the policy and own an engine
    (rollout ranks; trainer ranks too when `trainers`, see trainers_evaluate). Dedicated store, reward and
    reference ranks evaluate nothing: their weights stay the initial ones, so the end-of-run accuracy would
    count a share of answers from the untrained policy."""
    from asyncflow_hpc.topology.roles import Role

    def holds(r: int) -> bool:
        return layout.has(r, Role.ROLLOUT) or (trainers and layout.has(r, Role.TRAINER))

    holders = [r for r in range(layout.world_size) if holds(r)]
    return split_even(examples, len(holders))[holders.index(rank)] if rank in holders else []


def evaluate(cfg: Any, comms: Any, engine: Any, task: common.Task, params: Any) -> dict[str, float]:
    """Held-out accuracy and mean reward over data.eval_size prompts, split over the policy ranks (collective
    over the world)."""
    examples = task.test[:cfg.data.eval_size]
    mine = eval_share(list(examples), comms.layout, comms.rank, trainers_evaluate(cfg))
    total, correct, count = common.evaluate_local(engine, task, mine, params) if mine else (0.0, 0, 0)
    parts = comms.world.allgather((total, correct, count))
    total, correct, count = (sum(p[i] for p in parts) for i in range(3))
    return {"accuracy": correct / max(count, 1), "mean_reward": total / max(count, 1), "count": count}


def sft_warmup(cfg: Any, trainer: Any, task: common.Task, recorder: Any = None, *, lead: bool = False) -> None:
    """The supervised warm-up before RL (collective over the trainer group); `lead` prints the result."""
    steps = cfg.trainer.sft_warmup_steps
    if not steps:
        return
    with span(recorder, SpanName.SFT_WARMUP, rows=steps * cfg.trainer.sft_batch):
        for s in range(steps):
            loss = trainer.sft_step(common.sft_pairs(task, s, cfg.trainer.sft_batch, cfg.run.seed,
                                                     cfg.trainer.sft_targets))
    if lead:
        print(f"supervised warm-up: {steps} steps on {cfg.trainer.sft_targets} targets, final loss {loss:.3f}",
              flush=True)


def progress_bar(cfg: Any, lead: bool, start: int = 0) -> Any:
    """tqdm bar on the leading rank (None elsewhere)."""
    if not lead:
        return None
    from tqdm import tqdm

    return tqdm(total=cfg.workflow.steps, initial=start, desc=f"{cfg.algorithm.name} {cfg.workflow.mode}",
                unit="step", dynamic_ncols=True, mininterval=0.5)


def save_policy(cfg: Any, task: common.Task, trainer: Any, *, lead: bool) -> None:
    """The final policy as a Hugging Face directory (model.save_path), written by the leading rank. Every
    trainer rank calls it: a sharded trainer gathers the full weights onto the leader first."""
    if not cfg.model.save_path:
        return
    from asyncflow_hpc.engines.fsdp_trainer import is_sharded

    path = cfg.model.save_path.replace("{run_dir}", cfg.run.resolved_dir)
    if is_sharded(trainer):
        from asyncflow_hpc.checkpoint.sharded import export_hf

        export_hf(trainer, path, task.tokenizer, bucket_mb=cfg.weights.bucket_mb)
    elif lead:
        from asyncflow_hpc.models.hf import save_pretrained

        save_pretrained(task.model, task.tokenizer, path)
    if lead:
        print(f"saved the final policy to {path}", flush=True)
