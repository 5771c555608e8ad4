"""Per-rank driver: plan the layout over the MPI world, build communicators, run the configured job."""

from __future__ import annotations

import os
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
    if cfg.workflow.job == "train" and _already_complete(cfg, world.rank):
        return 0  # before any process group: ranks leaving at once must not break a peer's connect
    layout = build_layout(cfg, env, world)
    comms = Comms.create(layout, cfg.device, local_rank=env.local_rank, world=world,
                         isolate_rollout=cfg.rollout.engine != "torch")
    from asyncflow_hpc.engines.factory import resolve_trainer_engine

    resolve_trainer_engine(cfg, comms.device.kind, len(layout.trainer_ranks))  # trainer.engine=auto
    if world.rank == 0:
        print(f"asyncflow-hpc: {layout.describe()} device={comms.device.kind}/{comms.device.backend} "
              f"trainer.engine={cfg.trainer.engine} job={cfg.workflow.job} mode={cfg.workflow.mode} "
              f"(setup {time.perf_counter() - t0:.1f}s)", flush=True)
    from asyncflow_hpc.launch.monitor import Heartbeat

    hb = Heartbeat.current
    if hb is not None:
        hb.set_role("+".join(str(r) for r in layout.roles[world.rank]))
        hb.activity("setup")
    try:
        if cfg.workflow.job == "smoke":
            from asyncflow_hpc.workflow.smoke import run_smoke

            run_smoke(cfg, env, comms)
            return 0
        return _run_train(cfg, env, comms, hb)
    finally:
        comms.close()


def _already_complete(cfg, rank: int) -> bool:
    """resume=auto on a run whose result.json says it is done (every rank reads the same file)."""
    from asyncflow_hpc.checkpoint.run import already_complete

    if not already_complete(cfg):
        return False
    if rank == 0:
        print(f"asyncflow-hpc: run {cfg.run.name} already completed {cfg.workflow.steps} steps "
              f"({cfg.run.resolved_dir}/result.json); nothing to resume", flush=True)
    return True


def _run_train(cfg, env: JobEnv, comms: Comms, hb) -> int:
    """Resolve the checkpoint to resume from, run the workflow, merge the trace, write result.json."""
    from asyncflow_hpc.checkpoint.run import Checkpointer

    world, layout = comms.world, comms.layout
    from asyncflow_hpc.checkpoint.signals import StopFlag

    # The warning signal (SIGUSR2: Slurm --signal, the sbatch trap): the one signal handler a rank installs.
    flag = StopFlag.install() if cfg.checkpoint.on_signal else None
    ck = Checkpointer(cfg, verbose=world.rank == 0, flag=flag)  # rank 0 says which checkpoints resume=auto skipped
    if ck.resuming and world.rank == 0:  # a killed segment's per-rank trace files, merged now (trace/recover.py)
        from asyncflow_hpc.trace.recover import merge_left_segments

        merge_left_segments(ck.trace_segments, ck.start, log=lambda m: print(m, flush=True))
    recorder, trace_path = _start_trace(cfg, env, comms, segment=ck.start if ck.resuming else None)
    if trace_path:
        ck.trace_segments.append(os.path.abspath(trace_path))
    rec = recorder
    if hb is not None:
        from asyncflow_hpc.launch.monitor import ActivityRecorder
        from asyncflow_hpc.trace.recorder import NullRecorder

        rec = ActivityRecorder(recorder if recorder is not None else NullRecorder(rank=world.rank), hb)
    if cfg.workflow.mode == "sync":
        from asyncflow_hpc.workflow.sync import run_sync

        out = run_sync(cfg, comms, recorder=rec, ckpt=ck)
    else:
        from asyncflow_hpc.workflow.async_flow import run_async

        out = run_async(cfg, comms, recorder=rec, ckpt=ck)
    if hb is not None:
        hb.activity("trace merge")
    if recorder is not None:
        from asyncflow_hpc.trace.session import finish_trace

        finish_trace(recorder, world, trace_path, keep_rank_files=cfg.trace.keep_rank_files,
                     timeout_s=cfg.trace.timeout_s)
    if world.rank == layout.trainer_leader:  # the rank that holds the per-step history
        out["checkpoints"] = ck.summary()
        write_result(cfg, out, trace_path if recorder is not None else None)
    return 0


def trace_path_of(cfg, segment: int | None = None) -> str:
    """The merged trace; a resumed run writes a new segment beside it: trace.resume-step-000002.h5."""
    path = cfg.trace.path or os.path.join(cfg.run.resolved_dir, "trace.h5")
    if segment is None:
        return path
    base, ext = os.path.splitext(path)
    return f"{base}.resume-step-{segment:06d}{ext or '.h5'}"


def _start_trace(cfg, env: JobEnv, comms: Comms, segment: int | None = None):
    if not cfg.trace.enabled:
        return None, None
    from asyncflow_hpc.trace.session import start_trace

    path = trace_path_of(cfg, segment)
    role = "+".join(str(r) for r in comms.layout.roles[comms.rank])
    rec = start_trace(cfg.trace, comms.world, final_path=path, role=role, config=cfg.to_dict(),
                      topology=comms.layout.describe(), job_id=env.job_id, hostname=env.hostname,
                      run_name=cfg.run.name)
    return rec, path


def _rank_files(merged: str) -> list[str]:
    """The per-rank files a segment left beside its (missing) merged trace: trace.rank00003.h5 ..."""
    import glob

    base, ext = os.path.splitext(merged)
    return sorted(glob.glob(f"{glob.escape(base)}.rank[0-9][0-9][0-9][0-9][0-9]{ext or '.h5'}"))


def write_result(cfg, out: dict, trace: str | None) -> str:
    """Rank 0: `<run dir>/result.json` with per-step metrics and evaluations (written atomically)."""
    import json
    import os

    keep = {k: out[k] for k in ("history", "eval_start", "eval_end", "wall_s", "loop_s", "version", "summary",
                                "checkpoints") if k in out}
    keep["mode"], keep["trace"] = cfg.workflow.mode, trace if trace and os.path.exists(trace) else None
    keep["completed_steps"] = len(out.get("history", []))
    keep["stopped"] = bool(out.get("checkpoints", {}).get("stopped", False))
    segments = out.get("checkpoints", {}).get("trace_segments", [trace] if trace else [])
    # Only files that exist: a segment killed before its merge left per-rank files (listed instead), or nothing.
    keep["trace_segments"] = [p for p in segments if os.path.exists(p)]
    keep["trace_segments_unmerged"] = {p: _rank_files(p) for p in segments if not os.path.exists(p)}
    path = os.path.join(cfg.run.resolved_dir, "result.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(keep, fh, indent=1, default=float)
    os.replace(tmp, path)
    return path
