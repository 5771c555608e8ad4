"""The AsyncFlow roles as threads of one process: the trainer leader, two rollout workers and a reward scorer over
the in-process store (store/local.py) and weight link (weights/local.py). The same classes run each rank of a
job (workflow/async_flow.py); here the whole protocol runs in seconds: admission under eta, stale-group
replacement, drain at a stopping checkpoint, and a resume that trains on every sample exactly once."""

import collections
import copy
import threading

import pytest

pytest.importorskip("torch")

from asyncflow_hpc.config import load_config  # noqa: E402
from asyncflow_hpc.engines.factory import make_trainer, sampling_params  # noqa: E402
from asyncflow_hpc.engines.torch_rollout import TorchRolloutEngine  # noqa: E402
from asyncflow_hpc.store import make_store  # noqa: E402
from asyncflow_hpc.topology.roles import Role  # noqa: E402
from asyncflow_hpc.weights import SwapGate  # noqa: E402
from asyncflow_hpc.weights.local import LocalWeightLink  # noqa: E402
from asyncflow_hpc.workflow import common  # noqa: E402
from asyncflow_hpc.workflow.metrics import RoleClock  # noqa: E402
from asyncflow_hpc.workflow.ports import SoloTrainerGroup  # noqa: E402
from asyncflow_hpc.workflow.roles import (ROLE_CLASSES, GroupScorer, RolloutWorker, Stream, TrainerLeader,  # noqa: E402
                                          reward_score, role_class)
from asyncflow_hpc.workflow.rows import ADV_COLUMN, SAMPLE_COLUMNS, prompt_schema, sample_schema  # noqa: E402

STEPS, P, N, ETA, WORKERS = 6, 4, 4, 1, 2


def _cfg(tmp_path, *extra):
    return load_config("configs/default.yaml", [
        "workflow.mode=async", "topology.colocate=false", f"workflow.steps={STEPS}", f"workflow.eta={ETA}",
        f"data.prompts_per_step={P}", f"rollout.n={N}", "data.eval_size=0", "device.threads_per_rank=1",
        "trainer.updates_per_step=2", "store.timeout_s=60", f"run.dir={tmp_path}/{{name}}", "run.name=inproc",
        "checkpoint.on_signal=false", *extra])


