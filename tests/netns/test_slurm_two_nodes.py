"""A two-node Slurm on the namespace hosts: srun places ranks on both nodes, sbatch -N 2 runs the smoke job."""

from __future__ import annotations

import re
import time

import pytest

pytestmark = [pytest.mark.netns, pytest.mark.slurm, pytest.mark.mpi]

PROBE = ("from asyncflow_hpc.env import read_env; from mpi4py import MPI; e = read_env(); "
         "c = MPI.COMM_WORLD; s = c.Split_type(MPI.COMM_TYPE_SHARED); "
         "print('PROBE', e.rank, e.node_rank, e.num_nodes, e.hostname, c.Get_rank(), s.Get_size(), flush=True)")


def test_srun_places_ranks_on_both_nodes(netns_slurm):
    nodes = [h.name for h in netns_slurm.hosts.hosts]
    p = netns_slurm.run("srun", "-N", "2", "--ntasks-per-node=2", "--mpi=pmi2", "python", "-c", PROBE, timeout=120)
    rows = sorted(tuple(line.split()[1:]) for line in p.stdout.splitlines() if line.startswith("PROBE"))
    assert len(rows) == 4, p.stdout + p.stderr
    by_rank = {int(r[0]): r for r in rows}
    assert [by_rank[r][3] for r in range(4)] == [nodes[0], nodes[0], nodes[1], nodes[1]]  # env.py host names
    assert [int(by_rank[r][1]) for r in range(4)] == [0, 0, 1, 1] and {r[2] for r in rows} == {"2"}  # node ids
    assert all(r[0] == r[4] for r in rows)  # env.py rank == MPI rank
    assert {r[5] for r in rows} == {"2"}  # MPI shares memory only within a node: two ranks per node


def test_sbatch_two_nodes_runs_the_smoke_job(netns_slurm):
    out = netns_slurm.base / "jobs"
    out.mkdir(exist_ok=True)
    p = netns_slurm.run("sbatch", "--parsable", "-N", "2", "--ntasks-per-node=2", f"--output={out}/%j.out",
                        "slurm/cpu.sbatch", "configs/smoke.yaml")
    job = p.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 150
    state = ""
    while time.monotonic() < deadline:
        q = netns_slurm.run("squeue", "-h", "-j", job, "-o", "%T", check=False)
        state = q.stdout.strip()
        if not state:
            break
        time.sleep(1)
    else:
        netns_slurm.run("scancel", job, check=False)
        pytest.fail(f"job {job} still {state} after 150 s")
    log = (out / f"{job}.out").read_text()
    assert "2 node(s)" in log and "smoke OK: 4 ranks" in log, log[-3000:]
    hosts = dict(re.findall(r"smoke: rank (\d) role=\S+ host=(\S+)", log))
    assert sorted(set(hosts.values())) == sorted(h.name for h in netns_slurm.hosts.hosts), log[-2000:]
    assert "job command exited with 0" in log
