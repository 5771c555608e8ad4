"""Torch trainer engine: data parallel over a torch.distributed trainer group (gloo/NCCL/HCCL).

Every trainer rank holds full weights and the same GLOBAL batch; `engines/batching.py` says how the
batch is split. Gradients are summed with bucketed all-reduces over the trainer group after the
micro-batches (what DDP does, without its autograd hooks, so shards may hold unequal numbers of
micro-batches). Identical initial weights are ensured by `broadcast_parameters` from the group's
first rank.
"""

from __future__ import annotations

import copy
from typing import Any

from asyncflow_hpc.algorithms import objective
from asyncflow_hpc.algorithms.advantages import zero_signal_share
from asyncflow_hpc.algorithms.config import AlgorithmConfig
from asyncflow_hpc.engines.base import Row, TrainerEngine, sorted_rows
from asyncflow_hpc.engines.batching import chunks, collate, response_logprobs, split_even
from asyncflow_hpc.engines.config import TrainerConfig


def model_log_probs(model: Any, rows: list[Row], *, micro_batch_rows: int, pad_id: int, device: str,
                    temperature: float) -> list[list[float]]:
    """Per-token log-probs of each row's response under `model` (no grad), in micro-batches."""
    import torch

    out: list[list[float]] = []
    was = model.training
    model.eval()
    with torch.no_grad():
        for mb in chunks(rows, micro_batch_rows):
            t = collate(mb, pad_id, device)
            lp = response_logprobs(model, t, temperature).cpu()
            out.extend(lp[i, :len(r.response_ids)].tolist() for i, r in enumerate(mb))
    model.train(was)
    return out


class ReferencePolicy:
    """The frozen initial policy on a dedicated reference rank (topology.reference_ranks).

    Scores rows' responses for the KL term so the trainer ranks hold no copy of it; the numbers are
    those the trainer's own reference copy would give (same function, same model weights).
    """

    def __init__(self, model: Any, *, micro_batch_rows: int, temperature: float, pad_id: int, device: str = "cpu"):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.micro_batch_rows, self.temperature, self.pad_id, self.device = micro_batch_rows, temperature, pad_id, device

    def log_probs(self, rows: list[Row]) -> list[list[float]]:
        return model_log_probs(self.model, rows, micro_batch_rows=self.micro_batch_rows, pad_id=self.pad_id,
                               device=self.device, temperature=self.temperature)


