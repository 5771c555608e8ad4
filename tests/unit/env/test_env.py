"""Job environment from Slurm, PMIx, Open MPI, MPICH Hydra, or a plain process."""

import pytest

from asyncflow_hpc.env import read_env
from asyncflow_hpc.errors import LaunchError


def test_single_process():
    e = read_env({}, hostname="h")
    assert (e.rank, e.world_size, e.local_rank, e.num_nodes, e.job_id, e.source) == (0, 1, 0, 1, None, "single")


def test_slurm_step():
    env = {"SLURM_JOB_ID": "42", "SLURM_STEP_ID": "0", "SLURM_PROCID": "5", "SLURM_NTASKS": "8",
           "SLURM_LOCALID": "1", "SLURM_NODEID": "1", "SLURM_JOB_NUM_NODES": "2", "SLURM_TASKS_PER_NODE": "4(x2)"}
    e = read_env(env, hostname="n1")
    assert (e.rank, e.world_size, e.local_rank, e.local_world_size, e.node_rank, e.num_nodes, e.job_id) == \
        (5, 8, 1, 4, 1, 2, "42")
    assert e.source == "slurm" and e.in_slurm


def test_uneven_tasks_per_node():
    env = {"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "1", "SLURM_PROCID": "4", "SLURM_NTASKS": "5",
           "SLURM_LOCALID": "0", "SLURM_NODEID": "2", "SLURM_NNODES": "3", "SLURM_TASKS_PER_NODE": "2(x2),1"}
    e = read_env(env, hostname="n2")
    assert (e.local_world_size, e.node_rank, e.num_nodes) == (1, 2, 3)


def test_mpiexec_inside_sbatch_batch_script_uses_the_mpi_launcher():
    # The batch step sets SLURM_PROCID=0 for the script itself; mpiexec's variables describe us.
    env = {"SLURM_JOB_ID": "9", "SLURM_PROCID": "0", "SLURM_NTASKS": "4", "PMI_RANK": "3", "PMI_SIZE": "4",
           "MPI_LOCALRANKID": "3", "MPI_LOCALNRANKS": "4"}
    e = read_env(env, hostname="h")
    assert (e.rank, e.world_size, e.local_rank, e.source, e.job_id) == (3, 4, 3, "mpich", "9")


def test_openmpi():
    env = {"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "6", "OMPI_COMM_WORLD_LOCAL_RANK": "0",
           "OMPI_COMM_WORLD_LOCAL_SIZE": "3", "OMPI_COMM_WORLD_NODE_RANK": "1"}
    e = read_env(env, hostname="h")
    assert (e.rank, e.world_size, e.local_rank, e.local_world_size, e.node_rank, e.num_nodes, e.source) == \
        (2, 6, 0, 3, 1, 2, "openmpi")


def test_pmix_under_srun():
    env = {"SLURM_JOB_ID": "11", "SLURM_STEP_ID": "0", "PMIX_RANK": "1", "SLURM_PROCID": "1",
           "SLURM_NTASKS": "2", "SLURM_LOCALID": "1", "SLURM_NODEID": "0", "SLURM_TASKS_PER_NODE": "2"}
    e = read_env(env, hostname="h")
    assert (e.rank, e.world_size, e.source) == (1, 2, "pmix")


def test_array_job_id():
    env = {"SLURM_JOB_ID": "100", "SLURM_ARRAY_JOB_ID": "99", "SLURM_ARRAY_TASK_ID": "1"}
    assert read_env(env, hostname="h").job_id == "99_1"


def test_bad_values_are_named():
    with pytest.raises(LaunchError, match="PMI_RANK='x'"):
        read_env({"PMI_RANK": "x", "PMI_SIZE": "2"}, hostname="h")
    with pytest.raises(LaunchError, match="rank 4 is outside world size 4"):
        read_env({"PMI_RANK": "4", "PMI_SIZE": "4"}, hostname="h")
