"""The AsyncFlow workflow: trainer and rollout groups stream through the store; deferred weight update.

    mpiexec -n 4 python -m asyncflow_hpc.main configs/default.yaml workflow.mode=async workflow.eta=1

Data path (one way):
  trainer leader --prompt ids--> prompt store --(rollout task, load-balanced pulls)--> rollout ranks
  rollout ranks --rows (version-stamped)--> sample store [--(reward task)--> reward ranks --reward column-->]
                                                         [--(reference task)--> reference ranks --ref_logprobs-->]
  sample store --(train task: version_bounded + whole GRPO groups)--> trainer leader --bcast--> trainer ranks
  trainer leader --weights v+1, bucketed, background--> rollout ranks: staged, swapped at a generation boundary

Staleness (asyncflow_hpc/staleness.py): the trainer leader feeds prompt ids only up to
admission_quota(v, eta, P); a rollout rank starts prompt p only with weights >= required_version(p),
waiting for them if it must; the train task takes rows with v - version <= eta. With eta = 0 this is
the synchronous schedule exactly (same rows, same seeds, same losses).

What the two stores hold (schemas, the columns each task waits for, rows in and out): rows.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from asyncflow_hpc import staleness
from asyncflow_hpc.topology.comms import sleeping_barrier
from asyncflow_hpc.topology.roles import Role
from asyncflow_hpc.workflow import common
from asyncflow_hpc.workflow.metrics import RoleClock, algo_postfix, record_rows, record_step, span
from asyncflow_hpc.workflow.rows import (ADV_COLUMN, REF_COLUMN, group_advantages_stored, open_stores,
                                         rows_from_batch, rows_to_store, train_columns)

# The trainer leader waits for a batch in slices this long; between slices it feeds a replacement
# prompt for each group the store discarded as too stale. A replacement fed late idles the rollout
# ranks and then the trainer (a 1 s slice cost up to 2.6 s at the end of an 8-rank bench run), and
# each slice costs only one control-plane round trip.
BATCH_WAIT_SLICE_S = 0.05

@dataclass
class Ctx:
    """What every loop of this rank needs."""

    cfg: Any
    comms: Any
    task: common.Task
    prompts: Any  # prompt store
    samples: Any  # sample store
    recorder: Any
    P: int  # prompts per step
    n: int  # responses per prompt
    clock: RoleClock = field(default_factory=RoleClock)
    ckpt: Any = None  # checkpoint.run.Checkpointer (None: no checkpoints)
    zero_signal_dropped: int = 0  # prompt groups dynamic sampling dropped (each replaced by a new prompt)

    @property
    def rank(self) -> int:
        return self.comms.rank

    @property
    def total_prompts(self) -> int:
        return self.cfg.workflow.steps * self.P


# ---------------------------------------------------------------------------------------------
# rollout ranks
# ---------------------------------------------------------------------------------------------
def rollout_loop(ctx: Ctx, engine: Any, receiver: Any, params: Any) -> dict:
    """Pull prompt ids, generate with the newest admissible weights, put version-stamped rows."""
    from asyncflow_hpc.store import EndOfStream
    from asyncflow_hpc.weights import SwapGate

    cfg, lay = ctx.cfg, ctx.comms.layout
    insts = lay.rollout_instances()
    me = next(i for i, inst in enumerate(insts) if ctx.rank in inst)
    gate = SwapGate(instance=me, n_instances=len(insts), policy=cfg.weights.swap_policy,
                    groups=cfg.weights.stagger_groups)
    reward_inline = not lay.ranks(Role.REWARD)
    produced = 0
    while True:
        with ctx.clock.idle("wait_prompt"), span(ctx.recorder, "prompt_wait"):
            try:
                got = ctx.prompts.get("rollout", ["prompt_id"], 1, policy="fifo")
            except EndOfStream:
                break
        pid = int(got["prompt_id"][0])
        need = int(got.version[0])  # the weights version the trainer leader admitted this prompt at
        _maybe_swap(ctx, engine, receiver, gate, need)
        with ctx.clock.busy("generate"), span(ctx.recorder, "generate", step=pid // ctx.P,
                                                 version=engine.version) as sp:
            rows = common.generate_groups(engine, ctx.task, [pid], run_seed=cfg.run.seed, step=pid // ctx.P,
                                          n=ctx.n, params=params, version=engine.version)
            sp.set(rows=len(rows), tokens=sum(len(r.response_ids) for r in rows))
        cols, meta = rows_to_store(rows, reward_inline, ctx.n, cfg.algorithm)
        with ctx.clock.idle("store_put"), span(ctx.recorder, "store_put", rows=len(rows)):
            ctx.samples.put(cols, meta)
        produced += len(rows)
        ctx.clock.count("tokens", sum(len(r.response_ids) for r in rows))
    ctx.samples.mark_done()
    return {"rows_produced": produced}


def _maybe_swap(ctx: Ctx, engine: Any, receiver: Any, gate: Any, need: int) -> None:
    """Generation boundary: swap to a staged version if the gate says so; wait if weights are too old."""
    must = engine.version < need
    if gate.boundary(receiver.poll(), must_swap=must):
        with ctx.clock.exposed("swap"), span(ctx.recorder, "weight_swap", version=receiver.poll() or -1):
            receiver.swap(engine.load_weights)
    if engine.version < need:
        with ctx.clock.exposed("wait_weights"), span(ctx.recorder, "weight_wait", version=need):
            receiver.wait_staged(need)
            receiver.swap(engine.load_weights)


def _consume_groups(ctx: Ctx, task: str, score: Any) -> int:
    """A stage rank's loop: take each whole prompt group as soon as its responses are stored, add the
    columns `score(batch)` returns; ends at the sample store's end of stream. Returns rows handled."""
    from asyncflow_hpc.store import EndOfStream

    done = 0
    while True:
        with ctx.clock.idle("wait_rows"):
            try:
                b = ctx.samples.get(task, ["prompt_ids", "response_ids"], ctx.n, policy="grpo_group",
                                    group_size=ctx.n)
            except EndOfStream:
                return done
        with ctx.clock.busy(task), span(ctx.recorder, task, rows=len(b)):
            ctx.samples.put_columns(b.row_ids, score(b))
        done += len(b)
        ctx.clock.count(f"{task}_rows", len(b))


