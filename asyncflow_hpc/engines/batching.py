"""Global batch -> data-parallel shards -> padded tensors; pure apart from building torch tensors.

How data parallelism splits a global batch (every trainer rank holds the same global batch):
rows are sorted by (prompt id, sample index), cut into `updates_per_step` contiguous mini-batches,
and each mini-batch into `dp_size` contiguous, balanced shards (rank r gets shard r); a shard is
processed in micro-batches of `micro_batch_rows`. Losses are sums divided by the GLOBAL mini-batch
denominator and gradients are SUMMED over the group, so the update does not depend on the order
in which rows arrived (only, in the last bits, on dp_size and micro_batch_rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

from asyncflow_hpc.engines.base import Row

T = TypeVar("T")


def split_even(items: Sequence[T], parts: int) -> list[list[T]]:
    """Contiguous balanced split (sizes differ by at most one, larger first)."""
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    q, r = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + q + (1 if i < r else 0)
        out.append(list(items[start:end]))
        start = end
    return out


def chunks(items: Sequence[T], size: int) -> list[list[T]]:
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


@dataclass
class Tensors:
    """A micro-batch on a device. [B, L] sequences (right-padded), [B, R] response-aligned fields."""

    input_ids: Any
    attention_mask: Any
    prompt_lens: Any  # [B]
    response_ids: Any  # [B, R]
    response_mask: Any  # [B, R] float
    behav_logprobs: Any  # [B, R]
    advantages: Any  # [B]
    ref_logprobs: Any | None  # [B, R] or None


def collate(rows: list[Row], pad_id: int, device: str = "cpu") -> Tensors:
    import torch

    if not rows:
        raise ValueError("collate: empty micro-batch")
    if any(not r.response_ids for r in rows):
        raise ValueError("collate: a row has an empty response")
    seq_len = max(len(r.prompt_ids) + len(r.response_ids) for r in rows)
    resp_len = max(len(r.response_ids) for r in rows)
    b = len(rows)
    ids = torch.full((b, seq_len), pad_id, dtype=torch.long)
    attn = torch.zeros((b, seq_len), dtype=torch.long)
    resp = torch.zeros((b, resp_len), dtype=torch.long)
    rmask = torch.zeros((b, resp_len), dtype=torch.float32)
    behav = torch.zeros((b, resp_len), dtype=torch.float32)
    ref = torch.zeros((b, resp_len), dtype=torch.float32) if all(r.ref_logprobs is not None for r in rows) else None
    for i, r in enumerate(rows):
        p, n = len(r.prompt_ids), len(r.response_ids)
        ids[i, :p + n] = torch.tensor(r.prompt_ids + r.response_ids)
        attn[i, :p + n] = 1
        resp[i, :n] = torch.tensor(r.response_ids)
        rmask[i, :n] = 1.0
        behav[i, :n] = torch.tensor(r.behav_logprobs[:n], dtype=torch.float32)
        if ref is not None:
            ref[i, :n] = torch.tensor(r.ref_logprobs[:n], dtype=torch.float32)
    plens = torch.tensor([len(r.prompt_ids) for r in rows], dtype=torch.long)
    adv = torch.tensor([r.advantage for r in rows], dtype=torch.float32)
    dev = lambda t: None if t is None else t.to(device)  # noqa: E731
    return Tensors(dev(ids), dev(attn), dev(plens), dev(resp), dev(rmask), dev(behav), dev(adv), dev(ref))


def response_logprobs(model: Any, t: Tensors, temperature: float, *, with_entropy: bool = False) -> Any:
    """[B, R] log-probs of the response tokens under `model` (logits / temperature); with_entropy: also the
    [B, R] entropy (detached) of the distribution each response token was sampled from."""
    import torch

    # Logits at position p predict token p + 1: response token j of row i is predicted at P_i - 1 + j. Only
    # positions from the shortest prompt's last token on are projected onto the vocabulary (the LM head of
    # a 50k-vocabulary model is ~20% of its FLOPs; prompt positions need none of it).
    seq = t.input_ids.shape[1]
    lo = max(int(t.prompt_lens.min()) - 1, 0)
    logits = model(input_ids=t.input_ids, attention_mask=t.attention_mask, use_cache=False,
                   logits_to_keep=seq - lo).logits
    r = t.response_ids.shape[1]
    pos = (t.prompt_lens[:, None] - 1 - lo + torch.arange(r, device=logits.device)[None, :])
    pos = pos.clamp(max=logits.shape[1] - 1)
    sel = logits.gather(1, pos[..., None].expand(-1, -1, logits.shape[-1])).float() / temperature
    logp_all = torch.log_softmax(sel, dim=-1)
    logp = logp_all.gather(-1, t.response_ids[..., None]).squeeze(-1)
    if not with_entropy:
        return logp
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy
