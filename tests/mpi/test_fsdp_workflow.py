"""trainer.engine=fsdp in the whole training job under real mpiexec ranks: the weight broadcast gathered from
shards, colocated sync rollout, sharded checkpoints resumed onto another trainer count, the exported policy."""

import json
import subprocess
import sys

import pytest

from tests import mpi_util
from tests.mpi_util import ROOT, mpi_env

SMALL = ["workflow.steps=4", "data.eval_size=0", "data.prompts_per_step=8", "rollout.n=4",
         "trainer.updates_per_step=2", "device.threads_per_rank=1", "trace.enabled=false"]
ASYNC = ["workflow.mode=async", "topology.colocate=false", "workflow.eta=0"]


def run_job(tmp_path, name, *overrides, timeout=300):
    return mpi_util.run_job(tmp_path, name, *SMALL, *overrides, timeout=timeout)


def _losses(res):
    return [h["loss"] for h in res["history"]]


def _max_diff(a, b):
    from safetensors.torch import load_file

    ta, tb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert sorted(ta) == sorted(tb)
    return max(float((ta[k].double() - tb[k].double()).abs().max()) for k in ta)


@pytest.mark.mpi
def test_sharded_trainer_eta0_async_equals_sync_and_the_replicated_trainer(tmp_path):
    # Two trainer ranks sharding the model: colocated sync (the rollout engine loads the gathered weights
    # after every step), and async with 2 rollout ranks fed by the broadcast gathered bucket by bucket.
    sync, _ = run_job(tmp_path, "sync", "trainer.engine=fsdp", "workflow.mode=sync", "topology.world_size=2",
                      f"model.save_path={tmp_path}/sync_policy")
    asyn, _ = run_job(tmp_path, "async", "trainer.engine=fsdp", *ASYNC, "topology.trainer_ranks=2",
                      f"model.save_path={tmp_path}/async_policy", "weights.bucket_mb=0.05")
    repl, _ = run_job(tmp_path, "repl", "workflow.mode=sync", "topology.world_size=2",
                      f"model.save_path={tmp_path}/repl_policy")
    assert _losses(sync) == _losses(asyn), "eta=0 async must equal sync loss by loss"
    assert all(h["staleness_max"] == 0 for h in asyn["history"])
    assert any(abs(x) > 1e-6 for x in _losses(sync)), "losses ~0: the test would not discriminate"
    # The sharded trainer = the replicated one up to reduction order.
    assert max(abs(a - b) for a, b in zip(_losses(sync), _losses(repl))) < 1e-5, (_losses(sync), _losses(repl))
    # The exported policy (gathered onto the leader) is a whole HF model, the same from both modes.
    assert _max_diff(tmp_path / "sync_policy", tmp_path / "async_policy") == 0.0
    assert _max_diff(tmp_path / "sync_policy", tmp_path / "repl_policy") < 1e-5


@pytest.mark.mpi
def test_sharded_checkpoint_resumes_onto_one_trainer_rank(tmp_path):
    # 2 trainer ranks write their shards at step 2; a job with ONE trainer rank resumes (DCP reshards) and
    # trains steps 3-4 as the uninterrupted 2-rank job does.
    straight, _ = run_job(tmp_path, "straight", "trainer.engine=fsdp", *ASYNC, "topology.trainer_ranks=2",
                          "checkpoint.every_steps=2", f"model.save_path={tmp_path}/straight_policy")
    ck2 = tmp_path / "straight" / "checkpoints" / "step-000002"
    assert (ck2 / "trainer" / "sharded.json").exists() and not (ck2 / "model.safetensors").exists()
    assert json.loads((ck2 / "trainer" / "sharded.json").read_text())["world"] == 2
    resumed, p = run_job(tmp_path, "resumed", "trainer.engine=fsdp", *ASYNC, "topology.world_size=3",
                         "topology.trainer_ranks=1", f"resume={ck2}", f"model.save_path={tmp_path}/resumed_policy")
    assert resumed["checkpoints"]["start_step"] == 2
    a, b = _losses(straight), _losses(resumed)
    assert len(a) == len(b) == 4 and a[:2] == b[:2]  # the first two come from the checkpoint's history
    assert max(abs(x - y) for x, y in zip(a[2:], b[2:])) < 1e-5, (a, b)
    assert _max_diff(tmp_path / "straight_policy", tmp_path / "resumed_policy") < 1e-5
    # The checkpoint of a sharded trainer cannot be loaded into a replicated one: one line before launch.
    p = subprocess.run([sys.executable, "-m", "asyncflow_hpc", "run", "configs/default.yaml", "run.name=wrong",
                        f"run.dir={tmp_path}/{{name}}", *SMALL, *ASYNC, "trainer.engine=torch", f"resume={ck2}"], cwd=ROOT, env=mpi_env(),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "holds a sharded trainer state (trainer.engine=fsdp)" in p.stderr, p.stderr
    assert "launching" not in p.stdout