def reference_loop(ctx: Ctx, policy: Any) -> dict:
    """A reference rank: log-probs of each group's responses under the frozen initial policy, as soon as
    the rollout stored them (the trainer then holds no reference copy and never computes them)."""
    from asyncflow_hpc.engines.base import Row

    def score(b) -> dict:
        rows = []
        for i in range(len(b)):
            resp = b["response_ids"][i].tolist()
            rows.append(Row(prompt_id=int(b.group[i]), sample_index=i, prompt_ids=b["prompt_ids"][i].tolist(),
                            response_ids=resp, behav_logprobs=[0.0] * len(resp)))  # unused by log_probs
        return {REF_COLUMN: [np.asarray(lp, dtype=np.float32) for lp in policy.log_probs(rows)]}

    return {"rows_referenced": _consume_groups(ctx, "reference", score)}


def reward_loop(ctx: Ctx) -> dict:
    """A reward rank: score rows as soon as their responses are in, add the reward column."""

    def score(b) -> dict:
        rewards = []
        for i in range(len(b)):
            pid = int(b.group[i])
            ex = ctx.task.train[common.example_index(ctx.cfg.run.seed, pid, len(ctx.task.train))]
            resp = ctx.task.tokenizer.decode(b["response_ids"][i].tolist())
            rewards.append(ctx.task.reward_fn(ctx.task.prompt_text(ex), resp, ex.reference))
        out = {"reward": np.asarray(rewards, dtype=np.float32)}
        if group_advantages_stored(ctx.cfg.algorithm):  # the whole group is here: its advantages too
            out[ADV_COLUMN] = common.group_advantages(out["reward"], ctx.cfg.algorithm)
        return out

    return {"rows_scored": _consume_groups(ctx, "reward", score)}


# ---------------------------------------------------------------------------------------------
# trainer ranks
# ---------------------------------------------------------------------------------------------
def feed_prompts(ctx: Ctx, fed: int, version: int) -> int:
    """Trainer leader: make prompt ids available up to the admission quota of `version`."""
    from asyncflow_hpc.store import RowMeta

    # A group that still became too stale (a long tail overtaken by later groups) is discarded by
    # the store, counted, and replaced by a new prompt, so every step still gets a full batch; so is a
    # group dropped by dynamic sampling (all rewards equal).
    replaced = ctx.samples.stats()["tasks"]["train"]["discarded_stale"] // ctx.n + ctx.zero_signal_dropped
    target = min(staleness.admission_quota(version, ctx.cfg.workflow.eta, ctx.P), ctx.total_prompts) + replaced
    if target > fed:
        pids = np.arange(fed, target, dtype=np.int64)
        # The weights a rollout rank needs for prompt p: the schedule's required_version(p), never newer than
        # the trainer's current version (a replacement fed past the quota must be generable now, not after
        # the step that waits for it).
        meta = [RowMeta(index=int(p), group=int(p),
                        version=min(staleness.required_version(int(p), ctx.cfg.workflow.eta, ctx.P), version))
                for p in pids]
        ctx.prompts.put({"prompt_id": pids}, meta)
    return max(fed, target)  # the feed is closed (mark_done) when the trainer has finished


