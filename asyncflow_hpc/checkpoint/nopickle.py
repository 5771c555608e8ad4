"""Optimizer and RNG state without pickle: tensors in safetensors, everything else in plain JSON.

    save_optimizer(sd, dir)  -> optimizer.safetensors (state tensors) + optimizer.json (scalars, param groups)
    sd = load_optimizer(dir)    a dict that torch.optim.Optimizer.load_state_dict accepts
    save_rng(dir) / restore_rng_from(dir)   rng.safetensors (torch state, numpy key) + rng.json (the rest)

Reading these files can only produce tensors, numbers, strings, lists and dicts: nothing in a checkpoint
can run code. A checkpoint from before this format (optimizer.pt, rng.pt) is read with torch's
weights_only=True loader, or refused (load_legacy).
"""

from __future__ import annotations

import json
import os
import random
from typing import Any

import numpy as np

from asyncflow_hpc.checkpoint.files import CheckpointError, write_json

OPT_TENSORS, OPT_JSON = "optimizer.safetensors", "optimizer.json"
RNG_TENSORS, RNG_JSON = "rng.safetensors", "rng.json"


def _enc(value: Any, where: str) -> Any:
    """A JSON-able encoding of an optimizer hyperparameter; tuples are marked so that they come back as tuples."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {"__tuple__": [_enc(v, where) for v in value]}
    if isinstance(value, list):
        return [_enc(v, where) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"__dict__": {k: _enc(v, where) for k, v in value.items()}}
    raise CheckpointError(f"optimizer state {where}: a {type(value).__name__} cannot be stored without pickle")


def _dec(value: Any) -> Any:
    if isinstance(value, list):
        return [_dec(v) for v in value]
    if isinstance(value, dict):
        if "__tuple__" in value:
            return tuple(_dec(v) for v in value["__tuple__"])
        if "__dict__" in value:
            return {k: _dec(v) for k, v in value["__dict__"].items()}
        if "tensor" in value:
            return value  # resolved by the caller
    return value


def _split(items: dict, prefix: str, tensors: dict) -> dict[str, Any]:
    """Tensors of `items` go into `tensors` under prefix.key; the rest is encoded for JSON."""
    import torch

    out: dict[str, Any] = {}
    for key, val in items.items():
        if isinstance(val, torch.Tensor):
            name = f"{prefix}.{key}"
            tensors[name] = val.detach().to("cpu").contiguous().clone()
            out[key] = {"tensor": name}
        else:
            out[key] = _enc(val, f"{prefix}.{key}")
    return out


def save_optimizer(sd: dict[str, Any], directory: str) -> None:
    from safetensors.torch import save_file

    tensors: dict[str, Any] = {}
    state = [[pid, _split(st, f"state.{pid}", tensors)] for pid, st in sd.get("state", {}).items()]
    groups = [_split(g, f"group.{i}", tensors) for i, g in enumerate(sd.get("param_groups", []))]
    save_file(tensors, os.path.join(directory, OPT_TENSORS))
    write_json(os.path.join(directory, OPT_JSON), {"format": 1, "state": state, "param_groups": groups})


def _resolve(items: dict[str, Any], tensors: dict, path: str) -> dict[str, Any]:
    out = {}
    for key, val in items.items():
        if isinstance(val, dict) and "tensor" in val:
            if val["tensor"] not in tensors:
                raise CheckpointError(f"{path}: tensor {val['tensor']!r} is missing from {OPT_TENSORS}")
            out[key] = tensors[val["tensor"]]
        else:
            out[key] = _dec(val)
    return out


def load_optimizer(directory: str) -> dict[str, Any]:
    from safetensors.torch import load_file

    path = os.path.join(directory, OPT_JSON)
    try:
        tensors = load_file(os.path.join(directory, OPT_TENSORS))
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
        state = {pid: _resolve(st, tensors, path) for pid, st in doc["state"]}
        groups = [_resolve(g, tensors, path) for g in doc["param_groups"]]
    except CheckpointError:
        raise
    except Exception as exc:  # safetensors, JSON or layout errors: name the files
        raise CheckpointError(f"{directory}/{OPT_TENSORS} + {OPT_JSON}: cannot read the optimizer state: "
                              f"{exc}") from None
    return {"state": state, "param_groups": groups}


def save_rng(directory: str) -> None:
    """This rank's torch, numpy and Python RNG states."""
    import torch
    from safetensors.torch import save_file

    name, key, pos, has_gauss, cached = np.random.get_state()
    version, pystate, gauss = random.getstate()
    save_file({"torch": torch.get_rng_state().contiguous(),
               "numpy_key": torch.from_numpy(np.asarray(key, dtype=np.int64))},
              os.path.join(directory, RNG_TENSORS))
    write_json(os.path.join(directory, RNG_JSON), {
        "format": 1, "numpy": {"bit_generator": name, "pos": int(pos), "has_gauss": int(has_gauss),
                               "cached_gaussian": float(cached)},
        "python": {"version": version, "state": list(pystate), "gauss": gauss}})


def restore_rng_from(directory: str) -> None:
    import torch
    from safetensors.torch import load_file

    try:
        t = load_file(os.path.join(directory, RNG_TENSORS))
        with open(os.path.join(directory, RNG_JSON), encoding="utf-8") as fh:
            doc = json.load(fh)
        npd, py = doc["numpy"], doc["python"]
        np_state = (str(npd["bit_generator"]), t["numpy_key"].numpy().astype(np.uint32), int(npd["pos"]),
                    int(npd["has_gauss"]), float(npd["cached_gaussian"]))
        py_state = (int(py["version"]), tuple(int(x) for x in py["state"]), py["gauss"])
        torch_state = t["torch"].to(torch.uint8)
    except Exception as exc:
        raise CheckpointError(f"{directory}/{RNG_TENSORS} + {RNG_JSON}: cannot read the RNG states: {exc}") from None
    torch.set_rng_state(torch_state)
    np.random.set_state(np_state)
    random.setstate(py_state)


def load_legacy(path: str, what: str) -> Any:
    """A pre-manifest optimizer.pt / rng.pt, with torch's weights_only loader only (never arbitrary pickle)."""
    import torch

    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: this {what} file was written by an older asyncflow-hpc as a pickle that "
                              f"cannot be loaded safely (weights_only=True refused it: {first[:160]}); resume from "
                              f"a checkpoint written by this version, or resume='' to start fresh") from None
