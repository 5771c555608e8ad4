"""Checkpoint/resume under real mpiexec ranks: bit-identical final weights, and a stop on the warning signal
(USR2 to `asyncflow-hpc run`) whose resume consumes every sample exactly once."""

import collections
import hashlib
import json
import signal
import subprocess
import sys
import time

import pytest

from tests.lineage import check_lineage
from tests.mpi_util import ROOT, mpi_env

SMALL = ["data.eval_size=0", "data.prompts_per_step=8", "rollout.n=4", "trainer.updates_per_step=2",
         "device.threads_per_rank=1"]
ASYNC = ["workflow.mode=async", "topology.colocate=false"]


def _cmd(tmp_path, name, *overrides):
    return [sys.executable, "-m", "asyncflow_hpc", "run", "configs/default.yaml", f"run.name={name}",
            f"run.dir={tmp_path}/{{name}}", *SMALL, *overrides]


def run_job(tmp_path, name, *overrides, timeout=240):
    p = subprocess.run(_cmd(tmp_path, name, *overrides), cwd=ROOT, env=mpi_env(), capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return json.loads((tmp_path / name / "result.json").read_text()), p


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _same_weights(a, b):
    from safetensors.torch import load_file

    ta, tb = load_file(str(a)), load_file(str(b))
    assert sorted(ta) == sorted(tb)
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and bool((ta[k].view(-1) == tb[k].view(-1)).all()), k
    assert _sha(a) == _sha(b), "same tensors but different safetensors bytes"


@pytest.mark.mpi
@pytest.mark.parametrize("mode", ["async", "sync"])
def test_resume_gives_bit_identical_final_weights(tmp_path, mode):
    extra = [*ASYNC, "workflow.eta=0"] if mode == "async" else ["workflow.mode=sync", "topology.world_size=2"]
    # Uninterrupted: 4 steps, checkpoints after steps 2 and 4.
    straight, _ = run_job(tmp_path, "straight", *extra, "workflow.steps=4", "checkpoint.every_steps=2",
                          "trace.enabled=false")
    ck2 = tmp_path / "straight" / "checkpoints" / "step-000002"
    meta = json.loads((ck2 / "meta.json").read_text())
    assert meta["step"] == 2 and meta["version"] == 2 and len(meta["history"]) == 2
    # A new run resumes from the step-2 checkpoint (a fresh process, weights/optimizer/RNG from disk).
    resumed, p = run_job(tmp_path, "resumed", *extra, "workflow.steps=4", "checkpoint.at_end=true",
                         f"resume={ck2}", "trace.enabled=false")
    assert resumed["checkpoints"]["start_step"] == 2
    _same_weights(tmp_path / "straight" / "checkpoints" / "step-000004" / "model.safetensors",
                  tmp_path / "resumed" / "checkpoints" / "step-000004" / "model.safetensors")
    assert [h["loss"] for h in straight["history"]] == [h["loss"] for h in resumed["history"]]
    assert any(abs(h["loss"]) > 1e-6 for h in straight["history"]), "losses ~0: the test would not discriminate"


def _wait_for_activity(hb_dir, rank, needle, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            rec = json.loads((hb_dir / f"rank-{rank:05d}.json").read_text())
            if needle(rec.get("activity", "")):
                return rec
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"rank {rank} never reached the wanted activity")


@pytest.mark.mpi
def test_warning_signal_checkpoints_stops_and_resume_consumes_each_sample_once(tmp_path):
    from asyncflow_hpc.trace.reader import read_trace

    # 40 steps of this job take under 2 s here: enough steps that the signal lands mid-run, heartbeats often
    # enough to see step 1 begin, and the output in a file (a pipe nobody reads would block the job).
    steps = 300
    over = [*ASYNC, "workflow.eta=2", f"workflow.steps={steps}", "trainer.updates_per_step=1",
            "monitor.interval_s=0.05", "monitor.stale_s=30"]
    log = tmp_path / "pre.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(_cmd(tmp_path, "pre", *over), cwd=ROOT, env=mpi_env(), stdout=fh,
                                stderr=subprocess.STDOUT, text=True)
        try:
            _wait_for_activity(tmp_path / "pre" / "heartbeat", 0,
                               lambda a: a.split(" ")[0] in ("train_step", "batch_wait") and "step=0" not in a)
            proc.send_signal(signal.SIGUSR2)  # what Slurm's --signal (or the sbatch trap) delivers
            proc.wait(timeout=180)
        finally:
            proc.kill() if proc.poll() is None else None
    out = log.read_text()
    assert proc.returncode == 0, out[-4000:]
    first = json.loads((tmp_path / "pre" / "result.json").read_text())
    assert first["stopped"] and 1 <= first["completed_steps"] < steps, out[-3000:]
    assert "checkpoint (stop)" in out and "signal SIGUSR2" in out
    again, p = run_job(tmp_path, "pre", *over, "resume=auto")
    assert not again["stopped"] and again["completed_steps"] == steps
    assert again["checkpoints"]["start_step"] == first["completed_steps"]
    # Lineage over both trace segments: every (prompt, sample) trained on exactly once, none missing.
    keys = []
    for seg in again["trace_segments"]:
        s = read_trace(seg).samples
        keys += list(zip(s["prompt_id"].tolist(), s["sample_index"].tolist()))
    counts = collections.Counter(keys)
    assert len(again["trace_segments"]) == 2
    assert max(counts.values()) == 1, [k for k, c in counts.items() if c > 1][:5]
    check_lineage(counts, steps, 8, 4)
    # resume=auto again after completion: nothing to do.
    p = subprocess.run(_cmd(tmp_path, "pre", *over, "resume=auto"), cwd=ROOT, env=mpi_env(), capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0 and "already completed" in p.stdout, p.stdout[-2000:] + p.stderr[-2000:]
