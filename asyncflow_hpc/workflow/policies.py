"""Store sampling policies of the workflows (resolved by dotted path inside the store controller)."""

from __future__ import annotations

import numpy as np


def oldest_version_groups(c, n: int, *, group_size: int, final: bool = False):
    """Whole prompt groups, the oldest policy version first (then arrival order).

    Rows closest to the staleness bound are trained on before they expire, so a long-tailed group
    that finishes late is still used rather than discarded."""
    from asyncflow_hpc.store.policies import grpo_group

    if not len(c):
        return None
    order = np.lexsort((np.arange(len(c)), c.version))  # primary key: version, then arrival
    sel = grpo_group(c.subset(order), n, group_size=group_size, final=final)
    if sel is None:
        return None
    sel.take = order[sel.take]
    return sel
