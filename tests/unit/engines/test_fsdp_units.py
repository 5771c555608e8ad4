"""trainer.engine=fsdp without processes: config keys and refusals, gather bucketing, bench summary, checkpoint JSON."""

import pytest

torch = pytest.importorskip("torch")

from asyncflow_hpc.bench.trainer import summary  # noqa: E402
from asyncflow_hpc.checkpoint.sharded import _dec, _enc  # noqa: E402
from asyncflow_hpc.config import load_config  # noqa: E402
from asyncflow_hpc.engines.config import TrainerConfig  # noqa: E402
from asyncflow_hpc.engines.factory import make_trainer  # noqa: E402
from asyncflow_hpc.engines.fsdp_gather import plan_buckets  # noqa: E402
from asyncflow_hpc.errors import ConfigError  # noqa: E402
from asyncflow_hpc.models.hf import build_policy  # noqa: E402


def test_fsdp_keys_are_accepted_for_fsdp_and_refused_elsewhere():
    cfg = TrainerConfig(engine="fsdp", fsdp_activation_checkpointing=True, fsdp_cpu_offload=True)
    assert cfg.engine == "fsdp"
    for key in ("fsdp_activation_checkpointing", "fsdp_cpu_offload"):
        with pytest.raises(ConfigError, match=key):
            TrainerConfig(engine="torch", **{key: True})


def test_tensor_and_pipeline_parallel_are_refused_for_fsdp_naming_the_key():
    for key in ("topology.trainer_tp", "topology.trainer_pp"):
        with pytest.raises(ConfigError, match=key):
            load_config("configs/default.yaml", ["trainer.engine=fsdp", f"{key}=2"])


def test_sharded_trainer_ranks_own_no_engine_and_answer_no_held_out_prompts():
    # A forward on a sharded model is a collective: a trainer rank alone must never evaluate with it.
    from asyncflow_hpc.engines.factory import owns_engine, trainers_evaluate
    from asyncflow_hpc.topology.roles import plan_layout
    from asyncflow_hpc.workflow.stages import eval_share

    over = ["workflow.mode=async", "topology.colocate=false", "topology.world_size=4", "topology.trainer_ranks=2"]
    fsdp = load_config("configs/default.yaml", [*over, "trainer.engine=fsdp"])
    torch_ = load_config("configs/default.yaml", over)
    layout = plan_layout(4, fsdp.topology)
    assert not trainers_evaluate(fsdp) and trainers_evaluate(torch_)
    assert [owns_engine(fsdp, layout, r) for r in range(4)] == [False, False, True, True]
    assert [owns_engine(torch_, layout, r) for r in range(4)] == [True] * 4
    shares = [eval_share(list(range(10)), layout, r, trainers_evaluate(fsdp)) for r in range(4)]
    assert shares[0] == shares[1] == [] and sorted(shares[2] + shares[3]) == list(range(10))


def test_fsdp_without_a_process_group_is_a_named_error():
    cfg = load_config("configs/default.yaml", ["trainer.engine=fsdp", "workflow.job=smoke"])
    model, tok = build_policy(cfg.model)
    with pytest.raises(ConfigError, match="trainer.engine=fsdp needs a torch.distributed trainer group"):
        make_trainer(cfg, model, pad_id=tok.pad_id, group=None, device="cpu")


def test_plan_buckets_bounds_bytes_splits_dtypes_and_isolates_big_tensors():
    named = [("a", torch.zeros(10)), ("b", torch.zeros(10)), ("c", torch.zeros(30)), ("d", torch.zeros(5)),
             ("e", torch.zeros(4, dtype=torch.bfloat16)), ("f", torch.zeros(2))]
    buckets = [[n for n, _ in b] for b in plan_buckets(named, 80)]
    assert buckets == [["a", "b"], ["c"], ["d"], ["e"], ["f"]]
    assert [n for b in buckets for n in b] == list("abcdef")


def test_summary_ratios_are_sharded_over_replicated():
    run = dict(bytes_sharded=50, bytes_replicated=100, step_sharded_s=2.0, step_replicated_s=1.0,
               sync_sharded_over_replicated=0.9, sync_peak_buckets=1.5)
    out = summary([dict(run, T=1, bytes_sharded=100), dict(run, T=2), dict(run, T=4, bytes_sharded=25)], True)
    assert (out["mem_ratio_t1"], out["mem_ratio_t2"], out["mem_ratio_t4"]) == (1.0, 0.5, 0.25)
    assert out["step_time_sharded_over_replicated"] == 2.0 and out["sync_peak_buckets"] == 1.5


def test_optimizer_hyperparameters_round_trip_through_json_with_tuples():
    import json

    value = {"betas": (0.9, 0.999), "lr": 1e-3, "foreach": None, "amsgrad": False, "params": [1, 2]}
    back = {k: _dec(json.loads(json.dumps(_enc(v)))) for k, v in value.items()}
    assert back == value and isinstance(back["betas"], tuple)
    with pytest.raises(Exception, match="without pickle"):
        _enc(object())


def test_auto_trainer_engine_is_fsdp_for_several_trainer_ranks_on_devices():
    from asyncflow_hpc.engines.factory import resolve_trainer_engine

    for kind, ranks, want in (("cuda", 2, "fsdp"), ("npu", 4, "fsdp"), ("cuda", 1, "torch"), ("cpu", 4, "torch")):
        cfg = load_config("configs/default.yaml", [])
        assert cfg.trainer.engine == "auto"
        assert resolve_trainer_engine(cfg, kind, ranks) == want == cfg.trainer.engine
    cfg = load_config("configs/default.yaml", ["trainer.fsdp_cpu_offload=true"])  # accepted while undecided
    with pytest.raises(ConfigError, match="trainer.engine=auto chose torch"):
        resolve_trainer_engine(cfg, "cpu", 2)
    assert resolve_trainer_engine(load_config("configs/default.yaml", ["trainer.engine=torch"]), "cuda", 8) == "torch"
