"""Preflight: paths, engine needs and store size are checked from the config, one line naming key and file."""

import pytest

from asyncflow_hpc.config import load_config
from asyncflow_hpc.errors import ConfigError
from asyncflow_hpc.preflight import preflight, row_bytes


def _cfg(tmp_path, *overrides):
    f = tmp_path / "job.yaml"
    f.write_text("workflow:\n  steps: 2\n")
    return load_config(str(f), list(overrides)), str(f)


@pytest.mark.parametrize("key, value, needle", [
    ("model.path", "{tmp}/nonexistent", "model.path='{tmp}/nonexistent': no such directory"),
    ("model.path", "{tmp}", "no config.json in"),
    ("data.train_path", "{tmp}/none.jsonl", "data.train_path='{tmp}/none.jsonl': no such file"),
    ("data.test_path", "{tmp}/none.jsonl", "data.test_path='{tmp}/none.jsonl': no such file"),
    ("data.test_path", "$ASYNCFLOW_SURELY_UNSET/t.jsonl", "environment variable in it is not set"),
    ("resume", "{tmp}/no-checkpoint", "resume='{tmp}/no-checkpoint': no such checkpoint directory"),
    ("resume", "{tmp}", "not a checkpoint (no meta.json)"),
])
def test_a_bad_path_is_one_line_naming_key_and_file(tmp_path, key, value, needle):
    over = [f"{key}={value.format(tmp=tmp_path)}"]
    if key.startswith("data."):
        (tmp_path / "m").mkdir()
        (tmp_path / "m" / "config.json").write_text("{}")
        over.append(f"model.path={tmp_path}/m")
        if key == "data.test_path":
            (tmp_path / "t.jsonl").write_text("")
            over.append(f"data.train_path={tmp_path}/t.jsonl")
    cfg, path = _cfg(tmp_path, *over)
    with pytest.raises(ConfigError) as info:
        preflight(cfg)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and needle.format(tmp=tmp_path) in msg and "\n" not in msg, msg


def test_good_paths_pass(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    (tmp_path / "t.jsonl").write_text("")
    ck = tmp_path / "ck" / "step-000002"
    ck.mkdir(parents=True)
    (ck / "meta.json").write_text('{"step": 2}')
    cfg, _ = _cfg(tmp_path, f"model.path={tmp_path}/m", f"data.train_path={tmp_path}/t.jsonl",
                  f"resume={tmp_path}/ck")
    preflight(cfg)


def test_vllm_without_model_path_fails_before_launch(tmp_path):
    with pytest.raises(ConfigError, match="rollout.engine=vllm needs model.path"):
        cfg, _ = _cfg(tmp_path, "rollout.engine=vllm")
        preflight(cfg)


def test_a_store_unit_smaller_than_a_row(tmp_path):
    cfg, path = _cfg(tmp_path, "workflow.mode=async", "topology.colocate=false", "store.unit_mb=0.001")
    need, big = row_bytes(cfg)
    assert need > cfg.store.unit_bytes and big == "prompt_ids"
    with pytest.raises(ConfigError, match=rf"^{path}: store.unit_mb=0.001 \(1048 bytes\) is smaller than one row"):
        preflight(cfg)
    cfg, _ = _cfg(tmp_path, "workflow.mode=async", "topology.colocate=false", f"store.unit_mb={need / 2**20}")
    preflight(cfg)


def test_topology_errors_name_the_file(tmp_path):
    cfg, path = _cfg(tmp_path, "workflow.job=smoke", "topology.world_size=4", "topology.trainer_ranks=4")
    with pytest.raises(ConfigError, match=rf"^{path}: topology"):
        preflight(cfg, 4)


def test_skippable_for_drills(tmp_path, monkeypatch):
    cfg, _ = _cfg(tmp_path, "model.path=/nonexistent")
    monkeypatch.setenv("ASYNCFLOW_PREFLIGHT", "0")
    preflight(cfg)
