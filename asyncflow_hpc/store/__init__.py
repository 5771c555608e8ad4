"""Streaming sample store (TransferQueue semantics) on MPI one-sided RMA windows, and its in-process twin.

    from asyncflow_hpc.store import Column, Schema, RowMeta, StoreConfig, make_store
    store = make_store(cfg.store, schema, comm)        # RMAStore over comm, or LocalStore without MPI
    store.register_task("trainer", ["response_ids", "reward"])
    ids = store.put({"response_ids": [...], "reward": [...]}, [RowMeta(index, group, version), ...])
    batch = store.get("trainer", ["response_ids", "reward"], 64, policy="grpo_group", group_size=8)

See docs/store.md for the design, the API and measured figures.
"""

from __future__ import annotations

from typing import Any

from asyncflow_hpc.store.batch import Batch, Packed, bcast_batch, scatter_parts
from asyncflow_hpc.store.config import StoreConfig
from asyncflow_hpc.store.policies import POLICIES, Candidates, Selection, register_policy, resolve_policy
from asyncflow_hpc.store.schema import Column, EndOfStream, RowMeta, Schema, SchemaError, StoreError


def make_store(cfg: StoreConfig, schema: Schema, comm: Any = None, *, layout: Any = None, role: str | None = None,
               label: str | None = None, producers: int = 1):
    """RMAStore over `comm` (collective), or the in-process LocalStore when comm is None / size 1 / transport=local."""
    single = comm is None or comm.Get_size() == 1
    if cfg.transport == "local" or (cfg.transport == "auto" and single):
        from asyncflow_hpc.store.local import LocalStore

        return LocalStore(schema, cfg, producers=producers, label=label or "local")
    if comm is None:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
    from asyncflow_hpc.store.rma import RMAStore

    return RMAStore.create(comm, schema, cfg, layout=layout, role=role, label=label)


__all__ = ["Batch", "Packed", "bcast_batch", "scatter_parts", "StoreConfig", "POLICIES", "Candidates", "Selection",
           "register_policy", "resolve_policy", "Column", "EndOfStream", "RowMeta", "Schema", "SchemaError",
           "StoreError", "make_store"]
