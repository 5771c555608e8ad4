"""Property-based fuzzing of the config loader: any YAML tree and any overrides give a JobConfig or ONE-line ConfigError."""

import dataclasses

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncflow_hpc.config import JobConfig, load_config
from asyncflow_hpc.errors import ConfigError


SECTIONS = [f.name for f in dataclasses.fields(JobConfig)]
KEYS = [f"{s}.{k}" for s in ("workflow", "topology", "store", "checkpoint", "monitor", "trainer", "rollout", "data",
                             "run", "launch", "weights", "trace") for k in
        ("steps", "eta", "mode", "world_size", "trainer_ranks", "capacity_rows", "every_steps", "keep", "stale_s",
         "lr", "n", "prompts_per_step", "name", "dir", "seed", "slurm_extra", "timeout_s", "enabled", "kind")]
NAMES = st.sampled_from(SECTIONS + ["resume", "nope", "", "0", "source_file", "overrides"])
LEAF = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                 st.text(max_size=12), st.lists(st.integers(-3, 3), max_size=3))
TREE = st.recursive(LEAF, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                  st.dictionaries(st.one_of(NAMES, st.sampled_from(KEYS[:40]),
                                                                            st.text(max_size=6)), inner, max_size=4)),
                    max_leaves=12)
OVERRIDE = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS + SECTIONS + ["resume"]),
              st.one_of(st.text(max_size=10), st.integers().map(str), st.sampled_from(["[1,2]", "{a: 1}", "", "~",
                                                                                         "true", "1e9", "[", "}"]))),
    st.text(max_size=15))


def _check(path, overrides):
    try:
        cfg = load_config(path, overrides)
    except ConfigError as exc:
        msg = str(exc)
        assert msg and "\n" not in msg, repr(msg)
        return None
    assert isinstance(cfg, JobConfig)
    return cfg


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=st.one_of(TREE, st.dictionaries(NAMES, TREE, max_size=4)), overrides=st.lists(OVERRIDE, max_size=3))
def test_random_yaml_trees_and_overrides(tmp_path, tree, overrides):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tree))
    _check(str(path), overrides)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_random_bytes_as_a_config_file(tmp_path, raw):
    path = tmp_path / "c.yaml"
    path.write_bytes(raw)
    _check(str(path), [])


@settings(max_examples=100, deadline=None)
@given(overrides=st.lists(OVERRIDE, min_size=1, max_size=4))
def test_random_overrides_on_the_defaults(overrides):
    _check(None, overrides)
