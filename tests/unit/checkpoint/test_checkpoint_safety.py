"""Checkpoints carry no code and are verified: no pickle, a manifest checked on load, resume=auto falls back."""

import os
import pickle

import pytest
import torch

from asyncflow_hpc.checkpoint import CheckpointError, resolve_resume
from asyncflow_hpc.checkpoint.manifest import MANIFEST, write_manifest
from asyncflow_hpc.checkpoint.state import load_into, write_checkpoint


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(64, 64)  # 16 KiB of weights: a zeroed 4 KiB block lands inside the data
        self.b = torch.nn.Linear(64, 8)

    def forward(self, x):
        return self.b(self.a(x))

    def save_pretrained(self, directory, safe_serialization=True):
        from safetensors.torch import save_model

        save_model(self, os.path.join(directory, "model.safetensors"))


class _Trainer:
    def __init__(self, seed=0):
        torch.manual_seed(seed)
        self.model = _Model()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3, betas=(0.8, 0.9))
        self.version = 0
        self.model(torch.ones(2, 64)).sum().backward()
        self.optimizer.step()
        self.version = 3


class _Evil:
    """Unpickling this creates a marker file: proof that a loader ran code from the checkpoint."""

    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _write(root, step, seed=0):
    path, _ = write_checkpoint(str(root), step, trainer=_Trainer(seed), tokenizer=None, meta={}, rows=[], keep=5)
    return path


def test_round_trip_without_pickle(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    path = _write(tmp_path, 2)
    expect = (torch.rand(3), np.random.rand(3), random.random())
    names = set(os.listdir(path))
    assert {"model.safetensors", "optimizer.safetensors", "optimizer.json", "rng.safetensors", "rng.json",
            "rows.npz", "meta.json", MANIFEST} <= names
    assert not [n for n in names if n.endswith((".pt", ".pkl", ".pickle", ".bin"))]
    src = _Trainer(0)
    dst = _Trainer(1)
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    assert load_into(resolve_resume(path, str(tmp_path), log=None), dst)["step"] == 2
    for (k, p), q in zip(src.model.state_dict().items(), dst.model.state_dict().values()):
        assert torch.equal(p, q), k
    s_sd, d_sd = src.optimizer.state_dict(), dst.optimizer.state_dict()
    assert s_sd["param_groups"] == d_sd["param_groups"] and d_sd["param_groups"][0]["betas"] == (0.8, 0.9)
    for pid, st in s_sd["state"].items():
        for key, val in st.items():
            assert torch.equal(val, d_sd["state"][pid][key]), (pid, key)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expect[0]) and (got[1] == expect[1]).all() and got[2] == expect[2]
    assert dst.version == 3


def _legacy_checkpoint(root, evil_name):
    """A checkpoint as the previous version wrote it (optimizer.pt, rng.pt, no manifest), with a crafted pickle."""
    path = os.path.join(root, "step-000002")
    os.makedirs(path)
    t = _Trainer()
    t.model.save_pretrained(path)
    torch.save(t.optimizer.state_dict(), os.path.join(path, "optimizer.pt"))
    torch.save({"torch": torch.get_rng_state(), "python": _Evil()}, os.path.join(path, "rng.pt"))
    if evil_name == "optimizer.pt":
        torch.save({"state": _Evil(), "param_groups": []}, os.path.join(path, "optimizer.pt"))
    with open(os.path.join(path, "meta.json"), "w") as fh:
        fh.write('{"step": 2, "version": 2}')
    return path


@pytest.mark.parametrize("evil_name", ["rng.pt", "optimizer.pt"])
def test_a_crafted_legacy_pickle_runs_nothing(tmp_path, evil_name):
    _Evil.marker = str(tmp_path / "PWNED")
    path = _legacy_checkpoint(str(tmp_path / "ck"), evil_name)
    warned = []
    assert resolve_resume("auto", str(tmp_path / "ck"), log=warned.append) == path
    assert "cannot be verified" in warned[0]
    with pytest.raises(CheckpointError, match=f"{evil_name}.*cannot be loaded safely"):
        load_into(path, _Trainer())
    assert not os.path.exists(_Evil.marker), "loading the checkpoint executed code"


def test_a_crafted_file_in_a_new_checkpoint_runs_nothing(tmp_path):
    _Evil.marker = str(tmp_path / "PWNED")
    path = _write(tmp_path, 2)
    for name in ("rng.safetensors", "optimizer.safetensors"):
        with open(os.path.join(path, name), "wb") as fh:
            pickle.dump({"x": _Evil()}, fh)
    torch.save({"torch": _Evil()}, os.path.join(path, "rng.pt"))  # a stray legacy file is never read
    write_manifest(path)  # the attacker also rewrote the manifest: verification passes, loading must still fail
    with pytest.raises(CheckpointError, match="optimizer.safetensors"):
        load_into(resolve_resume(path, str(tmp_path), log=None), _Trainer())
    assert not os.path.exists(_Evil.marker)


def _zero_block(path, offset=4096, size=4096):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\0" * size)


def test_a_zeroed_block_is_detected(tmp_path):
    path = _write(tmp_path, 2)
    _zero_block(os.path.join(path, "model.safetensors"))
    with pytest.raises(CheckpointError, match=f"checkpoint {path}: file model.safetensors does not match"):
        resolve_resume(path, str(tmp_path), log=None)


@pytest.mark.parametrize("name", ["model.safetensors", "rows.npz", "optimizer.safetensors", "optimizer.json",
                                  "rng.safetensors", "rng.json", "meta.json"])
def test_a_truncated_file_is_named(tmp_path, name):
    path = _write(tmp_path, 2)
    fpath = os.path.join(path, name)
    with open(fpath, "r+b") as fh:
        fh.truncate(os.path.getsize(fpath) // 2)
    with pytest.raises(CheckpointError, match=f"checkpoint {path}: file {name} has .* bytes"):
        resolve_resume(path, str(tmp_path), log=None)


def test_loading_a_truncated_file_unverified_still_names_it(tmp_path):
    path = _write(tmp_path, 2)
    for name in ("optimizer.safetensors", "rng.safetensors"):
        with open(os.path.join(path, name), "r+b") as fh:
            fh.truncate(10)
        with pytest.raises(CheckpointError, match=name):
            load_into(path, _Trainer())
        _write(tmp_path, 2)


def test_missing_manifest_or_file(tmp_path):
    path = _write(tmp_path, 2)
    os.remove(os.path.join(path, "rng.json"))
    with pytest.raises(CheckpointError, match="file rng.json is missing"):
        resolve_resume(path, str(tmp_path), log=None)
    os.remove(os.path.join(path, MANIFEST))
    with pytest.raises(CheckpointError, match="manifest.json is missing"):
        resolve_resume(path, str(tmp_path), log=None)


def test_resume_auto_falls_back_to_the_newest_that_verifies(tmp_path):
    old, new = _write(tmp_path, 2), _write(tmp_path, 4)
    _zero_block(os.path.join(new, "model.safetensors"))
    said = []
    assert resolve_resume("auto", str(tmp_path), log=said.append) == old
    assert len(said) == 1 and f"skipping {new}" in said[0] and "model.safetensors" in said[0]
    with open(os.path.join(old, "rows.npz"), "r+b") as fh:
        fh.truncate(5)
    with pytest.raises(CheckpointError, match="none of the 2 checkpoints .* verifies"):
        resolve_resume("auto", str(tmp_path), log=said.append)