def next_batch(ctx: Ctx, version: int, fed: int) -> tuple[list, int]:
    """Trainer leader: the step's rows (whole groups, v - version <= eta), broadcast to the trainer group.

    Waits in short slices: a group discarded as too stale while we wait is replaced by a new prompt
    between slices, otherwise the batch could never fill. With dynamic sampling, groups whose rewards are all
    equal are dropped and more groups drawn (replacement prompts fed) until the batch is full. Returns the rows
    and the new feed position."""
    lay = ctx.comms.layout
    rows = None
    if ctx.rank == lay.trainer_leader:
        rows, want = [], ctx.P
        for _ in range(ctx.cfg.algorithm.dynamic_sampling_max_rounds if ctx.cfg.algorithm.dynamic_sampling else 1):
            b, fed = _get_groups(ctx, version, fed, want)
            got = rows_from_batch(b, ctx.n)
            got = _drop_zero_signal(ctx, got)
            rows += got
            want -= len(got) // ctx.n
            if not want:
                break
            fed = feed_prompts(ctx, fed, version)  # replacements for the dropped groups
        else:
            from asyncflow_hpc.errors import RankError

            raise RankError(f"trainer step {version}: {ctx.P - want} of {ctx.P} prompt groups had different "
                            f"rewards after algorithm.dynamic_sampling_max_rounds="
                            f"{ctx.cfg.algorithm.dynamic_sampling_max_rounds} batches ({ctx.zero_signal_dropped} "
                            f"groups with equal rewards dropped so far): the task is too easy or too hard for "
                            f"the policy", rank=ctx.rank, role="trainer")
    if len(lay.trainer_ranks) > 1:  # the other trainer ranks sleep while the leader waits for rows
        with ctx.clock.idle("wait_batch" if rows is None else "batch_bcast"):
            sleeping_barrier(ctx.comms.role_comm, ctx.cfg.store.timeout_s, rank=ctx.rank, role="trainer",
                             what=f"the trainer leader's batch of step {version} (store.timeout_s)")
            rows = ctx.comms.role_comm.bcast(rows, root=0)
    return rows, fed


def _get_groups(ctx: Ctx, version: int, fed: int, groups: int) -> tuple[Any, int]:
    """Trainer leader: `groups` whole prompt groups with v - version <= eta, waiting in short slices (a group
    discarded as too stale meanwhile is replaced by a new prompt between slices, else the batch could never
    fill). Returns the batch and the new feed position."""
    from asyncflow_hpc.errors import WaitTimeout

    deadline = time.monotonic() + ctx.cfg.store.timeout_s
    with ctx.clock.idle("wait_batch"), span(ctx.recorder, "batch_wait", step=version):
        while True:
            left = deadline - time.monotonic()
            try:
                b = ctx.samples.get("train", train_columns(ctx.cfg, ctx.comms.layout), groups * ctx.n,
                                    policy="version_bounded", version=version, eta=ctx.cfg.workflow.eta,
                                    group_size=ctx.n, then="asyncflow_hpc.workflow.policies:oldest_version_groups",
                                    timeout=max(0.01, min(BATCH_WAIT_SLICE_S, left)))
                break
            except WaitTimeout:
                if left <= BATCH_WAIT_SLICE_S:
                    raise
                fed = feed_prompts(ctx, fed, version)
    ctx.clock.count("stale_discarded", int(getattr(b, "stale", 0) or 0))
    return b, fed


def _drop_zero_signal(ctx: Ctx, rows: list) -> list:
    """Dynamic sampling: the rows of the groups whose rewards differ. The dropped rows were consumed by the
    train task: counted (zero_signal_dropped in the clock, the trace and the step metrics), never silently lost."""
    if not ctx.cfg.algorithm.dynamic_sampling:
        return rows
    from asyncflow_hpc.algorithms.advantages import zero_signal_groups

    flat = zero_signal_groups([r.reward for r in rows], [r.prompt_id for r in rows])
    if flat:
        ctx.zero_signal_dropped += len(flat)
        ctx.clock.count("zero_signal_dropped", len(flat) * ctx.n)
        if ctx.recorder is not None:
            ctx.recorder.counter("zero_signal_dropped", float(ctx.zero_signal_dropped))
    return [r for r in rows if r.prompt_id not in flat]


