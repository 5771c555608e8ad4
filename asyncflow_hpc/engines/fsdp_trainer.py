"""FSDP2 trainer engine: parameters, gradients and AdamW state sharded over the trainer group.

    trainer = make_trainer(cfg, model, pad_id=..., group=comms.trainer_group, device=...)  # trainer.engine=fsdp
    trainer.train_step(rows)                  # the SAME global batch on every trainer rank
    named = trainer.gather_for_broadcast()    # EVERY trainer rank: an iterator; full tensors only on the leader
    sender.send_async(named, v) if leader else drain(named)

Each decoder layer, then the root, is wrapped with `torch.distributed.fsdp.fully_shard` over a 1-D
DeviceMesh built from the trainer group, so a rank holds 1/T of every parameter (a DTensor). The loss
semantics equal the replicated torch engine's: losses are sums divided by the GLOBAL mini-batch
denominator and gradients are SUMMED over ranks (FSDP2's reduce-scatter divides by T unless told
otherwise: the divide factor is set to 1 with sum-only reductions). FSDP forwards and backwards are collectives,
so every rank runs the same number of them: a rank whose shard holds fewer micro-batches pads with
zero-weight micro-batches, and the no-grad log-prob passes pad with throw-away forwards.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Iterator

from asyncflow_hpc.engines.base import Row
from asyncflow_hpc.engines.batching import collate, response_logprobs
from asyncflow_hpc.engines.torch_trainer import TorchTrainerEngine
from asyncflow_hpc.errors import ConfigError


def decoder_layers(model: Any) -> list[Any]:
    """The decoder layers of an HF causal LM (Llama/Qwen2: model.model.layers)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ConfigError(f"trainer.engine=fsdp: {type(model).__name__} has no model.layers to shard per "
                          f"decoder layer (supported: HF Llama/Qwen2-style causal LMs)")
    return list(layers)


def shard_model(model: Any, mesh: Any, *, device: str, activation_checkpointing: bool = False,
                cpu_offload: bool = False) -> Any:
    """fully_shard per decoder layer and at the root; gradients summed over the mesh (divide factor 1)."""
    import torch
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    on_host = device.split(":")[0] == "cpu"
    # Devices: bf16 compute copies, gradients reduced in fp32; the sharded fp32 master weights stay.
    mp = MixedPrecisionPolicy() if on_host else MixedPrecisionPolicy(param_dtype=torch.bfloat16,
                                                                     reduce_dtype=torch.float32)
    offload = CPUOffloadPolicy(pin_memory=not on_host) if cpu_offload else OffloadPolicy()
    if activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    layers = decoder_layers(model)
    for i, layer in enumerate(layers):
        # The last layer is not resharded after forward: the root's backward needs it at once.
        fully_shard(layer, mesh=mesh, mp_policy=mp, offload_policy=offload,
                    reshard_after_forward=i < len(layers) - 1)
    fully_shard(model, mesh=mesh, mp_policy=mp, offload_policy=offload)
    for m in [*layers, model]:
        # A plain SUM on every backend: factor 1 alone selects PREMUL_SUM(1), which gloo lacks.
        m.set_gradient_divide_factor(1.0)
        m.set_force_sum_reduction_for_comms(True)
    return model


