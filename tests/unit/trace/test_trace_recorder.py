"""Recorder round trip in one process: spans, lineage, metrics, counters, metadata, clock shift, merge."""

from __future__ import annotations

import inspect
import os
import threading
import time

import numpy as np
import pytest

from asyncflow_hpc.trace import recorder as recmod
from asyncflow_hpc.trace.clock import ClockSync
from asyncflow_hpc.trace.config import TraceConfig
from asyncflow_hpc.trace.merge import merge_traces
from asyncflow_hpc.trace.reader import read_trace
from asyncflow_hpc.trace.recorder import NullRecorder, Recorder, make_recorder, rank_path
from asyncflow_hpc.trace.schema import BUSY, IDLE, TraceError


def _record(path, rank=0, role="trainer", clock=None, flush_rows=1 << 16, world_size=2):
    rec = Recorder(str(path), rank=rank, role=role, world_size=world_size, clock=clock, flush_rows=flush_rows)
    rec.set_metadata(config={"workflow": {"eta": 2}}, topology="world=2", job_id="77", run_name="r")
    before = time.perf_counter()
    with rec.span("train_step", step=3, rows=8) as s:
        with rec.span("store_get", rows=8, bytes=1024):
            pass
        s.set(tokens=240)
    h = rec.begin("store_wait", step=4)
    rec.end(h, rows=2)
    with rec.span("generate", role="rollout", version=5):
        pass
    after = time.perf_counter()
    for i in range(3):
        rec.sample(row=i, prompt_id=10, sample_index=i, seed=99 + i, version_produced=2, version_consumed=3,
                   prompt_len=7, response_len=11 + i, reward=0.5 * i)
    rec.metric(3, "loss", 0.25)
    rec.counter("store_occupancy", 12)
    rec.close()
    return rec, before, after


def test_round_trip(tmp_path):
    rec, before, after = _record(tmp_path / "r.h5")
    t = read_trace(rec.path)
    sp = t.spans
    assert sp["name"].tolist() == ["store_get", "train_step", "store_wait", "generate"]  # in order of ending
    train = sp[sp["name"] == "train_step"][0]
    assert (train["step"], train["rows"], train["tokens"], train["version"]) == (3, 8, 240, -1)
    inner = sp[sp["name"] == "store_get"][0]
    assert inner["bytes"] == 1024 and train["t_start"] <= inner["t_start"] <= inner["t_end"] <= train["t_end"]
    wait = sp[sp["name"] == "store_wait"][0]
    assert (wait["kind"], wait["step"], wait["rows"]) == (IDLE, 4, 2) and train["kind"] == BUSY
    assert sp[sp["name"] == "generate"]["role"].tolist() == ["rollout"]
    assert set(sp["role"][sp["name"] != "generate"].tolist()) == {"trainer"}
    # Default clock: epoch = recorder creation, so times lie within [before, after] shifted by the epoch.
    epoch = rec.clock.epoch
    assert before - epoch - 1e-6 <= sp["t_start"].min() and sp["t_end"].max() <= after - epoch + 1e-6
    sa = t.samples
    assert sa["row"].tolist() == [0, 1, 2] and sa["response_len"].tolist() == [11, 12, 13]
    assert sa["reward"].tolist() == [0.0, 0.5, 1.0] and sa["seed"].tolist() == [99, 100, 101]
    assert (t.metrics["name"][0], t.metrics["step"][0], t.metrics["value"][0]) == ("loss", 3, 0.25)
    assert (t.counters["name"][0], t.counters["value"][0]) == ("store_occupancy", 12.0)
    assert t.config == {"workflow": {"eta": 2}} and t.topology == "world=2"
    assert t.job_id == "77" and t.attrs["run_name"] == "r" and t.schema_version == 2
    assert "numpy" in t.versions and "python" in t.versions
    assert t.ranks["role"].tolist() == ["trainer"] and t.ranks["pid"][0] == os.getpid()


def test_clock_shift_applied(tmp_path):
    sync = ClockSync(offset=100.0, rtt=1e-5, epoch=time.perf_counter() + 100.0 - 5.0, epoch_unix=1.0)
    rec, before, after = _record(tmp_path / "c.h5", clock=sync)
    t = read_trace(rec.path)
    # stored = local + offset - epoch = local - (now_at_sync - 5): every span starts about 5 s in.
    assert 4.9 < t.spans["t_start"].min() < t.spans["t_end"].max() < 5.0 + (after - before) + 0.5
    assert t.ranks["clock_offset"][0] == 100.0 and t.attrs["epoch_unix"] == 1.0


def test_periodic_flush_keeps_everything(tmp_path):
    rec = Recorder(str(tmp_path / "p.h5"), flush_rows=7)
    for i in range(50):
        with rec.span("generate", step=i):
            pass
        rec.sample(row=i)
    assert os.path.exists(rec.path)  # flushed before close
    with pytest.raises(TraceError, match="set_clock"):
        rec.set_clock(ClockSync.local())
    rec.close()
    t = read_trace(rec.path)
    assert sorted(t.spans["step"].tolist()) == list(range(50)) and sorted(t.samples["row"].tolist()) == list(range(50))


