"""MPI worker for tests/mpi/test_fsdp.py: 2 trainer ranks + 1 rollout rank, weights through the real sender.

The trainers train a replicated torch engine and an fsdp engine on the same batches (even shards, no
clipping: the same arithmetic), then send version 1 from the replicated leader and version 2 from the
shards, both through send_weights on every trainer rank (the workflow's call). The
rollout rank receives both through WeightReceiver (checksums verified) and compares them byte for byte.
"""

from __future__ import annotations

import faulthandler
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fsdp_worker import EXACT, batch, engine  # noqa: E402

from asyncflow_hpc.engines.fsdp_trainer import send_weights  # noqa: E402

from asyncflow_hpc.topology.comms import Comms  # noqa: E402
from asyncflow_hpc.topology.config import DeviceConfig, TopologyConfig  # noqa: E402
from asyncflow_hpc.topology.roles import Role, plan_layout  # noqa: E402
from asyncflow_hpc.weights import WeightReceiver, WeightSender, WeightSyncConfig, plan_for  # noqa: E402
from asyncflow_hpc.weights.flat import spec_of  # noqa: E402


def main() -> None:
    from mpi4py import MPI

    faulthandler.dump_traceback_later(float(os.environ.get("FSDP_WORKER_TIMEOUT", "200")), exit=True)
    layout = plan_layout(MPI.COMM_WORLD.Get_size(), TopologyConfig(trainer_ranks=2))
    comms = Comms.create(layout, DeviceConfig(kind="cpu", dist_timeout_s=120))
    cfg = WeightSyncConfig(bucket_mb=0.05, timeout_s=60, version_wait_s=60)  # several buckets
    leader = layout.trainer_ranks[0]
    specs = None
    if layout.has(comms.rank, Role.TRAINER):
        rep, vocab = engine("torch", comms.trainer_group, EXACT)
        shard, _ = engine("fsdp", comms.trainer_group, EXACT)
        rep.broadcast_parameters()
        for s in range(3):
            rep.train_step(batch(s, 16, vocab))
            shard.train_step(batch(s, 16, vocab))
        specs = [spec_of(n, t) for n, t in shard.broadcast_layout()]  # the plan without unsharding anything
        assert specs == [spec_of(n, t) for n, t in rep.named_parameters_for_broadcast()]
    plan = plan_for(comms.world.bcast(specs, root=leader), cfg)
    out: dict = {"rank": comms.rank}
    if layout.has(comms.rank, Role.TRAINER):  # what the workflow does: every trainer rank calls send_weights
        sender = WeightSender(comms.weight_group, plan, src=0, rank=0, cfg=cfg) if comms.rank == leader else None
        for version, eng in ((1, rep), (2, shard)):
            handle = send_weights(eng, sender, version, cfg.bucket_mb)
            if sender is not None:
                handle.wait()
        if sender is not None:
            sender.close()
            out.update(n_buckets=len(plan.buckets), peak_buckets=shard.last_gather_peak_buckets)
    else:
        got = {}
        recv = WeightReceiver(comms.weight_group, plan, src=0, rank=comms.rank, cfg=cfg, last_version=0)
        recv.start()
        deadline = time.monotonic() + 90
        while len(got) < 2 and time.monotonic() < deadline:
            recv.swap(lambda named, v: got.__setitem__(v, [(n, t.clone()) for n, t in named]))
            time.sleep(0.002)
        recv.close()
        a, b = got.get(1), got.get(2)
        out.update(versions=sorted(got), names_equal=[n for n, _ in a] == [n for n, _ in b],
                   bit_identical=all(x.dtype == y.dtype and torch.equal(x.contiguous().view(torch.uint8),
                                                                         y.contiguous().view(torch.uint8))
                                     for (_, x), (_, y) in zip(a, b)))
    with open(os.path.join(os.environ["FSDP_RESULTS"], f"sync-{comms.rank}.txt"), "w", encoding="utf-8") as fh:
        fh.write(json.dumps(out))
    comms.world.Barrier()
    comms.close()


if __name__ == "__main__":
    main()
