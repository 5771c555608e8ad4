"""The AsyncFlow workflow under real mpiexec ranks: eta=0 equals sync, staleness bound, exactly-once rows."""

import pytest

from tests import mpi_util

SMALL = ["workflow.steps=3", "data.eval_size=0", "data.prompts_per_step=8", "rollout.n=4",
         "trainer.updates_per_step=2", "device.threads_per_rank=1"]


def run_job(tmp_path, name, *overrides, timeout=300):
    return mpi_util.run_job(tmp_path, name, *SMALL, *overrides, timeout=timeout)


@pytest.mark.mpi
def test_eta0_async_equals_sync_loss_by_loss(tmp_path):
    # Same seeds, same trainer data-parallel size (2): the colocated baseline on 2 ranks, and
    # 2 trainer + 2 rollout ranks streaming through the store with eta=0.
    sync, _ = run_job(tmp_path, "sync", "workflow.mode=sync", "topology.world_size=2", "trace.enabled=false")
    asyn, _ = run_job(tmp_path, "async", "workflow.mode=async", "topology.colocate=false", "topology.trainer_ranks=2",
                      "workflow.eta=0", "trace.enabled=false")
    assert len(sync["history"]) == len(asyn["history"]) == 3
    for step, (a, b) in enumerate(zip(sync["history"], asyn["history"])):
        # with two updates per step the second is off-policy, so the loss is not trivially 0
        assert a["loss"] == b["loss"], f"step {step}: sync loss {a['loss']!r} != async loss {b['loss']!r}"
        assert a["reward_mean"] == b["reward_mean"] and a["response_len"] == b["response_len"]
    assert any(abs(h["loss"]) > 1e-6 for h in sync["history"]), "losses are all ~0: the test would not discriminate"
    assert all(h["staleness_max"] == 0 for h in asyn["history"])


@pytest.mark.mpi
@pytest.mark.parametrize("eta", [1, 2])
def test_every_consumed_row_within_eta_and_exactly_once(tmp_path, eta):
    from asyncflow_hpc.trace.reader import read_trace

    res, p = run_job(tmp_path, f"eta{eta}", "workflow.mode=async", "topology.colocate=false", f"workflow.eta={eta}",
                     "workflow.steps=5")
    tr = read_trace(res["trace"])
    s = tr.samples
    assert len(s) == 5 * 8 * 4
    stale = s["version_consumed"] - s["version_produced"]
    assert stale.min() >= 0 and stale.max() <= eta, f"staleness outside [0, {eta}]: {sorted(set(stale.tolist()))}"
    assert len(set(s["row"].tolist())) == len(s), "a row was consumed twice"
    # every prompt group is whole: n samples per prompt id
    import collections

    counts = collections.Counter(s["prompt_id"].tolist())
    assert set(counts.values()) == {4} and len(counts) == 5 * 8
    # A group that became too stale is discarded (counted) and replaced by a prompt id past the
    # schedule: every missing scheduled group is matched by exactly one replacement.
    missing = set(range(5 * 8)) - set(counts)
    extra = {p for p in counts if p >= 5 * 8}
    assert len(missing) == len(extra), (missing, extra)
    assert "staleness" in p.stdout and "exposed weight sync" in p.stdout


@pytest.mark.mpi
def test_reward_stage_runs_as_a_store_consumer(tmp_path):
    res, p = run_job(tmp_path, "reward", "workflow.mode=async", "topology.colocate=false", "topology.reward_ranks=1",
                     "trace.enabled=false")
    assert len(res["history"]) == 3
    assert " reward " in p.stdout  # the role table has the reward rank


