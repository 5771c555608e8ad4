"""Pure parts of the submitit launcher: folder per Slurm instance, slurm_extra validation, task counts."""

from __future__ import annotations

from pathlib import Path

import pytest

from asyncflow_hpc.config import load_config
from asyncflow_hpc.errors import ConfigError
from asyncflow_hpc.launch import submitit_launch as sl


def test_folder_gets_a_level_per_slurm_instance():
    assert sl.resolve_folder("runs/submitit/%j", run_name="r", instance="c-1") == Path("runs/submitit/c-1/%j")
    assert sl.resolve_folder("runs/{name}/%j", run_name="r", instance="c-1") == Path("runs/r/c-1/%j")
    assert sl.resolve_folder("out/{instance}/x/%j", run_name="r", instance="c-2") == Path("out/c-2/x/%j")
    assert sl.resolve_folder("logs", run_name="r", instance="c-3") == Path("logs/c-3")


def test_slurm_extra_split_and_typos(monkeypatch):
    monkeypatch.setattr(sl, "sbatch_options", lambda: frozenset({"account", "overcommit", "reservation"}))
    params, extra = sl.slurm_params({"account": "abc", "overcommit": "", "reservation": "r1", "qos": "high"})
    assert params == {"slurm_account": "abc", "slurm_qos": "high"}
    assert extra == {"overcommit": True, "reservation": "r1"}
    with pytest.raises(ConfigError, match=r"slurm_extra.reservaton: .*did you mean reservation"):
        sl.slurm_params({"reservaton": "r1"})
    with pytest.raises(ConfigError, match=r"slurm_extra.nodes: set by the launcher"):
        sl.slurm_params({"nodes": "2"})


def test_tasks_per_node_from_world_size():
    cfg = load_config(None, ["topology.world_size=8", "launch.nodes=2"])
    assert sl._tasks_per_node(cfg) == 4
    cfg = load_config(None, ["topology.world_size=6", "launch.nodes=4"])
    with pytest.raises(ConfigError, match="launch.tasks_per_node"):
        sl._tasks_per_node(cfg)
    cfg = load_config(None, ["topology.world_size=6", "launch.nodes=4", "launch.tasks_per_node=2"])
    assert sl._tasks_per_node(cfg) == 2


def test_requeued_task_keeps_its_arguments():
    task = sl.RankTask("configs/smoke.yaml", ["a.b=1"], "/tmp")
    again = task.checkpoint().function
    assert isinstance(again, sl.RankTask) and again.requeues == 1
    assert again.overrides[:1] == ["a.b=1"] and again.config_path == "configs/smoke.yaml"
    assert again.overrides[1:] == sl.resume_overrides()
