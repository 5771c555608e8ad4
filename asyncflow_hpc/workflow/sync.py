"""The synchronous, colocated on-policy baseline: every rank generates its share, then all train.

    run_sync(cfg, comms)   # under: mpiexec -n 4 python -m asyncflow_hpc.main configs/default.yaml

Step v: the step's prompt groups are split contiguously over the ranks; each rank generates its
groups with policy v (seeds from (run seed, v, prompt id, sample index)) and scores them; rows
are all-gathered over MPI; advantages are computed on the global batch; every rank runs the same
data-parallel train step over comms.trainer_group. Held-out accuracy is measured (greedy) at the
start and at the end, and rank 0 prints both.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from asyncflow_hpc.engines.batching import split_even
from asyncflow_hpc.topology.comms import sleeping_barrier
from asyncflow_hpc.workflow import common
from asyncflow_hpc.trace.schema import SpanName
from asyncflow_hpc.workflow.metrics import RoleClock, algo_postfix, host_overrun_fraction, record_rows
from asyncflow_hpc.workflow.metrics import record_step
from asyncflow_hpc.workflow.metrics import span
from asyncflow_hpc.workflow.stages import evaluate, progress_bar


def run_sync(cfg: Any, comms: Any, recorder: Any = None, ckpt: Any = None) -> dict:
    import torch

    from asyncflow_hpc.workflow.session import Session

    torch.set_num_threads(cfg.device.threads_per_rank)
    lead = comms.rank == 0
    s = Session(cfg, comms, recorder, ckpt)
    trainer, rollout = _setup(s)
    out: dict[str, Any] = {"history": s.history()}
    s.evaluate("start", rollout, out)
    clock = RoleClock()
    comms.world.Barrier()
    t_loop = time.perf_counter()
    _loop(cfg, comms, trainer, rollout, s.task, recorder, ckpt, clock, out, start=s.start)
    out["loop_s"] = loop_s = time.perf_counter() - t_loop
    clock.note_overrun(rollout, trainer)
    per_rank = comms.world.gather(clock.summary(loop_s), root=0)
    if lead:
        out["summary"] = sync_summary(per_rank, loop_s, cfg.workflow.steps * cfg.data.prompts_per_step * cfg.rollout.n)
    s.finish(rollout, trainer, out, stopped=ckpt is not None and ckpt.stopped, lead=lead)
    out["version"] = trainer.version
    return out


def _setup(s: Any) -> tuple[Any, Any]:
    """Trainer (resumed or warmed up) and the colocated rollout engine holding the trainer's weights."""
    from asyncflow_hpc.engines.factory import make_rollout, make_trainer, maybe_emulate

    cfg, comms, task = s.cfg, s.comms, s.task
    device = comms.device.torch_device
    # A sharded trainer's model cannot run a forward on one rank alone: the colocated torch rollout engine
    # gets its own whole copy, loaded with the gathered weights after every step.
    own = cfg.trainer.engine == "fsdp" and cfg.rollout.engine == "torch"
    rollout_model = copy.deepcopy(task.model) if own else task.model
    trainer = make_trainer(cfg, task.model, pad_id=task.tokenizer.pad_id, group=comms.trainer_group, device=device)
    trainer.broadcast_parameters()
    trainer.recorder = s.recorder  # the replicated engine records its gradient all-reduce
    rollout = make_rollout(cfg, rollout_model, device, seed=cfg.run.seed)
    rollout, trainer = maybe_emulate(cfg, rollout, trainer, dp=comms.layout.trainer_dp)
    s.resume_or_warm_up(trainer, lead=comms.rank == 0)  # every rank reads the same checkpoint
    _sync_rollout_weights(cfg, trainer, rollout)
    return trainer, rollout


def _loop(cfg, comms, trainer, rollout, task, recorder, ckpt, clock, out: dict, *, start: int) -> None:
    """Steps start..workflow.steps-1 (or until a stopping checkpoint); history in out["history"]."""
    from asyncflow_hpc.engines.factory import sampling_params

    lead = comms.rank == 0
    params = sampling_params(cfg.rollout, task.tokenizer.stop_ids)
    greedy = sampling_params(cfg.rollout, task.tokenizer.stop_ids, greedy=True)
    bar = progress_bar(cfg, lead, start)
    for step in range(start, cfg.workflow.steps):
        metrics = _one_step(cfg, comms, trainer, rollout, task, params, step, recorder, clock)
        out["history"].append(metrics)
        if lead:
            record_step(recorder, step, metrics)
        if cfg.data.eval_size and cfg.data.eval_every and (step + 1) % cfg.data.eval_every == 0 \
                and step + 1 < cfg.workflow.steps:
            metrics["eval_accuracy"] = evaluate(cfg, comms, rollout, task, greedy)["accuracy"]
        if bar is not None:
            bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", loss=f"{metrics['loss']:+.4f}",
                            len=f"{metrics['response_len']:.1f}", **algo_postfix(metrics))
            bar.update(1)
        if ckpt is not None and _checkpoint_step(cfg, comms, ckpt, trainer, task, step + 1, out["history"]):
            break
    if bar is not None:
        bar.close()


