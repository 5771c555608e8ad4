"""Async mode: the prompt schedule at a trainer step boundary, as a checkpoint records it.

At a checkpoint after `done` steps the trainer leader records:
  fed       prompt ids [0, fed) were handed to the prompt store so far;
  consumed  the prompt groups the train task consumed (as ranges);
  rows      the rows generated but not yet trained on: a copy of what the sample store holds for the
            train task (a stopping checkpoint first drains the prompt store and waits for every rollout
            rank to finish its current group, so nothing is in flight) -- workflow/roles.TrainerLeader;
  pending   fed prompt ids that are neither consumed nor in `rows` (claimed by a rollout rank, still
            queued, or discarded by the store as too stale, which is counted, not consumed): they
            are generated again after a resume, with the same seeds.
On resume the leader puts `pending` back into the prompt store and `rows` into the sample store
before its first step, so every sample is consumed exactly once and nothing consumed is regenerated.
Pure bookkeeping: no store, MPI or workflow import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def to_ranges(ids: set[int]) -> list[list[int]]:
    """{0,1,2,5,6} -> [[0,3],[5,7]] (half-open)."""
    out: list[list[int]] = []
    for i in sorted(ids):
        if out and out[-1][1] == i:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1])
    return out


def from_ranges(ranges: list[list[int]]) -> set[int]:
    return {i for a, b in ranges for i in range(int(a), int(b))}


@dataclass
class Schedule:
    """The trainer leader's view of which prompts were fed and consumed."""

    fed: int = 0
    done_groups: set[int] = field(default_factory=set)

    def consumed(self, rows: list, fed: int) -> None:
        self.fed = fed
        self.done_groups.update(int(r.prompt_id) for r in rows)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> "Schedule":
        return cls(fed=int(meta.get("fed", 0)), done_groups=from_ranges(meta.get("consumed", [])))

    def to_meta(self, rows: list) -> dict[str, Any]:
        """The checkpoint's schedule keys, given the rows it carries (in the store, not yet trained on)."""
        in_rows = {int(r.prompt_id) for r in rows}
        pending = sorted(set(range(self.fed)) - self.done_groups - in_rows)
        return {"fed": self.fed, "consumed": to_ranges(self.done_groups), "pending": pending}
