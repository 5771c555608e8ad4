"""`asyncflow-hpc bench weights [--quick] [--json]`: bucketed weight broadcast vs a raw broadcast of the same bytes.

    asyncflow-hpc bench weights --quick --json          # launches itself: mpiexec -n 3 (leader + 2 rollout)
    mpiexec -n 4 python -m asyncflow_hpc.bench.weights  # or run inside an existing MPI job

Per workload, on the weight-broadcast group (trainer leader + rollout ranks, gloo here), each repeat
times, from a barrier to the last rank done (MPI max): the raw torch.distributed broadcast of one flat
buffer; the bucketed sync (one control message with header + checksums, pipelined buckets, checksum
verification of every bucket on receipt, from a snapshot packed beforehand); the same without
checksums; and MPI Bcast of the same buffer for reference. Each payload is the same bytes
(plan.total_bytes) on every side; the bucketed side also carries its 4 KiB control message.
Medians are reported. `bcast_over_raw` = median over repeats of raw time / bucketed time (paired:
the two runs of a repeat are adjacent, and odd repeats run in reverse order so neither side always
goes first), the minimum over workloads at the default bucket size (target >= 0.9); q1..q3 of the
paired ratios is the spread. Not timed: the snapshot (pack: copy + sender checksums, reported as
`pack ms`) and the rollout's swap (`swap ms`); after each timed receive the rollout swaps untimed, as a
real rollout does at its next generation boundary, which frees the staging buffer for the next version.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


RESULT = "BENCH_WEIGHTS_RESULT "


def model_specs(hidden: int, layers: int, vocab: int, inter: int, kv: int) -> list[tuple[str, tuple[int, ...]]]:
    """Named shapes of a Qwen2-style decoder (bf16); Qwen2.5-0.5B is hidden 896, 24 layers, vocab 151936."""
    out = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (hidden,)),
                (p + "self_attn.q_proj.weight", (hidden, hidden)), (p + "self_attn.q_proj.bias", (hidden,)),
                (p + "self_attn.k_proj.weight", (kv, hidden)), (p + "self_attn.k_proj.bias", (kv,)),
                (p + "self_attn.v_proj.weight", (kv, hidden)), (p + "self_attn.v_proj.bias", (kv,)),
                (p + "self_attn.o_proj.weight", (hidden, hidden)),
                (p + "post_attention_layernorm.weight", (hidden,)),
                (p + "mlp.gate_proj.weight", (inter, hidden)), (p + "mlp.up_proj.weight", (inter, hidden)),
                (p + "mlp.down_proj.weight", (hidden, inter))]
    out.append(("model.norm.weight", (hidden,)))
    return out


def workloads(quick: bool) -> dict[str, list[tuple[str, tuple[int, ...], str]]]:
    flat = [("flat", (50 * 2**20 // 4,), "float32")]  # 50 MiB in one tensor
    if quick:  # 0.5B-like shapes, scaled down: 4 layers, 32k vocab (~89M params, ~178 MB bf16)
        model = model_specs(hidden=896, layers=4, vocab=32768, inter=4864, kv=128)
        name = "qwen0.5b-like/4L"
    else:  # Qwen2.5-0.5B shapes (tied head), ~0.49B params, ~988 MB bf16
        model = model_specs(hidden=896, layers=24, vocab=151936, inter=4864, kv=128)
        name = "qwen0.5b-like"
    return {"flat-50MiB": flat, name: [(n, s, "bfloat16") for n, s in model]}


# ---------------------------------------------------------------------------------------------- worker
def _timed(world, fn) -> float:
    """Barrier, run fn on every rank, return the slowest rank's time."""
    from mpi4py import MPI

    world.Barrier()
    t0 = time.perf_counter()
    fn()
    return world.allreduce(time.perf_counter() - t0, op=MPI.MAX)


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else 0.5 * (xs[len(xs) // 2 - 1] + xs[len(xs) // 2])


def _quantile(xs: list[float], q: float) -> float:
    """Linear-interpolated quantile (q in [0, 1])."""
    xs = sorted(xs)
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _run_workload(comms, specs, bucket_mb: float, repeats: int, version0: int) -> dict:
    import torch
    from asyncflow_hpc.topology.pg import group_broadcast
    from mpi4py import MPI

    from asyncflow_hpc.weights import WeightReceiver, WeightSender, WeightSyncConfig, plan_for
    from asyncflow_hpc.weights.buckets import TensorSpec

    rank, world, group = comms.rank, comms.world, comms.weight_group
    leader = comms.layout.weight_group()[0]
    tensor_specs = [TensorSpec(n, s, d) for n, s, d in specs]
    # One staging buffer: the bench receives synchronously, and memory is 5x the model per rank already.
    cfgs = {c: WeightSyncConfig(bucket_mb=bucket_mb, checksum=c, timeout_s=300, staging_buffers=1)
            for c in ("blocksum64", "none")}
    plan = plan_for(tensor_specs, cfgs["blocksum64"])
    raw = torch.zeros(plan.total_bytes, dtype=torch.uint8)
    raw_np = raw.numpy()
    if rank == leader:
        g = torch.Generator().manual_seed(0)
        named = [(s.name, torch.randn(s.shape, generator=g).to(getattr(torch, s.dtype))) for s in tensor_specs]
        senders = {c: WeightSender(group, plan, src=leader, rank=rank, cfg=cfg) for c, cfg in cfgs.items()}
        raw.random_(0, 255)
    else:
        receivers = {c: WeightReceiver(group, plan, src=leader, rank=rank, cfg=cfg) for c, cfg in cfgs.items()}
        # zeros, not empty: a real engine's parameters are already touched (no first-touch page faults)
        engine = [torch.zeros(s.shape, dtype=getattr(torch, s.dtype)) for s in tensor_specs]
    version = [version0]
    times: dict[str, list[float]] = {"raw": [], "bucketed": [], "nochecksum": [], "mpi": []}
    pack_s: list[float] = []

    def bucketed(c: str):
        version[0] += 1
        if rank == leader:
            took = senders[c].pack(named)  # the snapshot is timed on its own, not as transfer
            if c == "blocksum64":
                pack_s.append(took)
            world.Barrier()
            return _timed(world, lambda: senders[c].send_async(None, version[0]).wait())
        world.Barrier()
        took = _timed(world, lambda: receivers[c].receive())
        if not (c == "blocksum64" and last[0]):  # a rollout swaps each version; the last one is timed below
            receivers[c].swap(lambda named_tensors, v: None)
        return took

    runs = {"raw": lambda: _timed(world, lambda: group_broadcast(group, raw, leader).wait()),
            "bucketed": lambda: bucketed("blocksum64"),
            "mpi": lambda: _timed(world, lambda: world.Bcast(raw_np, root=leader)),
            "nochecksum": lambda: bucketed("none")}
    order = list(runs)
    last = [False]
    for i in range(repeats):
        last[0] = i == repeats - 1
        # Odd repeats run the four in reverse: whatever the first run of a repeat pays (cold caches,
        # a neighbour's burst) falls on each side equally often.
        for key in (order if i % 2 == 0 else order[::-1]):
            times[key].append(runs[key]())
    swap_s = 0.0
    if rank != leader:
        def load_weights(named_tensors, v):  # what an engine does: copy into its own parameters
            for dst, (_, src) in zip(engine, named_tensors):
                dst.copy_(src)
        t0 = time.perf_counter()
        receivers["blocksum64"].swap(load_weights)
        swap_s = time.perf_counter() - t0
    swap_s = world.allreduce(swap_s, op=MPI.MAX)
    med = {k: _median(v) for k, v in times.items()}
    # paired: each repeat's raw and bucketed runs are adjacent, so load drift on a shared machine cancels
    ratios = [r / b for r, b in zip(times["raw"], times["bucketed"])]
    nbytes = plan.total_bytes
    return {
        "bytes": nbytes, "tensors": len(specs), "n_buckets": len(plan.buckets), "bucket_mb": bucket_mb,
        "raw_gbps": nbytes / med["raw"] / 1e9, "bucketed_gbps": nbytes / med["bucketed"] / 1e9,
        "nochecksum_gbps": nbytes / med["nochecksum"] / 1e9, "mpi_bcast_gbps": nbytes / med["mpi"] / 1e9,
        "bcast_over_raw": _median(ratios), "ratio_q1": _quantile(ratios, 0.25), "ratio_q3": _quantile(ratios, 0.75),
        "ratio_min": min(ratios), "ratio_max": max(ratios), "pack_s": _median(world.bcast(pack_s, root=leader)),
        "swap_s": swap_s, "times_s": times, "version": version[0],
    }


def worker(args) -> int:
    import torch

    from asyncflow_hpc.topology.comms import Comms
    from asyncflow_hpc.topology.config import DeviceConfig, TopologyConfig
    from asyncflow_hpc.topology.roles import plan_layout
    from asyncflow_hpc.weights import WeightSyncConfig
    from mpi4py import MPI

    torch.set_num_threads(1)
    layout = plan_layout(MPI.COMM_WORLD.Get_size(), TopologyConfig(trainer_ranks=1))
    comms = Comms.create(layout, DeviceConfig(kind="cpu"))
    default_mb = WeightSyncConfig().bucket_mb
    # the model set also runs with one bucket per 256 MiB (the old default): no overlap of the checksum
    sizes = [args.bucket_mb or default_mb] + ([] if args.bucket_mb or default_mb == 256 else [256.0])
    results, version = [], 0
    for name, specs in workloads(args.quick).items():
        for mb in sizes if name != "flat-50MiB" else sizes[:1]:
            r = _run_workload(comms, specs, mb, args.repeats or (9 if args.quick else 5), version)
            version = r.pop("version")
            r["workload"] = name
            results.append(r)
    if comms.rank == 0:
        headline = [r for r in results if r["bucket_mb"] == sizes[0]]
        out = {"bcast_over_raw": min(r["bcast_over_raw"] for r in headline), "ranks": layout.world_size,
               "receivers": len(layout.weight_group()) - 1, "backend": comms.device.backend,
               "quick": args.quick, "default_bucket_mb": sizes[0], "workloads": results}
        print(RESULT + json.dumps(out), flush=True)
    comms.close()
    return 0


# ---------------------------------------------------------------------------------------------- launcher
def _launch(args, argv: list[str]) -> dict:
    from asyncflow_hpc.bench.common import run_mpi_worker

    return run_mpi_worker("asyncflow_hpc.bench.weights", args.ranks, argv, marker=RESULT,
                          timeout=600 if args.quick else 1800)


def _table(out: dict) -> str:
    rows = [f"weight sync: {out['receivers']} receivers, backend {out['backend']}, "
            f"{'quick' if out['quick'] else 'full'}; GB/s of payload, median of repeats",
            f"{'workload':<20}{'MB':>8}{'buckets':>8}{'raw':>8}{'bucketed':>9}{'no-cksum':>9}{'MPI':>8}"
            f"{'ratio':>7}{'q1..q3':>11}{'pack ms':>9}{'swap ms':>9}"]
    for r in out["workloads"]:
        rows.append(f"{r['workload']:<20}{r['bytes'] / 1e6:>8.1f}{r['n_buckets']:>8}{r['raw_gbps']:>8.2f}"
                    f"{r['bucketed_gbps']:>9.2f}{r['nochecksum_gbps']:>9.2f}{r['mpi_bcast_gbps']:>8.2f}"
                    f"{r['bcast_over_raw']:>7.2f}{r['ratio_q1']:>6.2f}..{r['ratio_q3']:.2f}"
                    f"{r['pack_s'] * 1e3:>9.1f}{r['swap_s'] * 1e3:>9.1f}"
                    f"   (bucket_mb={r['bucket_mb']:g})")
    rows.append(f"bcast_over_raw = {out['bcast_over_raw']:.3f} (min over workloads at bucket_mb="
                f"{out['default_bucket_mb']:g}; target >= 0.9)")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="asyncflow-hpc bench weights", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller model-like set (~178 MB), under 2 minutes")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--ranks", type=int, default=3, help="ranks to launch: 1 trainer leader + N-1 rollout")
    ap.add_argument("--bucket-mb", type=float, default=None, help="bucket bound (default: weights.bucket_mb; "
                                                                  "the model set also runs at 256)")
    ap.add_argument("--repeats", type=int, default=None, help="repeats per measurement (default 9 quick, 5 full)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.ranks < 2:
        ap.error("--ranks must be >= 2 (a trainer leader and at least one rollout rank)")
    from asyncflow_hpc.env import read_env

    if args.worker or read_env().world_size > 1:
        return worker(args)
    out = _launch(args, [a for a in argv if a != "--worker"])
    print(_table(out))
    if args.json:
        slim = {k: v for k, v in out.items() if k != "workloads"}
        slim["workloads"] = [{k: v for k, v in r.items() if k != "times_s"} for r in out["workloads"]]
        print(json.dumps(slim))
    return 0


if __name__ == "__main__":
    sys.exit(main())