@pytest.mark.mpi
def test_reference_stage_runs_as_a_store_consumer(tmp_path):
    # A dedicated reference rank scores every row for the KL term; the trainer holds no reference copy.
    # With eta=0 the batches are those of a run whose trainer computes the reference log-probs itself,
    # so every step's loss and KL must agree.
    kl = ["workflow.mode=async", "topology.colocate=false", "workflow.eta=0", "algorithm.kl_coef=0.05",
          "trace.enabled=false"]
    own, _ = run_job(tmp_path, "own", *kl, "topology.world_size=3")
    ref, p = run_job(tmp_path, "ref", *kl, "topology.world_size=4", "topology.reference_ranks=1")
    assert len(own["history"]) == len(ref["history"]) == 3
    for step, (a, b) in enumerate(zip(own["history"], ref["history"])):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-9), step
        assert a["kl"] == pytest.approx(b["kl"], rel=1e-6, abs=1e-9), step
    assert ref["history"][-1]["kl"] > 1e-4, "kl ~0: the test would not tell missing reference log-probs apart"
    assert " reference " in p.stdout
    assert ref["summary"]["busy_fraction_by_role"]["reference"] > 0  # the rank did the scoring, not the trainer


@pytest.mark.mpi
def test_dedicated_store_rank_serves_the_whole_run(tmp_path):
    # topology.store_ranks=1 (the layout docs/store.md recommends) hung at the first task registration
    # when the controller on the store rank waited for the main thread to serve: it now serves from a
    # thread from the start. eta=0: the same losses as without the store rank.
    plain, _ = run_job(tmp_path, "plain", "topology.world_size=4", "workflow.eta=0", "trace.enabled=false")
    res, p = run_job(tmp_path, "store", "topology.world_size=5", "topology.store_ranks=1", "workflow.eta=0",
                     "trace.enabled=false", "store.timeout_s=60")
    assert "store=0 trainer=1" in p.stdout
    assert res["completed_steps"] == 3
    assert [h["loss"] for h in res["history"]] == [h["loss"] for h in plain["history"]]


@pytest.mark.mpi
def test_dynamic_sampling_trains_only_on_informative_groups(tmp_path):
    # The embedded task starts at ~0 accuracy: most groups of 4 are all wrong (zero advantage). Dynamic
    # sampling drops them (counted), feeds replacement prompts, and every step still gets 8 informative groups.
    from asyncflow_hpc.trace.reader import read_trace

    res, p = run_job(tmp_path, "dyn", "algorithm.dynamic_sampling=true", "workflow.eta=1",
                     "algorithm.dynamic_sampling_max_rounds=40", "workflow.steps=3")
    hist = res["history"]
    assert len(hist) == 3
    assert all(h["zero_signal_groups"] == 0.0 for h in hist), [h["zero_signal_groups"] for h in hist]
    assert all(h["rows"] == 8 * 4 for h in hist)
    assert hist[-1]["zero_signal_dropped"] > 0  # the task really had zero-signal groups to drop
    tr = read_trace(res["trace"])
    stale = tr.samples["version_consumed"] - tr.samples["version_produced"]
    assert stale.min() >= 0 and stale.max() <= 1  # the staleness bound holds for replacement prompts too


@pytest.mark.mpi
def test_a_real_trace_records_every_span_the_cost_model_reads(tmp_path):
    # The cost model (trace/costmodel.py) fits from these spans; a name only the synthetic trace wrote would
    # silently drop its term when calibrating from a real run. 2 replicated trainer ranks: the all-reduce too.
    from asyncflow_hpc.trace.costmodel import READS, fit_costs
    from asyncflow_hpc.trace.reader import read_trace

    res, _ = run_job(tmp_path, "spans", "workflow.mode=async", "topology.colocate=false", "topology.trainer_ranks=2",
                     "trainer.engine=torch", "workflow.eta=1", "workflow.steps=4")
    t = read_trace(res["trace"])
    names = set(t.spans["name"].tolist())
    assert {n.value for n in READS} <= names, sorted({n.value for n in READS} - names)
    recv = t.spans[t.spans["name"] == "weight_recv"]
    assert set(recv["rank"].tolist()) == {2, 3} and recv["version"].min() >= 0
    model = fit_costs(t)
    assert model.allreduce_s > 0 and model.sync_transfer_s > 0
