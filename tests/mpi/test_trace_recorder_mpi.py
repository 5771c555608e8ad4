"""Recorder round trip on real MPI ranks: clock alignment by ping-pong, per-rank files, merge on rank 0.

Uses the session API the workflow calls (start_trace / finish_trace). Each rank pretends its
clock is 1000 s * rank off (perf_counter patched before the trace modules load); after measure_clock_offset every stored time must be on rank 0's clock, so a message's
receive never precedes its send.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest

SKEW_S = 1000.0
ROUNDS = 3


def _worker_off(final: str) -> None:
    from mpi4py import MPI

    from asyncflow_hpc.trace.config import TraceConfig
    from asyncflow_hpc.trace.session import finish_trace, start_trace

    comm = MPI.COMM_WORLD
    rec = start_trace(TraceConfig(enabled=False), comm, final_path=final, role="rollout")
    with rec.span("generate", rows=1):
        rec.sample(row=comm.Get_rank())
    assert finish_trace(rec, comm, final) is None


def _worker(final: str) -> None:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    real = time.perf_counter
    time.perf_counter = lambda: real() + SKEW_S * rank  # this process's skewed clock

    from asyncflow_hpc.trace.config import TraceConfig
    from asyncflow_hpc.trace.session import finish_trace, start_trace

    role = "trainer" if rank == 0 else "rollout"
    rec = start_trace(TraceConfig(timeout_s=60.0), comm, final_path=final, role=role,
                      config={"workflow": {"eta": 1}}, topology=f"world={size}", job_id="mpi-test")
    for k in range(ROUNDS):
        if rank == 0:
            for peer in range(1, size):
                with rec.span("send_mark", step=k, peer=peer):
                    comm.send(k, dest=peer, tag=k)
        else:
            h = rec.begin("recv_wait", step=k, peer=0)
            assert comm.recv(source=0, tag=k) == k
            rec.end(h)
        with rec.span("train_step" if rank == 0 else "generate", step=k, rows=4):
            time.sleep(0.01)
        rec.sample(row=100 * rank + k, version_produced=k, version_consumed=k if rank == 0 else -1, reward=1.0)
        rec.metric(k, "loss", float(rank + k))
    rec.counter("store_occupancy", float(rank))
    merged = finish_trace(rec, comm, final)
    assert (merged == final) if rank == 0 else merged is None


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [3])
def test_recorder_round_trip_on_ranks(tmp_path, ranks):
    from asyncflow_hpc.trace.reader import read_trace
    from tests.mpi_util import run_mpi

    final = str(tmp_path / "trace.h5")
    run_mpi(ranks, [os.path.abspath(__file__), final], timeout=120)
    assert sorted(os.listdir(tmp_path)) == ["trace.h5"]  # rank files merged and removed
    t = read_trace(final)
    assert t.ranks["rank"].tolist() == list(range(ranks)) and t.world_size == ranks
    assert t.ranks["role"].tolist() == ["trainer"] + ["rollout"] * (ranks - 1)
    # Offsets undo the injected skew (to well under a millisecond on one host).
    np.testing.assert_allclose(t.ranks["clock_offset"], -SKEW_S * np.arange(ranks), atol=1e-3)
    assert (t.ranks["clock_rtt"][1:] > 0).all()
    assert 0 <= t.spans["t_start"].min() and t.spans["t_end"].max() < 60
    for k in range(ROUNDS):
        for peer in range(1, ranks):
            send = t.spans[(t.spans["name"] == "send_mark") & (t.spans["step"] == k) & (t.spans["peer"] == peer)]
            recv = t.spans[(t.spans["name"] == "recv_wait") & (t.spans["step"] == k) & (t.spans["rank"] == peer)]
            assert len(send) == len(recv) == 1
            slack = 1e-3 + t.ranks["clock_rtt"][peer] / 2
            assert recv["t_end"][0] >= send["t_start"][0] - slack  # causality in the shared clock
            assert recv["t_end"][0] - send["t_start"][0] < 5.0
    assert sorted(t.samples["row"].tolist()) == sorted(100 * r + k for r in range(ranks) for k in range(ROUNDS))
    assert len(t.metrics) == ranks * ROUNDS and len(t.counters) == ranks
    assert t.config == {"workflow": {"eta": 1}} and t.job_id == "mpi-test"
    assert np.all(np.diff(t.spans["t_start"]) >= 0)


@pytest.mark.mpi
def test_tracing_off_writes_nothing(tmp_path):
    from tests.mpi_util import run_mpi

    run_mpi(2, [os.path.abspath(__file__), str(tmp_path / "trace.h5"), "off"], timeout=120)
    assert os.listdir(tmp_path) == []


if __name__ == "__main__":
    (_worker_off if sys.argv[2:] == ["off"] else _worker)(sys.argv[1])
