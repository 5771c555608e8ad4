"""`asyncflow-hpc bench rollout`: the vLLM engine vs the native torch engine on one real model, one invocation.

    asyncflow-hpc bench rollout [--quick] [--json] [--model DIR] [--threads 2]

Both engines generate for the same prompts (chat-rendered arithmetic questions), the same per-sample
seeds, groups of `--n` samples per prompt (the torch engine's batching unit; vLLM takes the whole
batch), and the same lengths: no stop tokens, so every response is exactly `--tokens` long. Each side
runs in its own subprocess (one in-process vLLM engine per process) with the same thread count;
tokens/s is timed after one warm-up call. `weight_load_s` is the median time of an in-place update of
every weight of the running vLLM engine from views of one flat staging buffer, as the weight receiver
hands them over (reload, tied-head repack, prefix-cache reset).

JSON keys: torch_tokens_per_s, vllm_tokens_per_s, vllm_over_torch, weight_load_s, vllm_startup_s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from asyncflow_hpc.bench.common import BenchError, print_json_last

DEFAULT_MODEL = "models/smollm2-135m-instruct"


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="asyncflow-hpc bench rollout", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=os.environ.get("ASYNCFLOW_SMOLLM2_DIR", DEFAULT_MODEL),
                   help="local HF model directory (default: the imported SmolLM2-135M-Instruct)")
    p.add_argument("--quick", action="store_true", help="16 prompts x 32 tokens instead of 32 x 64")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads of each engine")
    p.add_argument("--n", type=int, default=8, help="samples per prompt (one group)")
    p.add_argument("--repeats", type=int, default=3, help="timed generations (and weight loads) per engine")
    p.add_argument("--side", choices=["torch", "vllm"], help=argparse.SUPPRESS)  # one side, in a subprocess
    p.add_argument("--out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _workload(model: str, quick: bool, n: int) -> tuple[list[list[int]], list[int], int]:
    from asyncflow_hpc.data.synthetic import make_arith
    from asyncflow_hpc.models.tokenizer import load_tokenizer
    from asyncflow_hpc.workflow.common import derive_seed

    tok = load_tokenizer(model)
    prompts, tokens = (16, 32) if quick else (32, 64)
    train, _ = make_arith(2, prompts // n, 0, seed=0)
    ids = [tok.encode_chat(f"{ex.question} Answer with just the number.") for ex in train for _ in range(n)]
    seeds = [derive_seed(0, 0, i // n, i % n) for i in range(len(ids))]
    return ids, seeds, tokens


def _side(ns: argparse.Namespace) -> dict:
    """One engine in this process: warm up, time `repeats` generations (and, for vLLM, weight loads)."""
    import torch

    from asyncflow_hpc.engines.base import SamplingParams

    torch.set_num_threads(ns.threads)
    prompts, seeds, tokens = _workload(ns.model, ns.quick, ns.n)
    params = SamplingParams(max_new_tokens=tokens, temperature=1.0, stop_token_ids=())
    out: dict = {}
    if ns.side == "torch":
        from asyncflow_hpc.engines.torch_rollout import TorchRolloutEngine
        from asyncflow_hpc.models.hf import load_pretrained

        engine = TorchRolloutEngine(load_pretrained(ns.model)[0])
    else:
        from asyncflow_hpc.engines.vllm_rollout import VLLMOptions, VLLMRolloutEngine

        engine = VLLMRolloutEngine(VLLMOptions(model_path=ns.model, max_model_len=512), platform="cpu")
        out["startup_s"] = engine.startup_s
    engine.generate(prompts[:ns.n], params, seeds[:ns.n])  # warm-up (kernels, allocator)
    times = []
    for _ in range(ns.repeats):
        t0 = time.perf_counter()
        gens = engine.generate(prompts, params, seeds)
        times.append(time.perf_counter() - t0)
        if any(g.length != tokens for g in gens):
            raise BenchError(f"bench rollout ({ns.side}): a response is not {tokens} tokens long")
    out["tokens_per_s"] = len(prompts) * tokens / sorted(times)[len(times) // 2]
    if ns.side == "vllm":
        out["weight_load_s"] = _weight_loads(engine, ns.model, ns.repeats)
        engine.close()
    return out


def _weight_loads(engine, model: str, repeats: int) -> float:
    """Median seconds of an in-place update of every weight, from one flat staging buffer's views."""
    from asyncflow_hpc.models.hf import broadcast_tensors, load_pretrained
    from asyncflow_hpc.weights import WeightSyncConfig, plan_for
    from asyncflow_hpc.weights.flat import FlatBuffer

    named = broadcast_tensors(load_pretrained(model)[0])
    flat = FlatBuffer(plan_for(named, WeightSyncConfig()), "cpu")
    for (_, view), (_, t) in zip(flat.named(), named):
        view.copy_(t)
    times = []
    for v in range(repeats):
        t0 = time.perf_counter()
        engine.load_weights(flat.named(), v + 1)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _run_side(ns: argparse.Namespace, side: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="asyncflow-bench-rollout-") as tmp:
        out = Path(tmp) / "out.json"
        args = [sys.executable, "-m", "asyncflow_hpc.bench.rollout", "--side", side, "--out", str(out),
                "--model", ns.model, "--threads", str(ns.threads), "--n", str(ns.n), "--repeats", str(ns.repeats)]
        env = dict(os.environ, OMP_NUM_THREADS=str(ns.threads))
        p = subprocess.run(args + (["--quick"] if ns.quick else []), capture_output=True, text=True, env=env,
                           timeout=1800)
        if p.returncode != 0:
            raise BenchError(f"bench rollout: the {side} side exited {p.returncode}:\n{(p.stdout + p.stderr)[-3000:]}")
        return json.loads(out.read_text())


def main(argv: list[str]) -> int:
    ns = _args(argv)
    if not os.path.exists(os.path.join(ns.model, "config.json")):
        raise BenchError(f"bench rollout: {ns.model} is not a model directory; import SmolLM2 first "
                         f"(make smollm2) or pass --model DIR")
    if ns.side:
        Path(ns.out).write_text(json.dumps(_side(ns)))
        return 0
    torch_side, vllm_side = _run_side(ns, "torch"), _run_side(ns, "vllm")
    res = {"torch_tokens_per_s": torch_side["tokens_per_s"], "vllm_tokens_per_s": vllm_side["tokens_per_s"],
           "vllm_over_torch": vllm_side["tokens_per_s"] / torch_side["tokens_per_s"],
           "weight_load_s": vllm_side["weight_load_s"], "vllm_startup_s": vllm_side["startup_s"],
           "threads": ns.threads, "quick": ns.quick}
    print(f"rollout on {ns.model} ({ns.threads} threads, groups of {ns.n}):")
    print(f"  torch engine  {res['torch_tokens_per_s']:8.1f} tokens/s")
    print(f"  vLLM engine   {res['vllm_tokens_per_s']:8.1f} tokens/s   vllm_over_torch {res['vllm_over_torch']:.2f}")
    print(f"  in-place update of every weight: {res['weight_load_s']:.2f} s (median); vLLM start-up "
          f"{res['vllm_startup_s']:.1f} s")
    if ns.json:
        print_json_last(res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
