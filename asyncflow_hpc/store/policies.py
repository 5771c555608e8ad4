"""Sampling policies: pure functions over control-plane metadata that pick which ready rows a get returns.

A policy is `fn(cands: Candidates, n: int, *, final: bool, **args) -> Selection | None`:
`cands` are the rows whose requested columns are ready and that the task has not consumed, oldest
first; `final` is true once every producer called mark_done() (a policy may then return a short
batch). Return None (or an empty take) when no batch can be formed yet. Policies are named in
POLICIES or by dotted path ("package.module:function" or "package.module.function").
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from asyncflow_hpc.staleness import is_fresh

_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass
class Candidates:
    """Eligible rows, in arrival order (one entry per row; arrays of equal length)."""

    row_id: np.ndarray
    index: np.ndarray
    group: np.ndarray
    version: np.ndarray
    seqlen: np.ndarray

    def __len__(self) -> int:
        return int(len(self.row_id))

    def subset(self, pos: np.ndarray) -> "Candidates":
        return Candidates(self.row_id[pos], self.index[pos], self.group[pos], self.version[pos], self.seqlen[pos])

    @classmethod
    def make(cls, index, group=None, version=None, seqlen=None) -> "Candidates":
        """For tests and tools: build from plain sequences (row ids = positions)."""
        index = np.asarray(index, dtype=np.int64)
        n = len(index)
        z = lambda v, d: np.asarray(v if v is not None else [d] * n, dtype=np.int64)  # noqa: E731
        return cls(np.arange(n, dtype=np.int64), index, z(group, -1), z(version, 0), z(seqlen, 0))


@dataclass
class Selection:
    """Positions into Candidates: rows to return (batch order), rows to consume-and-drop (counted)."""

    take: np.ndarray
    discard: np.ndarray = field(default_factory=lambda: _EMPTY)
    parts: list[list[int]] | None = None  # positions within `take` per dp rank
    stale: int = 0  # rows taken although beyond the staleness bound


Policy = Callable[..., "Selection | None"]
POLICIES: dict[str, Policy] = {}


def register_policy(name: str) -> Callable[[Policy], Policy]:
    def deco(fn: Policy) -> Policy:
        POLICIES[name] = fn
        return fn
    return deco


def resolve_policy(name: str) -> Policy:
    """A registered name or a dotted path to a function; unknown names list the registered ones."""
    if name in POLICIES:
        return POLICIES[name]
    if "." in name or ":" in name:
        mod, _, attr = name.replace(":", ".").rpartition(".")
        try:
            fn = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"sampling policy '{name}': cannot import ({exc})") from None
        if not callable(fn):
            raise ValueError(f"sampling policy '{name}' is not callable")
        return fn
    raise ValueError(f"unknown sampling policy '{name}'; registered: {', '.join(sorted(POLICIES))} "
                     f"(or give a dotted path package.module:function)")


def _check_n(n: int) -> None:
    if n < 1:
        raise ValueError(f"get: n must be >= 1, got {n}")


@register_policy("fifo")
def fifo(c: Candidates, n: int, *, final: bool = False) -> Selection | None:
    """The n oldest ready rows; a short batch only at end of stream."""
    _check_n(n)
    if len(c) >= n:
        return Selection(take=np.arange(n, dtype=np.int64))
    if final and len(c):
        return Selection(take=np.arange(len(c), dtype=np.int64))
    return None


@register_policy("grpo_group")
def grpo_group(c: Candidates, n: int, *, group_size: int, final: bool = False) -> Selection | None:
    """Whole prompt groups only (all `group_size` responses of a prompt together), oldest group first.

    At end of stream, groups that can no longer complete are returned too (never silently dropped)."""
    _check_n(n)
    if group_size < 1 or n % group_size:
        raise ValueError(f"grpo_group: n={n} must be a positive multiple of group_size={group_size}")
    if not len(c):
        return None
    groups, first, counts = np.unique(c.group, return_index=True, return_counts=True)
    order = np.argsort(first, kind="stable")
    complete = [groups[i] for i in order if counts[i] >= group_size]
    want = n // group_size
    if len(complete) < want and not final:
        return None
    chosen = complete[:want] if not final else [groups[i] for i in order][:want]
    take = []
    for g in chosen:
        take.extend(np.nonzero(c.group == g)[0][:group_size].tolist())
    return Selection(take=np.asarray(take, dtype=np.int64)) if take else None


def balanced_parts(seqlen: np.ndarray, dp: int) -> list[list[int]]:
    """Split positions into dp parts of equal count (±1) minimising the largest sum of lengths (greedy LPT)."""
    n = len(seqlen)
    cap = [n // dp + (1 if r < n % dp else 0) for r in range(dp)]
    load = [0] * dp
    parts: list[list[int]] = [[] for _ in range(dp)]
    for p in np.argsort(-seqlen, kind="stable"):
        open_ranks = [r for r in range(dp) if len(parts[r]) < cap[r]]
        r = min(open_ranks, key=lambda q: (load[q], q))
        parts[r].append(int(p))
        load[r] += int(seqlen[p])
    return [sorted(p) for p in parts]


@register_policy("seqlen_balanced")
def seqlen_balanced(c: Candidates, n: int, *, dp: int, final: bool = False, **inner: Any) -> Selection | None:
    """n rows (fifo, or `then=` another policy) split into dp parts with balanced total sequence length."""
    if dp < 1:
        raise ValueError(f"seqlen_balanced: dp must be >= 1, got {dp}")
    then = inner.pop("then", "fifo")
    sel = resolve_policy(then)(c, n, final=final, **inner)
    if sel is None or not len(sel.take):
        return sel
    sel.parts = balanced_parts(c.seqlen[sel.take], dp)
    return sel


@register_policy("version_bounded")
def version_bounded(c: Candidates, n: int, *, version: int, eta: int, on_stale: str = "discard",
                    final: bool = False, **inner: Any) -> Selection | None:
    """Rows usable by trainer step `version` (staleness.is_fresh), then `then=` policy (fifo by default).

    Rows too old are never silently dropped: on_stale="discard" consumes them for this task and counts
    them; "consume" returns them in the batch, counted as stale. Rows from a newer version wait."""
    if on_stale not in ("discard", "consume"):
        raise ValueError(f"version_bounded: on_stale must be 'discard' or 'consume', got {on_stale!r}")
    then = inner.pop("then", "fifo")
    versions = np.unique(c.version)
    fresh_v = [w for w in versions if is_fresh(version, int(w), eta)]
    fresh = np.isin(c.version, fresh_v)
    too_old = ~fresh & (c.version < version)
    usable = fresh | too_old if on_stale == "consume" else fresh
    pos = np.nonzero(usable)[0]
    sel = resolve_policy(then)(c.subset(pos), n, final=final, **inner) if len(pos) else None
    discard = np.nonzero(too_old)[0] if on_stale == "discard" else _EMPTY
    if sel is None:
        return Selection(take=_EMPTY, discard=discard) if len(discard) else None
    take = pos[sel.take]
    stale = int(np.count_nonzero(too_old[take]))
    return Selection(take=take, discard=discard, parts=sel.parts, stale=stale)
