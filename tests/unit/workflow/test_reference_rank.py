"""A dedicated reference rank checks its initial policy against the trainer leader's before scoring rows."""

from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from asyncflow_hpc.config import load_config  # noqa: E402
from asyncflow_hpc.errors import ConfigError  # noqa: E402
from asyncflow_hpc.topology.config import TopologyConfig  # noqa: E402
from asyncflow_hpc.topology.roles import Role, plan_layout  # noqa: E402
from asyncflow_hpc.weights.checksum import state_fingerprint  # noqa: E402
from asyncflow_hpc.workflow.async_flow import _reference_policy  # noqa: E402
from asyncflow_hpc.workflow.rows import train_columns  # noqa: E402


class OneRankWorld:
    """bcast as seen by one rank: the root's value is what the test says the leader sent."""

    def __init__(self, leader_value):
        self.leader_value = leader_value

    def bcast(self, value, root):
        return self.leader_value


def _setup(leader_model, my_model):
    layout = plan_layout(4, TopologyConfig(colocate=False, trainer_ranks=1, reference_ranks=1))
    rank = layout.ranks(Role.REFERENCE)[0]
    world = OneRankWorld(state_fingerprint(leader_model.state_dict().items()))
    comms = SimpleNamespace(layout=layout, rank=rank, world=world, device=SimpleNamespace(torch_device="cpu"))
    task = SimpleNamespace(model=my_model, tokenizer=SimpleNamespace(pad_id=0))
    cfg = load_config(None, ["workflow.mode=async", "topology.colocate=false", "topology.reference_ranks=1",
                             "algorithm.kl_coef=0.1"])
    return cfg, comms, task, layout


def test_same_initial_policy_gives_a_frozen_reference():
    torch.manual_seed(0)
    m = torch.nn.Linear(4, 3)
    cfg, comms, task, layout = _setup(m, m)
    ref = _reference_policy(cfg, comms, task)
    assert ref is not None and not any(p.requires_grad for p in ref.model.parameters())
    assert train_columns(cfg, layout)[-2:] == ["advantage", "ref_logprobs"]


def test_different_initial_policy_is_a_named_error():
    torch.manual_seed(0)
    leader = torch.nn.Linear(4, 3)
    mine = torch.nn.Linear(4, 3)  # another init: what a rank with another model.path or seed would build
    cfg, comms, task, _ = _setup(leader, mine)
    with pytest.raises(ConfigError, match=rf"rank {comms.rank} \(reference\): its initial policy .* differs from the "
                                          r"trainer leader's \(rank \d+"):
        _reference_policy(cfg, comms, task)


def test_held_out_set_is_split_over_the_policy_ranks_only():
    # Store, reward and reference ranks keep the initial weights: they must not answer held-out prompts.
    from asyncflow_hpc.workflow.stages import eval_share

    layout = plan_layout(6, TopologyConfig(colocate=False, trainer_ranks=1, reference_ranks=1, reward_ranks=1))
    examples = list(range(40))
    shares = {r: eval_share(examples, layout, r) for r in range(6)}
    for r in layout.ranks(Role.REFERENCE) + layout.ranks(Role.REWARD):
        assert shares[r] == []
    holders = [r for r in range(6) if shares[r]]
    assert len(holders) == 4 and sorted(x for r in holders for x in shares[r]) == examples
    colocated = plan_layout(4, TopologyConfig(colocate=True))
    assert [len(eval_share(examples, colocated, r)) for r in range(4)] == [10] * 4
