"""Reproducibility rules, low in the house (beside staleness.py): seeds and the prompt schedule.

A row's seed is derive_seed(run seed, step, prompt id, sample index); the prompt id is the global draw index
(step * prompts_per_step + j), unique within a run; the dataset example behind it comes from a per-epoch
permutation of the run seed. So any row can be regenerated, whichever rank produced it. Engines, checkpoints,
the simulator and the workflows import these; they import nothing of the package.
"""

from __future__ import annotations

import hashlib
import random
import struct


def derive_seed(run_seed: int, step: int, prompt_id: int, sample_index: int) -> int:
    """A 63-bit seed that depends only on its four arguments (stable across processes and versions)."""
    data = struct.pack("<4q", run_seed, step, prompt_id, sample_index)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1


def step_prompt_ids(step: int, prompts_per_step: int) -> list[int]:
    """Global prompt ids drawn at `step`."""
    return list(range(step * prompts_per_step, (step + 1) * prompts_per_step))


def example_index(run_seed: int, prompt_id: int, num_examples: int) -> int:
    """Dataset example behind a global prompt id: epoch e = id // N walks a permutation seeded by (seed, e)."""
    epoch, pos = divmod(prompt_id, num_examples)
    perm = list(range(num_examples))
    random.Random(derive_seed(run_seed, -1, epoch, 0)).shuffle(perm)
    return perm[pos]
