"""Role assignment over many shapes, with no MPI and no process group."""

import itertools

import pytest

from asyncflow_hpc.errors import TopologyError
from asyncflow_hpc.topology.config import TopologyConfig
from asyncflow_hpc.topology.roles import Role, plan_layout


def test_default_split_trainer_first_rest_rollout():
    lay = plan_layout(4, TopologyConfig(trainer_ranks=1))
    assert lay.trainer_ranks == (0,)
    assert lay.rollout_ranks == (1, 2, 3)
    assert lay.weight_group() == (0, 1, 2, 3)
    assert lay.role_of(2) is Role.ROLLOUT


@pytest.mark.parametrize("world,trainers,store,reward,ref,tp,pp,rtp", [
    (w, t, s, rw, rf, tp, pp, rtp)
    for w, t, s, rw, rf, tp, pp, rtp in itertools.product(
        [2, 3, 8, 64], [1, 2, 4], [0, 1], [0, 1], [0, 2], [1, 2], [1, 2], [1, 2])
])
def test_every_rank_has_exactly_one_role_or_a_clear_error(world, trainers, store, reward, ref, tp, pp, rtp):
    cfg = TopologyConfig(trainer_ranks=trainers, store_ranks=store, reward_ranks=reward, reference_ranks=ref,
                         trainer_tp=tp, trainer_pp=pp, rollout_tp=rtp)
    fixed = trainers + store + reward + ref
    rollout = world - fixed
    possible = rollout >= 1 and trainers % (tp * pp) == 0 and rollout % rtp == 0
    if not possible:
        with pytest.raises(TopologyError, match="topology"):
            plan_layout(world, cfg)
        return
    lay = plan_layout(world, cfg)
    assert all(len(r) == 1 for r in lay.roles)
    assert len(lay.trainer_ranks) == trainers and len(lay.rollout_ranks) == rollout
    assert len(lay.ranks(Role.STORE)) == store and len(lay.ranks(Role.REWARD)) == reward
    assert len(lay.ranks(Role.REFERENCE)) == ref
    assert lay.trainer_dp * tp * pp == trainers
    reps = lay.trainer_replicas()
    assert len(reps) == lay.trainer_dp and all(len(r) == tp * pp for r in reps)
    # dp groups partition the trainer ranks; each holds one rank of every replica
    flat = sorted(r for g in lay.trainer_dp_groups() for r in g)
    assert flat == sorted(lay.trainer_ranks)
    assert all(len(g) == lay.trainer_dp for g in lay.trainer_dp_groups())
    insts = lay.rollout_instances()
    assert all(len(i) == rtp for i in insts) and sum(map(len, insts)) == rollout
    wg = lay.weight_group()
    assert wg[0] == lay.trainer_leader and set(wg[1:]) == set(lay.rollout_ranks)
    talkers = lay.store_talkers()
    assert set(rep[0] for rep in reps) <= set(talkers)
    assert not any(r in talkers for rep in reps for r in rep[1:])


def test_too_many_roles_names_the_keys():
    with pytest.raises(TopologyError, match=r"trainer_ranks=4 \+ rollout_ranks=0.*job has 4"):
        plan_layout(4, TopologyConfig(trainer_ranks=4))


def test_ranks_without_a_role_is_an_error():
    with pytest.raises(TopologyError, match="1 would have no role"):
        plan_layout(4, TopologyConfig(trainer_ranks=1, rollout_ranks=2))


def test_trainer_not_divisible_by_model_parallel():
    with pytest.raises(TopologyError, match=r"topology.trainer_ranks: 3 trainer ranks are not divisible"):
        plan_layout(8, TopologyConfig(trainer_ranks=3, trainer_tp=2))


def test_explicit_dp_must_match():
    with pytest.raises(TopologyError, match="topology.trainer_dp"):
        plan_layout(8, TopologyConfig(trainer_ranks=4, trainer_tp=2, trainer_dp=4))
    assert plan_layout(8, TopologyConfig(trainer_ranks=4, trainer_tp=2, trainer_dp=2)).trainer_dp == 2


def test_megatron_style_groups():
    lay = plan_layout(12, TopologyConfig(trainer_ranks=8, trainer_tp=2, trainer_pp=2))
    assert lay.trainer_replicas() == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert lay.trainer_dp_groups() == [(0, 4), (1, 5), (2, 6), (3, 7)]


def test_colocated_every_rank_trains_and_rolls_out():
    lay = plan_layout(4, TopologyConfig(colocate=True))
    assert lay.trainer_ranks == lay.rollout_ranks == (0, 1, 2, 3)
    assert lay.trainer_dp == 4 and lay.weight_group() == ()
    with pytest.raises(TopologyError, match="colocate"):
        plan_layout(4, TopologyConfig(colocate=True, store_ranks=1))


def test_spread_places_special_ranks_on_different_nodes():
    nodes = [0] * 4 + [1] * 4
    lay = plan_layout(8, TopologyConfig(trainer_ranks=2, store_ranks=2, placement="spread"), nodes)
    stores = lay.ranks(Role.STORE)
    assert sorted(nodes[r] for r in stores) == [0, 1]
    block = plan_layout(8, TopologyConfig(trainer_ranks=2, store_ranks=2), nodes)
    assert block.ranks(Role.STORE) == (0, 1)


def test_describe_is_readable():
    text = plan_layout(8, TopologyConfig(trainer_ranks=2, store_ranks=1)).describe()
    assert "store=0" in text and "trainer=1,2" in text and "rollout=3-7" in text


def test_1024_ranks_fast():
    lay = plan_layout(1024, TopologyConfig(trainer_ranks=512, trainer_tp=8, rollout_tp=4))
    assert lay.trainer_dp == 64 and len(lay.rollout_instances()) == 128
