"""Sharded trainer checkpoints (model + optimizer) with torch.distributed.checkpoint, in safetensors, no pickle.

    save_sharded(trainer, dir)    # EVERY trainer rank; each writes its own shards
    load_sharded(trainer, dir)    # EVERY trainer rank; any number of trainer ranks (reshards 2 -> 1, 1 -> 2, ...)
    export_hf(trainer, dir, tok)  # EVERY trainer rank; the first writes a full HF safetensors directory

What is written: `dir/*.safetensors` by DCP's HuggingFaceStorageWriter(save_distributed=True) (each rank
its pieces, with their offsets in the safetensors JSON header), and `dir/sharded.json` (the trainer
version, the optimizer's non-tensor hyperparameters, the saving world size, the tensor keys). DCP's
default FileSystemWriter pickles its `.metadata` file and `torch.save`s every tensor; this format has
neither: DCP's HuggingFaceStorageReader rebuilds the metadata from the safetensors headers, so reading
a checkpoint can only produce tensors, numbers, strings, lists and dicts. Keys are the model's
parameter FQNs under `model.` and the flattened optimizer state (`state.<fqn>.exp_avg`, ...) under
`optim.`; the store/RNG/schedule state stays with checkpoint/state.py.
"""

from __future__ import annotations

import json
import os
from typing import Any

from asyncflow_hpc.checkpoint.files import CheckpointError

META = "sharded.json"
FORMAT = "asyncflow-sharded-1"


def _options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(flatten_optimizer_state_dict=True)


def _enc(value: Any) -> Any:
    """JSON for an optimizer hyperparameter; tuples are marked so that they come back as tuples."""
    if isinstance(value, tuple):
        return {"__tuple__": [_enc(v) for v in value]}
    if isinstance(value, list):
        return [_enc(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise CheckpointError(f"sharded checkpoint: cannot store optimizer value {value!r} ({type(value).__name__}) "
                          f"without pickle")


def _dec(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"__tuple__"}:
        return tuple(_dec(v) for v in value["__tuple__"])
    if isinstance(value, list):
        return [_dec(v) for v in value]
    return value


def _split(trainer: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensors under model./optim., non-tensor optimizer entries) of the trainer's current state; a tied
    alias is left out (its storage is the original's)."""
    import torch
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(trainer.model, trainer.optimizer, options=_options())
    tensors, seen = {}, {}
    for k, v in msd.items():  # a tied alias (lm_head.weight = the embedding) is stored once
        local = v.to_local() if hasattr(v, "to_local") else v
        ptr = (local.untyped_storage().data_ptr(), local.storage_offset(), tuple(v.shape))
        if ptr not in seen or not local.numel():
            seen[ptr] = k
            tensors[f"model.{k}"] = v
    plain = {}
    for k, v in osd.items():
        if isinstance(v, torch.Tensor):
            tensors[f"optim.{k}"] = v
        else:
            plain[k] = v
    return tensors, plain


def _group_rank(group: Any) -> int:
    import torch.distributed as dist

    return dist.get_rank(group) if group is not None else 0


def save_sharded(trainer: Any, path: str) -> None:
    """Write the trainer's sharded model + optimizer state as the directory `path` (collective; replaces it).
    The files go to `path.tmp` first; `path` appears, complete, when the last rank has written."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    import shutil

    lead = _group_rank(trainer.group) == 0
    tmp = path.rstrip("/") + ".tmp"  # shards of an older save must not mix in: write afresh, then rename
    if lead:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    dist.barrier(group=trainer.group)
    tensors, plain = _split(trainer)
    dcp.save(tensors, storage_writer=dcp.HuggingFaceStorageWriter(tmp, save_distributed=True),
             process_group=trainer.group)
    if lead:
        meta = {"format": FORMAT, "version": int(trainer.version), "world": dist.get_world_size(trainer.group),
                "tensor_keys": sorted(tensors), "optimizer": {k: _enc(v) for k, v in plain.items()}}
        with open(os.path.join(tmp, META), "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=1, sort_keys=True)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    dist.barrier(group=trainer.group)


def read_meta(path: str) -> dict[str, Any]:
    where = os.path.join(path, META)
    try:
        with open(where, encoding="utf-8") as fh:
            meta = json.load(fh)
    except FileNotFoundError:
        raise CheckpointError(f"{where}: not found; is {path} a sharded trainer checkpoint "
                              f"(asyncflow_hpc.checkpoint.sharded.save_sharded)?") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{where}: not valid JSON ({exc}); the checkpoint is damaged") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{where}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def load_sharded(trainer: Any, path: str) -> int:
    """Load `path` into the trainer (collective over its group), resharding onto this trainer's ranks.
    Returns the number of trainer ranks that saved it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_state_dict

    meta = read_meta(path)
    tensors, plain = _split(trainer)  # the template: this trainer's shapes and sharding
    if sorted(tensors) != meta["tensor_keys"]:
        mine, theirs = set(tensors), set(meta["tensor_keys"])
        raise CheckpointError(f"{path}: the checkpoint does not match this trainer: missing "
                              f"{sorted(mine - theirs)[:5]}, unexpected {sorted(theirs - mine)[:5]} "
                              f"(same model and optimizer?)")
    dcp.load(tensors, storage_reader=dcp.HuggingFaceStorageReader(path), process_group=trainer.group)
    msd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    msd = {k: msd.get(k, v) for k, v in get_model_state_dict(trainer.model).items()}  # tied aliases: loaded storage
    osd = {k[len("optim."):]: v for k, v in tensors.items() if k.startswith("optim.")}
    saved = {k: _dec(v) for k, v in meta["optimizer"].items()}
    if set(saved) != set(plain):
        raise CheckpointError(f"{path}: optimizer hyperparameters {sorted(set(saved) ^ set(plain))[:5]} differ "
                              f"from this trainer's optimizer")
    osd.update(saved)
    set_state_dict(trainer.model, trainer.optimizer, model_state_dict=msd, optim_state_dict=osd, options=_options())
    trainer.version = int(meta["version"])
    return int(meta["world"])


def export_hf(trainer: Any, path: str, tokenizer: Any = None, bucket_mb: float = 64.0) -> None:
    """The full policy as a Hugging Face directory (config.json + model.safetensors [+ tokenizer]), what
    vLLM and users load. Collective over the trainer group; the group's first rank writes it, holding
    one unsharded copy of the model while it does."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    if not hasattr(trainer, "gather_for_broadcast"):  # a replicated engine: its model is whole already
        named = trainer.named_parameters_for_broadcast() if _group_rank(trainer.group) == 0 else None
    else:
        named = list(trainer.gather_for_broadcast(bucket_mb))
    if _group_rank(trainer.group) != 0:
        return
    cfg = copy.deepcopy(trainer.model.config)
    dtype = named[0][1].dtype if named else torch.float32
    full = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    missing, unexpected = full.load_state_dict(dict(named), strict=False)
    tied = {"lm_head.weight"} if getattr(cfg, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise CheckpointError(f"export_hf {path}: gathered weights do not fit {type(full).__name__}: missing "
                              f"{sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]}")
    if tokenizer is not None:
        from asyncflow_hpc.models.hf import save_pretrained

        save_pretrained(full, tokenizer, path)
    else:
        full.save_pretrained(path, safe_serialization=True)
