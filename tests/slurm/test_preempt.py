"""Preemption on the real local Slurm: the warning signal mid-run -> checkpoint (with the store's rows in
flight) -> the job requeues itself -> the requeued job resumes (resume=auto) and completes, every sample
trained on exactly once (checked on the sample lineage of both trace segments)."""

from __future__ import annotations

import collections
import json
import time

import pytest

from tests.lineage import check_lineage

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(420)]
STEPS, P, N = 200, 8, 4


def test_sbatch_job_preempted_mid_run_resumes_and_loses_nothing(local_slurm, job_dir):
    from asyncflow_hpc.trace.reader import read_trace

    run_dir = job_dir / "run"
    out = job_dir / "job-%j.out"
    args = ["configs/default.yaml", "run.name=pre", f"run.dir={run_dir}", "data.eval_size=0",
            f"data.prompts_per_step={P}", f"rollout.n={N}", f"workflow.steps={STEPS}", "workflow.mode=async",
            "topology.colocate=false", "workflow.eta=2"]
    job_id = local_slurm.run("sbatch", "--parsable", f"--output={out}", "slurm/cpu.sbatch", *args,
                             env=local_slurm.env()).stdout.strip().split(";")[0]
    out = str(out).replace("%j", job_id)
    hb = run_dir / "heartbeat" / "rank-00000.json"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # mid-run: the trainer is past step 5
        try:
            act = json.loads(hb.read_text())["activity"]
            if act.split(" ")[0] in ("train_step", "batch_wait") and int(act.split("step=")[1]) >= 5:
                break
        except (OSError, ValueError, IndexError, KeyError):
            pass
        assert local_slurm.state(job_id) in ("PENDING", "RUNNING", "CONFIGURING", None), open(out).read()
        time.sleep(0.2)
    else:
        raise AssertionError("the job never got to step 5:\n" + open(out).read())
    local_slurm.run("scancel", "--signal=USR2", "--batch", job_id)  # what --signal=B:USR2@S sends
    local_slurm.wait(job_id, timeout=120, until=("PENDING",))
    # Releasing the hold in the same second as the requeue races slurmd's revocation of the old
    # job credential ("Killing non-startable batch job: Job credential revoked"): let it pass first.
    time.sleep(3)
    deadline = time.monotonic() + 60
    while local_slurm.state(job_id) == "PENDING" and time.monotonic() < deadline:
        local_slurm.run("scontrol", "update", f"jobid={job_id}", "StartTime=now", check=False)  # skip the hold
        time.sleep(1)
    assert local_slurm.wait(job_id, timeout=240) == "COMPLETED", open(out).read()[-5000:]
    text = open(out).read()
    assert "checkpoint (stop)" in text and "requeueing job" in text and "resume=auto" in text, text[-5000:]
    res = json.loads((run_dir / "result.json").read_text())
    assert res["completed_steps"] == STEPS and not res["stopped"]
    start = res["checkpoints"]["start_step"]
    assert 5 <= start < STEPS, start
    keys = []
    for seg in res["trace_segments"]:
        s = read_trace(seg).samples
        keys += list(zip(s["prompt_id"].tolist(), s["sample_index"].tolist()))
    counts = collections.Counter(keys)
    assert len(res["trace_segments"]) == 2
    assert max(counts.values()) == 1, "a sample was trained on twice"
    check_lineage(counts, STEPS, P, N)
    print(f"preempted after step {start}; resumed and completed {STEPS} steps; {len(keys)} samples, each once")
