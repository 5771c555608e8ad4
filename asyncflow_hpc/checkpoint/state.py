"""What a checkpoint holds, written and read: HF model (safetensors), optimizer, RNG, rows in flight, metadata.

    path, info = write_checkpoint(root, step, trainer=t, tokenizer=tok, meta={...}, rows=rows, keep=2)
    meta = load_into(path, trainer)          # model + optimizer (+ reference model) + version; RNG restored
    rows = load_rows(path)                   # engines.base.Row list (store rows not yet trained on)

Layout of `<root>/step-NNNNNN/` (published by one rename, see files.py):
    config.json, model.safetensors, tokenizer files   a Hugging Face model directory (load_pretrained reads it)
    optimizer.safetensors + optimizer.json           optimizer state (tensors; scalars and param groups)
    reference.safetensors (if KL)                    the frozen reference policy
    rng.safetensors + rng.json                       torch / numpy / python RNG states of the writing rank
    trainer/ (trainer.engine=fsdp, instead of model.safetensors + optimizer.*)
                                                     the sharded model + optimizer (checkpoint/sharded.py):
                                                     every trainer rank writes its shards, a resume reshards
    rows.npz                                         rows generated but not yet consumed by the train task
    meta.json                                        step, schedule position, history, trace segments
    manifest.json                                    size and sha256 of every file (written last, see manifest.py)
Nothing is pickled: loading a checkpoint cannot run code (see nopickle.py).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from asyncflow_hpc.checkpoint.files import (SHARDS, CheckpointError, META, prune, read_meta, staged_dir,
                                            trainer_state_mismatch, write_json)
from asyncflow_hpc.checkpoint.manifest import FORMAT
from asyncflow_hpc.checkpoint.nopickle import (OPT_TENSORS, RNG_TENSORS, load_legacy, load_optimizer,
                                               restore_rng_from, save_optimizer, save_rng)

ROW_VARS = ("prompt_ids", "response_ids", "behav_logprobs")


def _engine(trainer: Any) -> Any:
    """The torch engine behind wrappers (emulation)."""
    while hasattr(trainer, "inner") and not hasattr(trainer, "optimizer"):
        trainer = trainer.inner
    return trainer


def save_rows(path: str, rows: list) -> None:
    """Rows (engines.base.Row) as packed arrays: variable-length columns are values + offsets."""
    arrays: dict[str, np.ndarray] = {
        "prompt_id": np.asarray([r.prompt_id for r in rows], dtype=np.int64),
        "sample_index": np.asarray([r.sample_index for r in rows], dtype=np.int64),
        "version": np.asarray([r.version for r in rows], dtype=np.int64),
        "reward": np.asarray([r.reward for r in rows], dtype=np.float64),
        "finished": np.asarray([bool(r.extra.get("finished", False)) for r in rows], dtype=np.int8)}
    for name in ROW_VARS:
        dt = np.float32 if name == "behav_logprobs" else np.int32
        vals = [np.asarray(getattr(r, name), dtype=dt) for r in rows]
        arrays[name] = np.concatenate(vals) if vals else np.zeros(0, dtype=dt)
        arrays[name + "_offsets"] = np.concatenate(([0], np.cumsum([len(v) for v in vals]))).astype(np.int64)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def load_rows(ckpt: str) -> list:
    from asyncflow_hpc.engines.base import Row

    path = os.path.join(ckpt, "rows.npz")
    if not os.path.exists(path):
        return []
    try:
        z = np.load(path, allow_pickle=False)
        n = len(z["prompt_id"])
        cols = {name: (z[name], z[name + "_offsets"]) for name in ROW_VARS}
        rows = []
        for i in range(n):
            var = {k: v[o[i]:o[i + 1]].tolist() for k, (v, o) in cols.items()}
            rows.append(Row(prompt_id=int(z["prompt_id"][i]), sample_index=int(z["sample_index"][i]),
                            version=int(z["version"][i]), reward=float(z["reward"][i]),
                            extra={"finished": bool(z["finished"][i])}, **var))
    except (OSError, KeyError, ValueError, IndexError) as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint's rows: {exc}") from None
    return rows


def _sharded(trainer: Any) -> bool:
    from asyncflow_hpc.engines.fsdp_trainer import is_sharded

    return is_sharded(_engine(trainer))


def write_shards(root: str, step: int, trainer: Any) -> str | None:
    """EVERY trainer rank, before the leader's write_checkpoint: a sharded trainer's model + optimizer into a
    directory beside the checkpoint (each rank its own pieces; collective), which write_checkpoint moves into
    the staged checkpoint. None for a replicated trainer (the leader writes its whole model)."""
    if not _sharded(trainer):
        return None
    from asyncflow_hpc.checkpoint.sharded import save_sharded

    path = os.path.join(root, f".shards-{step:06d}")
    save_sharded(_engine(trainer), path)
    return path


def write_checkpoint(root: str, step: int, *, trainer: Any, tokenizer: Any, meta: dict[str, Any],
                     rows: list | None = None, keep: int = 2, shards: str | None = None) -> tuple[str, dict[str, Any]]:
    """Write everything into a temporary directory (manifest last), fsync, rename to step-NNNNNN, prune.
    `shards`: write_shards' directory (a sharded trainer), moved in as trainer/."""
    t0 = time.perf_counter()
    eng = _engine(trainer)
    if _sharded(trainer) and shards is None:
        raise CheckpointError("internal: a sharded trainer's checkpoint needs write_shards() on every trainer rank")
    with staged_dir(root, step) as tmp:
        if tokenizer is not None and hasattr(tokenizer, "save"):
            tokenizer.save(tmp)
        if shards is not None:
            eng.model.config.save_pretrained(tmp)  # what the shards are of; the weights are in trainer/
            os.replace(shards, os.path.join(tmp, SHARDS))
        else:
            eng.model.save_pretrained(tmp, safe_serialization=True)
            save_optimizer(eng.optimizer.state_dict(), tmp)
        if getattr(eng, "ref_model", None) is not None and shards is None:
            from safetensors.torch import save_model

            save_model(eng.ref_model, os.path.join(tmp, "reference.safetensors"))
        save_rng(tmp)
        save_rows(os.path.join(tmp, "rows.npz"), list(rows or []))
        size = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp))
        info = {"bytes": size, "rows": len(rows or []), "written_unix": time.time()}
        write_json(os.path.join(tmp, META), {**meta, "format": FORMAT, "step": int(step),
                                                     "version": int(eng.version), **info})
    path = os.path.join(root, f"step-{step:06d}")
    prune(root, keep)
    info["seconds"] = time.perf_counter() - t0
    return path, info


