"""result.json lists only trace files that exist; a segment killed before its merge shows its per-rank files."""

import json


def test_result_lists_only_existing_trace_files(tmp_path):
    from asyncflow_hpc.config import load_config
    from asyncflow_hpc.workflow.driver import write_result

    cfg = load_config(None, [f"run.dir={tmp_path}"])
    first = tmp_path / "trace.h5"  # killed with -9: never merged, two rank files flushed
    (tmp_path / "trace.rank00000.h5").write_bytes(b"x")
    (tmp_path / "trace.rank00001.h5").write_bytes(b"x")
    second = tmp_path / "trace.resume-step-000002.h5"
    second.write_bytes(b"x")
    out = {"history": [{}, {}], "checkpoints": {"trace_segments": [str(first), str(second)], "stopped": False}}
    res = json.loads(open(write_result(cfg, out, str(second))).read())
    assert res["trace"] == str(second) and res["trace_segments"] == [str(second)]
    assert res["trace_segments_unmerged"] == {str(first): [str(tmp_path / "trace.rank00000.h5"),
                                                           str(tmp_path / "trace.rank00001.h5")]}
    res = json.loads(open(write_result(cfg, {"history": []}, str(tmp_path / "gone.h5"))).read())
    assert res["trace"] is None and res["trace_segments"] == []
