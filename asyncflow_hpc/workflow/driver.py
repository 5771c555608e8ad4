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
            return 0
        recorder, trace_path = _start_trace(cfg, env, comms)
        if cfg.workflow.mode == "sync":
            from asyncflow_hpc.workflow.sync import run_sync

            out = run_sync(cfg, comms, recorder=recorder)
        else:
            from asyncflow_hpc.workflow.async_flow import run_async

            out = run_async(cfg, comms, recorder=recorder)
        if recorder is not None:
            from asyncflow_hpc.trace.session import finish_trace

            finish_trace(recorder, world, trace_path, keep_rank_files=cfg.trace.keep_rank_files,
                                  timeout_s=cfg.trace.timeout_s)
        if world.rank == layout.trainer_leader:  # the rank that holds the per-step history
            write_result(cfg, out, trace_path if recorder is not None else None)
    finally:
        comms.close()
    return 0


def trace_path_of(cfg) -> str:
    import os

    return cfg.trace.path or os.path.join(cfg.run.resolved_dir, "trace.h5")


def _start_trace(cfg, env: JobEnv, comms: Comms):
    if not cfg.trace.enabled:
        return None, None
    from asyncflow_hpc.trace.session import start_trace

    path = trace_path_of(cfg)
    role = "+".join(str(r) for r in comms.layout.roles[comms.rank])
    rec = start_trace(cfg.trace, comms.world, final_path=path, role=role, config=cfg.to_dict(),
                      topology=comms.layout.describe(), job_id=env.job_id, hostname=env.hostname,
                      run_name=cfg.run.name)
    return rec, path


def write_result(cfg, out: dict, trace: str | None) -> str:
    """Rank 0: `<run dir>/result.json` with per-step metrics and evaluations (written atomically)."""
    import json
    import os

    keep = {k: out[k] for k in ("history", "eval_start", "eval_end", "wall_s", "loop_s", "version", "summary")
            if k in out}
    keep["mode"], keep["trace"] = cfg.workflow.mode, trace
    path = os.path.join(cfg.run.resolved_dir, "result.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(keep, fh, indent=1, default=float)
    os.replace(tmp, path)
    return path
