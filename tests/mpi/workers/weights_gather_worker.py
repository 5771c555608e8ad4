"""MPI worker for tests/mpi/test_weights.py: engines/fsdp_gather on 3 FSDP2 trainer ranks (+1 idle rank).

Uneven Shard(0) pieces (a 1-row tensor leaves two ranks empty, 5 and 40 rows split 2/2/1 and 14/14/12),
mixed dtypes and a bucket bound that puts tensors alone, together and all in one bucket: iterating the
gather and `write_into` must both give the leader exactly the unsharded tensors, and nothing elsewhere.
Each trainer rank writes `GATHER <json>` into WEIGHTS_RESULTS/gather-<rank>.txt.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
from mpi4py import MPI
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import fully_shard

from asyncflow_hpc.engines.fsdp_gather import gather_buckets
from asyncflow_hpc.topology.comms import Comms
from asyncflow_hpc.topology.config import DeviceConfig, TopologyConfig
from asyncflow_hpc.topology.roles import Role, plan_layout

SHAPES = [(5, 3), (1, 4), (3,), (2, 7), (40, 9), (7,)]


def main() -> int:
    size = MPI.COMM_WORLD.Get_size()
    layout = plan_layout(size, TopologyConfig(trainer_ranks=size - 1))
    comms = Comms.create(layout, DeviceConfig(kind="cpu", dist_timeout_s=60))
    if not layout.has(comms.rank, Role.TRAINER):
        comms.close()
        return 0
    torch.manual_seed(0)
    m = torch.nn.Module()
    for i, s in enumerate(SHAPES):
        dt = torch.float64 if i == 1 else torch.float32
        m.register_parameter(f"p{i}", torch.nn.Parameter(torch.randn(s, dtype=dt)))
    ref = {n: p.detach().clone() for n, p in m.named_parameters()}
    fully_shard(m, mesh=DeviceMesh("cpu", dist.get_process_group_ranks(comms.trainer_group)))
    results = []
    for bucket_bytes in (8, 64, 10**6):
        got = dict(gather_buckets(list(m.state_dict().items()), comms.trainer_group, 0, bucket_bytes))
        dst = {n: torch.zeros_like(t) for n, t in ref.items()}
        out = list(gather_buckets(list(m.state_dict().items()), comms.trainer_group, 0, bucket_bytes)
                   .write_into(lambda n, shape, dtype: dst[n]))
        if comms.rank == 0:
            results.append(all(torch.equal(got[n], ref[n]) and torch.equal(dst[n], ref[n]) for n in ref)
                           and [n for n, _ in out] == list(ref) and all(t is None for _, t in out))
        else:
            results.append(got == {} and out == [])
    with open(os.path.join(os.environ["WEIGHTS_RESULTS"], f"gather-{comms.rank}.txt"), "w", encoding="utf-8") as fh:
        fh.write("GATHER " + json.dumps({"rank": comms.rank, "ok": results}))
    comms.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