class TorchTrainerEngine(TrainerEngine):
    recorder: Any = None  # a trace recorder: the gradient all-reduce of each update is a span (the cost model's)
    uses_ddp = True  # replicated data parallelism through torch's DistributedDataParallel (subclasses opt out)

    def __init__(self, model: Any, *, trainer_cfg: TrainerConfig, algo_cfg: AlgorithmConfig, temperature: float,
                 pad_id: int, group: Any = None, device: str = "cpu", reference: bool | None = None):
        import torch

        self.model, self.cfg, self.algo = model, trainer_cfg, algo_cfg
        self.temperature, self.pad_id, self.group, self.device = temperature, pad_id, group, device
        self.dp_rank, self.dp_size = _group_rank_size(group)
        self.version = 0
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=trainer_cfg.lr, betas=tuple(trainer_cfg.betas),
                                           weight_decay=trainer_cfg.weight_decay)
        self._sft_optimizer = None
        want_ref = algo_cfg.kl_coef > 0 if reference is None else reference
        self.ref_model = self._frozen_copy() if want_ref else None
        self._ddp = self._wrap_ddp() if self.uses_ddp and self.dp_size > 1 else None
        self._ar_t0 = self._ar_t1 = None  # the all-reduce of the current update (first bucket sent, last done)

    def _wrap_ddp(self) -> Any:
        """torch's DDP over the trainer group: gradients bucketed and all-reduced while backward still runs.
        The loss semantics stay the engine's: losses are divided by the GLOBAL denominator, so the gradients are
        SUMMED over ranks (a comm hook replaces DDP's default average)."""
        from torch.nn.parallel import DistributedDataParallel

        import inspect

        # Buffers (rotary tables) are equal on every rank from the start: never re-broadcast them per forward.
        quiet = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
                 inspect.signature(DistributedDataParallel.__init__).parameters else {"broadcast_buffers": False})
        ddp = DistributedDataParallel(self.model, process_group=self.group, bucket_cap_mb=self.cfg.allreduce_bucket_mb,
                                      **quiet)
        ddp.register_comm_hook(self, _sum_hook)
        return ddp

    @property
    def _fwd(self) -> Any:
        """The module a training forward goes through (the DDP wrapper when there is one)."""
        return self._ddp if self._ddp is not None else self.model

    def _sync(self, last: bool) -> Any:
        """Gradients are all-reduced on a mini-batch's last backward only (DDP no_sync before it)."""
        import contextlib

        return self._ddp.no_sync() if self._ddp is not None and not last else contextlib.nullcontext()

    def _frozen_copy(self) -> Any:
        ref = copy.deepcopy(self.model).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        return ref

    def broadcast_parameters(self) -> None:
        """Make every trainer rank start from the first rank's weights."""
        if self.dp_size > 1:
            import torch.distributed as dist

            src = dist.get_global_rank(self.group, 0)
            for t in self.model.state_dict().values():
                dist.broadcast(t, src=src, group=self.group)
            if self.ref_model is not None:
                self.ref_model.load_state_dict(self.model.state_dict())

    # --- log-probs -----------------------------------------------------------------------------
    def log_probs(self, rows: list[Row], *, reference: bool = False) -> list[list[float]]:
        model = self.ref_model if reference else self.model
        if model is None:
            raise ValueError("log_probs(reference=True) needs a reference model (algorithm.kl_coef > 0)")
        return model_log_probs(model, rows, micro_batch_rows=self.cfg.micro_batch_rows, pad_id=self.pad_id,
                               device=self.device, temperature=self.temperature)

    # --- one RL step ---------------------------------------------------------------------------
    def train_step(self, rows: list[Row]) -> dict[str, float]:
        rows = sorted_rows(rows)
        if not rows:
            raise ValueError("train_step: empty batch")
        minis = split_even(rows, min(self.cfg.updates_per_step, len(rows)))
        parts = [split_even(mini, self.dp_size) for mini in minis]  # every rank's shard of each mini-batch
        shards = [p[self.dp_rank] for p in parts]
        local = [r for sh in shards for r in sh]
        self._before_micro_batches(local)
        before: dict[tuple[int, int], list[float]] = {}
        if self.algo.proximal == "recompute" or len(minis) > 1:
            # The policy at the start of the step: the proximal policy (recompute) for every mini-batch, and
            # the trainer side of the rollout-trainer mismatch. With one update and proximal=behaviour the
            # training forward itself runs on these weights, so no extra forward is needed.
            before = {r.key: lp for r, lp in zip(local, self.log_probs(local))}
        sums = dict.fromkeys(("loss", "pg_loss", objective.ONPOLICY_TOKENS) + objective.SUM_KEYS
                             + objective.ONPOLICY_SUM_KEYS, 0.0)
        maxes = dict.fromkeys(objective.MAX_KEYS, 0.0)
        grad_norms = []
        for mini, part, shard in zip(minis, parts, shards):
            denom = self._denominator(mini)
            self.model.train()
            self.optimizer.zero_grad(set_to_none=False)
            mbs = chunks(shard, self.cfg.micro_batch_rows)
            self._pad_micro_batches(part, len(mbs))
            for i, mb in enumerate(mbs):
                with self._sync(last=i == len(mbs) - 1):
                    out = self._micro_objective(mb, denom, before)
                    out.loss.backward()
                sums["loss"] += float(out.loss.detach())
                sums["pg_loss"] += out.pg_loss
                for k, v in out.sums.items():
                    sums[k] += v
                for k, v in out.maxes.items():
                    maxes[k] = max(maxes[k], v)
            grad_norms.append(self._reduce_and_step())
        tokens = sum(len(r.response_ids) for r in rows)
        metrics = self._reduce_metrics(sums, maxes, tokens)
        metrics["grad_norm"] = grad_norms[-1]
        metrics["rows"] = float(len(rows))
        metrics["response_tokens"] = float(tokens)
        metrics["zero_signal_groups"] = zero_signal_share([r.reward for r in rows], [r.prompt_id for r in rows])
        self.version += 1
        return metrics

    def _before_micro_batches(self, local: list[Row]) -> None:
        """Hook before a step's forwards, with this rank's rows of the step (sharded engines fill what
        would otherwise be computed lazily, so that every rank runs the same collectives)."""

    def _pad_micro_batches(self, part: list[list[Row]], have: int) -> None:
        """Hook before a mini-batch's micro-batches: `part` is every rank's shard of it, `have` this rank's
        micro-batch count (sharded engines pad to the largest shard's count). Under DDP every rank runs one
        synchronising backward per update: a rank without rows runs a zero-weight one."""
        if self._ddp is not None and have == 0:
            self._zero_weight_backward()

    def _dummy_row(self) -> Row:
        return Row(prompt_id=-1, sample_index=0, prompt_ids=[self.pad_id], response_ids=[self.pad_id],
                   behav_logprobs=[0.0])

    def _zero_weight_backward(self) -> None:
        """A forward and backward that add nothing to the gradients but run the same collectives."""
        t = collate([self._dummy_row()], self.pad_id, self.device)
        (response_logprobs(self._fwd, t, self.temperature).sum() * 0.0).backward()

    def _denominator(self, mini: list[Row]) -> float:
        """The GLOBAL normaliser of algorithm.loss_agg for one mini-batch (losses.aggregate)."""
        agg = self.algo.loss_agg
        if agg == "token_mean":
            return float(sum(len(r.response_ids) for r in mini))
        if agg == "seq_mean_token_mean":
            return float(len(mini))
        if not self.algo.max_response_len:
            raise ValueError("algorithm.loss_agg=seq_mean_token_sum_norm needs the rollout's max_new_tokens "
                             "(AlgorithmConfig.check_job, done by the job config)")
        return float(len(mini) * self.algo.max_response_len)

    def _micro_objective(self, mb: list[Row], denom: float,
                         before_map: dict[tuple[int, int], list[float]]) -> objective.Output:
        import torch

        t = collate(mb, self.pad_id, self.device)
        if t.ref_logprobs is None and (self.ref_model is not None or self.algo.kl_term):
            if self.ref_model is None:  # dedicated reference ranks fill the column; these rows have none
                raise ValueError("algorithm.kl_coef > 0 but the rows carry no reference log-probs and this trainer "
                                 "holds no reference model (topology.reference_ranks computes them)")
            self._fill_ref(mb)
            t = collate(mb, self.pad_id, self.device)
        logp, entropy = response_logprobs(self._fwd, t, self.temperature, with_entropy=True)
        if before_map:
            before = torch.zeros_like(t.behav_logprobs)
            for i, r in enumerate(mb):
                before[i, :len(r.response_ids)] = torch.tensor(before_map[r.key], dtype=before.dtype)
        else:
            before = logp.detach()
        old = before if self.algo.proximal == "recompute" else t.behav_logprobs
        x = objective.Inputs(logp=logp, old=old, behav=t.behav_logprobs, adv=t.advantages, mask=t.response_mask,
                             ref=t.ref_logprobs, before=before, entropy=entropy,
                             onpolicy=torch.tensor([float(r.version == self.version) for r in mb]))
        return objective.micro_objective(self.algo, x, denom)

    def _fill_ref(self, rows: list[Row]) -> None:
        for r, lp in zip(rows, self.log_probs(rows, reference=True)):
            r.ref_logprobs = lp

    def _reduce_and_step(self, optimizer: Any = None) -> float:
        import torch

        params = [p for p in self.model.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if self._ddp is not None:  # DDP summed the gradients during the last backward
            self._record_allreduce()
        elif self.dp_size > 1 and self.recorder is not None:
            from asyncflow_hpc.trace.schema import SpanName

            with self.recorder.span(SpanName.ALLREDUCE.value):
                allreduce_sum([p.grad for p in params], self.group, self.cfg.allreduce_bucket_mb)
        else:
            allreduce_sum([p.grad for p in params], self.group, self.cfg.allreduce_bucket_mb)
        clip = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        (optimizer or self.optimizer).step()
        return norm

    def _record_allreduce(self) -> None:
        """The update's all-reduce as a span: from DDP's first bucket sent to its last reduced (it overlaps the
        backward; the cost model reads it as the communication time of one update)."""
        import threading

        t0, t1, self._ar_t0, self._ar_t1 = self._ar_t0, self._ar_t1, None, None
        if self.recorder is not None and t0 is not None and t1 is not None:
            from asyncflow_hpc.trace.schema import SpanName

            self.recorder.add_span(SpanName.ALLREDUCE.value, t0, max(t0, t1), thread=threading.get_ident())

    def _reduce_metrics(self, sums: dict[str, float], maxes: dict[str, float], tokens: int) -> dict[str, float]:
        """Sums over the trainer group (maxima by max); token sums become means over the step's tokens."""
        import torch

        keys, mkeys = list(sums), list(maxes)
        vec = torch.tensor([sums[k] for k in keys], dtype=torch.float64)
        mx = torch.tensor([maxes[k] for k in mkeys], dtype=torch.float64)
        if self.dp_size > 1:
            import torch.distributed as dist

            dist.all_reduce(vec, group=self.group)
            dist.all_reduce(mx, op=dist.ReduceOp.MAX, group=self.group)
        out = {k: float(v) for k, v in zip(keys, vec.tolist())}
        for k in objective.SUM_KEYS:
            out[k] /= max(tokens, 1)
        for k in objective.ONPOLICY_SUM_KEYS:
            out[k] /= max(out[objective.ONPOLICY_TOKENS], 1.0)
        out.update({k: float(v) for k, v in zip(mkeys, mx.tolist())})
        return out

    # --- supervised warm-up --------------------------------------------------------------------
    def sft_step(self, pairs: list[tuple[list[int], list[int]]]) -> float:
        """One cross-entropy step on (prompt ids, target ids) pairs (the global batch, same on every rank)."""
        import torch

        if self._sft_optimizer is None:
            self._sft_optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.cfg.sft_lr)
        rows = [Row(prompt_id=i, sample_index=0, prompt_ids=p, response_ids=t, behav_logprobs=[0.0] * len(t))
                for i, (p, t) in enumerate(pairs)]
        tokens = float(sum(len(t) for _, t in pairs))
        parts = split_even(rows, self.dp_size)
        self.model.train()
        self._sft_optimizer.zero_grad(set_to_none=False)
        mbs = chunks(parts[self.dp_rank], self.cfg.micro_batch_rows)
        self._pad_micro_batches(parts, len(mbs))
        total = 0.0
        for i, mb in enumerate(mbs):
            with self._sync(last=i == len(mbs) - 1):
                t = collate(mb, self.pad_id, self.device)
                logp = response_logprobs(self._fwd, t, 1.0)
                loss = -(logp * t.response_mask).sum() / tokens
                loss.backward()
            total += float(loss.detach())
        self._reduce_and_step(self._sft_optimizer)
        vec = torch.tensor([total], dtype=torch.float64)
        if self.dp_size > 1:
            import torch.distributed as dist

            dist.all_reduce(vec, group=self.group)
        if self.ref_model is not None:  # the reference is the policy RL starts from
            self.ref_model.load_state_dict(self.model.state_dict())
        return float(vec[0])

    # --- checkpoints and broadcast -------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "version": self.version}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.version = int(state["version"])

    def named_parameters_for_broadcast(self) -> list[tuple[str, Any]]:
        from asyncflow_hpc.models.hf import broadcast_tensors

        return broadcast_tensors(self.model)


