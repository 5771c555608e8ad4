"""`trace replay` on traces of real runs: losses equal bit-for-bit; tampered rows and dp>1 traces are caught.

Records, through the CLI (`asyncflow-hpc run`, which launches mpiexec), a short async run
(1 trainer + 3 rollout ranks) and a sync colocated run on one rank with a supervised warm-up,
then replays both in this process.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tests.mpi_util import ROOT, mpi_env

pytestmark = pytest.mark.mpi

CLI = "import sys; from asyncflow_hpc.cli import main; sys.exit(main())"  # `asyncflow-hpc ...`
COMMON = ["data.eval_size=0", "data.prompts_per_step=8", "rollout.n=4"]


def _record(tmp, name: str, overrides: list[str]) -> str:
    run_dir = tmp / name
    cmd = [sys.executable, "-c", CLI, "run", "configs/default.yaml", *COMMON, *overrides,
           f"run.name={name}", f"run.dir={run_dir}"]
    proc = subprocess.run(cmd, env=mpi_env(), cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return str(run_dir / "trace.h5")


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("replay")
    return {
        "async": _record(tmp, "async", ["workflow.mode=async", "topology.colocate=false", "topology.world_size=4",
                                        "workflow.steps=4"]),
        "sync": _record(tmp, "sync", ["workflow.mode=sync", "topology.world_size=1", "workflow.steps=3",
                                      "trainer.sft_warmup_steps=2"]),
    }


def _losses(path: str) -> dict:
    from asyncflow_hpc.trace.reader import read_trace
    from asyncflow_hpc.trace.replay import recorded_losses

    return recorded_losses(read_trace(path))


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_replay_reproduces_losses(traces, kind):
    from asyncflow_hpc.trace.reader import read_trace
    from asyncflow_hpc.trace.replay import replay

    t = read_trace(traces[kind])
    assert t.schema_version == 2 and len(t.payloads) == len(t.samples[t.samples["version_consumed"] >= 0])
    if kind == "async":  # rows really were stale and came from several rollout ranks
        assert (t.samples["version_consumed"] > t.samples["version_produced"]).any()
    res = replay(traces[kind])
    rec = _losses(traces[kind])
    assert [s.step for s in res.steps] == sorted(rec) and len(rec) >= 3
    for s in res.steps:
        assert s.match, f"step {s.step}: recorded {s.recorded!r} replayed {s.replayed!r}"
        assert s.replayed == rec[s.step]
    assert res.ok


def _tampered(src: str, dst: str) -> int:
    """Shift the behaviour log-probs of the rows of the first step with a non-zero loss; returns that step."""
    from asyncflow_hpc.trace.merge import write_trace
    from asyncflow_hpc.trace.reader import read_trace

    t = read_trace(src)
    step = next(s for s, v in sorted(_losses(src).items()) if v != 0.0 and s > 0)
    rows = set(t.samples["row"][t.samples["version_consumed"] == step].tolist())
    tables = t.tables()
    lps = tables["payload_logprobs"].copy()
    for p in t.payloads[np.isin(t.payloads["row"], list(rows))]:
        lps[p["lp_off"]:p["lp_off"] + p["response_len"]] -= 0.5
    tables["payload_logprobs"] = lps
    write_trace(dst, tables, {k: v for k, v in t.attrs.items() if k not in ("format", "schema_version")},
                {"config": t.config, "topology": t.topology, "versions": t.versions, "extra": t.extra})
    return step


def test_tampered_rows_fail_with_named_step(traces, tmp_path, capsys):
    from asyncflow_hpc.trace.cli import main

    bad = str(tmp_path / "tampered.h5")
    step = _tampered(traces["async"], bad)
    assert main(["replay", bad, "--json"]) == 1
    out = capsys.readouterr()
    recorded = _losses(bad)[step]
    assert f"MISMATCH at step {step}: recorded loss {recorded!r}" in out.err
    assert '"ok": false' in out.out and f'"mismatch_step": {step}' in out.out
    for s in range(step):  # the untouched steps before it still match
        assert f"{s:>5}" in out.out


def test_dp_greater_than_one_is_refused(traces, tmp_path):
    from asyncflow_hpc.trace.merge import write_trace
    from asyncflow_hpc.trace.reader import read_trace
    from asyncflow_hpc.trace.replay import replay
    from asyncflow_hpc.trace.schema import TraceError

    t = read_trace(traces["async"])
    tables = t.tables()
    ranks = tables["ranks"].copy()
    ranks["role"][ranks["rank"] == 1] = "trainer"  # as if 2 trainer ranks (dp=2) had run
    tables["ranks"] = ranks
    path = str(tmp_path / "dp2.h5")
    write_trace(path, tables, {k: v for k, v in t.attrs.items() if k not in ("format", "schema_version")},
                {"config": t.config, "topology": t.topology, "versions": t.versions, "extra": t.extra})
    with pytest.raises(TraceError, match=r"dp2\.h5: its trainer had 2 data-parallel replicas.*topology.trainer_ranks=1"):
        replay(path)
