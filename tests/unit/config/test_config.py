"""Config loading: YAML + overrides -> typed sections; every error one line naming key and file."""

import pytest

from asyncflow_hpc.config import config_from_dict, load_config
from asyncflow_hpc.errors import ConfigError


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_defaults_and_overrides(tmp_path):
    path = write(tmp_path, "workflow:\n  eta: 2\n  mode: async\ntopology:\n  world_size: 8\n")
    cfg = load_config(path, ["workflow.eta=3", "store.capacity_rows=64", "launch.srun_args=[--exclusive]"])
    assert cfg.workflow.eta == 3 and cfg.topology.world_size == 8 and cfg.store.capacity_rows == 64
    assert cfg.launch.srun_args == ["--exclusive"]
    assert cfg.source_file.endswith("c.yaml")


def test_unknown_key_suggests_nearest(tmp_path):
    path = write(tmp_path, "workflow:\n  etta: 2\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == f"{path}: workflow.etta: unknown key; did you mean 'workflow.eta'?"


def test_unknown_section_lists_valid(tmp_path):
    path = write(tmp_path, "zzz: {a: 1}\n")
    with pytest.raises(ConfigError, match=r"zzz: unknown key; valid keys here: .*workflow"):
        load_config(path)


def test_wrong_type_names_key_and_file(tmp_path):
    path = write(tmp_path, "topology:\n  world_size: four\n")
    with pytest.raises(ConfigError, match=rf"^{path}: topology.world_size: expected an integer, got 'four'$"):
        load_config(path)


def test_post_init_check_names_key_and_file(tmp_path):
    path = write(tmp_path, "store:\n  capacity_rows: 0\n")
    with pytest.raises(ConfigError, match=rf"^{path}: store.capacity_rows: must be >= 1, got 0$"):
        load_config(path)


def test_literal_choices(tmp_path):
    with pytest.raises(ConfigError, match=r"workflow.mode: must be one of 'sync' \| 'async', got 'fast'"):
        load_config(None, ["workflow.mode=fast"])


def test_bad_override_is_attributed_to_the_command_line(tmp_path):
    path = write(tmp_path, "workflow:\n  eta: 1\n")
    with pytest.raises(ConfigError, match=r"^<command line override> \(config .*c.yaml\): workflow.eat: unknown key"):
        load_config(path, ["workflow.eat=2"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(path, ["workflow.eta"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"nope.yaml: config file not found"):
        load_config(str(tmp_path / "nope.yaml"))
    path = write(tmp_path, "a: [1, 2\n")
    with pytest.raises(ConfigError, match=r"not valid YAML \(line"):
        load_config(path)
    path = write(tmp_path, "- 1\n- 2\n", "list.yaml")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(path)


def test_section_must_be_mapping(tmp_path):
    path = write(tmp_path, "workflow: 3\n")
    with pytest.raises(ConfigError, match=r"workflow: expected a mapping"):
        load_config(path)


def test_async_cannot_be_colocated():
    with pytest.raises(ConfigError, match="workflow.mode=async needs separate"):
        load_config(None, ["workflow.mode=async", "topology.colocate=true"])


def test_reference_ranks_need_a_kl_term(tmp_path):
    path = tmp_path / "ref.yaml"
    path.write_text("workflow: {mode: async}\ntopology: {colocate: false, reference_ranks: 1}\n")
    with pytest.raises(ConfigError, match=rf"^{path}: topology.reference_ranks=1 .*algorithm.kl_coef=0.0"):
        load_config(str(path))
    cfg = load_config(str(path), ["algorithm.kl_coef=0.05"])
    assert cfg.topology.reference_ranks == 1


def test_round_trip_through_dict():
    cfg = load_config(None, ["workflow.eta=4", "run.name=x"])
    again = config_from_dict(cfg.to_dict())
    assert again.to_dict() == cfg.to_dict()


def test_every_shipped_config_loads():
    from pathlib import Path

    root = Path(__file__).resolve().parents[3] / "configs"
    paths = sorted(root.glob("*.yaml"))
    assert root / "smoke.yaml" in paths
    for p in paths:
        load_config(str(p))


def test_eval_every_is_refused_in_async_mode_naming_the_key():
    # accepted means it does something: async rollout ranks never pause for a mid-run evaluation
    with pytest.raises(ConfigError, match="data.eval_every=5"):
        load_config("configs/default.yaml", ["workflow.mode=async", "topology.colocate=false", "data.eval_every=5"])
    assert load_config("configs/default.yaml", ["workflow.mode=sync", "data.eval_every=5"]).data.eval_every == 5


def test_config_error_carries_the_dotted_key():
    with pytest.raises(ConfigError) as err:
        load_config("configs/default.yaml", ["monitor.interval_s=0"])
    assert err.value.key == "monitor.interval_s" and "monitor.interval_s" in str(err.value)