def _group_rank_size(group: Any) -> tuple[int, int]:
    if group is None:
        return 0, 1
    import torch.distributed as dist

    return dist.get_rank(group), dist.get_world_size(group)


def allreduce_sum(tensors: list[Any], group: Any, bucket_mb: float) -> None:
    """Sum `tensors` in place over `group`, flattened into buckets of at most `bucket_mb` MiB."""
    if group is None:
        return
    import torch
    import torch.distributed as dist

    if dist.get_world_size(group) == 1:
        return
    limit = max(1, int(bucket_mb * 2 ** 20))
    bucket: list[Any] = []
    size = 0
    for t in tensors + [None]:
        if t is not None and (not bucket or (size + t.numel() * t.element_size() <= limit
                                             and t.dtype == bucket[0].dtype)):
            bucket.append(t)
            size += t.numel() * t.element_size()
            continue
        if bucket:
            flat = torch.cat([b.reshape(-1) for b in bucket])
            dist.all_reduce(flat, group=group)
            off = 0
            for b in bucket:
                b.copy_(flat[off:off + b.numel()].view_as(b))
                off += b.numel()
        if t is not None:
            bucket, size = [t], t.numel() * t.element_size()
        else:
            bucket = []


def _sum_hook(engine, bucket):  # no annotations: DDP checks them (GradBucket / Future) and ours are strings
    """DDP comm hook: SUM the bucket over the trainer group (DDP's default divides by the world size), and note
    when the update's all-reduce started and ended (for the trace)."""
    import time

    import torch.distributed as dist

    if engine._ar_t0 is None:
        engine._ar_t0 = time.perf_counter()

    def done(fut):
        engine._ar_t1 = time.perf_counter()
        return fut.value()[0]

    return dist.all_reduce(bucket.buffer(), group=engine.group, async_op=True).get_future().then(done)