class FSDPTrainerEngine(TorchTrainerEngine):
    """The torch engine's RL and warm-up steps and objective on an FSDP2-sharded model (see the module docstring)."""

    uses_ddp = False  # FSDP reduce-scatters the gradients itself

    def __init__(self, model: Any, *, trainer_cfg: Any, algo_cfg: Any, temperature: float, pad_id: int,
                 group: Any = None, device: str = "cpu", reference: bool | None = None):
        import torch.distributed as dist
        from torch.distributed.device_mesh import DeviceMesh

        from asyncflow_hpc.models.hf import broadcast_tensors

        if group is None or not dist.is_initialized():
            raise ConfigError("trainer.engine=fsdp needs a torch.distributed trainer group (comms.trainer_group); "
                              "use trainer.engine=torch for a single process without torch.distributed")
        self._leader = dist.get_global_rank(group, 0)
        if dist.get_world_size(group) > 1:  # every rank shards the SAME weights: the leader's
            for t in model.state_dict().values():
                dist.broadcast(t, src=self._leader, group=group)
        # Broadcast names and order of the replicated engine (tied aliases dropped), fixed before sharding.
        self._bcast_names = [n for n, _ in broadcast_tensors(model)]
        want_ref = algo_cfg.kl_coef > 0 if reference is None else reference
        ref = copy.deepcopy(model) if want_ref else None
        self.mesh = DeviceMesh.from_group(group, device.split(":")[0])
        opts = dict(device=device, activation_checkpointing=trainer_cfg.fsdp_activation_checkpointing,
                    cpu_offload=trainer_cfg.fsdp_cpu_offload)
        shard_model(model, self.mesh, **opts)
        super().__init__(model, trainer_cfg=trainer_cfg, algo_cfg=algo_cfg, temperature=temperature,
                         pad_id=pad_id, group=group, device=device, reference=False)
        if ref is not None:
            for p in ref.parameters():
                p.requires_grad_(False)
            self.ref_model = shard_model(ref.eval(), self.mesh, device=device,
                                         cpu_offload=trainer_cfg.fsdp_cpu_offload)
        self.last_gather_peak_bytes, self.last_gather_peak_buckets = 0, 0.0

    def broadcast_parameters(self) -> None:
        """Nothing to do: the constructor sharded the leader's weights on every rank."""

    # --- equal numbers of collectives on every rank ----------------------------------------------
    def _max_over_ranks(self, n: int) -> int:
        import torch
        import torch.distributed as dist

        t = torch.tensor([n], dtype=torch.int64, device=self.device)  # NCCL/HCCL reduce device tensors
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return int(t[0])

    def log_probs(self, rows: list[Row], *, reference: bool = False) -> list[list[float]]:
        import torch

        mine = math.ceil(len(rows) / self.cfg.micro_batch_rows)
        missing = self._max_over_ranks(mine) - mine  # before any forward: collectives pair up in order
        out = super().log_probs(rows, reference=reference)
        model = self.ref_model if reference else self.model
        if missing:
            was = model.training
            model.eval()
            with torch.no_grad():
                for _ in range(missing):  # throw-away forwards: the peers' all-gathers need a partner
                    response_logprobs(model, collate([self._dummy_row()], self.pad_id, self.device), 1.0)
            model.train(was)
        return out

    # --- one RL step: the torch engine's train_step, with these two hooks ---------------------------
    def _before_micro_batches(self, local: list[Row]) -> None:
        """Reference log-probs for the whole shard up front: every rank calls it (padded, sharded forwards pair
        up across ranks), where the torch engine fills them lazily per micro-batch."""
        if self.ref_model is not None:
            need = [r for r in local if r.ref_logprobs is None]
            for r, lp in zip(need, self.log_probs(need, reference=True)):
                r.ref_logprobs = lp

    def _pad_micro_batches(self, part: list[list[Row]], have: int) -> None:
        """Zero-weight forward+backward passes up to the largest shard's micro-batch count (part[0]: split_even
        puts the larger shards first), so every rank runs the same FSDP collectives."""
        for _ in range(math.ceil(len(part[0]) / self.cfg.micro_batch_rows) - have):
            self._zero_weight_backward()

    def _reduce_and_step(self, optimizer: Any = None) -> float:
        """FSDP already summed the gradients (reduce-scatter); clip by the GLOBAL norm over all shards."""
        import torch
        from torch.distributed.tensor import DTensor

        params = [p for p in self.model.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        norm = torch.nn.utils.get_total_norm([p.grad for p in params], 2.0)
        if isinstance(norm, DTensor):  # a partial sum of squares per rank -> the full norm
            norm = norm.full_tensor()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grads_with_norm_(params, self.cfg.grad_clip, norm)
        (optimizer or self.optimizer).step()
        return float(norm)

    # --- checkpoints and broadcast -------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError("trainer.engine=fsdp: the trainer state is sharded; save it on every trainer "
                                  "rank with asyncflow_hpc.checkpoint.sharded.save_sharded(trainer, dir)")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError("trainer.engine=fsdp: load a sharded checkpoint on every trainer rank with "
                                  "asyncflow_hpc.checkpoint.sharded.load_sharded(trainer, dir)")

    def named_parameters_for_broadcast(self) -> list[tuple[str, Any]]:
        raise NotImplementedError("trainer.engine=fsdp: the weights are sharded; EVERY trainer rank must call "
                                  "gather_for_broadcast() (full tensors on the leader only)")

    def gather_for_broadcast(self, bucket_mb: float | None = None, *,
                             everywhere: bool = False) -> Iterator[tuple[str, Any]]:
        """Full tensors (HF names, tied aliases dropped, the replicated engine's order), gathered bucket by
        bucket onto the trainer leader. EVERY trainer rank must exhaust the iterator; it yields only on the
        leader (on every rank with everywhere=True: colocated rollout engines). The leader holds at most
        the gather buffer and one full tensor beyond its consumer's copy; pass weights.bucket_mb."""
        from asyncflow_hpc.engines.fsdp_gather import gather_buckets

        mb = bucket_mb if bucket_mb is not None else self.cfg.allreduce_bucket_mb
        state = self.model.state_dict()
        named = [(n, state[n]) for n in self._bcast_names]
        return gather_buckets(named, self.group, self._leader, int(mb * 2 ** 20), stats=self,
                              everywhere=everywhere, device=self.device)

    def broadcast_layout(self) -> list[tuple[str, Any]]:
        """(name, meta tensor of the full shape and dtype) of what gather_for_broadcast yields: for the
        weight-sync plan (weights.plan_for) on a rank whose model is sharded. No communication."""
        import torch

        state = self.model.state_dict()
        return [(n, torch.empty(state[n].shape, dtype=state[n].dtype, device="meta")) for n in self._bcast_names]

    def local_param_elements(self) -> int:
        """Elements of the parameters this rank holds (its shards)."""
        from torch.distributed.tensor import DTensor

        return sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in self.model.parameters())


