"""Control-plane choice, measured: RMA atomics on a metadata window vs a controller answering messages.

Run under any MPI (3 ranks): `mpiexec -n 3 python -m asyncflow_hpc.bench._store_ctrl [--ops N]`.
Rank 0 computes (numpy matmuls, no MPI calls) while rank 1 claims rows through each option:
  put_flush       (data plane, for reference) Put 64 KiB + Flush into rank 0's window
  atomic_lockall  Lock_all + Fetch_and_op + Flush on a counter in rank 0's window
  atomic_lock     Lock(0) + Fetch_and_op + Unlock(0)
  ctrl_rank       request/reply to a dedicated controller rank (rank 2, sleeping back-off + short spin)
  ctrl_thread     request/reply to a controller thread on the computing rank 0
Prints one JSON line per option: p50/p99 claim latency (us), claims/s, and rank 0's compute rate
relative to computing alone. Needs only numpy and mpi4py (runs in a bare Open MPI venv too).
"""

from __future__ import annotations

import json
import sys
import threading
import time

import numpy as np

from asyncflow_hpc.topology.comms import sleeping_barrier

REQ, REP = 11, 12


def _serve(comm, stop, spin_s=3e-4, pmax=5e-4):
    from mpi4py import MPI

    counter, pause, hot, st = 0, 5e-5, 0.0, MPI.Status()
    while True:
        m = comm.improbe(MPI.ANY_SOURCE, REQ, status=st)
        if m is not None:
            m.recv()
            comm.send(counter, dest=st.Get_source(), tag=REP)
            counter += 1
            pause, hot = 5e-5, time.monotonic() + spin_s
            continue
        if time.monotonic() < hot:
            continue
        if stop():
            return
        time.sleep(pause)
        pause = min(pause * 2, pmax)


def _rpc(comm, dest, spin_s=3e-4):
    comm.send(1, dest=dest, tag=REQ)
    t_spin = time.monotonic() + spin_s
    pause = 5e-5
    while (m := comm.improbe(dest, REP)) is None:
        if time.monotonic() > t_spin:
            time.sleep(pause)
            pause = min(pause * 2, 5e-4)
    return m.recv()


def _compute(seconds: float) -> float:
    """Matmuls for `seconds` without calling MPI; returns matmuls per second."""
    a = np.random.default_rng(0).standard_normal((160, 160))
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        np.tanh(a @ a * 0.01)
        n += 1
    return n / (time.perf_counter() - t0)


def run_option(comm, option: str, ops: int, seconds: float) -> dict | None:
    from mpi4py import MPI

    rank = comm.Get_rank()
    win = MPI.Win.Allocate(1 << 16 if rank == 0 else 0, 8, comm=comm)
    ccomm = comm.Dup()
    stop = threading.Event()
    if option in ("atomic_lockall", "put_flush") and rank == 1:
        win.Lock_all()  # opened while every rank is inside MPI (as the store does at create)
    comm.Barrier()
    out = None
    if rank == 0:
        th = None
        if option == "ctrl_thread":
            th = threading.Thread(target=_serve, args=(ccomm, stop.is_set), daemon=True)
            th.start()
        rate = _compute(seconds)
        sleeping_barrier(comm, pause_min=1e-3, pause_max=1e-3)  # the thread keeps serving meanwhile
        stop.set()
        if th:
            th.join()
        out = comm.recv(source=1, tag=99)
        out["target_rate"] = rate
    elif rank == 1:
        time.sleep(0.05)  # let rank 0 enter its compute loop
        lat = []
        one, res = np.ones(1, dtype=np.int64), np.zeros(1, dtype=np.int64)
        buf = np.ones(1 << 13, dtype=np.int64)
        t_end = time.perf_counter() + seconds * 0.8
        while len(lat) < ops and time.perf_counter() < t_end:
            t = time.perf_counter()
            if option == "atomic_lockall":
                win.Fetch_and_op(one, res, 0, 0, MPI.SUM)
                win.Flush(0)
            elif option == "put_flush":
                win.Put(buf, 0)
                win.Flush(0)
            elif option == "atomic_lock":
                win.Lock(0)
                win.Fetch_and_op(one, res, 0, 0, MPI.SUM)
                win.Unlock(0)
            else:
                _rpc(ccomm, 2 if option == "ctrl_rank" else 0)
            lat.append(time.perf_counter() - t)
        if option in ("atomic_lockall", "put_flush"):
            win.Unlock_all()
        if option == "ctrl_rank":
            ccomm.send(0, dest=2, tag=REQ + 100)
        comm.Ibarrier().Wait()
        us = np.array(lat) * 1e6
        comm.send({"option": option, "claims": len(lat), "p50_us": float(np.percentile(us, 50)),
                   "p99_us": float(np.percentile(us, 99)), "claims_per_s": len(lat) / max(1e-9, us.sum() / 1e6)},
                  dest=0, tag=99)
    else:
        if option == "ctrl_rank":
            done = ccomm.irecv(source=1, tag=REQ + 100)
            _serve(ccomm, lambda: done.test()[0])
        sleeping_barrier(comm, pause_min=1e-3, pause_max=1e-3)
    ccomm.Free()
    win.Free()
    return out


def main(argv: list[str] | None = None) -> int:
    from mpi4py import MPI

    argv = sys.argv[1:] if argv is None else argv
    ops = int(argv[argv.index("--ops") + 1]) if "--ops" in argv else 2000
    seconds = float(argv[argv.index("--seconds") + 1]) if "--seconds" in argv else 2.0
    comm = MPI.COMM_WORLD
    if comm.Get_size() != 3:
        print("run with 3 ranks: mpiexec -n 3 python -m asyncflow_hpc.bench._store_ctrl", file=sys.stderr)
        return 2
    base = _compute(0.5 * seconds) if comm.Get_rank() == 0 else None
    options = ("put_flush", "atomic_lockall", "atomic_lock", "ctrl_rank", "ctrl_thread")
    if "--only" in argv:
        options = tuple(argv[argv.index("--only") + 1].split(","))
    for option in options:
        out = run_option(comm, option, ops, seconds)
        if out is not None:
            out["target_speed"] = out.pop("target_rate") / base
            out["mpi"] = MPI.Get_library_version().split("\n")[0].strip()[:40]
            print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
