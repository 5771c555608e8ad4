"""Per-bucket checksum 'blocksum64': two mod-2^64 sums over an int64 view, vectorised (torch, any device).

Why this one: the weight broadcast runs at ~1 GB/s over gloo on this machine (tens of GB/s on NCCL/
HCCL), so the check must cost a small fraction of that. CRC32/Adler32 (zlib) reach only 2.2/2.7 GB/s
per core here -- as slow as the link itself -- while a torch int64 sum streams at ~17 GB/s per core and
runs on the device where the bucket already is. Integer addition mod 2^64 is associative, so sender and
receiver get the same value whatever reduction order the kernel picks (float sums would not, and NaN
payloads would compare unequal).

    s1 = sum of all words                        (any changed word changes s1)
    s2 = sum over blocks b of (b + 1) * sum(block b)   (blocks of BLOCK words: catches moved/swapped blocks)

What it misses: changes that cancel within the sum (e.g. two words swapped inside one 8 KiB block).
It guards against transport/buffer faults (bit flips, truncation, zeroed or stale ranges, wrong bucket),
not against an adversary.
"""

from __future__ import annotations

BLOCK = 1024  # int64 words per block (8 KiB)
ALGORITHMS = {"none": 0, "blocksum64": 1}


def blocksum64(words) -> tuple[int, int]:
    """(s1, s2) of a 1-D int64 torch tensor (signed int64 values, wrapping)."""
    import torch

    if words.dtype != torch.int64 or words.dim() != 1:
        raise ValueError(f"blocksum64 needs a 1-D int64 tensor, got {words.dtype} with shape {tuple(words.shape)}")
    n = words.numel()
    full = n // BLOCK
    parts = []
    if full:
        parts.append(words[: full * BLOCK].view(full, BLOCK).sum(dim=1))
    if n > full * BLOCK:
        parts.append(words[full * BLOCK:].sum().view(1))
    if not parts:
        return 0, 0
    rows = parts[0] if len(parts) == 1 else torch.cat(parts)
    weights = torch.arange(1, rows.numel() + 1, dtype=torch.int64, device=rows.device)
    s1 = int(rows.sum().item())
    s2 = int((rows * weights).sum().item())
    return s1, s2


def bucket_checksum(byte_view, algorithm: str) -> tuple[int, int]:
    """Checksum of one bucket given as a 1-D uint8 tensor whose length is a multiple of 8."""
    if algorithm == "none":
        return 0, 0
    if algorithm != "blocksum64":
        raise ValueError(f"unknown checksum algorithm {algorithm!r} (known: {', '.join(ALGORITHMS)})")
    import torch

    return blocksum64(byte_view.view(torch.int64))


def state_fingerprint(named) -> str:
    """Hex digest of (name, dtype, shape, blocksum64 of the bytes) over named tensors: two ranks that built
    'the same' model compare this instead of sending the weights (a fast check, not a cryptographic one)."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for name, t in named:
        raw = t.detach().contiguous().cpu().reshape(-1).view(torch.uint8)
        if raw.numel() % 8:
            raw = torch.cat([raw, raw.new_zeros(8 - raw.numel() % 8)])
        s1, s2 = blocksum64(raw.view(torch.int64))
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|{s1}|{s2};".encode())
    return h.hexdigest()[:16]