def trainer_loop(ctx: Ctx, trainer: Any, sender: Any, bar: Any, start: int = 0) -> list[dict]:
    """Consume each step's batch, train, and send the new weights in the background."""
    from asyncflow_hpc.checkpoint import schedule as rs
    from asyncflow_hpc.engines.fsdp_trainer import send_weights

    cfg, lay = ctx.cfg, ctx.comms.layout
    lead = ctx.rank == lay.trainer_leader
    sched = rs.Schedule.restore(ctx) if ctx.ckpt is not None and ctx.ckpt.resuming else rs.Schedule()
    history = ctx.ckpt.history() if ctx.ckpt is not None and ctx.ckpt.resuming else []
    fed = sched.fed
    t_run = time.perf_counter()
    for v in range(start, cfg.workflow.steps):
        if lead:
            fed = feed_prompts(ctx, fed, v)
        rows, fed = next_batch(ctx, v, fed)
        sched.consumed(rows, fed)
        stale = [v - r.version for r in rows]
        if any(not staleness.is_fresh(v, r.version, cfg.workflow.eta) for r in rows):
            raise RuntimeError(f"trainer step {v} got a row outside the staleness bound eta={cfg.workflow.eta}: "
                               f"staleness {max(stale)}")  # the store policy must make this impossible
        if not group_advantages_stored(cfg.algorithm):  # GRPO rows carry theirs from the reward stage
            common.assign_advantages(rows, cfg.algorithm)
        tokens = sum(len(r.prompt_ids) + len(r.response_ids) for r in rows)
        with ctx.clock.busy("train"), span(ctx.recorder, "train_step", step=v, rows=len(rows), tokens=tokens):
            metrics = trainer.train_step(rows)
        with ctx.clock.exposed("send_wait"), span(ctx.recorder, "weight_send", version=v + 1):
            # Returns once packed; it only waits if the previous version is still on the wire. Every
            # trainer rank: a sharded trainer gathers the full tensors onto the leader bucket by bucket.
            send_weights(trainer, sender, v + 1, cfg.weights.bucket_mb)
        if lead:
            record_rows(ctx.recorder, rows, v, cfg.run.seed, ctx.P, ctx.n)
        metrics.update(step=float(v), reward_mean=float(np.mean([r.reward for r in rows])),
                       response_len=float(np.mean([len(r.response_ids) for r in rows])),
                       staleness_mean=float(np.mean(stale)), staleness_max=float(max(stale)))
        if cfg.algorithm.dynamic_sampling:
            metrics["zero_signal_dropped"] = float(ctx.zero_signal_dropped)  # groups, since the start
        ctx.clock.count("rows", len(rows))
        ctx.clock.count("train_tokens", sum(len(r.response_ids) for r in rows))
        for s in stale:
            ctx.clock.count(f"staleness_{s}", 1)
        history.append(metrics)
        if lead:
            record_step(ctx.recorder, v, metrics)
            if ctx.recorder is not None:
                ctx.recorder.counter("store_occupancy", float(ctx.samples.stats()["rows_live"]))
        if bar is not None:
            el = time.perf_counter() - t_run
            bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", loss=f"{metrics['loss']:+.4f}",
                            stale=f"{metrics['staleness_mean']:.2f}",
                            sps=f"{ctx.clock.counts.get('rows', 0) / max(el, 1e-9):.1f}", **algo_postfix(metrics))
            bar.update(1)
        if ctx.ckpt is not None and rs.checkpoint_step(ctx, trainer, sched, v + 1, history, fed):
            break
    return history


