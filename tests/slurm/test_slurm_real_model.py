"""A real user's first run, on the real local Slurm: `sbatch slurm/cpu.sbatch` with a pretrained HF model
(SmolLM2-135M-Instruct), two sharded (FSDP2) trainer ranks and one vLLM rollout rank, under srun."""

from __future__ import annotations

import json

import pytest

from tests.smollm2 import require_vllm, smollm2_dir

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(900)]


def test_sbatch_pretrained_model_vllm_rollout_sharded_trainer(local_slurm, job_dir):
    require_vllm()
    model = smollm2_dir()
    run_dir = job_dir / "run"
    out = job_dir / "job-%j.out"
    args = ["configs/smollm2_cpu.yaml", f"model.path={model}", "run.name=first", f"run.dir={run_dir}",
            "trainer.engine=fsdp", "topology.trainer_ranks=2", "workflow.eta=0", "workflow.steps=2",
            "data.prompts_per_step=2", "rollout.n=4", "data.eval_size=0", "device.threads_per_rank=1",
            "store.timeout_s=600", "weights.timeout_s=600", "checkpoint.at_end=true",
            f"model.save_path={job_dir}/policy"]
    job_id = local_slurm.run("sbatch", "--parsable", "--ntasks=3", f"--output={out}", "slurm/cpu.sbatch", *args,
                             env=local_slurm.env()).stdout.strip().split(";")[0]
    out = str(out).replace("%j", job_id)
    assert local_slurm.wait(job_id, timeout=840) == "COMPLETED", open(out).read()[-5000:]
    text = open(out).read()
    assert "launching: srun --mpi=pmi2 -n 3" in text, text[-3000:]
    res = json.loads((run_dir / "result.json").read_text())
    assert res["completed_steps"] == 2 and res["version"] == 2
    for step in res["history"]:  # every update reached the vLLM engine whole (a stale head: ~0.5 nats)
        assert step["staleness_max"] == 0 and step["mismatch_lp_max"] < 1e-3, step
    ck = run_dir / "checkpoints" / "step-000002" / "trainer" / "sharded.json"
    assert json.loads(ck.read_text())["world"] == 2  # both trainer ranks wrote their shards
    assert (job_dir / "policy" / "model.safetensors").exists()  # the whole policy, exported for vLLM and users