def is_sharded(trainer: Any) -> bool:
    """Whether the trainer's weights are sharded over its group (every trainer rank must take part in a gather)."""
    return hasattr(trainer, "gather_for_broadcast")


def weights_everywhere(trainer: Any, bucket_mb: float) -> Iterator[tuple[str, Any]]:
    """EVERY trainer rank: the full weights as (HF name, tensor), streamed bucket by bucket, on every rank (what
    colocated rollout engines load). A replicated trainer yields its own parameters."""
    if is_sharded(trainer):
        return trainer.gather_for_broadcast(bucket_mb, everywhere=True)
    return iter(trainer.named_parameters_for_broadcast())


def full_weights(trainer: Any, bucket_mb: float | None = None) -> list[tuple[str, Any]] | None:
    """Every trainer rank calls it: the full weights (a list) on the leader, None elsewhere. For tests and
    tools; the weight broadcast should stream `gather_for_broadcast()` into the sender instead."""
    if not is_sharded(trainer):
        return trainer.named_parameters_for_broadcast()
    out = list(trainer.gather_for_broadcast(bucket_mb))
    return out if trainer.dp_rank == 0 else None


def send_weights(trainer: Any, sender: Any, version: int, bucket_mb: float, *, block: bool = False) -> Any:
    """EVERY trainer rank calls it to publish `version`; only the leader holds `sender` (None elsewhere).

    A sharded trainer gathers bucket by bucket on every rank while the leader packs the stream into the
    sender's snapshot; a replicated trainer's followers do nothing. Returns the leader's SendHandle
    (block=False) or SendStats (block=True), None elsewhere. Like send_async, it returns once the snapshot
    is packed, so the caller may train on."""
    if is_sharded(trainer):
        named = trainer.gather_for_broadcast(bucket_mb)
    elif sender is not None:
        named = trainer.named_parameters_for_broadcast()
    else:
        return None
    if sender is None:
        for _ in named:  # the collectives of the gather; nothing arrives here
            pass
        return None
    return sender.send(named, version) if block else sender.send_async(named, version)
