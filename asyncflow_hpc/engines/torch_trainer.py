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

from asyncflow_hpc.algorithms import losses
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
        sums = {"loss": 0.0, "pg_loss": 0.0, "kl": 0.0, "clip_frac": 0.0, "ratio_max": 0.0, "is_weight": 0.0}
        grad_norms = []
        minis = split_even(rows, min(self.cfg.updates_per_step, len(rows)))
        shards = [split_even(mini, self.dp_size)[self.dp_rank] for mini in minis]
        prox: dict[tuple[int, int], list[float]] = {}
        if self.algo.proximal == "recompute":
            # The proximal policy is the policy at the start of the step, for every mini-batch.
            local = [r for s in shards for r in s]
            prox = {r.key: lp for r, lp in zip(local, self.log_probs(local))}
        for mini, shard in zip(minis, shards):
            tokens = sum(len(r.response_ids) for r in mini)
            denom = float(tokens if self.algo.loss_agg == "token_mean" else len(mini))
            self.model.train()
            self.optimizer.zero_grad(set_to_none=False)
            for mb in chunks(shard, self.cfg.micro_batch_rows):
                part = self._micro_loss(mb, denom, tokens, prox)
                part["loss"].backward()
                part["loss"] = part["loss"].detach()
                for k in sums:
                    v = part[k]
                    sums[k] = max(sums[k], float(v)) if k == "ratio_max" else sums[k] + float(v)
            grad_norms.append(self._reduce_and_step())
        metrics = self._reduce_metrics(sums, len(minis))
        metrics["grad_norm"] = grad_norms[-1]
        metrics["rows"] = float(len(rows))
        metrics["response_tokens"] = float(sum(len(r.response_ids) for r in rows))
        self.version += 1
        return metrics

    def _micro_loss(self, mb: list[Row], denom: float, tokens: int,
                    prox_map: dict[tuple[int, int], list[float]]) -> dict[str, Any]:
        import torch

        a = self.algo
        use_kl = a.kl_term
        t = collate(mb, self.pad_id, self.device)
        if t.ref_logprobs is None and (self.ref_model is not None or use_kl):
            if self.ref_model is None:  # dedicated reference ranks fill the column; these rows have none
                raise ValueError("algorithm.kl_coef > 0 but the rows carry no reference log-probs and this trainer "
                                 "holds no reference model (topology.reference_ranks computes them)")
            self._fill_ref(mb)
            t = collate(mb, self.pad_id, self.device)
        logp = response_logprobs(self.model, t, self.temperature)
        if prox_map:
            prox = torch.zeros_like(t.behav_logprobs)
            for i, r in enumerate(mb):
                prox[i, :len(r.response_ids)] = torch.tensor(prox_map[r.key], dtype=prox.dtype)
        else:
            prox = t.behav_logprobs
        per_tok = losses.ppo_clip_loss(logp, prox, t.advantages, clip_low=a.clip_eps, clip_high=a.upper_clip)
        weight = torch.ones_like(per_tok)
        if a.correction != "none":
            cap = a.tis_cap if a.correction == "tis" else None
            weight = losses.importance_weights(prox, t.behav_logprobs, cap=cap)
        pg = per_tok * weight
        kl = torch.zeros_like(pg)
        if use_kl:
            kl = losses.kl_penalty(logp, t.ref_logprobs, a.kl_estimator)
        loss = losses.aggregate(pg + a.kl_coef * kl, t.response_mask, a.loss_agg, denom)
        m = t.response_mask
        with torch.no_grad():
            return {
                "loss": loss,
                "pg_loss": losses.aggregate(pg.detach(), m, a.loss_agg, denom),
                "kl": (kl.detach() * m).sum() / tokens,
                "clip_frac": losses.clip_fraction(logp.detach(), prox, m, clip_low=a.clip_eps,
                                                  clip_high=a.upper_clip) / tokens,
                "ratio_max": (torch.exp(logp.detach() - prox) * m).max(),
                "is_weight": (weight * m).sum() / tokens,
            }

    def _fill_ref(self, rows: list[Row]) -> None:
        for r, lp in zip(rows, self.log_probs(rows, reference=True)):
            r.ref_logprobs = lp

    def _reduce_and_step(self, optimizer: Any = None) -> float:
        import torch

        params = [p for p in self.model.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        allreduce_sum([p.grad for p in params], self.group, self.cfg.allreduce_bucket_mb)
        clip = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        (optimizer or self.optimizer).step()
        return norm

    def _reduce_metrics(self, sums: dict[str, float], n_updates: int) -> dict[str, float]:
        import torch

        keys = [k for k in sums if k != "ratio_max"]
        vec = torch.tensor([sums[k] for k in keys], dtype=torch.float64)
        mx = torch.tensor([sums["ratio_max"]], dtype=torch.float64)
        if self.dp_size > 1:
            import torch.distributed as dist

            dist.all_reduce(vec, group=self.group)
            dist.all_reduce(mx, op=dist.ReduceOp.MAX, group=self.group)
        out = {k: float(v) for k, v in zip(keys, vec.tolist())}
        for k in ("kl", "clip_frac", "is_weight"):  # token means summed over mini-batches
            out[k] /= n_updates
        out["ratio_max"] = float(mx[0])
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
        shard = split_even(rows, self.dp_size)[self.dp_rank]
        self.model.train()
        self._sft_optimizer.zero_grad(set_to_none=False)
        total = 0.0
        for mb in chunks(shard, self.cfg.micro_batch_rows):
            t = collate(mb, self.pad_id, self.device)
            logp = response_logprobs(self.model, t, 1.0)
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
        return [(k, v.detach()) for k, v in self.model.state_dict().items()]


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