def run_roles(cfg, ckpt=None):
    """One 'job' in threads; returns (leader, workers, scorer, (prompt id, sample index) of every row trained on)."""
    task = common.build_task(cfg, "cpu")
    trainer = make_trainer(cfg, task.model, pad_id=task.tokenizer.pad_id, group=None, device="cpu")
    resuming = ckpt is not None and ckpt.resuming
    if resuming:
        from asyncflow_hpc.checkpoint.state import load_into

        load_into(ckpt.path, trainer)
    trained = []
    step = trainer.train_step
    trainer.train_step = lambda rows: (trained.extend((r.prompt_id, r.sample_index) for r in rows), step(rows))[1]
    prompts = make_store(cfg.store, prompt_schema())
    samples = make_store(cfg.store, sample_schema(advantage=True), producers=WORKERS)
    prompts.register_task("rollout", ["prompt_id"])
    columns = list(SAMPLE_COLUMNS) + [ADV_COLUMN]
    samples.register_task("train", columns)
    samples.register_task("reward", ["prompt_ids", "response_ids"], adds=["reward", ADV_COLUMN])
    link = LocalWeightLink(timeout_s=60)
    sender, start = link.sender(), ckpt.start if resuming else 0
    sender.send(trainer.named_parameters_for_broadcast(), start)
    stream = Stream.of(cfg.workflow, cfg.data, cfg.rollout, cfg.run, cfg.store)
    params = sampling_params(cfg.rollout, task.tokenizer.stop_ids)
    workers = []
    for i in range(WORKERS):
        rx, engine = link.receiver(), TorchRolloutEngine(copy.deepcopy(task.model), device="cpu")
        rx.wait_staged(start)
        rx.swap(engine.load_weights)
        workers.append(RolloutWorker(stream=stream, algo=cfg.algorithm, task=task, engine=engine, params=params,
                                     prompts=prompts, samples=samples.for_producer(i), weights=rx,
                                     gate=SwapGate(i, WORKERS),
                                     reward_inline=False, clock=RoleClock()))
    scorer = GroupScorer("reward", reward_score(task, cfg.run.seed, cfg.algorithm), samples=samples, n=N,
                         clock=RoleClock(), result_key="rows_scored")
    leader = TrainerLeader(prompts=prompts, samples=samples, train_columns=columns, tokenizer=task.tokenizer,
                           reward_inline=False, stream=stream, algo=cfg.algorithm, trainer=trainer,
                           group=SoloTrainerGroup(), weights=sender, bucket_mb=cfg.weights.bucket_mb, ckpt=ckpt,
                           clock=RoleClock(), history=ckpt.history() if resuming else [])
    results, errors = {}, []

    def go(name, fn):
        try:
            results[name] = fn()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append((name, exc))
            prompts.mark_done()  # let the other threads end

    threads = [threading.Thread(target=go, args=(f"rollout{i}", w.run)) for i, w in enumerate(workers)]
    threads += [threading.Thread(target=go, args=("reward", scorer.run)),
                threading.Thread(target=go, args=("trainer", lambda: leader.run(start)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    sender.close()
    assert not errors, errors
    assert not any(t.is_alive() for t in threads), "a role never reached end of stream"
    return leader, results, trained


def test_every_role_has_a_class_and_a_missing_one_is_an_error():
    from asyncflow_hpc.errors import ConfigError

    assert {Role.TRAINER, Role.ROLLOUT, Role.REWARD, Role.REFERENCE, Role.STORE} <= set(ROLE_CLASSES)
    saved = ROLE_CLASSES.pop(Role.REWARD)
    try:
        with pytest.raises(ConfigError, match="has no class"):
            role_class(Role.REWARD)
    finally:
        ROLE_CLASSES[Role.REWARD] = saved


def test_roles_in_threads_keep_eta_and_train_on_every_sample_once(tmp_path):
    leader, results, trained = run_roles(_cfg(tmp_path))
    assert len(leader.history) == STEPS
    assert all(h["staleness_max"] <= ETA for h in leader.history)  # admission + version_bounded gets
    assert any(h["staleness_max"] == ETA for h in leader.history), "eta=1 never used: the test would not discriminate"
    counts = collections.Counter(trained)
    assert max(counts.values()) == 1  # exactly-once consumption
    groups = collections.Counter(pid for pid, _ in counts)
    assert set(groups.values()) == {N} and len(groups) == STEPS * P  # whole groups, a full batch every step
    produced = sum(results[f"rollout{i}"]["rows_produced"] for i in range(WORKERS))
    assert results["reward"]["rows_scored"] == produced >= STEPS * P * N
    # Every group of the schedule was trained on, or was discarded as too stale and replaced by a later prompt.
    replaced = set(groups) - set(range(STEPS * P))
    assert len(set(range(STEPS * P)) - set(groups)) == len(replaced)


def test_stop_checkpoint_drains_and_resume_trains_each_sample_once(tmp_path):
    from asyncflow_hpc.checkpoint.run import Checkpointer

    cfg = _cfg(tmp_path, "checkpoint.stop_after_steps=2")
    first = Checkpointer(cfg, verbose=False)
    leader, _, before = run_roles(cfg, first)
    assert first.stopped and len(leader.history) == 2
    cfg2 = _cfg(tmp_path, "resume=auto")
    again = Checkpointer(cfg2, verbose=False)
    assert again.resuming and again.start == 2
    leader2, _, after = run_roles(cfg2, again)
    assert len(leader2.history) == STEPS  # two from the checkpoint's history, four trained now
    counts = collections.Counter(before + after)
    assert max(counts.values()) == 1, [k for k, c in counts.items() if c > 1][:5]
    groups = collections.Counter(pid for pid, _ in counts)
    assert set(groups.values()) == {N} and len(groups) == STEPS * P
