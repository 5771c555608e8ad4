"""Store, weight broadcast and an async GRPO run with ranks on two network-namespace hosts, MPI over TCP.

Every test also reads the hosts' interface counters: the bytes must really have crossed the veth link
(on one kernel, a shared-memory transport would otherwise pass the same checks without any traffic).
"""

from __future__ import annotations

import collections
import json
import subprocess

import pytest

from tests.netns.conftest import run_on_hosts

pytestmark = [pytest.mark.netns, pytest.mark.mpi]


def _json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_hosts_are_distinct_and_only_reach_each_other(netns_hosts):
    names, addrs = [], []
    for i, h in enumerate(netns_hosts.hosts):
        out = subprocess.run([*netns_hosts.prefix(i), "sh", "-c", "hostname; hostname -i"], capture_output=True,
                             text=True, timeout=30, check=True).stdout.split()
        names.append(out[0])
        addrs.append(out[1])
    assert names == [h.name for h in netns_hosts.hosts] and len(set(names)) == 2
    assert addrs == [h.address for h in netns_hosts.hosts]
    # host 0 reaches host 1 (refused: nobody listens on port 9, but the packet got there) ...
    probe = f"exec 3<>/dev/tcp/{netns_hosts.hosts[1].address}/9"
    p = subprocess.run([*netns_hosts.prefix(0), "bash", "-c", probe], capture_output=True, text=True, timeout=30)
    assert "refused" in p.stderr, p.stderr
    # ... and the hosts have no route anywhere else (the test traffic cannot leave them)
    p = subprocess.run([*netns_hosts.prefix(0), "ip", "-4", "route"], capture_output=True, text=True, timeout=30)
    assert "default" not in p.stdout and p.stdout.strip().startswith("10.213.0.0/24")


def test_store_100k_rows_exactly_once_across_hosts(netns_hosts):
    # producers 1 (host 0) and 2 (host 1); consumers 0 (host 0, controller thread) and 3 (host 1)
    proc, moved = run_on_hosts(netns_hosts, [0, 0, 1, 1], ["tests/mpi/workers/store_stream.py", "--rows", "100000",
                                                            "--timeout", "60"])
    (report,) = _json_lines(proc.stdout)
    for task in ("a", "b"):
        assert report[task] == {"got": 100000, "unique": 100000, "lost": 0, "duplicated": 0}, report
    st = report["stats"]
    assert st["rows_put"] == 100000 and st["rows_recycled"] == 100000 and st["rows_live"] == 0
    h0, h1 = (moved[h.name] for h in netns_hosts.hosts)
    # 100k rows of 8 + 0-12 bytes, about half of them cross in each direction, plus control messages
    assert h0[0] > 1_000_000 and h1[0] > 1_000_000, moved


def test_weight_broadcast_across_hosts_bit_exact_and_checksummed(netns_hosts, tmp_path):
    # trainer leader 0 and rollout 1 on host 0, rollout 2 on host 1; rendezvous on host 0's address.
    # Results go to per-rank files (the hosts share the file system): hydra forwards each host's
    # stdout in chunks, so lines printed by ranks on two hosts at once can merge.
    _, moved = run_on_hosts(netns_hosts, [0, 0, 1], ["tests/mpi/workers/weights_worker.py", "roundtrip", "corrupt"],
                               env={"WEIGHTS_RESULTS": str(tmp_path)})
    res = {}
    for path in sorted(tmp_path.glob("rank-*.txt")):
        for line in path.read_text().splitlines():
            r = json.loads(line[len("RESULT "):])
            res[(r["scenario"], r["rank"])] = r
    nbytes = res[("roundtrip", 0)]["nbytes"]
    for rank in (1, 2):
        assert res[("roundtrip", rank)]["applied"] == [1, 2, 3]
        assert res[("roundtrip", rank)]["exact"] == [True, True, True]
        err = res[("corrupt", rank)]["error"]
        assert err["type"] == "ChecksumError" and err["bucket"] == 2, err  # a corrupted bucket is caught
        assert res[("corrupt", rank)]["exact_after"] == [True]
    sent_h0, got_h1 = moved[netns_hosts.hosts[0].name][0], moved[netns_hosts.hosts[1].name][1]
    assert sent_h0 >= 3 * nbytes and got_h1 >= 3 * nbytes, (moved, nbytes)  # 3 versions reached host 1 by wire


def test_async_grpo_across_hosts(netns_hosts, tmp_path):
    from asyncflow_hpc.trace.reader import read_trace

    steps, prompts, n = 3, 8, 4
    args = ["-m", "asyncflow_hpc.main", "configs/default.yaml", "workflow.mode=async", "topology.colocate=false",
            f"workflow.steps={steps}", "data.eval_size=0", f"data.prompts_per_step={prompts}", f"rollout.n={n}",
            f"run.dir={tmp_path}/run"]
    # trainer 0 and rollout 1 on host 0, rollout 2 and 3 on host 1
    proc, moved = run_on_hosts(netns_hosts, [0, 0, 1, 1], args, timeout=200)
    assert "world=4 trainer=0 rollout=1-3" in proc.stdout
    res = json.loads((tmp_path / "run" / "result.json").read_text())
    assert len(res["history"]) == steps
    tr = read_trace(res["trace"])
    s = tr.samples
    assert len(s) == steps * prompts * n
    stale = s["version_consumed"] - s["version_produced"]
    assert stale.min() >= 0 and stale.max() <= 1, sorted(set(stale.tolist()))  # eta = 1
    assert len(set(s["row"].tolist())) == len(s), "a row was consumed twice"
    counts = collections.Counter(s["prompt_id"].tolist())
    assert set(counts.values()) == {n} and len(counts) == steps * prompts
    # a group discarded as too stale is replaced by a prompt id past the schedule (counted)
    missing = set(range(steps * prompts)) - set(counts)
    assert len(missing) == len({p for p in counts if p >= steps * prompts}), missing
    sp = tr.spans
    names = [x.decode() if isinstance(x, bytes) else x for x in sp["name"].tolist()]
    swaps = {r for r, nm in zip(sp["rank"].tolist(), names) if nm == "weight_swap"}
    # a swap happens only after every bucket of the version passed its checksum (weights/receiver.py)
    assert {2, 3} & swaps, f"no rollout rank on host 1 swapped in new weights: {swaps}"
    sent_h1 = moved[netns_hosts.hosts[1].name][0]
    assert sent_h1 > 10_000, moved
