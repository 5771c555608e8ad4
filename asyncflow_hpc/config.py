"""Root job configuration: composes each component's own Config, loads YAML + `a.b=value` overrides.

    cfg = load_config("configs/default.yaml", ["workflow.eta=2", "topology.world_size=4"])

Every error is a ConfigError with one line naming the key and the file.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any, Sequence

from asyncflow_hpc.algorithms.config import AlgorithmConfig
from asyncflow_hpc.checkpoint.config import CheckpointConfig
from asyncflow_hpc.configlib import Source, build, fail, load_yaml, opt, parse_override, section, set_dotted, to_dict
from asyncflow_hpc.data.config import DataConfig
from asyncflow_hpc.engines.config import RolloutConfig, TrainerConfig
from asyncflow_hpc.engines.config import EmulationConfig
from asyncflow_hpc.errors import ConfigError
from asyncflow_hpc.launch.config import LaunchConfig
from asyncflow_hpc.launch.config import MonitorConfig
from asyncflow_hpc.models.config import ModelConfig
from asyncflow_hpc.rewards.config import RewardConfig
from asyncflow_hpc.store.config import StoreConfig
from asyncflow_hpc.topology.config import DeviceConfig, TopologyConfig
from asyncflow_hpc.trace.config import TraceConfig
from asyncflow_hpc.weights.config import WeightSyncConfig
from asyncflow_hpc.workflow.config import WorkflowConfig


@dataclass(kw_only=True)
class RunConfig:
    """Identity of the run and where it writes."""

    name: str = opt("asyncflow", "Run name (used in the run directory and the trace).")
    dir: str = opt("runs/{name}", "Run directory for traces, checkpoints and logs; {name} is substituted.")
    seed: int = opt(0, "Root seed; per-sample seeds derive from (seed, step, prompt id, sample index).")

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise fail("name", f"must be a non-empty name without '/', got {self.name!r}")

    @property
    def resolved_dir(self) -> str:
        return self.dir.replace("{name}", self.name)


@dataclass(kw_only=True)
class JobConfig:
    """The whole job: one section per component."""

    run: RunConfig = section(RunConfig)
    topology: TopologyConfig = section(TopologyConfig)
    device: DeviceConfig = section(DeviceConfig)
    launch: LaunchConfig = section(LaunchConfig)
    workflow: WorkflowConfig = section(WorkflowConfig)
    model: ModelConfig = section(ModelConfig)
    data: DataConfig = section(DataConfig)
    rollout: RolloutConfig = section(RolloutConfig)
    trainer: TrainerConfig = section(TrainerConfig)
    algorithm: AlgorithmConfig = section(AlgorithmConfig)
    reward: RewardConfig = section(RewardConfig)
    store: StoreConfig = section(StoreConfig)
    weights: WeightSyncConfig = section(WeightSyncConfig)
    trace: TraceConfig = section(TraceConfig)
    emulation: EmulationConfig = section(EmulationConfig)
    checkpoint: CheckpointConfig = section(CheckpointConfig)
    monitor: MonitorConfig = section(MonitorConfig)
    resume: str = opt("", "Resume from a checkpoint: '' = start fresh; 'auto' = the newest checkpoint of this "
                          "run (checkpoint.dir) that verifies against its manifest (older ones are tried when "
                          "the newest is damaged), fresh if there is none; or a checkpoint directory.")

    # Where it came from (not a key): filled by load_config for messages and traces.
    source_file: str | None = None
    overrides: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = to_dict(self)
        d.pop("source_file", None)
        d.pop("overrides", None)
        return d


def _cross_check(cfg: JobConfig, where: str) -> None:
    """Checks that involve more than one section."""
    try:  # the Dr. GRPO normaliser and DAPO overlong shaping measure against rollout.max_new_tokens
        cfg.algorithm.check_job(cfg.rollout.max_new_tokens)
    except ConfigError as exc:
        raise ConfigError(f"{where}: algorithm.{exc}", key=f"algorithm.{exc.key}" if exc.key else None) from None
    if cfg.workflow.mode == "sync" and cfg.workflow.job == "train" and not cfg.topology.colocate:
        # The synchronous baseline is colocated by definition; make that explicit instead of guessing.
        cfg.topology.colocate = True
    if cfg.workflow.mode == "async" and cfg.topology.colocate:
        raise ConfigError(f"{where}: workflow.mode=async needs separate trainer and rollout groups; "
                          f"set topology.colocate=false")
    if cfg.algorithm.dynamic_sampling and cfg.workflow.mode == "sync":
        raise ConfigError(f"{where}: algorithm.dynamic_sampling drops groups with equal rewards and feeds "
                          f"replacement prompts through the store, which workflow.mode=sync does not use; set "
                          f"workflow.mode=async (eta=0 is on-policy) or algorithm.dynamic_sampling=false")
    if cfg.data.eval_every and cfg.workflow.mode == "async" and cfg.workflow.job == "train":
        raise ConfigError(f"{where}: data.eval_every={cfg.data.eval_every}: held-out evaluation during an async run "
                          f"is not wired (rollout ranks never pause for it); set data.eval_every=0 (accuracy is "
                          f"measured at the start and the end) or workflow.mode=sync")
    t = cfg.topology
    if cfg.workflow.job == "train" and (t.trainer_tp > 1 or t.trainer_pp > 1) and cfg.trainer.engine != "mindspeed":
        key = "topology.trainer_tp" if t.trainer_tp > 1 else "topology.trainer_pp"
        raise ConfigError(f"{where}: {key}={max(t.trainer_tp, t.trainer_pp)}: trainer.engine={cfg.trainer.engine} has "
                          f"no tensor/pipeline parallel plan (torch holds a full replica per rank; fsdp shards over "
                          f"the data-parallel trainer ranks only, docs/trainer_fsdp.md); set it to 1 (or use "
                          f"trainer.engine=mindspeed on NPUs)", key=key)
    if cfg.workflow.job == "train" and t.rollout_tp > 1:
        raise ConfigError(f"{where}: topology.rollout_tp={t.rollout_tp}: a rollout instance spanning several "
                          f"ranks is not wired yet (the vLLM engine runs in the rank's process with tensor "
                          f"parallel size 1); set topology.rollout_tp=1")
    if cfg.rollout.engine != "torch" and cfg.workflow.job == "train" and not cfg.model.path:
        raise ConfigError(f"{where}: rollout.engine={cfg.rollout.engine} needs model.path (a local HF model "
                          f"directory; `asyncflow-hpc model import` makes one)")
    if cfg.topology.reference_ranks and not cfg.algorithm.kl_term:
        raise ConfigError(f"{where}: topology.reference_ranks={cfg.topology.reference_ranks} computes reference "
                          f"log-probs for the KL term, but algorithm.name={cfg.algorithm.name!r} with "
                          f"algorithm.kl_coef={cfg.algorithm.kl_coef} uses none; set algorithm.kl_coef > 0 "
                          f"(grpo) or topology.reference_ranks=0")


def load_config(path: str | None, overrides: Sequence[str] = ()) -> JobConfig:
    """YAML file (or None for the built-in defaults) + overrides -> checked JobConfig.

    Every problem is ONE line of ConfigError (fuzzed: tests/unit/config/test_config_fuzz.py)."""
    try:
        return _load_config(path, overrides)
    except ConfigError as exc:
        msg = " ".join(str(exc).split())  # YAML parser messages span lines; keep the one-line contract
        if msg == str(exc):
            raise
        raise type(exc)(msg, key=exc.key) from None
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, RecursionError, UnicodeError) as exc:
        where = path or "<defaults>"
        raise ConfigError(f"{where}: cannot use this configuration ({type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:300]}); check the file and the key=value overrides") from None


def _load_config(path: str | None, overrides: Sequence[str] = ()) -> JobConfig:
    data: dict[str, Any] = load_yaml(path) if path else {}
    data = copy.deepcopy(data)
    cli_keys = []
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(data, key, value)
        cli_keys.append(key)
    # Errors name the file; a bad override is reported against the command line via its key.
    src = Source(path)
    data.pop("source_file", None)
    data.pop("overrides", None)
    try:
        cfg = build(JobConfig, data, src)
    except ConfigError as exc:
        msg = str(exc)
        key = msg[len(f"{path}: "):].split(":")[0] if path and msg.startswith(f"{path}: ") else ""
        if key and any(key == k or key.startswith(k + ".") or k.startswith(key + ".") for k in cli_keys):
            raise ConfigError(f"<command line override> (config {path}): {msg[len(path) + 2:]}",
                              key=exc.key) from None
        raise
    cfg.source_file = os.path.abspath(path) if path else None
    cfg.overrides = tuple(overrides)
    _cross_check(cfg, path or "<defaults>")
    return cfg


def config_from_dict(data: dict[str, Any]) -> JobConfig:
    """Rebuild a JobConfig from `JobConfig.to_dict()` (e.g. read back from a trace file)."""
    cfg = build(JobConfig, copy.deepcopy(data), Source("<stored config>"))
    return cfg