def test_threads_get_their_own_track(tmp_path):
    rec = Recorder(str(tmp_path / "th.h5"))

    def work():
        with rec.span("weight_recv"):
            pass

    with rec.span("generate"):
        th = threading.Thread(target=work)
        th.start()
        th.join()
    rec.close()
    sp = read_trace(rec.path).spans
    assert sp["thread"][sp["name"] == "generate"][0] != sp["thread"][sp["name"] == "weight_recv"][0]


def test_null_recorder_has_the_same_api():
    public = [n for n, _ in inspect.getmembers(Recorder, callable) if not n.startswith("_")]
    null = NullRecorder(rank=1, role="rollout")
    for name in public:
        assert hasattr(null, name), name
    with null.span("generate", step=1, rows=2) as s:
        s.set(tokens=3)
    null.end(null.begin("store_wait"), rows=1)
    null.sample(row=1, reward=1.0)
    null.metric(1, "loss", 1.0)
    null.counter("store_occupancy", 1)
    null.set_metadata(config={})
    null.close()
    assert null.enabled is False and Recorder.enabled is True


def test_make_recorder(tmp_path):
    final = str(tmp_path / "run" / "trace.h5")
    off = make_recorder(TraceConfig(enabled=False), final_path=final, rank=3, role="rollout", world_size=4)
    assert isinstance(off, NullRecorder)
    on = make_recorder(TraceConfig(), final_path=final, rank=3, role="rollout", world_size=4)
    assert isinstance(on, Recorder) and on.path == rank_path(final, 3) == str(tmp_path / "run" / "trace.rank00003.h5")


def test_merge(tmp_path):
    sync = ClockSync(offset=0.0, epoch=time.perf_counter(), epoch_unix=123.0)
    files = []
    for r, role in enumerate(["trainer", "rollout", "rollout"]):
        rec, _, _ = _record(tmp_path / f"m{r}.h5", rank=r, role=role, clock=sync, world_size=3)
        files.append(rec.path)
    merged = merge_traces(list(reversed(files)), str(tmp_path / "merged.h5"))
    assert merged.ranks["rank"].tolist() == [0, 1, 2]
    assert len(merged.spans) == 12 and np.all(np.diff(merged.spans["t_start"]) >= 0)
    assert sorted(set(merged.spans["rank"].tolist())) == [0, 1, 2] and len(merged.samples) == 9
    assert merged.attrs["merged"] and merged.world_size == 3 and merged.config == {"workflow": {"eta": 2}}
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    with pytest.raises(TraceError, match="rank 1 also appears"):
        merge_traces([files[0], files[1], files[1]], str(tmp_path / "dup.h5"))
    other, _, _ = _record(tmp_path / "other.h5", rank=2, clock=ClockSync(0.0, 0.0, 0.0, 999.0), world_size=3)
    with pytest.raises(TraceError, match="different runs"):
        merge_traces([files[0], other.path], str(tmp_path / "bad.h5"))
    with pytest.raises(TraceError, match="no per-rank trace files"):
        merge_traces([], str(tmp_path / "none.h5"))
    assert not (tmp_path / "bad.h5").exists()


def test_recorder_unwritable_path(tmp_path):
    rec = Recorder(str(tmp_path / "missing_dir" / "r.h5"), rank=2, role="rollout")
    with pytest.raises(TraceError, match="rank 2, role rollout"):
        rec.close()


def test_package_versions_import_nothing():
    v = recmod.package_versions()
    assert v["asyncflow_hpc"] and v["python"].count(".") == 2


def test_trace_config_checks():
    from asyncflow_hpc.errors import ConfigError

    assert TraceConfig().flush_rows == 65536
    for bad in ({"flush_rows": 0}, {"clock_sync_rounds": 0}, {"timeout_s": 0.0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            TraceConfig(**bad)


def test_payload_round_trip_across_flushes_and_merge(tmp_path):
    from asyncflow_hpc.trace.merge import merge_traces
    from asyncflow_hpc.trace.recorder import Recorder

    rng = np.random.default_rng(0)
    data = {}
    files = []
    sync = ClockSync(0.0, 0.0, time.perf_counter(), 5.0)  # one run: a shared epoch
    for rank in range(2):
        rec = Recorder(str(tmp_path / f"p{rank}.h5"), rank=rank, role="trainer", world_size=2, flush_rows=3,
                       clock=sync)
        for k in range(5):  # flush_rows=3: the rows land in several appends
            row = 100 * rank + k
            p, r = rng.integers(0, 50, k + 2).tolist(), rng.integers(0, 50, k + 1).tolist()
            lp = rng.normal(size=k + 1).astype(np.float32).tolist()
            data[row] = (p, r, lp)
            rec.payload(row=row, prompt_ids=p, response_ids=r, behav_logprobs=lp)
        rec.close()
        files.append(rec.path)
    for path in [*files, merge_traces(files, str(tmp_path / "m.h5")).path]:
        t = read_trace(path)
        assert len(t.payloads) == (10 if path.endswith("m.h5") else 5)
        for i, row in enumerate(t.payloads["row"]):
            assert t.payload_of(i) == data[int(row)]  # ids exact; log-probs exact float32 values


def test_payloads_off_and_null_recorder(tmp_path):
    from asyncflow_hpc.trace.recorder import NullRecorder, Recorder

    assert getattr(NullRecorder(), "payload", None) is None
    rec = Recorder(str(tmp_path / "x.h5"), payloads=False)
    assert getattr(rec, "payload", None) is None
    rec.close()
    assert len(read_trace(str(tmp_path / "x.h5")).payloads) == 0
