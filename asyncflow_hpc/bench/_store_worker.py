"""MPI side of `asyncflow-hpc bench store`: one scenario per launch; rank 0 prints one JSON line.

    mpiexec -n 3 python -m asyncflow_hpc.bench._store_worker --scenario grpo --producers 1 --rows 20000
Rank 0 is a dedicated store rank (controller + a storage unit); then producers, then consumers.
Scenario "bw" moves 1 MiB rows in phases (all puts, then all gets) and, in the same job, the same bytes
with raw MPI Put/Get + Flush and with memcpy (numpy copyto).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import numpy as np

from asyncflow_hpc.topology.comms import sleeping_barrier

PROMPT, RESPONSE = 512, 1024


def sbarrier(comm) -> None:
    """A barrier that sleeps, backing off to 5 ms: ranks waiting here share the cores with the
    measured ones and must not steal their cycles."""
    sleeping_barrier(comm, pause_min=2e-4, pause_max=5e-3)


def grpo_schema():
    from asyncflow_hpc.store import Column, Schema

    return Schema([Column("prompt_ids", "int32", var=True), Column("response_ids", "int32", var=True),
                   Column("logp", "float32", var=True), Column("reward", "float32")])


def small_schema():
    from asyncflow_hpc.store import Column, Schema

    return Schema([Column("x", "int64"), Column("reward", "float32")])


def grpo_rows(lo, n, resp_len=RESPONSE):
    from asyncflow_hpc.store import RowMeta

    rng = np.random.default_rng(lo)
    rows = {"prompt_ids": rng.integers(0, 50000, size=(n, PROMPT), dtype=np.int32),
            "response_ids": rng.integers(0, 50000, size=(n, resp_len), dtype=np.int32),
            "logp": -rng.random((n, resp_len), dtype=np.float32),
            "reward": rng.random(n, dtype=np.float32)}
    rows = {k: (list(v) if v.ndim == 2 else v) for k, v in rows.items()}  # var-length columns: one array per row
    return rows, [RowMeta(lo + i, (lo + i) // 8, 0) for i in range(n)]


def small_rows(lo, n):
    from asyncflow_hpc.store import RowMeta

    return ({"x": np.arange(lo, lo + n, dtype=np.int64), "reward": np.ones(n, np.float32)},
            [RowMeta(lo + i, lo + i, 0) for i in range(n)])


def stream(comm, store, args, schema) -> dict | None:
    """Producers put `rows` in batches; consumers get until end of stream; latency per get."""
    from asyncflow_hpc.store import EndOfStream

    rank, P = comm.Get_rank(), args.producers
    cols = [c.name for c in schema.columns]
    make = grpo_rows if args.scenario == "grpo" else small_rows
    pre = [make(i * args.batch, args.batch) for i in range(4)]  # pre-built: time the store, not numpy RNG
    sbarrier(comm)
    t0 = time.perf_counter()
    lat, got, nbytes = [], 0, 0
    if 1 <= rank <= P:
        per = args.rows // P
        for s in range(0, per, args.batch):
            rows, meta = pre[(s // args.batch) % 4]
            store.put(rows, meta)
        store.mark_done()
    elif rank > P:
        while True:
            t = time.perf_counter()
            try:
                b = store.get("train", cols, args.batch, policy=args.policy, **({"group_size": 8} if args.policy == "grpo_group" else {}))
            except EndOfStream:
                break
            lat.append(time.perf_counter() - t)
            got += len(b)
            nbytes += sum(v.values.nbytes if hasattr(v, "values") else v.nbytes for v in b.columns.values())
    elapsed = time.perf_counter() - t0
    res = comm.gather((got, nbytes, lat, elapsed if rank > P else 0.0), root=0)
    if rank != 0:
        return None
    rows = sum(r[0] for r in res)
    secs = max(r[3] for r in res)
    lat = np.array([x for r in res for x in r[2]]) * 1e3
    return {"rows": rows, "seconds": secs, "rows_per_s": rows / secs, "gbps": sum(r[1] for r in res) / secs / 1e9,
            "get_p50_ms": float(np.percentile(lat, 50)), "get_p99_ms": float(np.percentile(lat, 99))}


def bandwidth(comm, store, args, schema) -> dict | None:
    """1 MiB rows: store put/get vs raw MPI Put/Get + Flush vs memcpy, same rows, same batch sizes.

    memcpy is timed both ways the store moves bytes: as puts (the B source rows into K distinct rows)
    and as gets (K distinct rows, out of cache, into a batch buffer reused per batch)."""
    from mpi4py import MPI

    from asyncflow_hpc.store import RowMeta

    rank, B, K = comm.Get_rank(), args.batch, args.rows
    row_len = args.row_kib * 256  # int32 tokens
    src = [np.random.default_rng(i).integers(0, 1 << 30, size=row_len, dtype=np.int32) for i in range(B)]
    row_bytes = src[0].nbytes
    out = {}
    raw = MPI.Win.Allocate(K * row_bytes if rank == 0 else 0, 1, comm=comm)
    raw.Lock_all()
    dst = np.zeros(K * row_len, dtype=np.int32)  # touched: no page faults inside the timed copies
    batch_buf = np.zeros(B * row_len, dtype=np.int32)
    reps = args.reps + 1  # the first round warms every buffer and is not counted
    for rep in range(reps):
        sbarrier(comm)
        if rank == 1:
            t = time.perf_counter()
            for s in range(0, K, B):
                store.put({"ids": src}, [RowMeta(s + i, s + i, 0) for i in range(B)])
            out.setdefault("store_put", []).append(K * row_bytes / (time.perf_counter() - t) / 1e9)
            t = time.perf_counter()
            for s in range(0, K, B):
                for i in range(B):
                    raw.Put([src[i], MPI.BYTE], 0, target=((s + i) * row_bytes, row_bytes, MPI.BYTE))
                raw.Flush(0)
            out.setdefault("mpi_put", []).append(K * row_bytes / (time.perf_counter() - t) / 1e9)
            t = time.perf_counter()
            for s in range(0, K, B):
                for i in range(B):
                    np.copyto(dst[(s + i) * row_len:(s + i + 1) * row_len], src[i])
            out.setdefault("memcpy", []).append(K * row_bytes / (time.perf_counter() - t) / 1e9)
            t = time.perf_counter()  # the same rows again: read below with one blocking get per batch
            for s in range(0, K, B):
                store.put({"ids": src}, [RowMeta(s + i, s + i, 0) for i in range(B)])
            out["store_put"].append(K * row_bytes / (time.perf_counter() - t) / 1e9)
        sbarrier(comm)
        if rank == 2:
            t = time.perf_counter()
            for s in range(0, K, B):
                store.get("train", ["ids"], B)
            out.setdefault("store_get_blocking", []).append(K * row_bytes / (time.perf_counter() - t) / 1e9)
        sbarrier(comm)
        if rank == 2:  # a streaming consumer: claims sent ahead (iter_batches prefetch)
            t = time.perf_counter()
            for _ in zip(range(K // B), store.iter_batches("train", ["ids"], B, prefetch=True)):
                pass
            out.setdefault("store_get", []).append(K * row_bytes / (time.perf_counter() - t) / 1e9)
            t = time.perf_counter()
            for s in range(0, K, B):
                for i in range(B):
                    raw.Get([dst[(s + i) * row_len:(s + i + 1) * row_len], MPI.BYTE], 0,
                            target=((s + i) * row_bytes, row_bytes, MPI.BYTE))
                raw.Flush(0)
            out.setdefault("mpi_get", []).append(K * row_bytes / (time.perf_counter() - t) / 1e9)
            # memcpy as a get moves bytes: K distinct rows (not in cache) into a batch buffer reused
            # batch after batch (the store's gets land in recycled buffers too)
            t = time.perf_counter()
            for s in range(0, K, B):
                np.copyto(batch_buf, dst[s * row_len:(s + B) * row_len])
            out.setdefault("memcpy_get", []).append(K * row_bytes / (time.perf_counter() - t) / 1e9)
    raw.Unlock_all()
    sbarrier(comm)
    raw.Free()
    parts = comm.gather(out, root=0)
    if rank != 0:
        return None
    # best round of each method: on a shared machine the best round is the least disturbed one
    merged = {k: float(np.max(v[1:] if k != "store_put" else v[2:])) for p in parts for k, v in p.items()}
    merged["row_bytes"] = row_bytes
    # each direction against memcpy moving the same bytes the same way: puts read the same B source
    # rows again and again and write K distinct rows; gets read K distinct rows into a reused buffer
    merged["bw_over_memcpy"] = min(merged["store_put"] / merged["memcpy"], merged["store_get"] / merged["memcpy_get"])
    merged["gbps"] = min(merged["store_put"], merged["store_get"])
    return merged


def main(argv: list[str] | None = None) -> int:
    from mpi4py import MPI

    from asyncflow_hpc.store import Column, Schema, StoreConfig
    from asyncflow_hpc.store.rma import RMAStore

    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", choices=["grpo", "small", "bw"], required=True)
    ap.add_argument("--producers", type=int, default=1)
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--policy", default="fifo")
    ap.add_argument("--row-kib", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    if args.scenario == "bw":
        schema = Schema([Column("ids", "int32", var=True)])
        cfg = StoreConfig(capacity_rows=4 * args.rows, unit_mb=4 * args.rows * args.row_kib / 1024 + 1, timeout_s=120,
                          storage="servers")  # all bytes on rank 0, like the raw MPI reference
    else:
        schema = grpo_schema() if args.scenario == "grpo" else small_schema()
        cfg = StoreConfig(capacity_rows=4096, unit_mb=64, timeout_s=120)
    role = "server" if rank == 0 else ("producer" if rank <= args.producers else "consumer")
    store = RMAStore.create(comm, schema, cfg, role=role)
    if rank == 0:
        store.register_task("train", [c.name for c in schema.columns])
    comm.Barrier()
    th = None
    if role == "server":  # the controller answers in a thread; this rank's main thread joins the barriers
        th = threading.Thread(target=store.serve, daemon=True)
        th.start()
    result = (bandwidth if args.scenario == "bw" else stream)(comm, store, args, schema)
    if th is not None:
        th.join()
    store.close()
    if rank == 0:
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
