"""The AsyncFlow workflow on one rank: build this rank's role from the job's stores and links, run it, finish.

    mpiexec -n 4 python -m asyncflow_hpc.main configs/default.yaml workflow.mode=async workflow.eta=1

Data path (one way):
  trainer leader --prompt ids--> prompt store --(rollout task, load-balanced pulls)--> rollout ranks
  rollout ranks --rows (version-stamped)--> sample store [--(reward task)--> reward ranks --reward column-->]
                                                         [--(reference task)--> reference ranks --ref_logprobs-->]
  sample store --(train task: version_bounded + whole GRPO groups)--> trainer leader --bcast--> trainer ranks
  trainer leader --weights v+1, bucketed, background--> rollout ranks: staged, swapped at a generation boundary

The roles themselves (and the staleness rules they keep) are in roles.py; what the two stores hold in rows.py.
With eta = 0 this is the synchronous schedule exactly (same rows, same seeds, same losses).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from asyncflow_hpc.topology.roles import Role
from asyncflow_hpc.workflow import common
from asyncflow_hpc.workflow.metrics import RoleClock
from asyncflow_hpc.workflow.roles import Stream, role_class


@dataclass
class Rank:
    """What this rank built before its role runs."""

    cfg: Any
    comms: Any
    task: common.Task
    stream: Stream
    prompts: Any = None
    samples: Any = None
    trainer: Any = None
    engine: Any = None
    sender: Any = None
    receiver: Any = None
    reference: Any = None
    recorder: Any = None
    ckpt: Any = None
    clock: RoleClock = field(default_factory=RoleClock)

    @property
    def role(self) -> Role:
        """The role whose loop this rank runs (a colocated rank's first)."""
        lay, r = self.comms.layout, self.comms.rank
        for role in (Role.TRAINER, Role.ROLLOUT, Role.REWARD, Role.REFERENCE, Role.STORE):
            if lay.has(r, role):
                return role
        return lay.role_of(r)


def run_async(cfg: Any, comms: Any, recorder: Any = None, ckpt: Any = None) -> dict:
    import torch

    from asyncflow_hpc.workflow.session import Session

    torch.set_num_threads(cfg.device.threads_per_rank)
    lay, rank = comms.layout, comms.rank
    # A rank whose engine loads the weights itself (vLLM) needs only the model's layout, not a torch copy.
    s = Session(cfg, comms, recorder, ckpt, weights=lay.has(rank, Role.TRAINER) or lay.has(rank, Role.REFERENCE)
                or cfg.rollout.engine == "torch")
    me = _setup(s)
    out: dict[str, Any] = {}
    s.evaluate("start", me.engine, out)
    comms.world.Barrier()
    t_loop = time.perf_counter()
    out.update(_run_role(me))
    out["loop_s"] = loop_s = time.perf_counter() - t_loop
    stopped = _finish(me, out, loop_s)
    s.finish(me.engine, me.trainer, out, stopped=stopped, lead=rank == lay.trainer_leader)
    return out


def _setup(s: Any) -> Rank:
    """Stores, engines and weight endpoints of this rank; version `start` reaches every rollout rank."""
    from asyncflow_hpc.engines.factory import make_rollout, make_trainer, maybe_emulate, owns_engine
    from asyncflow_hpc.engines.fsdp_trainer import send_weights
    from asyncflow_hpc.workflow.rows import open_stores

    cfg, comms, task = s.cfg, s.comms, s.task
    lay, rank = comms.layout, comms.rank
    me = Rank(cfg=cfg, comms=comms, task=task, recorder=s.recorder, ckpt=s.ckpt,
              stream=Stream.of(cfg.workflow, cfg.data, cfg.rollout, cfg.run, cfg.store))
    me.prompts, me.samples = open_stores(cfg, comms)
    me.reference = _reference_policy(cfg, comms, task)  # before any training touches task.model
    if lay.has(rank, Role.TRAINER):
        me.trainer = make_trainer(cfg, task.model, pad_id=task.tokenizer.pad_id, group=comms.trainer_group,
                                  device=comms.device.torch_device,
                                  reference=False if lay.ranks(Role.REFERENCE) else None)
        me.trainer.broadcast_parameters()
        me.trainer.recorder = s.recorder  # the replicated engine records its gradient all-reduce
        s.resume_or_warm_up(me.trainer, lead=rank == lay.trainer_leader)
    if owns_engine(cfg, lay, rank):
        me.engine = make_rollout(cfg, task.model, comms.device.torch_device, seed=cfg.run.seed)
    me.engine, me.trainer = maybe_emulate(cfg, me.engine, me.trainer, dp=lay.trainer_dp)
    me.sender, me.receiver = _weight_endpoints(cfg, comms, task.model, me.trainer)
    if me.trainer is not None:  # version `start` (0 after any warm-up, or the checkpoint's) goes out first
        send_weights(me.trainer, me.sender, s.start, cfg.weights.bucket_mb, block=True)
    if me.receiver is not None:
        me.receiver.start()
        me.receiver.wait_staged(s.start)
        me.receiver.swap(me.engine.load_weights)
    return me


def _run_role(me: Rank) -> dict:
    """Build this rank's role object from the ROLE_CLASSES table and run it."""
    cls, role = role_class(me.role), me.role
    if role is Role.TRAINER:
        return _run_trainer(me)
    if role is Role.ROLLOUT:
        return cls(**_rollout_kwargs(me)).run()
    if role is Role.REWARD:
        from asyncflow_hpc.workflow.roles import reward_score

        score = reward_score(me.task, me.cfg.run.seed, me.cfg.algorithm)
        return cls("reward", score, samples=me.samples, n=me.stream.n, clock=me.clock, recorder=me.recorder,
                   result_key="rows_scored").run()
    if role is Role.REFERENCE:
        from asyncflow_hpc.workflow.roles import reference_score

        return cls("reference", reference_score(me.reference), samples=me.samples, n=me.stream.n, clock=me.clock,
                   recorder=me.recorder, result_key="rows_referenced").run()
    return cls().run()


def _rollout_kwargs(me: Rank) -> dict:
    from asyncflow_hpc.engines.factory import sampling_params
    from asyncflow_hpc.weights import SwapGate

    cfg, lay = me.cfg, me.comms.layout
    insts = lay.rollout_instances()
    gate = SwapGate(instance=next(i for i, inst in enumerate(insts) if me.comms.rank in inst),
                    n_instances=len(insts), policy=cfg.weights.swap_policy, groups=cfg.weights.stagger_groups)
    return dict(stream=me.stream, algo=cfg.algorithm, task=me.task, engine=me.engine,
                params=sampling_params(cfg.rollout, me.task.tokenizer.stop_ids), prompts=me.prompts,
                samples=me.samples, weights=me.receiver, gate=gate, reward_inline=not lay.ranks(Role.REWARD),
                clock=me.clock, recorder=me.recorder)


def _run_trainer(me: Rank) -> dict:
    """The trainer leader (stores, schedule, checkpoint writes) or a follower (the leader's batch)."""
    from asyncflow_hpc.workflow.ports import MpiTrainerGroup, SoloTrainerGroup
    from asyncflow_hpc.workflow.roles import TrainerFollower, TrainerLeader
    from asyncflow_hpc.workflow.rows import train_columns
    from asyncflow_hpc.workflow.stages import progress_bar

    cfg, comms, lay = me.cfg, me.comms, me.comms.layout
    lead = comms.rank == lay.trainer_leader
    group = (MpiTrainerGroup(comms.role_comm, rank=comms.rank, timeout_s=cfg.store.timeout_s)
             if len(lay.trainer_ranks) > 1 else SoloTrainerGroup())
    resuming = me.ckpt is not None and me.ckpt.resuming
    start = me.ckpt.start if resuming else 0
    common_kw = dict(stream=me.stream, algo=cfg.algorithm, trainer=me.trainer, group=group, weights=me.sender,
                     bucket_mb=cfg.weights.bucket_mb, ckpt=me.ckpt, clock=me.clock, recorder=me.recorder,
                     history=me.ckpt.history() if resuming else [])
    if not lead:
        return {"history": TrainerFollower(**common_kw).run(start), "version": me.trainer.version}
    bar = progress_bar(cfg, True, start)
    role = TrainerLeader(prompts=me.prompts, samples=me.samples, train_columns=train_columns(cfg, lay),
                         tokenizer=me.task.tokenizer, reward_inline=not lay.ranks(Role.REWARD), bar=bar, **common_kw)
    history = role.run(start)
    if bar is not None:
        bar.close()
    return {"history": history, "version": me.trainer.version}


def _finish(me: Rank, out: dict, loop_s: float) -> bool:
    """The last weights, the stores closed and the per-rank figures. Returns whether the run stopped early on
    a checkpoint (then no final evaluation or save: Session.finish), as every rank learns it."""
    from asyncflow_hpc.workflow.metrics import aggregate

    cfg, comms, lay, rank = me.cfg, me.comms, me.comms.layout, me.comms.rank
    me.clock.note_overrun(me.engine if lay.has(rank, Role.ROLLOUT) else None, me.trainer)
    _final_weights(cfg, me.sender, me.receiver, me.engine, me.trainer)
    stopped = bool(comms.world.bcast(bool(me.ckpt is not None and me.ckpt.stopped), root=lay.trainer_leader))
    out["clock"] = me.clock.summary(loop_s)
    out["store"] = me.samples.stats() if rank == lay.trainer_leader else None
    me.samples.close()
    me.prompts.close()
    out["per_rank"] = comms.world.gather((rank, str(lay.role_of(rank)), out["clock"]), root=lay.trainer_leader)
    if rank == lay.trainer_leader:
        out["summary"] = aggregate(out["per_rank"], loop_s)
        report_async(cfg, out, loop_s)
    return stopped


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
        from asyncflow_hpc.waits import wait_until

        wait_until(lambda: not receiver.running, timeout_s=cfg.weights.timeout_s, what="the sender's STOP",
                   pause_max=0.01, raise_timeout=False)
        if receiver.poll() is not None:
            receiver.swap(engine.load_weights)
        receiver.close()


def report_async(cfg: Any, out: dict, loop_s: float) -> None:
    from asyncflow_hpc.workflow.metrics import format_role_table

    print(format_role_table(out["per_rank"], loop_s), flush=True)
