"""Per-rank driver: plan the layout over the MPI world, build communicators, run the configured job."""

from __future__ import annotations

import time

from asyncflow_hpc.env import JobEnv
from asyncflow_hpc.errors import RankError
from asyncflow_hpc.topology.comms import Comms, mpi
from asyncflow_hpc.topology.roles import Layout, plan_layout


def node_ids(hostnames: list[str]) -> list[int]:
    """Host name of every rank -> node index (first appearance order)."""
    seen: dict[str, int] = {}
    return [seen.setdefault(h, len(seen)) for h in hostnames]


def build_layout(cfg, env: JobEnv, world) -> Layout:
    hosts = world.allgather(env.hostname)
    return plan_layout(world.Get_size(), cfg.topology, node_ids(hosts))


def run_rank(cfg, env: JobEnv) -> int:
    MPI = mpi()
    world = MPI.COMM_WORLD
    if env.source != "single" and env.world_size != world.Get_size():
        raise RankError(f"job environment ({env.source}) says {env.world_size} ranks but MPI has "
                        f"{world.Get_size()}; launch with the MPI library mpi4py was built for", rank=world.rank)
    import torch

    torch.set_num_threads(cfg.device.threads_per_rank)
    t0 = time.perf_counter()
    layout = build_layout(cfg, env, world)
    comms = Comms.create(layout, cfg.device, local_rank=env.local_rank, world=world)
    if world.rank == 0:
        print(f"asyncflow-hpc: {layout.describe()} device={comms.device.kind}/{comms.device.backend} "
              f"job={cfg.workflow.job} mode={cfg.workflow.mode} (setup {time.perf_counter() - t0:.1f}s)", flush=True)
    try:
        if cfg.workflow.job == "smoke":
            from asyncflow_hpc.workflow.smoke import run_smoke

            run_smoke(cfg, env, comms)
        elif cfg.workflow.mode == "sync":
            from asyncflow_hpc.workflow.sync import run_sync

            run_sync(cfg, comms)
        else:
            from asyncflow_hpc.workflow.async_flow import run_async

            run_async(cfg, comms)
    finally:
        comms.close()
    return 0
