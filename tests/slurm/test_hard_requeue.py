"""Hard requeue on the real local Slurm: a running sbatch job is requeued with no warning signal, its step killed
(`scontrol requeue`: SIGTERM, then SIGKILL after KillWait; or every process SIGKILLed first, as a node failure or
an expired KillWait leaves it: no handler runs, the MPICH segment stays in /dev/shm). The requeued job (same job id
and step id, hence the same segment name) must not hang in MPI_Init: the launcher removes the stale state the killed
run noted in the run dir before it starts the ranks. It resumes from the last periodic checkpoint and completes;
the killed segment's per-rank trace files are merged on resume, and the lineage over both segments holds (the
killed segment counted up to the checkpoint the run resumed from)."""

from __future__ import annotations

import collections
import glob
import json
import os
import signal
import time
import uuid

import pytest

from tests.lineage import check_lineage

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(420)]
STEPS, P, N, EVERY = 60, 8, 4, 20


def _pids(run_dir) -> tuple[int, list[int]]:
    """(launcher pid, rank pids) from the job's temp-file record and the ranks' heartbeats."""
    rec = [json.loads(p.read_text()) for p in (run_dir / "jobtemps").glob("slurm-*.json")]
    ranks = [json.loads(p.read_text())["pid"] for p in (run_dir / "heartbeat").glob("rank-*.json")]
    assert len(rec) == 1 and len(ranks) == 4, (rec, ranks)
    return int(rec[0]["pid"]), ranks


@pytest.mark.parametrize("how", ["sigkill", "scontrol"])
def test_hard_requeue_mid_run_resumes_from_checkpoint(local_slurm, job_dir, how):
    from asyncflow_hpc.launch.cleanup import held_files
    from asyncflow_hpc.trace.reader import read_trace

    run_dir = job_dir / "run"
    out = job_dir / "job-%j.out"
    args = ["configs/default.yaml", "run.name=hard", f"run.dir={run_dir}", "data.eval_size=0",
            f"data.prompts_per_step={P}", f"rollout.n={N}", f"workflow.steps={STEPS}", "workflow.mode=async",
            "topology.colocate=false", "workflow.eta=1", f"checkpoint.every_steps={EVERY}", "trace.flush_s=0.05"]
    decoy = f"/dev/shm/mpich_shm_decoy{uuid.uuid4().hex[:8]}_0"  # same name pattern, not this job's
    open(decoy, "w").close()
    try:
        job_id = local_slurm.run("sbatch", "--parsable", f"--output={out}", "slurm/cpu.sbatch", *args,
                                 env=local_slurm.env()).stdout.strip().split(";")[0]
        out = str(out).replace("%j", job_id)
        first_ck = run_dir / "checkpoints" / f"step-{EVERY:06d}"
        deadline = time.monotonic() + 180
        while not first_ck.exists():  # mid-run, with a checkpoint behind it
            assert time.monotonic() < deadline, "no checkpoint after 180 s:\n" + open(out).read()[-3000:]
            assert local_slurm.state(job_id) in ("PENDING", "RUNNING", "CONFIGURING", None), open(out).read()
            time.sleep(0.05)
        time.sleep(0.5)  # trace flushes (flush_s=0.05) past the checkpoint, well before the next one
        launcher, ranks = _pids(run_dir)
        ours = {p for p in held_files(ranks) if p.startswith("/dev/shm/")}  # the segment the ranks map
        assert ours, "the job's MPICH segment was not found"
        assert local_slurm.state(job_id) == "RUNNING", open(out).read()[-3000:]
        if how == "sigkill":
            for pid in [launcher, *ranks]:
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
            assert ours <= set(glob.glob("/dev/shm/mpich_shm_*")), "the killed step left nothing to clean"
        local_slurm.run("scontrol", "requeue", job_id)  # no USR2: no stopping checkpoint
        local_slurm.wait(job_id, timeout=120, until=("PENDING",))
        time.sleep(3)  # let slurmd revoke the old credential before the hold is released (see test_preempt.py)
        deadline = time.monotonic() + 60
        while local_slurm.state(job_id) == "PENDING" and time.monotonic() < deadline:
            local_slurm.run("scontrol", "update", f"jobid={job_id}", "StartTime=now", check=False)
            time.sleep(1)
        state = local_slurm.wait(job_id, timeout=240)
        text = open(out).read()
        assert state == "COMPLETED", text[-5000:]
        assert "resume=auto" in text and "merged 4 per-rank trace file(s) of a killed segment" in text, text[-5000:]
        if how == "sigkill":  # nothing ran at the kill: the requeued job's start-up removed the segment
            assert "temp file(s) left by a killed run of this job" in text, text[-5000:]
        res = json.loads((run_dir / "result.json").read_text())
        assert res["completed_steps"] == STEPS and not res["stopped"]
        start = res["checkpoints"]["start_step"]
        assert start >= EVERY and start % EVERY == 0, start
        # The killed segment was merged on resume: listed as a trace, no longer as unmerged rank files.
        assert not res["trace_segments_unmerged"], res["trace_segments_unmerged"]
        assert len(res["trace_segments"]) == 2 and all(os.path.exists(p) for p in res["trace_segments"])
        assert not glob.glob(str(run_dir / "trace.rank*.h5")), "per-rank files left after the merge"
        killed, resumed = (read_trace(p) for p in res["trace_segments"])
        assert int(killed.attrs["superseded_from_step"]) == start
        done = killed.samples[killed.samples["version_consumed"] < start]  # the rest was trained again
        keys = []
        for s in (done, resumed.samples):
            keys += list(zip(s["prompt_id"].tolist(), s["sample_index"].tolist()))
        counts = collections.Counter(keys)
        assert max(counts.values()) == 1, "a sample was trained on twice"
        check_lineage(counts, STEPS, P, N)
        # Nothing of this job left: its segment (the requeued step maps the same name and removes it at
        # MPI_Finalize), its record, its temp folder; another job's segment untouched.
        assert not ours & set(glob.glob("/dev/shm/mpich_shm_*")), sorted(ours)
        assert not list((run_dir / "jobtemps").iterdir())
        assert not os.path.exists(f"/tmp/asyncflow-job-slurm-{job_id}")
        assert os.path.exists(decoy), "another job's segment was removed"
        at_start = "temp file(s) left by a killed run of this job" in text
        print(f"{how}: requeued after checkpoint step {start}; resumed, completed {STEPS} steps, {len(keys)} samples "
              f"once; stale segment removed {'at start-up' if at_start else 'on the killed run exit path'}")
    finally:
        if os.path.exists(decoy):
            os.remove(decoy)
