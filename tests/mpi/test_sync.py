"""Sync workflow on real MPI ranks: it trains, and a sample does not depend on which rank made it.

Run as a script under mpiexec (the test does that): rank 0 prints one `RESULT {json}` line.
"""

from __future__ import annotations

import contextlib
import json
import sys

import pytest

OVERRIDES = ["workflow.mode=sync", "workflow.steps=2", "data.prompts_per_step=4", "rollout.n=4", "rollout.max_new_tokens=3",
             "data.eval_size=8", "trainer.micro_batch_rows=8"]


class _Span:
    def set(self, **attrs):
        return self


class _Recorder:
    """Records what the workflow reports, with the same call shapes as trace.recorder.Recorder."""

    def __init__(self, rank):
        self.rank, self.spans, self.samples = rank, [], []

    @contextlib.contextmanager
    def span(self, name, **attrs):
        self.spans.append(name)
        yield _Span()

    def add_span(self, name, t0, t1, **attrs):
        self.spans.append(name)

    def sample(self, **fields):
        self.samples.append(dict(fields, rank=self.rank))

    def metric(self, step, name, value):
        pass


def _main(argv: list[str]) -> None:
    from mpi4py import MPI

    from asyncflow_hpc.config import load_config
    from asyncflow_hpc.env import read_env
    from asyncflow_hpc.topology.comms import Comms
    from asyncflow_hpc.workflow.driver import build_layout
    from asyncflow_hpc.workflow.sync import run_sync

    cfg = load_config("configs/default.yaml", argv)
    world = MPI.COMM_WORLD
    comms = Comms.create(build_layout(cfg, read_env(), world), cfg.device, world=world)
    rec = _Recorder(world.rank)
    try:
        out = run_sync(cfg, comms, recorder=rec)
    finally:
        comms.close()
    samples = [s for part in world.gather(rec.samples, root=0) or [] for s in part]
    if world.rank == 0:
        print("RESULT " + json.dumps({"out": out, "samples": samples, "spans": rec.spans}), flush=True)


def _run(n: int) -> dict:
    from tests.mpi_util import run_mpi

    proc = run_mpi(n, [__file__, *OVERRIDES], timeout=180)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert line, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(line[-1][len("RESULT "):])


@pytest.mark.mpi
def test_sync_two_ranks_matches_one_rank():
    two, one = _run(2), _run(1)
    for res in (one, two):
        out = res["out"]
        assert out["version"] == 2 and len(out["history"]) == 2
        assert 0.0 <= out["eval_start"]["accuracy"] <= 1.0 and out["eval_end"]["count"] == 8
        assert {"generate", "train_step", "evaluate"} <= set(res["spans"])
        assert len(res["samples"]) == 2 * 4 * 4  # every row recorded once, by the rank that made it
    key = lambda r: (r["prompt_id"], r["sample_index"])  # noqa: E731
    step0 = lambda res: sorted((key(s), s["reward"], s["response_len"])  # noqa: E731
                               for s in res["samples"] if s["version_produced"] == 0)
    # Same seeds -> the same samples, whichever rank generated them.
    assert step0(one) == step0(two)
    assert {s["rank"] for s in two["samples"]} == {0, 1}
    l1, l2 = one["out"]["history"][0]["loss"], two["out"]["history"][0]["loss"]
    assert l1 == pytest.approx(l2, rel=1e-5, abs=1e-7)


if __name__ == "__main__":
    _main(sys.argv[1:])
