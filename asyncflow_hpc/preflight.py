"""Checks of a loaded config against the filesystem and size rules, before any process starts.

    from asyncflow_hpc.preflight import preflight
    preflight(cfg, world_size)      # raises ConfigError: "<file>: <key>=<value>: what is wrong; what to do"

Called by `asyncflow-hpc config show`, `run` (with or without --dry-run) and `submit`, so that a wrong path
or a store too small for one row fails in one line instead of 5-15 s after launch on every rank.
Set ASYNCFLOW_PREFLIGHT=0 to skip it (drills that need a rank to fail after launch).
"""

from __future__ import annotations

import os
from typing import Any

from asyncflow_hpc.errors import AsyncFlowError, ConfigError, TopologyError

ENV_SKIP = "ASYNCFLOW_PREFLIGHT"


def enabled() -> bool:
    return os.environ.get(ENV_SKIP, "1").strip().lower() not in ("0", "false", "no", "off")


def preflight(cfg: Any, world_size: int | None = None) -> None:
    """Every check below; the first problem raises one ConfigError naming the key and the config file."""
    if not enabled():
        return
    where = cfg.source_file or "<defaults>"
    for check in (_topology, _model_path, _data_paths, _resume, _store_unit):
        problem = check(cfg, world_size)
        if problem:
            raise ConfigError(f"{where}: {problem}")


def _topology(cfg: Any, world_size: int | None) -> str | None:
    from asyncflow_hpc.topology.roles import plan_layout

    try:
        plan_layout(world_size or cfg.topology.world_size, cfg.topology)
    except TopologyError as exc:
        return str(exc)
    return None


def _expand(key: str, value: str) -> tuple[str | None, str | None]:
    """(expanded path, None) or (None, problem) for an unset ${VAR}."""
    from asyncflow_hpc.data.loaders import resolve_path

    try:
        return resolve_path(value), None
    except AsyncFlowError:
        return None, f"{key}={value!r}: an environment variable in it is not set"


def _model_path(cfg: Any, _world: int | None) -> str | None:
    m = cfg.model
    if not m.path:
        if cfg.rollout.engine != "torch" and cfg.workflow.job == "train":
            return (f"rollout.engine={cfg.rollout.engine} needs model.path (a local HF model directory; "
                    f"`asyncflow-hpc model import` makes one)")
        return None
    path, problem = _expand("model.path", m.path)
    if problem:
        return problem
    if not os.path.exists(path):
        return f"model.path={m.path!r}: no such directory ({os.path.abspath(path)})"
    if not os.path.isdir(path):
        return f"model.path={m.path!r}: is a file; expected a Hugging Face model directory (config.json + weights)"
    if not os.path.isfile(os.path.join(path, "config.json")):
        return (f"model.path={m.path!r}: no config.json in {os.path.abspath(path)}; expected a Hugging Face model "
                f"directory (`asyncflow-hpc model import SRC DST` makes one from a GGUF file)")
    return None


def _data_paths(cfg: Any, _world: int | None) -> str | None:
    for key in ("train_path", "test_path"):
        value = getattr(cfg.data, key)
        if not value:
            continue
        path, problem = _expand(f"data.{key}", value)
        if problem:
            return problem
        if not os.path.exists(path):
            return f"data.{key}={value!r}: no such file ({os.path.abspath(path)})"
        if os.path.isdir(path):
            return f"data.{key}={value!r}: is a directory; expected a JSONL or parquet file"
    return None


def _resume(cfg: Any, _world: int | None) -> str | None:
    """An explicit resume= path must hold a checkpoint (its files are verified by every rank at start)."""
    from asyncflow_hpc.checkpoint.files import META, latest, trainer_state_mismatch

    if cfg.resume in ("", "auto"):
        return None
    path = os.path.expanduser(cfg.resume)
    if not os.path.exists(path):
        return f"resume={cfg.resume!r}: no such checkpoint directory ({os.path.abspath(path)})"
    if os.path.isfile(os.path.join(path, META)):
        why = trainer_state_mismatch(path, cfg.trainer.engine) if cfg.trainer.engine != "auto" else None
        return f"resume={cfg.resume!r}: {why}" if why else None  # auto: decided on the ranks, checked there
    if latest(path):
        return None
    return (f"resume={cfg.resume!r}: not a checkpoint (no {META}) nor a folder of step-NNNNNN checkpoints; "
            f"use resume=auto to continue this run, or resume='' to start fresh")


def row_bytes(cfg: Any) -> tuple[int, str]:
    """Bytes of the largest row the async workflow can put into the sample store, and its largest column."""
    from asyncflow_hpc.store.schema import aligned
    from asyncflow_hpc.workflow.rows import group_advantages_stored, sample_schema

    schema = sample_schema(reference=cfg.topology.reference_ranks > 0,
                           advantage=group_advantages_stored(cfg.algorithm))
    longest = {"prompt_ids": cfg.data.max_prompt_tokens}
    total, big, big_bytes = 0, "", -1
    for col in schema.columns:
        n = (longest.get(col.name, cfg.rollout.max_new_tokens)) if col.var else 1
        nbytes = int(aligned(col.elem_bytes * n))
        total += nbytes
        if nbytes > big_bytes:
            big, big_bytes = col.name, nbytes
    return total, big


def _store_unit(cfg: Any, _world: int | None) -> str | None:
    if cfg.workflow.mode != "async" or cfg.workflow.job != "train":
        return None  # only the async workflow streams rows through the store
    need, big = row_bytes(cfg)
    have = cfg.store.unit_bytes
    if need <= have:
        return None
    return (f"store.unit_mb={cfg.store.unit_mb:g} ({have} bytes) is smaller than one row of the sample store "
            f"(up to {need} bytes with data.max_prompt_tokens={cfg.data.max_prompt_tokens} and "
            f"rollout.max_new_tokens={cfg.rollout.max_new_tokens}; largest column '{big}'); raise store.unit_mb "
            f"to at least {need / 2**20:.4f}")
