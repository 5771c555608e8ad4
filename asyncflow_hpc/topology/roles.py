"""Pure rank layout: (world size, TopologyConfig, node of each rank) -> the role of every rank.

No MPI, no torch: tests drive `plan_layout` over many shapes. `comms.py` turns a Layout into
communicators.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Sequence

from asyncflow_hpc.errors import TopologyError
from asyncflow_hpc.topology.config import TopologyConfig


class Role(str, enum.Enum):
    STORE = "store"
    TRAINER = "trainer"
    REFERENCE = "reference"
    REWARD = "reward"
    ROLLOUT = "rollout"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Layout:
    """The role of every rank and the groups derived from it."""

    world_size: int
    roles: tuple[tuple[Role, ...], ...]  # per rank; two roles only when colocated
    trainer_tp: int = 1
    trainer_pp: int = 1
    trainer_dp: int = 1
    rollout_tp: int = 1
    colocate: bool = False
    nodes: tuple[int, ...] = field(default=())  # node index of each rank

    def ranks(self, role: Role) -> tuple[int, ...]:
        return tuple(r for r, rs in enumerate(self.roles) if role in rs)

    def role_of(self, rank: int) -> Role:
        """The primary role of `rank` (trainer when colocated)."""
        return self.roles[rank][0]

    def has(self, rank: int, role: Role) -> bool:
        return role in self.roles[rank]

    @property
    def trainer_ranks(self) -> tuple[int, ...]:
        return self.ranks(Role.TRAINER)

    @property
    def rollout_ranks(self) -> tuple[int, ...]:
        return self.ranks(Role.ROLLOUT)

    @property
    def trainer_leader(self) -> int:
        return self.trainer_ranks[0]

    def trainer_replicas(self) -> list[tuple[int, ...]]:
        """Model-parallel groups (tp*pp ranks each), one per data-parallel rank. The first rank of
        each replica is the only one that talks to the store; it broadcasts inside its replica."""
        t, mp = self.trainer_ranks, self.trainer_tp * self.trainer_pp
        return [t[i:i + mp] for i in range(0, len(t), mp)]

    def trainer_dp_groups(self) -> list[tuple[int, ...]]:
        """Ranks holding the same model shard in different replicas (gradient all-reduce groups)."""
        reps = self.trainer_replicas()
        return [tuple(rep[j] for rep in reps) for j in range(self.trainer_tp * self.trainer_pp)]

    def rollout_instances(self) -> list[tuple[int, ...]]:
        """Rollout engine instances (rollout_tp ranks each); the first rank of each is its leader."""
        r, tp = self.rollout_ranks, self.rollout_tp
        return [r[i:i + tp] for i in range(0, len(r), tp)]

    def store_talkers(self) -> tuple[int, ...]:
        """Ranks that call the store: replica leaders, rollout-instance leaders, reward/reference ranks."""
        talkers = {rep[0] for rep in self.trainer_replicas()}
        talkers |= {inst[0] for inst in self.rollout_instances()}
        talkers |= set(self.ranks(Role.REWARD)) | set(self.ranks(Role.REFERENCE))
        return tuple(sorted(talkers))

    def weight_group(self) -> tuple[int, ...]:
        """Trainer leader first, then every rollout rank not colocated with it: the broadcast group."""
        if self.colocate:
            return ()
        return (self.trainer_leader,) + tuple(r for r in self.rollout_ranks if r != self.trainer_leader)

    def describe(self) -> str:
        parts = []
        for role in Role:
            rs = self.ranks(role)
            if rs:
                parts.append(f"{role}={_span(rs)}")
        extra = f" trainer(dp={self.trainer_dp},tp={self.trainer_tp},pp={self.trainer_pp})"
        return f"world={self.world_size} " + " ".join(parts) + extra + (" colocated" if self.colocate else "")


def _span(ranks: Sequence[int]) -> str:
    if list(ranks) == list(range(ranks[0], ranks[0] + len(ranks))) and len(ranks) > 2:
        return f"{ranks[0]}-{ranks[-1]}"
    return ",".join(str(r) for r in ranks)


def plan_layout(world_size: int, cfg: TopologyConfig, nodes: Sequence[int] | None = None) -> Layout:
    """Assign roles. Raises TopologyError naming the `topology.*` keys when impossible."""
    if world_size < 1:
        raise TopologyError(f"topology: world size must be >= 1, got {world_size}")
    nodes = tuple(nodes) if nodes is not None else (0,) * world_size
    if len(nodes) != world_size:
        raise TopologyError(f"topology: got node ids for {len(nodes)} ranks, world size is {world_size}")
    mp = cfg.trainer_tp * cfg.trainer_pp
    if cfg.colocate:
        return _colocated(world_size, cfg, nodes, mp)

    special = [(Role.STORE, cfg.store_ranks), (Role.REFERENCE, cfg.reference_ranks), (Role.REWARD, cfg.reward_ranks)]
    fixed = cfg.trainer_ranks + sum(n for _, n in special)
    rollout = cfg.rollout_ranks if cfg.rollout_ranks >= 0 else world_size - fixed
    total = fixed + rollout
    if cfg.trainer_ranks < 1:
        raise TopologyError("topology.trainer_ranks: the async layout needs at least 1 trainer rank "
                            "(or set topology.colocate=true)")
    if rollout < 1 or total > world_size:
        raise TopologyError(
            f"topology: {total_desc(cfg, rollout)} needs {max(total, fixed + 1)} ranks, but the job has "
            f"{world_size}; lower topology.trainer_ranks/rollout_ranks or launch more ranks")
    if total < world_size:
        raise TopologyError(
            f"topology: {total_desc(cfg, rollout)} uses {total} of {world_size} ranks; "
            f"{world_size - total} would have no role (set topology.rollout_ranks=-1 to give them rollout)")
    dp = _check_trainer_shape(cfg, mp)
    if rollout % cfg.rollout_tp:
        raise TopologyError(f"topology.rollout_tp: {rollout} rollout ranks are not divisible into "
                            f"instances of rollout_tp={cfg.rollout_tp}")

    roles: list[Role | None] = [None] * world_size
    order = list(range(world_size))
    if cfg.placement == "spread":
        # Special ranks round-robin over nodes (last ranks of each node first), so store traffic and
        # reward work are not all on node 0.
        by_node: dict[int, list[int]] = {}
        for r in reversed(order):
            by_node.setdefault(nodes[r], []).append(r)
        picks = []
        while any(by_node.values()):
            for n in sorted(by_node):
                if by_node[n]:
                    picks.append(by_node[n].pop(0))
        it = iter(picks)
        for role, n in special:
            for _ in range(n):
                roles[next(it)] = role
        free = [r for r in order if roles[r] is None]
    else:
        free = order
        for role, n in special:
            for _ in range(n):
                roles[free.pop(0)] = role
        free = [r for r in order if roles[r] is None]
    for r in free[: cfg.trainer_ranks]:
        roles[r] = Role.TRAINER
    for r in free[cfg.trainer_ranks:]:
        roles[r] = Role.ROLLOUT
    return Layout(world_size=world_size, roles=tuple((r,) for r in roles), trainer_tp=cfg.trainer_tp,
                  trainer_pp=cfg.trainer_pp, trainer_dp=dp, rollout_tp=cfg.rollout_tp, nodes=nodes)


def total_desc(cfg: TopologyConfig, rollout: int) -> str:
    parts = [f"trainer_ranks={cfg.trainer_ranks}", f"rollout_ranks={rollout}"]
    for name in ("store_ranks", "reference_ranks", "reward_ranks"):
        if getattr(cfg, name):
            parts.append(f"{name}={getattr(cfg, name)}")
    return " + ".join(parts)


def _check_trainer_shape(cfg: TopologyConfig, mp: int, trainer_ranks: int | None = None) -> int:
    n = cfg.trainer_ranks if trainer_ranks is None else trainer_ranks
    if n % mp:
        raise TopologyError(f"topology.trainer_ranks: {n} trainer ranks are not divisible by "
                            f"trainer_tp*trainer_pp = {cfg.trainer_tp}*{cfg.trainer_pp} = {mp}")
    dp = n // mp
    if cfg.trainer_dp not in (-1, dp):
        raise TopologyError(f"topology.trainer_dp: {n} trainer ranks with tp={cfg.trainer_tp}, "
                            f"pp={cfg.trainer_pp} give dp={dp}, but trainer_dp={cfg.trainer_dp}")
    return dp


def _colocated(world_size: int, cfg: TopologyConfig, nodes: tuple[int, ...], mp: int) -> Layout:
    if cfg.store_ranks or cfg.reward_ranks or cfg.reference_ranks:
        raise TopologyError("topology.colocate: dedicated store/reward/reference ranks are not supported "
                            "when colocated; set them to 0")
    dp = _check_trainer_shape(cfg, mp, trainer_ranks=world_size)
    if world_size % cfg.rollout_tp:
        raise TopologyError(f"topology.rollout_tp: {world_size} ranks are not divisible into rollout "
                            f"instances of {cfg.rollout_tp}")
    roles = tuple((Role.TRAINER, Role.ROLLOUT) for _ in range(world_size))
    return Layout(world_size=world_size, roles=roles, trainer_tp=cfg.trainer_tp, trainer_pp=cfg.trainer_pp,
                  trainer_dp=dp, rollout_tp=cfg.rollout_tp, colocate=True, nodes=nodes)
