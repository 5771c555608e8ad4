"""A killed segment's per-rank trace files are merged on the next resume: the merged file exists, is marked as
recovered (with the step the run resumed from), and result.json lists it under trace_segments, not unmerged."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("h5py")

ROOT = Path(__file__).resolve().parents[3]

KILLED_RANK = r'''
import os, signal, sys, time
from asyncflow_hpc.trace.clock import ClockSync
from asyncflow_hpc.trace.recorder import Recorder
rank = int(sys.argv[2])
clock = ClockSync(epoch=time.perf_counter(), epoch_unix=1.0e9)  # one run: the epoch its clock sync shared
rec = Recorder(sys.argv[1], rank=rank, role="trainer" if rank == 0 else "rollout", world_size=2, flush_s=0.05,
               clock=clock)
for step in range(8):
    with rec.span("generate", step=step):
        time.sleep(0.02)
time.sleep(0.1)
with rec.span("generate", step=8):
    pass
os.kill(os.getpid(), signal.SIGKILL)  # no close(), no merge: as a hard requeue
'''


def _killed_segment(tmp_path) -> str:
    seg = str(tmp_path / "trace.h5")
    for rank in (0, 1):
        p = subprocess.run([sys.executable, "-c", KILLED_RANK, str(tmp_path / f"trace.rank{rank:05d}.h5"), str(rank)],
                           cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == -signal.SIGKILL, p.stderr
    return seg


def test_killed_segment_is_merged_on_resume_and_listed(tmp_path):
    from asyncflow_hpc.trace.reader import read_trace
    from asyncflow_hpc.trace.recover import merge_left_segments
    from asyncflow_hpc.workflow.driver import write_result

    seg = _killed_segment(tmp_path)
    cfg = SimpleNamespace(workflow=SimpleNamespace(mode="async"), run=SimpleNamespace(resolved_dir=str(tmp_path)))
    write_result(cfg, {"checkpoints": {"trace_segments": [seg]}}, None)
    before = json.loads((tmp_path / "result.json").read_text())
    assert before["trace_segments"] == [] and list(before["trace_segments_unmerged"]) == [seg]  # the old state

    logs = []
    assert merge_left_segments([seg], resume_step=4, log=logs.append) == [seg]
    t = read_trace(seg)
    assert sorted(set(t.spans["rank"].tolist())) == [0, 1] and len(t.spans) >= 16
    assert int(t.attrs["recovered"]) == 1 and int(t.attrs["superseded_from_step"]) == 4
    assert not list(tmp_path.glob("trace.rank*.h5")) and "killed segment" in logs[0]
    write_result(cfg, {"checkpoints": {"trace_segments": [seg]}}, None)
    after = json.loads((tmp_path / "result.json").read_text())
    assert after["trace_segments"] == [seg] and after["trace_segments_unmerged"] == {}
    assert merge_left_segments([seg], resume_step=4) == []  # idempotent: already merged


def test_an_unreadable_rank_file_is_left_and_named(tmp_path):
    from asyncflow_hpc.trace.reader import read_trace
    from asyncflow_hpc.trace.recover import merge_left_segments

    seg = _killed_segment(tmp_path)
    bad = tmp_path / "trace.rank00001.h5"
    bad.write_bytes(b"not hdf5" * 10)
    (tmp_path / "trace.rank00001.h5.alt").unlink(missing_ok=True)  # and no whole twin
    logs = []
    assert merge_left_segments([seg], log=logs.append) == [seg]
    assert sorted(set(read_trace(seg).spans["rank"].tolist())) == [0]
    assert bad.exists() and any(str(bad) in m and "unreadable" in m for m in logs), logs
    empty = str(tmp_path / "other" / "trace.h5")
    assert merge_left_segments([empty]) == [] and not os.path.exists(empty)  # nothing left: stays unmerged


def test_a_rank_killed_during_a_flush_leaves_its_twin_whole(tmp_path):
    """Flushes alternate between trace.rankN.h5 and trace.rankN.h5.alt: the kill in the middle of a write corrupts
    only the file being written; the other holds everything up to the previous flush and is merged instead."""
    from asyncflow_hpc.trace.reader import read_trace
    from asyncflow_hpc.trace.recorder import ALT_SUFFIX, Recorder
    from asyncflow_hpc.trace.recover import merge_left_segments

    path = tmp_path / "trace.rank00000.h5"
    rec = Recorder(str(path), rank=0, role="trainer", world_size=1)
    for step in range(5):
        with rec.span("train", step=step):
            pass
        rec.flush()  # 5 flushes: the last (gen 4) went to `path`, gen 3 to the twin
    assert path.exists() and Path(str(path) + ALT_SUFFIX).exists()
    assert len(read_trace(path).spans) == 5 and len(read_trace(str(path) + ALT_SUFFIX).spans) == 4
    data = bytearray(path.read_bytes())
    data[len(data) // 2:] = b"\0" * (len(data) - len(data) // 2)  # as a kill in the middle of that write
    path.write_bytes(bytes(data))
    seg = str(tmp_path / "trace.h5")
    assert merge_left_segments([seg]) == [seg]
    assert len(read_trace(seg).spans) == 4 and not list(tmp_path.glob("trace.rank*"))


def test_close_leaves_one_complete_file(tmp_path):
    from asyncflow_hpc.trace.reader import read_trace
    from asyncflow_hpc.trace.recorder import ALT_SUFFIX, Recorder

    for flushes in (1, 2, 3):
        path = tmp_path / f"t{flushes}.rank00000.h5"
        rec = Recorder(str(path), rank=0, role="trainer", world_size=1)
        for step in range(flushes):
            with rec.span("train", step=step):
                pass
            if step < flushes - 1:
                rec.flush()
        rec.close()
        assert len(read_trace(path).spans) == flushes and not Path(str(path) + ALT_SUFFIX).exists()
