"""Hostfile parsing and rank placement (pure; no namespaces needed)."""

import pytest

from asyncflow_hpc.errors import LaunchError
from asyncflow_hpc.launch.hosts import Host, format_hostfile, hydra_hosts_arg, parse_hostfile, place_ranks, spans_hosts


def test_parse_both_hostfile_dialects_and_round_trip():
    hosts = parse_hostfile("# nodes\nn0:2\nn1 slots=3\nn2   # one slot\n\n")
    assert hosts == [Host("n0", 2), Host("n1", 3), Host("n2", 1)]
    assert parse_hostfile(format_hostfile(hosts)) == hosts


@pytest.mark.parametrize("text, words", [("n0:x\n", "hostfile:1"), ("", "no hosts"), ("n0:0\n", "at least 1")])
def test_bad_hostfiles_are_named(text, words):
    with pytest.raises(LaunchError, match=words):
        parse_hostfile(text)


def test_block_and_cyclic_placement_and_hydra_hosts():
    hosts = [Host("a", 2), Host("b", 2)]
    assert place_ranks(4, hosts) == [0, 0, 1, 1]
    assert place_ranks(5, hosts) == [0, 0, 1, 1, 0]  # oversubscribed: wraps around
    assert place_ranks(4, hosts, "cyclic") == [0, 1, 0, 1]
    assert hydra_hosts_arg(hosts, [0, 0, 1, 1]) == "a:2,b:2"
    assert hydra_hosts_arg(hosts, [0, 1, 1, 0]) == "a:1,b:2,a:1"
    with pytest.raises(LaunchError, match="block"):
        place_ranks(2, hosts, "scatter")


def test_spans_hosts():
    assert spans_hosts([0, 0, 1, 1], [0], [1, 2])
    assert not spans_hosts([0, 0, 1, 1], [0], [1])