# ---------------------------------------------------------------------------------------------
# the whole job on one rank
# ---------------------------------------------------------------------------------------------
def run_async(cfg: Any, comms: Any, recorder: Any = None, ckpt: Any = None) -> dict:
    import torch

    from asyncflow_hpc.engines.factory import make_rollout, make_trainer, maybe_emulate, owns_engine, sampling_params
    from asyncflow_hpc.workflow.metrics import print_eval
    from asyncflow_hpc.workflow.stages import evaluate, progress_bar, save_policy, sft_warmup

    torch.set_num_threads(cfg.device.threads_per_rank)
    t0 = time.perf_counter()
    lay, rank = comms.layout, comms.rank
    # A rank whose engine loads the weights itself (vLLM) needs only the model's layout, not a torch copy.
    task = common.build_task(cfg, comms.device.torch_device,
                             weights=lay.has(rank, Role.TRAINER) or lay.has(rank, Role.REFERENCE)
                             or cfg.rollout.engine == "torch")
    if comms.rank == 0 and task.skipped_long:
        print(f"data: skipped {task.skipped_long} training prompts longer than data.max_prompt_tokens="
              f"{cfg.data.max_prompt_tokens} tokens ({len(task.train)} kept)", flush=True)
    ctx = Ctx(cfg=cfg, comms=comms, task=task, prompts=None, samples=None, recorder=recorder,
              P=cfg.data.prompts_per_step, n=cfg.rollout.n)
    ctx.prompts, ctx.samples = open_stores(cfg, comms)
    ctx.ckpt = ckpt
    resumed = ckpt is not None and ckpt.resuming
    start = ckpt.start if resumed else 0
    is_trainer, is_rollout = lay.has(rank, Role.TRAINER), lay.has(rank, Role.ROLLOUT)
    reference = _reference_policy(cfg, comms, task)  # before any training touches task.model
    trainer = sender = receiver = None
    if is_trainer:
        trainer = make_trainer(cfg, task.model, pad_id=task.tokenizer.pad_id, group=comms.trainer_group,
                               device=comms.device.torch_device,
                               reference=False if lay.ranks(Role.REFERENCE) else None)
        trainer.broadcast_parameters()
        if resumed:  # weights, optimizer, version and RNG of the checkpoint (every trainer rank reads it)
            from asyncflow_hpc.checkpoint.state import load_into

            load_into(ckpt.path, trainer)
        elif cfg.trainer.sft_warmup_steps:
            sft_warmup(cfg, trainer, task, recorder, lead=rank == lay.trainer_leader)
    engine = (make_rollout(cfg, task.model, comms.device.torch_device, seed=cfg.run.seed)
              if owns_engine(cfg, lay, rank) else None)
    engine, trainer = maybe_emulate(cfg, engine, trainer, dp=lay.trainer_dp)
    sender, receiver = _weight_endpoints(cfg, comms, task.model, trainer)
    # Version `start` (0 after any warm-up, or the checkpoint's) reaches every rollout rank first.
    if is_trainer:
        from asyncflow_hpc.engines.fsdp_trainer import send_weights

        send_weights(trainer, sender, start, cfg.weights.bucket_mb, block=True)
    if receiver is not None:
        receiver.start()
        receiver.wait_staged(start)
        receiver.swap(engine.load_weights)
    params = sampling_params(cfg.rollout, task.tokenizer.stop_ids)
    greedy = sampling_params(cfg.rollout, task.tokenizer.stop_ids, greedy=True)
    out: dict[str, Any] = {}
    if cfg.data.eval_size:
        out["eval_start"] = evaluate(cfg, comms, engine, task, greedy)
        if rank == 0:
            print_eval("start", out["eval_start"])
    comms.world.Barrier()
    t_loop = time.perf_counter()
    if is_trainer:
        bar = progress_bar(cfg, rank == lay.trainer_leader, start)
        out["history"] = trainer_loop(ctx, trainer, sender, bar, start)
        if rank == lay.trainer_leader:
            ctx.prompts.mark_done()  # rollout ranks see EndOfStream once they drained the prompt queue
        if bar is not None:
            bar.close()
        out["version"] = trainer.version
    elif is_rollout:
        out.update(rollout_loop(ctx, engine, receiver, params))
    elif lay.has(rank, Role.REWARD):
        out.update(reward_loop(ctx))
    elif lay.has(rank, Role.REFERENCE):
        out.update(reference_loop(ctx, reference))
    elif lay.has(rank, Role.STORE):
        pass  # the sample store's controller thread on this rank answers until every rank has closed it
    loop_s = time.perf_counter() - t_loop
    ctx.clock.note_overrun(engine if is_rollout else None, trainer if is_trainer else None)
    _final_weights(cfg, sender, receiver, engine, trainer)
    # Every rank learns whether the run stopped early on a checkpoint (then no final evaluation/save).
    stopped = bool(comms.world.bcast(bool(ckpt is not None and ckpt.stopped), root=lay.trainer_leader))
    out["clock"] = ctx.clock.summary(loop_s)
    out["store"] = ctx.samples.stats() if rank == lay.trainer_leader else None
    ctx.samples.close()
    ctx.prompts.close()
    if cfg.data.eval_size and not stopped:
        out["eval_end"] = evaluate(cfg, comms, engine, task, greedy)
        if rank == 0:
            print_eval("end", out["eval_end"])
    lead = lay.trainer_leader
    out["per_rank"] = comms.world.gather((rank, str(lay.role_of(rank)), out["clock"]), root=lead)
    if rank == lead:
        from asyncflow_hpc.workflow.metrics import aggregate

        out["summary"] = aggregate(out["per_rank"], loop_s)
        report_async(cfg, out, loop_s)
    if is_trainer and not stopped:
        save_policy(cfg, task, trainer, lead=rank == lay.trainer_leader)
    if hasattr(engine, "close"):
        engine.close()  # a vLLM engine tears down its own process group before ours goes
    out["wall_s"] = time.perf_counter() - t0
    out["loop_s"] = loop_s
    return out