def load_into(path: str, trainer: Any, *, rng: bool = True) -> dict[str, Any]:
    """Restore trainer weights, optimizer, reference policy and version (and this rank's RNG) from `path`.

    `path` was verified against its manifest by resolve_resume; every read error still names the file.
    """
    from safetensors.torch import load_file, load_model

    meta = read_meta(path)
    eng = _engine(trainer)
    why = trainer_state_mismatch(path, "fsdp" if _sharded(trainer) else "torch")
    if why:
        raise CheckpointError(why)
    if _sharded(trainer):
        from asyncflow_hpc.checkpoint.sharded import load_sharded

        load_sharded(eng, os.path.join(path, SHARDS))  # every trainer rank; reshards onto this trainer count
        eng.version = int(meta["version"])
        if rng:
            _restore_rng(path)
        return meta
    weights = os.path.join(path, "model.safetensors")
    try:
        state = load_file(weights, device=str(next(eng.model.parameters()).device))
    except Exception as exc:  # OSError, safetensors' own error on a damaged header
        raise CheckpointError(f"{weights}: cannot read the model weights: {exc}") from None
    missing, unexpected = eng.model.load_state_dict(state, strict=False)
    tied = set(getattr(eng.model, "_tied_weights_keys", None) or []) | {"lm_head.weight"}
    if unexpected or set(missing) - tied:
        raise CheckpointError(f"{weights}: does not fit the configured model (missing {sorted(missing)[:4]}, "
                              f"unexpected {sorted(unexpected)[:4]}); resume with the same model.* settings")
    if hasattr(eng.model, "tie_weights"):
        eng.model.tie_weights()
    _load_optimizer(path, eng.optimizer)
    ref = os.path.join(path, "reference.safetensors")
    if getattr(eng, "ref_model", None) is not None and os.path.exists(ref):
        try:
            load_model(eng.ref_model, ref)
        except Exception as exc:
            raise CheckpointError(f"{ref}: cannot read the reference model: {exc}") from None
    eng.version = int(meta["version"])
    if rng:
        _restore_rng(path)
    return meta


def _load_optimizer(path: str, optimizer: Any) -> None:
    if os.path.exists(os.path.join(path, OPT_TENSORS)):
        sd = load_optimizer(path)
        where = os.path.join(path, OPT_TENSORS)
    else:
        where = os.path.join(path, "optimizer.pt")
        sd = load_legacy(where, "optimizer")
    try:
        optimizer.load_state_dict(sd)
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{where}: the optimizer state does not fit this run's optimizer: {exc}") from None


def _restore_rng(path: str) -> None:
    import random

    import torch

    if os.path.exists(os.path.join(path, RNG_TENSORS)):
        restore_rng_from(path)
        return
    where = os.path.join(path, "rng.pt")
    st = load_legacy(where, "RNG")
    try:
        torch.set_rng_state(st["torch"])
        np.random.set_state(st["numpy"])
        random.setstate(st["python"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{where}: not a usable RNG state: {exc}") from None
