"""The staleness bound eta, in one place: used by the store's sampling, the workflow and the simulator.

Definitions (see ../shared/DESIGN.md, "Semantics worth keeping exact"):
- A row carries the policy version `w` of the weights that generated it.
- Trainer step `v` trains with policy version `v` and may consume row r only if v - w(r) <= eta.
- Rollout admission control: steps consume `batch_rows` rows each, in order, so rows generated with
  version w can only be used by steps w .. w + eta. A rollout holding version w may therefore start
  a row only while fewer than (w + eta + 1) * batch_rows rows have been admitted in total; beyond
  that it must wait for newer weights. With eta = 0 that is exactly one batch per version: strictly
  on-policy.
"""

from __future__ import annotations


def staleness(consumer_version: int, row_version: int) -> int:
    """How many policy versions old a row is when trainer step `consumer_version` consumes it."""
    return consumer_version - row_version


def is_fresh(consumer_version: int, row_version: int, eta: int) -> bool:
    """Trainer step `consumer_version` may consume a row of `row_version` (never a row from the future)."""
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    s = consumer_version - row_version
    return 0 <= s <= eta


def admission_quota(rollout_version: int, eta: int, batch_rows: int) -> int:
    """Total rows that may have been admitted (started) by a rollout holding `rollout_version`."""
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    return (rollout_version + eta + 1) * batch_rows


def required_version(rows_admitted: int, eta: int, batch_rows: int) -> int:
    """The lowest weight version with which the next row (index `rows_admitted`) may be admitted."""
    # rows_admitted < (w + eta + 1) * B  <=>  w >= floor(rows_admitted / B) - eta
    return max(0, rows_admitted // batch_rows - eta)
