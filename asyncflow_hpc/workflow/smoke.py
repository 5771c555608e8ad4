"""Smoke job that every launch path can run: role report, weight-group broadcast, RMA round trip."""

from __future__ import annotations

import numpy as np

from asyncflow_hpc.env import JobEnv
from asyncflow_hpc.errors import RankError
from asyncflow_hpc.topology.comms import Comms


def rma_round_trip(comm, nbytes: int = 1 << 16) -> None:
    """Each rank Puts a pattern into the next rank's window, then Gets it back and checks it."""
    from asyncflow_hpc.store.windows import DataWindow

    rank, size = comm.Get_rank(), comm.Get_size()
    peer = (rank + 1) % size
    win = DataWindow(comm, nbytes)
    try:
        pattern = ((np.arange(nbytes, dtype=np.uint32) * 7 + rank) % 251).astype(np.uint8)
        with win.epoch():
            win.put(pattern, peer, 0)
            win.flush(peer)
        comm.Barrier()
        back = np.empty(nbytes, dtype=np.uint8)
        with win.epoch():
            win.get(back, peer, 0)
            win.flush(peer)
        if not np.array_equal(back, pattern):
            raise RankError(f"RMA round trip to rank {peer} returned wrong bytes "
                            f"({int((back != pattern).sum())} of {nbytes} differ)", rank=rank)
        comm.Barrier()
    finally:
        win.free()


def weight_broadcast_check(comms: Comms, numel: int = 1 << 16) -> int:
    """Trainer leader broadcasts a tensor to the rollout ranks; returns how many ranks verified it."""
    import torch

    from asyncflow_hpc.topology.pg import group_broadcast

    group = comms.weight_group
    ranks = comms.layout.weight_group()
    if group is None or comms.rank not in ranks:
        return 0
    leader = comms.layout.trainer_leader
    expected = torch.arange(numel, dtype=torch.float32) * 0.5 + 3.0
    t = expected.clone() if comms.rank == leader else torch.zeros(numel, dtype=torch.float32)
    if comms.device.kind != "cpu":
        t = t.to(comms.device.torch_device)
    group_broadcast(group, t, leader).wait()
    if not torch.equal(t.cpu(), expected):
        raise RankError("weight-group broadcast delivered a wrong tensor", rank=comms.rank, role=str(comms.role))
    return 1


def run_smoke(cfg, env: JobEnv, comms: Comms) -> None:
    world = comms.world
    report = (comms.rank, str(comms.role), env.hostname, env.local_rank, comms.device.torch_device,
              comms.device.backend, env.source, env.job_id)
    reports = world.gather(report, root=0)
    if comms.rank == 0:
        for r, role, host, local, dev, backend, source, job in reports:
            print(f"smoke: rank {r} role={role} host={host} local_rank={local} device={dev} "
                  f"backend={backend} env={source} job={job}", flush=True)
    got = weight_broadcast_check(comms)
    n_verified = world.reduce(got, root=0)
    rma_round_trip(world)
    if comms.rank == 0:
        expected = len(comms.layout.weight_group())
        if n_verified != expected:
            raise RankError(f"weight broadcast verified on {n_verified} of {expected} ranks", rank=0)
        print(f"smoke OK: {comms.layout.world_size} ranks, broadcast verified on {n_verified} ranks, "
              f"RMA round trip verified on {comms.layout.world_size} ranks", flush=True)
