"""MPI worker for tests/mpi/test_fsdp.py: 2 trainer ranks, FSDP2 engine vs a single-rank torch engine.

Scenarios (one mpiexec run): `losses` (10 steps of uneven global batches, KL reference and two updates
per step: losses, sharded elements, gathered weights), `exact` (even shards, no clipping: bit-exact
weights), `sft` (warm-up steps), `options` (activation checkpointing, CPU offload), `reshard` (sharded checkpoint 2 -> 1 and 1 -> 2).
Every rank writes `RESULT <json>` lines into FSDP_RESULTS/rank-<r>.txt.
"""

from __future__ import annotations

import faulthandler
import hashlib
import json
import os
import random
import sys

import torch
import torch.distributed as dist
from mpi4py import MPI

from asyncflow_hpc.checkpoint.sharded import export_hf, load_sharded, save_sharded
from asyncflow_hpc.config import load_config
from asyncflow_hpc.engines.base import Row
from asyncflow_hpc.engines.factory import make_trainer
from asyncflow_hpc.engines.fsdp_trainer import full_weights
from asyncflow_hpc.models.hf import broadcast_tensors, build_policy, load_pretrained
from asyncflow_hpc.models.tokenizer import CharTokenizer

OVERRIDES = ["trainer.micro_batch_rows=4", "trainer.updates_per_step=2", "algorithm.kl_coef=0.05",
             "algorithm.proximal=recompute", "trainer.lr=0.01"]
SIZES = [16, 9, 16, 7, 16, 9, 16, 5, 16, 3]  # rows per step: uneven shards and micro-batch counts


def emit(rank: int, scenario: str, **data) -> None:
    with open(os.path.join(os.environ["FSDP_RESULTS"], f"rank-{rank}.txt"), "a", encoding="utf-8") as fh:
        fh.write("RESULT " + json.dumps({"rank": rank, "scenario": scenario, **data}) + "\n")


def batch(step: int, n: int, vocab: int) -> list[Row]:
    """A deterministic global batch of n rows (groups of 4 samples) with varied lengths."""
    g = random.Random(1000 + step)
    rows = []
    for i in range(n):
        resp = [g.randrange(2, vocab) for _ in range(g.randint(1, 4))]
        rows.append(Row(prompt_id=i // 4, sample_index=i % 4, prompt_ids=[g.randrange(2, vocab) for _ in range(5)],
                        response_ids=resp, behav_logprobs=[-g.uniform(1, 4) for _ in resp], version=step,
                        reward=float(g.random() < 0.5), advantage=g.uniform(-1, 1)))
    return rows


def engine(kind: str, group, overrides=()):
    cfg = load_config("configs/default.yaml", [*OVERRIDES, f"trainer.engine={kind}", *overrides])
    model, tok = build_policy(cfg.model)
    return make_trainer(cfg, model, pad_id=tok.pad_id, group=group, device="cpu"), tok.vocab_size


def diff(a: list, b: list) -> tuple[float, bool]:
    """(max abs difference, bit-identical) of two lists of (name, tensor)."""
    assert [n for n, _ in a] == [n for n, _ in b], ([n for n, _ in a], [n for n, _ in b])
    md = max(float((x - y).abs().max()) for (_, x), (_, y) in zip(a, b) if x.numel())
    exact = all(torch.equal(x.contiguous().view(torch.uint8), y.contiguous().view(torch.uint8))
                for (_, x), (_, y) in zip(a, b))
    return md, exact


def losses(rank: int, group) -> None:
    ref = None
    if rank == 0:  # the single-rank replicated trainer on the same global batches
        ref, vocab = engine("torch", None)
        ref_losses = [ref.train_step(batch(s, n, vocab))["loss"] for s, n in enumerate(SIZES)]
    fsdp, vocab = engine("fsdp", group)
    fsdp.broadcast_parameters()
    total = sum(p.numel() for p in fsdp.model.parameters())
    out = [fsdp.train_step(batch(s, n, vocab))["loss"] for s, n in enumerate(SIZES)]
    named = full_weights(fsdp, bucket_mb=0.02)
    peak = fsdp.last_gather_peak_buckets
    data = dict(losses=out, local=fsdp.local_param_elements(), total=total)
    if rank == 0:
        md, exact = diff(named, ref.named_parameters_for_broadcast())
        data.update(ref_losses=ref_losses, max_weight_diff=md, bit_exact=exact, peak_buckets=peak,
                    n_tensors=len(named), nbytes=sum(t.numel() * t.element_size() for _, t in named))
    else:
        data.update(named=named is None)
    emit(rank, "losses", **data)


EXACT = ["trainer.micro_batch_rows=8", "trainer.updates_per_step=1", "algorithm.kl_coef=0",
         "algorithm.proximal=behaviour", "trainer.grad_clip=0"]


