"""What the async workflow keeps in its two stores: schemas, the columns each task waits for, rows in and out.

    prompts, samples = open_stores(cfg, comms)          # collective over the world
    cols, meta = rows_to_store(group_rows, reward_inline, n, cfg.algorithm)   # one prompt group
    rows = rows_from_batch(samples.get("train", train_columns(cfg, layout), ...), n)

Sample store columns: prompt_ids, response_ids, behav_logprobs, reward, finished; `advantage` (GRPO,
written with the reward by whoever scores the whole group); `ref_logprobs` (only with dedicated
reference ranks). Tasks: train (trainer leader), reward / reference (dedicated ranks, when present).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from asyncflow_hpc.topology.roles import Role
from asyncflow_hpc.workflow import common

SAMPLE_COLUMNS = ("prompt_ids", "response_ids", "behav_logprobs", "reward", "finished")
REF_COLUMN = "ref_logprobs"  # only with dedicated reference ranks (topology.reference_ranks)
ADV_COLUMN = "advantage"  # GRPO: written with the reward, by whoever scores the whole group


def group_advantages_stored(algo_cfg) -> bool:
    """GRPO advantages are group-local: the reward stage stores them; a batch baseline (ppo), the batch std or
    length shaping need the batch (the trainer computes them)."""
    return algo_cfg.group_local_advantages


def sample_schema(reference: bool = False, advantage: bool = False):
    from asyncflow_hpc.store import Column, Schema

    cols = [Column("prompt_ids", "int32", var=True), Column("response_ids", "int32", var=True),
            Column("behav_logprobs", "float32", var=True), Column("reward", "float32"), Column("finished", "int8")]
    if reference:
        cols.append(Column(REF_COLUMN, "float32", var=True))
    if advantage:
        cols.append(Column(ADV_COLUMN, "float64"))
    return Schema(cols)


def train_columns(cfg, layout) -> list[str]:
    """What a row needs before the trainer may take it: its GRPO advantage and, with reference ranks,
    its reference log-probs too."""
    return (list(SAMPLE_COLUMNS) + ([ADV_COLUMN] if group_advantages_stored(cfg.algorithm) else [])
            + ([REF_COLUMN] if layout.ranks(Role.REFERENCE) else []))


def prompt_schema():
    from asyncflow_hpc.store import Column, Schema

    return Schema([Column("prompt_id", "int64")])


def _sample_store_role(layout, rank: int) -> str:
    if layout.has(rank, Role.STORE):
        return "server"
    if layout.has(rank, Role.ROLLOUT):
        return "producer"
    if layout.has(rank, Role.REWARD) or layout.has(rank, Role.REFERENCE) or rank == layout.trainer_leader:
        return "consumer"
    return "idle"


def _prompt_store_role(layout, rank: int) -> str:
    if rank == layout.trainer_leader:
        return "producer"
    return "consumer" if layout.has(rank, Role.ROLLOUT) else "idle"


def open_stores(cfg, comms) -> tuple[Any, Any]:
    """Both stores, collectively over the world (same order on every rank)."""
    from asyncflow_hpc.store import make_store

    lay, r = comms.layout, comms.rank
    prompts = make_store(cfg.store, prompt_schema(), comms.world, role=_prompt_store_role(lay, r),
                         label=f"{lay.role_of(r)}/prompts")
    schema = sample_schema(reference=bool(lay.ranks(Role.REFERENCE)), advantage=group_advantages_stored(cfg.algorithm))
    samples = make_store(cfg.store, schema, comms.world, role=_sample_store_role(lay, r),
                         label=f"{lay.role_of(r)}/samples")
    if r == lay.trainer_leader:
        prompts.register_task("rollout", ["prompt_id"])
        samples.register_task("train", train_columns(cfg, lay))
        # a reward / reference rank adds its columns later (put_columns): the rollout's puts may lack them
        if lay.ranks(Role.REWARD):
            scored = ["reward"] + ([ADV_COLUMN] if group_advantages_stored(cfg.algorithm) else [])
            samples.register_task("reward", ["prompt_ids", "response_ids"], adds=scored)
        if lay.ranks(Role.REFERENCE):
            samples.register_task("reference", ["prompt_ids", "response_ids"], adds=[REF_COLUMN])
    comms.world.Barrier()  # tasks are registered before anyone puts or gets
    return prompts, samples


def rows_to_store(rows, reward_inline: bool, n: int, algo_cfg) -> tuple[dict, list]:
    """Columns and metadata of one prompt group's rows; with the reward inline (no reward ranks) its GRPO
    advantages too."""
    from asyncflow_hpc.store import RowMeta

    cols: dict[str, Any] = {
        "prompt_ids": [np.asarray(r.prompt_ids, dtype=np.int32) for r in rows],
        "response_ids": [np.asarray(r.response_ids, dtype=np.int32) for r in rows],
        "behav_logprobs": [np.asarray(r.behav_logprobs, dtype=np.float32) for r in rows],
        "finished": np.asarray([int(bool(r.extra.get("finished", False))) for r in rows], dtype=np.int8),
    }
    if reward_inline:
        cols["reward"] = np.asarray([r.reward for r in rows], dtype=np.float32)
        if group_advantages_stored(algo_cfg):
            cols[ADV_COLUMN] = common.group_advantages(cols["reward"], algo_cfg)
    meta = [RowMeta(index=r.prompt_id * n + r.sample_index, group=r.prompt_id, version=r.version)
            for r in rows]
    return cols, meta


def rows_from_batch(batch, n: int) -> list:
    from asyncflow_hpc.engines.base import Row

    rows = []
    ref = batch[REF_COLUMN] if REF_COLUMN in batch.columns else None
    adv = batch[ADV_COLUMN] if ADV_COLUMN in batch.columns else None
    for i in range(len(batch)):
        pid = int(batch.group[i])
        rows.append(Row(prompt_id=pid, sample_index=int(batch.index[i]) - pid * n,
                        prompt_ids=batch["prompt_ids"][i].tolist(), response_ids=batch["response_ids"][i].tolist(),
                        behav_logprobs=batch["behav_logprobs"][i].tolist(), version=int(batch.version[i]),
                        reward=float(batch["reward"][i]), extra={"finished": bool(batch["finished"][i])},
                        ref_logprobs=None if ref is None else ref[i].tolist(),
                        advantage=0.0 if adv is None else float(adv[i])))
    return rows
