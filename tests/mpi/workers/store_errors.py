"""MPI worker (2 ranks): get timeout names rank/role/task, back-pressure blocks then resumes, bad calls fail clearly.

Rank 0 consumes (and hosts the controller thread); rank 1 produces. Rank 0 prints one JSON line per rank.
"""

import json
import sys

import numpy as np
from mpi4py import MPI

from asyncflow_hpc.errors import WaitTimeout
from asyncflow_hpc.store import bcast_batch, Column, RowMeta, Schema, SchemaError, StoreConfig, StoreError
from asyncflow_hpc.store.rma import RMAStore


def rows(lo, hi):
    idx = np.arange(lo, hi)
    return {"x": idx}, [RowMeta(int(i), int(i), 0) for i in idx]


def main():
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    schema = Schema([Column("x", "int64")])
    store = RMAStore.create(comm, schema, StoreConfig(capacity_rows=4, unit_mb=0.01, timeout_s=20),
                            role="consumer" if rank == 0 else "producer", label="trainer" if rank == 0 else "rollout")
    out = {"rank": rank}
    if rank == 0:
        store.register_task("t", ["x"])
        try:
            store.get("t", ["x"], 2, timeout=0.3)
        except WaitTimeout as exc:
            out["get_timeout"] = str(exc)
    comm.Barrier()
    if rank == 1:
        store.put(*rows(0, 4))
        try:
            store.put(*rows(4, 5), timeout=0.3)
        except WaitTimeout as exc:
            out["put_timeout"] = str(exc)
        for bad, call in [("unknown_column", lambda: store.put({"y": [1]}, [RowMeta(9)])),
                          ("unregistered_task", lambda: store.try_get("nope", ["x"], 1)),
                          ("dtype", lambda: store.put({"x": np.zeros(1, np.float32)}, [RowMeta(9)]))]:
            try:
                call()
            except (SchemaError, StoreError) as exc:
                out[bad] = str(exc)
    comm.Barrier()
    first = store.get("t", ["x"], 4) if rank == 0 else None
    shared = bcast_batch(first, comm, root=0)  # the talker shares its batch inside its group
    out["first"] = shared["x"].tolist()
    out["first_meta"] = [m.index for m in shared.meta]
    if rank == 1:
        store.put(*rows(4, 6), timeout=10)  # resumes once the consumer freed capacity
        store.mark_done()
    if rank == 0:
        out["second"] = store.get("t", ["x"], 4, timeout=10)["x"].tolist()  # short batch at end of stream
        out["stats"] = store.stats()
    store.close()
    # One writer: lines printed by two ranks at once can interleave in mpiexec's merged stdout.
    everyone = comm.gather(out, root=0)
    if rank == 0:
        for o in everyone:
            print(json.dumps(o), flush=True)


if __name__ == "__main__":
    sys.exit(main())
