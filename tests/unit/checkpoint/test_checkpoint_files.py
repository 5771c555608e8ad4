"""Checkpoint directories, rows, resume resolution, the stop flag and the store's peek (no MPI)."""

import os
import signal

import numpy as np
import pytest

from asyncflow_hpc.checkpoint import CheckpointError, latest, list_checkpoints, prune, resolve_resume, staged_dir
from asyncflow_hpc.checkpoint.files import read_meta, write_json
from asyncflow_hpc.checkpoint.schedule import from_ranges, to_ranges
from asyncflow_hpc.checkpoint.signals import StopFlag


def _write(root, step, fail=False):
    with staged_dir(str(root), step) as tmp:
        (open(os.path.join(tmp, "blob"), "w")).write("x" * step)
        if fail:
            raise RuntimeError("disk full")
        write_json(os.path.join(tmp, "meta.json"), {"step": step})


def test_publish_is_atomic_and_keeps_the_last_k(tmp_path):
    for s in (2, 4, 6):
        _write(tmp_path, s)
    with pytest.raises(RuntimeError):
        _write(tmp_path, 8, fail=True)  # a failed write leaves no directory and no temp dir
    assert [s for s, _ in list_checkpoints(str(tmp_path))] == [2, 4, 6]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp")]
    assert latest(str(tmp_path)).endswith("step-000006")
    prune(str(tmp_path), 2)
    assert [s for s, _ in list_checkpoints(str(tmp_path))] == [4, 6]
    # a directory without meta.json (a crash before the rename cannot make one, but a user copy could) is ignored
    os.makedirs(tmp_path / "step-000010")
    assert latest(str(tmp_path)).endswith("step-000006")
    _write(tmp_path, 6)  # the same step again replaces it
    assert read_meta(latest(str(tmp_path)))["step"] == 6


def test_resolve_resume(tmp_path):
    assert resolve_resume("", str(tmp_path)) is None
    assert resolve_resume("auto", str(tmp_path / "none")) is None
    _write(tmp_path, 3)
    assert resolve_resume("auto", str(tmp_path)).endswith("step-000003")
    assert resolve_resume(str(tmp_path), "/elsewhere").endswith("step-000003")  # a checkpoints folder
    with pytest.raises(CheckpointError, match="no complete checkpoint there"):
        resolve_resume(str(tmp_path / "missing"), str(tmp_path))
    (tmp_path / "step-000003" / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="meta.json"):
        read_meta(str(tmp_path / "step-000003"))


def test_ranges_round_trip():
    ids = {0, 1, 2, 5, 6, 9}
    assert to_ranges(ids) == [[0, 3], [5, 7], [9, 10]]
    assert from_ranges(to_ranges(ids)) == ids
    assert to_ranges(set()) == []


def test_rows_round_trip_exactly(tmp_path):
    from asyncflow_hpc.checkpoint.state import load_rows, save_rows
    from asyncflow_hpc.engines.base import Row

    rows = [Row(prompt_id=p, sample_index=k, prompt_ids=list(range(p + 1)), response_ids=[7] * k,
                behav_logprobs=[float(np.float32(-0.1 * (k + 1)))] * k, version=p // 2,
                reward=float(np.float32(0.3 * k)), extra={"finished": bool(k % 2)}) for p in range(3) for k in range(3)]
    save_rows(str(tmp_path / "rows.npz"), rows)
    back = load_rows(str(tmp_path))
    for a, b in zip(rows, back):
        assert (a.prompt_id, a.sample_index, a.prompt_ids, a.response_ids, a.behav_logprobs, a.version, a.reward,
                a.extra["finished"]) == (b.prompt_id, b.sample_index, b.prompt_ids, b.response_ids,
                                         b.behav_logprobs, b.version, b.reward, b.extra["finished"])
    (tmp_path / "rows.npz").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="rows.npz"):
        load_rows(str(tmp_path))


def test_warning_signal_sets_the_flag_only():
    flag = StopFlag.install()
    assert StopFlag.install() is flag
    os.kill(os.getpid(), signal.SIGUSR2)  # the process keeps running; the flag is read at a step boundary
    assert flag.requested() and "SIGUSR2" in flag.reason


def test_due_and_compatibility(tmp_path):
    from asyncflow_hpc.checkpoint.run import Checkpointer
    from asyncflow_hpc.config import load_config

    cfg = load_config(None, [f"run.dir={tmp_path}", "workflow.steps=6", "checkpoint.every_steps=2",
                             "checkpoint.on_signal=false", "checkpoint.stop_after_steps=3"])
    ck = Checkpointer(cfg)
    assert (ck.due(1), ck.due(2), ck.due(3), ck.due(6)) == (None, "periodic", "stop", "periodic")
    assert ck.due(1, stop=True) == "stop" and ck.due(6, stop=True) == "periodic"  # no stop after the last step
    root = cfg.checkpoint.resolved_dir(cfg.run.resolved_dir)
    with staged_dir(root, 2) as tmp:
        write_json(os.path.join(tmp, "meta.json"), {"step": 2, "mode": "sync", "eta": 1, "prompts_per_step": 99})
    with pytest.raises(CheckpointError, match="data.prompts_per_step"):
        Checkpointer(load_config(None, [f"run.dir={tmp_path}", "resume=auto"]))


def test_store_peek_copies_without_consuming():
    from asyncflow_hpc.store import Column, RowMeta, Schema, StoreConfig, make_store

    st = make_store(StoreConfig(), Schema([Column("x", "int32", var=True), Column("r", "float32")]))
    st.register_task("t", ["x", "r"])
    st.register_task("u", ["x"], adds=["r"])
    st.put({"x": [np.arange(3, dtype=np.int32), np.arange(2, dtype=np.int32)]}, [RowMeta(0, 0, 0), RowMeta(1, 0, 0)])
    assert len(st.peek("t", ["x", "r"])) == 0  # "r" not ready yet
    st.put_columns([0, 1], {"r": np.asarray([1.0, 2.0], dtype=np.float32)})
    b = st.peek("t", ["x", "r"])
    assert [a.tolist() for a in b["x"].to_list()] == [[0, 1, 2], [0, 1]] and b["r"].tolist() == [1.0, 2.0]
    assert len(st.get("t", ["x", "r"], 2)) == 2  # still there for the real consumer, exactly once
    assert len(st.peek("t", ["x", "r"])) == 0 and len(st.peek("u", ["x"])) == 2