def exact(rank: int, group) -> None:
    """Even shards (one micro-batch of 8 rows per rank = the single rank's two), no clipping: the same
    floating-point operations, so the gathered weights should equal the replicated trainer's bit for bit."""
    if rank == 0:
        ref, vocab = engine("torch", None, EXACT)
        for s in range(4):
            ref.train_step(batch(s, 16, vocab))
    fsdp, vocab = engine("fsdp", group, EXACT)
    for s in range(4):
        fsdp.train_step(batch(s, 16, vocab))
    named = full_weights(fsdp)
    every = list(fsdp.gather_for_broadcast(0.01, everywhere=True))  # colocated engines: full on every rank
    layout = [(n, tuple(t.shape), str(t.dtype)) for n, t in fsdp.broadcast_layout()]
    digest = hashlib.sha256(b"".join(t.contiguous().view(torch.uint8).numpy().tobytes() for _, t in every))
    data = dict(digest=digest.hexdigest(), layout_ok=layout == [(n, tuple(t.shape), str(t.dtype)) for n, t in every])
    hf_dir = os.path.join(os.environ["FSDP_RESULTS"], "hf")
    export_hf(fsdp, hf_dir, CharTokenizer())
    if rank == 0:
        md, bit = diff(named, ref.named_parameters_for_broadcast())
        data.update(max_weight_diff=md, bit_exact=bit, everywhere_exact=diff(every, named)[1])
        loaded, _ = load_pretrained(hf_dir)
        data.update(export_exact=diff(broadcast_tensors(loaded), named)[1], export_files=sorted(os.listdir(hf_dir)))
    emit(rank, "exact", **data)


def options(rank: int, group) -> None:
    """Activation checkpointing and CPU offload change memory, not numbers: 3 steps, same losses."""
    res = {}
    for name, extra in (("plain", []), ("ac", ["trainer.fsdp_activation_checkpointing=true"]),
                        ("offload", ["trainer.fsdp_cpu_offload=true"])):
        try:
            eng, vocab = engine("fsdp", group, extra)
            res[name] = [eng.train_step(batch(s, n, vocab))["loss"] for s, n in enumerate(SIZES[:3])]
            res[name + "_checkpointing"] = bool(getattr(eng.model, "is_gradient_checkpointing", False))
        except Exception as exc:  # reported, and asserted on, by the test
            res[name] = f"{type(exc).__name__}: {exc}"
    emit(rank, "options", **res)


def sft(rank: int, group) -> None:
    """Supervised warm-up steps: 9 pairs (shards of 5 and 4, micro-batches of 4: 2 vs 1) equal one rank's."""
    def pairs(step: int, vocab: int) -> list:
        g = random.Random(50 + step)
        return [([g.randrange(2, vocab) for _ in range(4)], [g.randrange(2, vocab) for _ in range(g.randint(1, 3))])
                for _ in range(9)]

    if rank == 0:
        ref, vocab = engine("torch", None)
        ref_losses = [ref.sft_step(pairs(s, vocab)) for s in range(3)]
    fsdp, vocab = engine("fsdp", group)
    out = [fsdp.sft_step(pairs(s, vocab)) for s in range(3)]
    named = full_weights(fsdp)
    if rank == 0:
        emit(rank, "sft", losses=out, ref_losses=ref_losses,
             max_weight_diff=diff(named, ref.named_parameters_for_broadcast())[0])


def reshard(rank: int, group2, group1, ckpt: str) -> None:
    """2 -> 1: train 3 steps on 2 ranks, save; load on 1 rank; both continue 2 steps: same losses, weights.
    1 -> 2: the same with the roles swapped."""
    for src, dst, name in ((group2, group1, "2to1"), (group1, group2, "1to2")):
        path = os.path.join(ckpt, name)
        a = b = None
        if src is not None:
            a, vocab = engine("fsdp", src)
            for s in range(3):
                a.train_step(batch(s, 16, vocab))
            save_sharded(a, path)
        dist.barrier()
        if dst is not None:
            b, vocab = engine("fsdp", dst)
            saved_world = load_sharded(b, path)
        dist.barrier()
        res = {}
        for who, eng in (("a", a), ("b", b)):
            if eng is not None:
                res[who] = [eng.train_step(batch(s, 16, vocab))["loss"] for s in (3, 4)]
                res[who + "_w"] = full_weights(eng)
                res[who + "_version"] = eng.version
        if rank == 0:
            md, exact = diff(res["a_w"], res["b_w"])
            emit(rank, "reshard", case=name, a=res["a"], b=res["b"], max_weight_diff=md, bit_exact=exact,
                 saved_world=saved_world, versions=[res["a_version"], res["b_version"]],
                 pickle_free=not any(f.endswith((".metadata", ".distcp", ".pt")) for f in os.listdir(path)),
                 files=sorted(os.listdir(path)))
        dist.barrier()


def main() -> None:
    faulthandler.dump_traceback_later(float(os.environ.get("FSDP_WORKER_TIMEOUT", "240")), exit=True)
    world = MPI.COMM_WORLD
    rank = world.Get_rank()
    port = world.bcast(29500 + random.Random().randrange(2000) if rank == 0 else None, root=0)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world.Get_size())
    torch.manual_seed(0)
    group2 = dist.new_group([0, 1])
    g1 = dist.new_group([0])
    group1 = g1 if rank == 0 else None
    scenarios = sys.argv[1:] or ["losses", "exact", "sft", "options", "reshard"]
    if "losses" in scenarios:
        losses(rank, group2)
    if "sft" in scenarios:
        sft(rank, group2)
    if "options" in scenarios:
        options(rank, group2)
    if "exact" in scenarios:
        exact(rank, group2)
    if "reshard" in scenarios:
        reshard(rank, group2, group1, os.path.join(os.environ["FSDP_RESULTS"], "ckpt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