def _checkpoint_step(cfg, comms, ckpt, trainer, task, done: int, history: list) -> bool:
    """Step boundary: the ranks agree on a stop (any rank got the warning signal); rank 0 writes. True = stop."""
    stop = comms.world.allreduce(int(ckpt.stop_requested(done))) > 0
    why = ckpt.due(done, stop=stop)
    if why is None:
        return False
    shards = ckpt.write_shards(done, trainer)  # every rank trains: a sharded trainer's pieces (collective)
    if comms.rank == 0:
        ckpt.save(done, why, trainer=trainer, tokenizer=task.tokenizer, history=history, shards=shards)
    if why == "stop":
        comms.world.Barrier()  # nobody leaves before the checkpoint is published
        ckpt.stopped = True
        if comms.rank == 0:
            print(f"asyncflow-hpc: stopped after step {done} ({ckpt.flag.reason or 'checkpoint.stop_after_steps'}); "
                  f"continue with resume=auto", flush=True)
        return True
    return False


def sync_summary(per_rank: list[dict], wall_s: float, rows: int) -> dict:
    """Job figures of the colocated baseline: every rank both generates and trains."""
    busy = sum(c["busy_s"] for c in per_rank) / max(sum(c["wall_s"] for c in per_rank), 1e-9)
    tokens = sum(c["counts"].get("tokens", 0) for c in per_rank)
    return {"wall_s": wall_s, "rows": rows, "samples_per_s": rows / wall_s if wall_s > 0 else 0.0,
            "tokens_per_s": tokens / wall_s if wall_s > 0 else 0.0, "busy_fraction": busy,
            "exposed_sync_fraction": 0.0, "staleness_histogram": {0: rows},
            "host_overrun_fraction": host_overrun_fraction(per_rank)}


def _one_step(cfg, comms, trainer, rollout, task, params, step: int, recorder, clock) -> dict[str, float]:
    pids = common.step_prompt_ids(step, cfg.data.prompts_per_step)
    mine = split_even(pids, comms.world.Get_size())[comms.rank]
    t = time.perf_counter()
    with clock.busy("generate"), span(recorder, SpanName.GENERATE, step=step,
                                      version=rollout.version) as sp:
        local = common.generate_groups(rollout, task, mine, run_seed=cfg.run.seed, step=step, n=cfg.rollout.n,
                                       params=params, version=rollout.version)
        sp.set(rows=len(local), tokens=sum(len(r.response_ids) for r in local))
    t_gen = time.perf_counter() - t
    record_rows(recorder, local, trainer.version, cfg.run.seed, cfg.data.prompts_per_step, cfg.rollout.n)
    clock.count("tokens", sum(len(r.response_ids) for r in local))
    with clock.idle("gather"), span(recorder, SpanName.GATHER_WAIT, step=step):
        sleeping_barrier(comms.world, cfg.device.dist_timeout_s, rank=comms.rank, role="trainer+rollout",
                         what=f"every rank's rows of step {step}, the slowest still generating (device.dist_timeout_s)")
        rows = [r for part in comms.world.allgather(local) for r in part]
    common.assign_advantages(rows, cfg.algorithm)
    t = time.perf_counter()
    tokens = sum(len(r.prompt_ids) + len(r.response_ids) for r in rows)
    with clock.busy("train"), span(recorder, SpanName.TRAIN_STEP, step=step, rows=len(rows), tokens=tokens):
        metrics = trainer.train_step(rows)
    _sync_rollout_weights(cfg, trainer, rollout)
    metrics.update(step=float(step), reward_mean=sum(r.reward for r in rows) / len(rows),
                   response_len=sum(len(r.response_ids) for r in rows) / len(rows),
                   gen_s=t_gen, train_s=time.perf_counter() - t)
    return metrics


def _sync_rollout_weights(cfg, trainer, rollout) -> None:
    """Colocated torch engines share a replicated trainer's model object; other engines get the weights loaded
    (a sharded trainer's gathered bucket by bucket on every rank: collective)."""
    from asyncflow_hpc.engines.fsdp_trainer import weights_everywhere

    if cfg.rollout.engine == "torch" and getattr(rollout, "model", None) is trainer.model:
        rollout.version = trainer.version
    else:
        rollout.load_weights(weights_everywhere(trainer, cfg.weights.bucket_mb), trainer.version)