def _reference_policy(cfg: Any, comms: Any, task: Any) -> Any:
    """On a reference rank: the frozen initial policy, checked against the trainer leader's initial weights
    (every rank builds the model from the same config; a mismatch would silently bias the KL term).
    Collective over the world when reference ranks exist; None elsewhere."""
    from asyncflow_hpc.weights.checksum import state_fingerprint

    lay, rank = comms.layout, comms.rank
    if not lay.ranks(Role.REFERENCE):
        return None
    mine = state_fingerprint(task.model.state_dict().items()) if (
        rank == lay.trainer_leader or lay.has(rank, Role.REFERENCE)) else None
    leader = comms.world.bcast(mine, root=lay.trainer_leader)
    if not lay.has(rank, Role.REFERENCE):
        return None
    if mine != leader:
        from asyncflow_hpc.errors import ConfigError

        raise ConfigError(f"rank {rank} (reference): its initial policy (fingerprint {mine}) differs from the "
                          f"trainer leader's (rank {lay.trainer_leader}, {leader}); the reference model must be "
                          f"built from the same model.path / model settings and run.seed on every rank")
    from asyncflow_hpc.engines.torch_trainer import ReferencePolicy

    return ReferencePolicy(task.model, micro_batch_rows=cfg.trainer.micro_batch_rows,
                           temperature=cfg.rollout.temperature, pad_id=task.tokenizer.pad_id,
                           device=comms.device.torch_device)


def _weight_endpoints(cfg: Any, comms: Any, model: Any, trainer: Any) -> tuple[Any, Any]:
    """(sender on the trainer leader, receiver on rollout ranks); both plan from the full tensors' layout (a
    sharded trainer's from its broadcast_layout: full shapes, no communication)."""
    from asyncflow_hpc.weights import WeightReceiver, WeightSender, plan_for

    lay, rank = comms.layout, comms.rank
    if comms.weight_group is None:
        return None, None
    from asyncflow_hpc.models.hf import broadcast_tensors

    layout = trainer.broadcast_layout() if hasattr(trainer, "broadcast_layout") else broadcast_tensors(model)
    plan = plan_for(layout, cfg.weights)
    dev = comms.device.torch_device
    if rank == lay.trainer_leader:
        return WeightSender(comms.weight_group, plan, src=rank, rank=rank, cfg=cfg.weights, comm_device=dev), None
    return None, WeightReceiver(comms.weight_group, plan, src=lay.trainer_leader, rank=rank, cfg=cfg.weights,
                                comm_device=dev)


def _final_weights(cfg: Any, sender: Any, receiver: Any, engine: Any, trainer: Any) -> None:
    """The last version reaches every rollout rank (for the final evaluation), then the sync closes."""
    if sender is not None:
        sender.close()  # waits for the last send (the last version trained), then tells receivers to stop
    if receiver is not None:
        # The thread ends by itself on the sender's STOP header, after staging the last version
        # (`workflow.steps`, or the step a checkpoint stopped at); stopping it earlier would leave
        # the trainer leader's STOP broadcast without this rank.
        deadline = time.monotonic() + cfg.weights.timeout_s
        while receiver.running and time.monotonic() < deadline:
            time.sleep(0.01)
        if receiver.poll() is not None:
            receiver.swap(engine.load_weights)
        receiver.close()


def report_async(cfg: Any, out: dict, loop_s: float) -> None:
    from asyncflow_hpc.workflow.metrics import format_role_table

    print(format_role_table(out["per_rank"], loop_s), flush=True)
