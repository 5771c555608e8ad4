"""MPI worker: producers and consumers with random delays stream rows; rank 0 checks 0 lost, 0 duplicated.

    mpiexec -n 4 python tests/mpi/workers/store_stream.py --rows 100000 [--server]
Without --server: ranks 1, 2 produce; ranks 0, 3 consume task "a" (competing); rank 3 also consumes
task "b"; the controller is a thread on rank 0. With --server: rank 0 is a dedicated store rank.
With --prefetch: rank 0 streams "a" claiming ahead (iter_batches(prefetch=True)) and once leaves
its loop early, handing the claimed batch back.
Prints one JSON line from rank 0.
"""

import argparse
import json
import random
import sys
import time

import numpy as np
from mpi4py import MPI

from asyncflow_hpc.store import EndOfStream, Column, RowMeta, Schema, StoreConfig
from asyncflow_hpc.store.rma import RMAStore


def value(i):
    return np.full(int(i) % 4, float(i), dtype=np.float32)


def produce(store, rank, producers, rows, batch, rng):
    k = producers.index(rank)
    mine = np.arange(k, rows, len(producers))
    for s in range(0, len(mine), batch):
        idx = mine[s:s + batch]
        store.put({"x": idx, "v": [value(i) for i in idx]}, [RowMeta(int(i), int(i) // 8, 0) for i in idx])
        if rng.random() < 0.3:
            time.sleep(rng.random() * 2e-3)
    store.mark_done()


def check(b):
    for i, x in enumerate(b["x"]):
        if not np.array_equal(b["v"][i], value(x)) or b.index[i] != x or b.group[i] != x // 8:
            raise AssertionError(f"row {x}: wrong value or meta")


def consume_prefetching(store, task, n, rng):
    """Stream with claims sent ahead; leave the loop once early (the claimed batch goes back unread)."""
    seen = []
    for k, b in enumerate(store.iter_batches(task, ["x", "v"], n, prefetch=True)):
        check(b)
        seen.extend(b["x"].tolist())
        if k == 3:
            break
    for b in store.iter_batches(task, ["x", "v"], n, prefetch=True):
        check(b)
        seen.extend(b["x"].tolist())
        if rng.random() < 0.3:
            time.sleep(rng.random() * 2e-3)
    return {task: seen}


def consume(store, tasks, n, rng):
    seen = {t: [] for t in tasks}
    active = list(tasks)
    while active:
        t = active[rng.randrange(len(active))]
        try:
            # Non-blocking: a consumer of two tasks must not block on one while the other fills the store.
            b = store.try_get(t, ["x", "v"], n) if len(active) > 1 else store.get(t, ["x", "v"], n)
        except EndOfStream:
            active.remove(t)
            continue
        if b is None:
            time.sleep(1e-3)
            continue
        check(b)
        seen[t].extend(b["x"].tolist())
        if rng.random() < 0.3:
            time.sleep(rng.random() * 2e-3)
    return seen


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100000)
    ap.add_argument("--server", action="store_true")
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--prefetch", action="store_true", help="single-task consumers stream with prefetch")
    args = ap.parse_args()
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    rng = random.Random(rank)
    schema = Schema([Column("x", "int64"), Column("v", "float32", var=True)])
    cfg = StoreConfig(capacity_rows=1024, unit_mb=1, timeout_s=args.timeout)
    if args.server:
        roles = ["server", "producer", "producer", "consumer"]
    else:
        roles = ["consumer", "producer", "producer", "consumer"]
    store = RMAStore.create(comm, schema, cfg, role=roles[rank])
    if rank == 0:
        store.register_task("a", ["x", "v"])
        store.register_task("b", ["x", "v"])
    comm.Barrier()
    producers = [r for r, x in enumerate(roles) if x == "producer"]
    seen = {}
    t0 = time.time()
    if roles[rank] == "server":
        store.serve()
    elif roles[rank] == "producer":
        produce(store, rank, producers, args.rows, 200, rng)
    else:
        tasks = ["a", "b"] if rank == 3 else ["a"]
        seen = consume_prefetching(store, "a", 150, rng) if args.prefetch and len(tasks) == 1 else \
            consume(store, tasks, 150, rng)
    stats = store.stats() if roles[rank] == "consumer" else None
    store.close()
    all_seen = comm.gather(seen, root=0)
    stats = comm.gather(stats, root=0)
    if rank == 0:
        report = {"seconds": round(time.time() - t0, 2)}
        for t in ("a", "b"):
            ids = [i for s in all_seen for i in s.get(t, [])]
            report[t] = {"got": len(ids), "unique": len(set(ids)), "lost": args.rows - len(set(ids)),
                         "duplicated": len(ids) - len(set(ids))}
        report["stats"] = [s for s in stats if s][-1]
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    sys.exit(main())
