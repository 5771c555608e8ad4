"""Pure swap policy: when rollout instance i of k swaps in a staged weight version (sub-step asynchrony).

'all': every instance swaps at its first generation boundary after the version is staged.
'staggered': instance i belongs to group i mod g, and group j swaps at the j-th boundary after the
version was staged (j = 0, 1, ...), so at any boundary only ~k/g instances pause to swap while the rest keep
producing. A rollout whose admission is blocked by the staleness bound swaps at once (`must_swap`):
staggering never makes a rank idle.

    gate = SwapGate(instance=i, n_instances=k, policy=cfg.swap_policy, groups=cfg.stagger_groups)
    at every generation boundary:  if gate.boundary(receiver.poll(), must_swap=blocked): receiver.swap(engine.load_weights)
"""

from __future__ import annotations

from dataclasses import dataclass, field


def n_groups(n_instances: int, policy: str, groups: int = -1) -> int:
    """Effective number of swap groups (1 for 'all')."""
    if n_instances < 1:
        raise ValueError(f"n_instances must be >= 1, got {n_instances}")
    if policy == "all":
        return 1
    if policy != "staggered":
        raise ValueError(f"swap policy must be 'all' or 'staggered', got {policy!r}")
    if groups == -1:
        return n_instances
    if groups < 1:
        raise ValueError(f"stagger groups must be >= 1 or -1, got {groups}")
    return min(groups, n_instances)


def swap_offset(instance: int, n_instances: int, policy: str, groups: int = -1) -> int:
    """Generation boundaries instance `instance` lets pass, after a version is staged, before it swaps."""
    if not 0 <= instance < n_instances:
        raise ValueError(f"instance {instance} outside 0..{n_instances - 1}")
    return instance % n_groups(n_instances, policy, groups)


def swap_schedule(n_instances: int, policy: str, groups: int = -1) -> list[list[int]]:
    """Instances swapping at boundary 0, 1, 2, ... after staging (one list per boundary)."""
    g = n_groups(n_instances, policy, groups)
    return [[i for i in range(n_instances) if i % g == j] for j in range(g)]


def should_swap(*, instance: int, n_instances: int, policy: str, groups: int = -1,
                boundaries_since_staged: int, must_swap: bool = False) -> bool:
    """Whether to swap at this boundary (`boundaries_since_staged` = 0 at the first boundary after staging)."""
    if must_swap:
        return True
    return boundaries_since_staged >= swap_offset(instance, n_instances, policy, groups)


@dataclass
class SwapGate:
    """Per-instance state for `should_swap`: counts boundaries since a newer version was first staged.

    A newer version arriving while the instance is still waiting does not restart the count, so a
    fast trainer cannot starve the late groups.
    """

    instance: int
    n_instances: int
    policy: str = "all"
    groups: int = -1
    _seen_at: int | None = field(default=None, repr=False)
    _boundaries: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        swap_offset(self.instance, self.n_instances, self.policy, self.groups)  # validates

    def boundary(self, staged_version: int | None, *, must_swap: bool = False) -> bool:
        """Call at every generation boundary with receiver.poll(); True means swap now."""
        if staged_version is None:
            return False
        if self._seen_at is None:
            self._seen_at = self._boundaries
        since = self._boundaries - self._seen_at
        self._boundaries += 1
        go = should_swap(instance=self.instance, n_instances=self.n_instances, policy=self.policy,
                         groups=self.groups, boundaries_since_staged=since, must_swap=must_swap)
        if go:
            self._seen_at = None
        return go
