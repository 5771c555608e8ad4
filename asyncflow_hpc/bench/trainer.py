"""`asyncflow-hpc bench trainer [--quick] [--json]`: the FSDP2 trainer (trainer.engine=fsdp) vs the replicated one.

    asyncflow-hpc bench trainer --quick --json      # launches itself: mpiexec -n T+1 for T = 1, 2, 4
    python -m asyncflow_hpc.bench.trainer --quick

For each trainer count T, one MPI job of T trainer ranks + 1 rollout rank (gloo, CPU) builds both
engines on the same tiny Llama and the same global batches, and measures per trainer rank:
- resident bytes of parameters + gradients + AdamW state (the rank's shards for fsdp; after one step, so
  the optimizer state exists). `mem_ratio_tT` = the largest sharded rank ÷ a replicated rank (ideal 1/T).
- step time: median train_step over repeats; `step_ratio_tT` = sharded ÷ replicated.
- weight sync to the rollout rank through the real WeightSender/WeightReceiver: from a replicated leader
  (named_parameters_for_broadcast) and from shards (every trainer rank runs gather_for_broadcast, which
  the leader streams into the sender). `sync_sharded_over_replicated` = replicated time ÷ sharded time
  (a speed ratio: 1 = as fast), median of paired repeats (--sync-repeats; odd repeats run the sharded
  side first), at T = 2, with the quartiles of the paired ratios (`sync_ratio_q1`, `sync_ratio_q3`).
  Both sides go through `send_async(named)`, i.e. the streamed sync: bucket k is broadcast while
  bucket k+1 is gathered and copied.
- `sync_peak_buckets`: the leader's peak extra memory during the gather, in buckets (--bucket-mb; by
  default 1/8 of the model, so that the gather runs in several buckets), beyond the sender's snapshot
  buffer, which both sides have: the receive buffers of the followers' rows of the current and the
  prefetched bucket, (T-1)/T of a bucket each (the shards are assembled straight into the snapshot).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path


RESULT = "BENCH_TRAINER_RESULT "
ROOT = Path(__file__).resolve().parents[2]


def _cfg(engine: str, quick: bool):
    from asyncflow_hpc.config import load_config

    hidden, layers = (128, 4) if quick else (256, 8)
    return load_config(str(ROOT / "configs" / "default.yaml"), [
        f"trainer.engine={engine}", f"model.tiny_hidden={hidden}", f"model.tiny_layers={layers}",
        "trainer.micro_batch_rows=8", "trainer.lr=0.001"])


def _rows(step: int, vocab: int, n: int = 32):
    from asyncflow_hpc.engines.base import Row

    g = random.Random(step)
    out = []
    for i in range(n):
        resp = [g.randrange(2, vocab) for _ in range(8)]
        out.append(Row(prompt_id=i // 8, sample_index=i % 8, prompt_ids=[g.randrange(2, vocab) for _ in range(16)],
                       response_ids=resp, behav_logprobs=[-2.0] * 8, version=step, advantage=g.uniform(-1, 1)))
    return out


def resident_bytes(trainer) -> int:
    """Bytes this rank holds of parameters, gradients and optimizer state (local shards of DTensors)."""
    import torch

    def nbytes(t) -> int:
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()

    total = 0
    for p in trainer.model.parameters():
        total += nbytes(p) + (nbytes(p.grad) if p.grad is not None else 0)
    for st in trainer.optimizer.state.values():
        total += sum(nbytes(v) for v in st.values() if isinstance(v, torch.Tensor))
    return total


def _build(engine: str, quick: bool, group):
    from asyncflow_hpc.engines.factory import make_trainer
    from asyncflow_hpc.models.hf import build_policy

    cfg = _cfg(engine, quick)
    model, tok = build_policy(cfg.model)
    trainer = make_trainer(cfg, model, pad_id=tok.pad_id, group=group, device="cpu")
    trainer.broadcast_parameters()
    return trainer, tok.vocab_size


def _steps(trainer, vocab: int, repeats: int, world) -> float:
    times = []
    for s in range(repeats + 1):
        world.Barrier()
        t0 = time.perf_counter()
        trainer.train_step(_rows(s, vocab))
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])  # the first step allocates the optimizer state


def _sync(trainers, comms, repeats: int, bucket_mb: float) -> dict:
    """Paired timings on the leader: send from the replicated engine, then from the sharded one."""
    from asyncflow_hpc.topology.roles import Role
    from asyncflow_hpc.weights import WeightReceiver, WeightSender, WeightSyncConfig, plan_for
    from asyncflow_hpc.weights.flat import spec_of

    cfg = WeightSyncConfig(bucket_mb=bucket_mb, timeout_s=120, version_wait_s=120)
    rep, shard = trainers
    leader = comms.layout.trainer_ranks[0]
    named0 = rep.named_parameters_for_broadcast() if comms.rank == leader else None
    specs = [spec_of(n, t) for n, t in named0] if named0 is not None else None
    plan = plan_for(comms.world.bcast(specs, root=leader), cfg)
    times = {"replicated": [], "sharded": []}
    if comms.layout.has(comms.rank, Role.ROLLOUT):
        recv = WeightReceiver(comms.weight_group, plan, src=0, rank=comms.rank, cfg=cfg, last_version=0)
        recv.start()
        while recv.applied_version < 2 * repeats:
            if recv.poll() is not None:
                recv.swap(lambda named, v: None)
            time.sleep(0.001)
        recv.close()
        return times
    sender = WeightSender(comms.weight_group, plan, src=0, rank=0, cfg=cfg) if comms.rank == leader else None
    version = 0
    for i in range(repeats):
        # Odd repeats run the sharded sync first: whatever the first of a pair pays (a neighbour's burst on
        # this shared machine, cold caches) falls on each side equally often.
        for kind in (("replicated", "sharded") if i % 2 == 0 else ("sharded", "replicated")):
            version += 1
            comms.role_comm.Barrier()
            t0 = time.perf_counter()
            if kind == "replicated":
                if sender is not None:
                    sender.send_async(rep.named_parameters_for_broadcast(), version).wait()
            else:
                named = shard.gather_for_broadcast(bucket_mb)
                if sender is not None:
                    sender.send_async(named, version).wait()
                else:
                    for _ in named:  # every trainer rank takes part in the gather
                        pass
            times[kind].append(time.perf_counter() - t0)
    if sender is not None:
        sender.close()
    return times


def worker(args) -> int:
    import torch
    from mpi4py import MPI

    from asyncflow_hpc.topology.comms import Comms
    from asyncflow_hpc.topology.config import DeviceConfig, TopologyConfig
    from asyncflow_hpc.topology.roles import Role, plan_layout
    from asyncflow_hpc.weights import WeightSyncConfig

    torch.set_num_threads(1)
    size = MPI.COMM_WORLD.Get_size()
    layout = plan_layout(size, TopologyConfig(trainer_ranks=size - 1))
    comms = Comms.create(layout, DeviceConfig(kind="cpu", dist_timeout_s=600))
    trainer = layout.has(comms.rank, Role.TRAINER)
    repeats = args.repeats or (3 if args.quick else 5)
    rep = shard = None
    out: dict = {"T": size - 1}
    if trainer:
        rep, vocab = _build("torch", args.quick, comms.trainer_group)
        shard, _ = _build("fsdp", args.quick, comms.trainer_group)
        out["step_replicated_s"] = _steps(rep, vocab, repeats, comms.role_comm)
        out["step_sharded_s"] = _steps(shard, vocab, repeats, comms.role_comm)
        out["bytes_replicated"] = comms.role_comm.allreduce(resident_bytes(rep), op=MPI.MAX)
        out["bytes_sharded"] = comms.role_comm.allreduce(resident_bytes(shard), op=MPI.MAX)
        out["bytes_sharded_min"] = comms.role_comm.allreduce(resident_bytes(shard), op=MPI.MIN)
    # Default: 1/8 of the model per bucket, so the gather runs in several buckets as for a real model
    # (the tiny models here are smaller than one default bucket of weights.bucket_mb).
    model_mb = comms.world.bcast(sum(p.numel() * p.element_size() for p in rep.model.parameters()) / 2 ** 20
                                 if comms.rank == layout.trainer_ranks[0] else None, root=layout.trainer_ranks[0])
    bucket_mb = args.bucket_mb or min(WeightSyncConfig().bucket_mb, model_mb / 8)
    sync_repeats = args.sync_repeats or (9 if args.quick else 15)  # a sync pair is ~0.1 s: cheap, and noisy
    times = _sync((rep, shard), comms, sync_repeats, bucket_mb)
    if comms.rank == layout.trainer_ranks[0]:
        ratios = [r / s for r, s in zip(times["replicated"], times["sharded"])]
        out.update(sync_replicated_s=statistics.median(times["replicated"]),
                   sync_sharded_s=statistics.median(times["sharded"]),
                   sync_sharded_over_replicated=statistics.median(ratios),
                   sync_ratio_q1=statistics.quantiles(ratios, n=4)[0] if len(ratios) > 1 else ratios[0],
                   sync_ratio_q3=statistics.quantiles(ratios, n=4)[2] if len(ratios) > 1 else ratios[0],
                   sync_repeats=len(ratios),
                   sync_peak_buckets=shard.last_gather_peak_buckets, bucket_mb=bucket_mb,
                   weight_bytes=sum(t.numel() * t.element_size() for _, t in rep.named_parameters_for_broadcast()))
        print(RESULT + json.dumps(out), flush=True)
    comms.world.Barrier()
    comms.close()
    return 0


def _launch(t: int, argv: list[str], quick: bool) -> dict:
    from asyncflow_hpc.bench.common import run_mpi_worker

    return run_mpi_worker("asyncflow_hpc.bench.trainer", t + 1, argv, marker=RESULT, timeout=600 if quick else 1800)


def summary(runs: list[dict], quick: bool) -> dict:
    """The headline figures from the per-T runs (pure: tested without MPI)."""
    by_t = {r["T"]: r for r in runs}
    out: dict = {"quick": quick, "runs": runs}
    for t, r in by_t.items():
        out[f"mem_ratio_t{t}"] = r["bytes_sharded"] / r["bytes_replicated"]
        out[f"step_ratio_t{t}"] = r["step_sharded_s"] / r["step_replicated_s"]
    ref = by_t.get(2) or runs[-1]
    out["step_time_sharded_over_replicated"] = ref["step_sharded_s"] / ref["step_replicated_s"]
    out["sync_sharded_over_replicated"] = ref["sync_sharded_over_replicated"]
    out["sync_peak_buckets"] = max(r["sync_peak_buckets"] for r in runs)
    return out


def table(out: dict) -> str:
    rows = [f"trainer: fsdp (FSDP2, gloo/CPU) vs replicated torch engine, {'quick' if out['quick'] else 'full'}",
            f"{'T':>3}{'MB/rank repl':>14}{'MB/rank fsdp':>14}{'mem ratio':>11}{'step repl s':>13}"
            f"{'step fsdp s':>13}{'sync repl ms':>14}{'sync fsdp ms':>14}{'sync ratio':>12}{'peak bkts':>11}"]
    for r in out["runs"]:
        rows.append(f"{r['T']:>3}{r['bytes_replicated'] / 2**20:>14.2f}{r['bytes_sharded'] / 2**20:>14.2f}"
                    f"{r['bytes_sharded'] / r['bytes_replicated']:>11.3f}{r['step_replicated_s']:>13.3f}"
                    f"{r['step_sharded_s']:>13.3f}{r['sync_replicated_s'] * 1e3:>14.1f}"
                    f"{r['sync_sharded_s'] * 1e3:>14.1f}{r['sync_sharded_over_replicated']:>12.2f}"
                    f"{r['sync_peak_buckets']:>11.2f}")
    rows.append(f"mem_ratio_t2 = {out.get('mem_ratio_t2', float('nan')):.3f} (target <= 0.55), mem_ratio_t4 = "
                f"{out.get('mem_ratio_t4', float('nan')):.3f} (<= 0.30), sync_sharded_over_replicated = "
                f"{out['sync_sharded_over_replicated']:.2f} (>= 0.8), sync_peak_buckets = "
                f"{out['sync_peak_buckets']:.2f} (<= 2)")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="asyncflow-hpc bench trainer", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller model (hidden 128, 4 layers), 3 repeats")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--trainers", default="1,2,4", help="trainer counts T to measure (comma-separated)")
    ap.add_argument("--bucket-mb", type=float, default=None, help="broadcast and gather bucket bound (default: min(weights.bucket_mb, model / 8))")
    ap.add_argument("--repeats", type=int, default=None, help="repeats per measurement (default 3 quick, 5 full)")
    ap.add_argument("--sync-repeats", type=int, default=None,
                    help="paired weight-sync repeats (default 9 quick, 15 full)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    ts = [int(x) for x in args.trainers.split(",")]
    if any(t < 1 for t in ts):
        ap.error(f"--trainers: counts must be >= 1, got {args.trainers}")
    passed = [a for a in argv if a not in ("--worker", "--json")]
    out = summary([_launch(t, passed, args.quick) for t in ts], args.quick)
    print(table(out))
    if args.json:
        print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
