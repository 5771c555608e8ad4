"""Submit the job with submitit: one Slurm task per MPI rank where Slurm exists, local processes otherwise.

    asyncflow-hpc submit configs/smoke.yaml [key=value ...] [--wait]
    python launchers/submit.py configs/smoke.yaml [key=value ...] [--wait]

To Slurm (`sbatch` on PATH): `nodes x tasks_per_node` tasks, started by submitit's
`srun --mpi=pmi2` (pmix for Open MPI); each task runs `RankTask`, i.e. `asyncflow_hpc.main` for
its own rank in the task's process, and returns that rank's job environment. Locally: one task,
`LocalRun`, that runs `asyncflow-hpc run` (mpiexec), so the ranks are still real MPI processes.

Requeue-friendly: `--signal=USR2@launch.signal_delay_s`; on the signal submitit calls
`checkpoint()` of the task on rank 0, which resubmits the same task (with `resume_overrides()`
added: the checkpoint itself is issue 7) and requeues the job, at most `launch.max_requeues` times.

The log folder is `launch.folder` with a per-Slurm-instance level (`{instance}`, default: inserted
before `%j`): job ids restart at 1 when a test Slurm's state is wiped, and submitit would
otherwise read an old job's result from `runs/submitit/1/`.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import submitit

from asyncflow_hpc.errors import ConfigError, LaunchError

# Executor parameters the launcher sets itself from launch.* keys; slurm_extra may not repeat them.
_OWNED = {"nodes", "ntasks_per_node", "tasks_per_node", "cpus_per_task", "gpus_per_node", "partition",
          "time", "timeout_min", "signal_delay_s", "srun_args", "job_name", "name", "folder", "command",
          "map_count", "setup", "use_srun"}
# sbatch options that make no sense in a job script written by submitit (or that it writes itself).
_NOT_EXTRA = {"help", "usage", "version", "wrap", "parsable", "wait", "quiet", "verbose", "output", "error",
              "input", "signal", "ntasks", "array", "open_mode", "stderr_to_stdout", "array_parallelism",
              "num_gpus", "teardown", "test_only"}


class RankTask(submitit.helpers.Checkpointable):
    """One Slurm task = one MPI rank: runs `asyncflow_hpc.main` here and returns this rank's environment."""

    def __init__(self, config_path: str, overrides: Sequence[str], cwd: str, requeues: int = 0):
        self.config_path = config_path
        self.overrides = list(overrides)
        self.cwd = cwd
        self.requeues = requeues

    def __call__(self) -> dict[str, Any]:
        from asyncflow_hpc.env import read_env
        from asyncflow_hpc.main import rank_main

        os.chdir(self.cwd)  # relative config and data paths mean what they meant at submission
        env = read_env()
        je = submitit.JobEnvironment()
        rc = rank_main([self.config_path, *self.overrides])
        if rc == 0:
            self._requeue_if_stopped()
        if rc != 0:
            raise LaunchError(f"rank {env.rank} of job {env.job_id}: asyncflow_hpc.main exited with {rc} "
                              f"(its one-line error is in this task's stderr log)")
        return {"rank": env.rank, "world_size": env.world_size, "local_rank": env.local_rank,
                "local_world_size": env.local_world_size, "node_rank": env.node_rank,
                "num_nodes": env.num_nodes, "hostname": env.hostname, "job_id": env.job_id,
                "source": env.source, "requeues": self.requeues,
                "submitit": {"job_id": je.job_id, "global_rank": je.global_rank, "local_rank": je.local_rank,
                             "num_tasks": je.num_tasks, "node": je.node, "num_nodes": je.num_nodes}}

    def _requeue_if_stopped(self) -> None:
        """The warning signal came and the ranks wrote a checkpoint and stopped: now run submitit's own USR2
        handler (taken over by the ranks' StopFlag so that it could not requeue before the checkpoint):
        on rank 0 it pickles `checkpoint()` (resume=auto) and runs `scontrol requeue`; every rank then
        exits without a result (the requeued job writes it)."""
        import json
        import signal

        from asyncflow_hpc.checkpoint.signals import StopFlag
        from asyncflow_hpc.config import load_config

        flag = StopFlag.current()
        if flag is None or not flag.requested():
            return
        try:
            run_dir = load_config(self.config_path, self.overrides).run.resolved_dir
            with open(os.path.join(run_dir, "result.json"), encoding="utf-8") as fh:
                stopped = bool(json.load(fh).get("stopped"))
        except (OSError, ValueError):
            stopped = True  # no result: the run did not finish, so it must go on
        if not stopped:
            return
        if callable(flag.previous):
            flag.previous(signal.SIGUSR2, None)  # rank 0: checkpoint() + requeue + sys.exit
        sys.exit(-1)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on the warning signal (rank 0): resubmit this task, resuming."""
        again = RankTask(self.config_path, _with_resume(self.overrides), self.cwd, self.requeues + 1)
        return submitit.helpers.DelayedSubmission(again, *args, **kwargs)


class LocalRun(submitit.helpers.Checkpointable):
    """The one local task: `asyncflow-hpc run CONFIG ...` (mpiexec starts the ranks)."""

    def __init__(self, config_path: str, overrides: Sequence[str], cwd: str):
        self.config_path = config_path
        self.overrides = list(overrides)
        self.cwd = cwd

    def __call__(self) -> dict[str, Any]:
        cmd = [sys.executable, "-m", "asyncflow_hpc", "run", self.config_path, *self.overrides]
        print("asyncflow-hpc submit (local): " + " ".join(cmd), flush=True)
        rc = subprocess.run(cmd, cwd=self.cwd).returncode
        if rc != 0:
            raise LaunchError(f"`asyncflow-hpc run {self.config_path}` exited with {rc} (see this job's log)")
        return {"returncode": rc, "command": cmd}

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        again = LocalRun(self.config_path, _with_resume(self.overrides), self.cwd)
        return submitit.helpers.DelayedSubmission(again, *args, **kwargs)


def resume_overrides() -> list[str]:
    """Overrides a requeued job adds to resume from its checkpoint."""
    return ["resume=auto"]


def _with_resume(overrides: Sequence[str]) -> list[str]:
    extra = [o for o in resume_overrides() if o not in overrides]
    return [*overrides, *extra]


# ------------------------------------------------------------------------------- where and how


def choose_cluster(requested: str | None = None) -> str:
    """'slurm' where `sbatch` is on PATH, else 'local' (or what was requested, checked)."""
    if requested in (None, "", "auto"):
        return "slurm" if shutil.which("sbatch") else "local"
    if requested not in ("slurm", "local"):
        raise ConfigError(f"submit cluster must be auto, slurm or local, got {requested!r}")
    if requested == "slurm" and not shutil.which("sbatch"):
        raise LaunchError("submit to slurm requested but `sbatch` is not on PATH (load Slurm, or use local)")
    return requested


def slurm_instance() -> str:
    """`<ClusterName>-<slurmctld boot time>`: changes whenever the controller restarts."""
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LaunchError(f"cannot ask Slurm for its configuration (scontrol show config): {exc}") from None
    if out.returncode != 0:
        raise LaunchError(f"`scontrol show config` failed: {out.stderr.strip() or out.stdout.strip()} "
                          f"(is slurmctld running, and SLURM_CONF set?)")
    fields = dict(re.findall(r"^(\w+)\s*=\s*(.*?)\s*$", out.stdout, flags=re.M))
    boot = re.sub(r"[^0-9T]", "", fields.get("BOOT_TIME", "unknown"))
    return f"{fields.get('ClusterName', 'slurm')}-{boot or 'unknown'}"


def resolve_folder(template: str, *, run_name: str, instance: str) -> Path:
    """launch.folder with `{name}` and `{instance}` filled in; `{instance}` is inserted before `%j` if absent."""
    if "{instance}" not in template:
        template = template.replace("%j", "{instance}/%j", 1) if "%j" in template else template + "/{instance}"
    return Path(template.replace("{name}", run_name).replace("{instance}", instance))


@functools.lru_cache(maxsize=1)
def sbatch_options() -> frozenset[str]:
    """Long options of this site's `sbatch` (from `sbatch --help`), e.g. 'account', 'overcommit'."""
    try:
        out = subprocess.run(["sbatch", "--help"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return frozenset()
    return frozenset(re.findall(r"--([a-z][a-z0-9-]+)", out.stdout + out.stderr))


def slurm_params(extra: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split launch.slurm_extra into submitit `slurm_*` parameters and extra sbatch options; reject typos."""
    try:  # submitit's own list of its slurm_* parameters (a private helper: named if it moves)
        from submitit.slurm.slurm import _get_default_parameters
    except ImportError as exc:
        raise LaunchError(f"this submitit ({getattr(submitit, '__version__', '?')}) has no "
                          f"submitit.slurm.slurm._get_default_parameters ({exc}); pin submitit to the version "
                          f"in setup.py") from None

    submitit_names = set(_get_default_parameters()) - _OWNED - _NOT_EXTRA - {"additional_parameters"}
    sbatch_names = {o.replace("-", "_") for o in sbatch_options()} - _OWNED - _NOT_EXTRA
    valid = sorted(submitit_names | sbatch_names)
    params: dict[str, Any] = {}
    additional: dict[str, Any] = {}
    for key, value in extra.items():
        name = key.replace("-", "_")
        if name in _OWNED or name in _NOT_EXTRA:
            raise ConfigError(f"launch.slurm_extra.{key}: set by the launcher from launch.* keys "
                              f"(nodes, tasks_per_node, cpus_per_task, gpus_per_node, partition, time_min, "
                              f"signal_delay_s, srun_args); set it there instead")
        flag = _flag_value(value)
        if name in submitit_names:
            params[f"slurm_{name}"] = flag
        elif name in sbatch_names:
            additional[name] = flag
        else:
            close = difflib.get_close_matches(name, valid, n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ConfigError(f"launch.slurm_extra.{key}: not an sbatch/submitit option; {hint}"
                              f"valid names: {', '.join(valid)}")
    return params, additional


def _flag_value(value: Any) -> Any:
    """'' / 'true' / True mean a bare flag (`#SBATCH --overcommit`)."""
    if value is True or (isinstance(value, str) and value.strip().lower() in ("", "true", "yes")):
        return True
    return value


def _srun_mpi(cfg) -> str:
    if cfg.launch.srun_mpi != "auto":
        return cfg.launch.srun_mpi
    from asyncflow_hpc.launch.local import find_mpiexec, mpi_flavour

    try:
        return "pmix" if mpi_flavour(find_mpiexec(cfg.launch.mpiexec)) == "openmpi" else "pmi2"
    except LaunchError:
        return "pmi2"


def _tasks_per_node(cfg) -> int:
    lc = cfg.launch
    if lc.tasks_per_node:
        return lc.tasks_per_node
    world = cfg.topology.world_size
    if world % lc.nodes:
        raise ConfigError(f"launch.tasks_per_node: topology.world_size={world} does not divide over "
                          f"launch.nodes={lc.nodes}; set launch.tasks_per_node explicitly")
    return world // lc.nodes


# ------------------------------------------------------------------------------------ submit


def make_executor(cfg, cluster: str, folder: Path) -> submitit.AutoExecutor:
    """A submitit executor with this job's resources; raises ConfigError on a bad slurm_extra option."""
    lc = cfg.launch
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster, slurm_max_num_timeout=lc.max_requeues,
                                     local_max_num_timeout=lc.max_requeues)
    common = {"name": cfg.run.name, "timeout_min": lc.time_min}
    if cluster == "local":
        executor.update_parameters(**common, tasks_per_node=1, nodes=1)
        return executor
    params, additional = slurm_params(dict(lc.slurm_extra))
    additional.setdefault("requeue", True)  # let `scontrol requeue` and node failures requeue it
    srun_args = [f"--mpi={_srun_mpi(cfg)}", "--kill-on-bad-exit=1", *lc.srun_args]
    setup = [f"export OMP_NUM_THREADS=${{OMP_NUM_THREADS:-{cfg.device.threads_per_rank}}}",
             "export PYTHONUNBUFFERED=1"]
    slurm = {"slurm_srun_args": srun_args, "slurm_signal_delay_s": lc.signal_delay_s,
             "slurm_setup": setup, "slurm_additional_parameters": additional, **params}
    if lc.partition:
        slurm["slurm_partition"] = lc.partition
    if lc.gpus_per_node:
        slurm["gpus_per_node"] = lc.gpus_per_node
    executor.update_parameters(**common, nodes=lc.nodes, tasks_per_node=_tasks_per_node(cfg),
                               cpus_per_task=lc.cpus_per_task, **slurm)
    return executor


def submit_job(cfg, config_path: str, overrides: Sequence[str], *, cluster: str | None = None,
               folder: str | None = None) -> submitit.Job:
    """Submit and return the submitit Job (tests and Python users wait on it themselves)."""
    if not config_path or not os.path.isfile(config_path):
        raise ConfigError(f"{config_path}: config file not found")
    cluster = choose_cluster(cluster or cfg.launch.submit_cluster)
    instance = slurm_instance() if cluster == "slurm" else "local-" + _dt.datetime.now().strftime("%Y%m%dT%H%M%S%f")
    path = resolve_folder(folder or cfg.launch.folder, run_name=cfg.run.name, instance=instance)
    executor = make_executor(cfg, cluster, path)
    cwd = os.getcwd()
    task = LocalRun(config_path, overrides, cwd) if cluster == "local" else RankTask(config_path, overrides, cwd)
    try:
        return executor.submit(task)
    except submitit.core.utils.FailedJobError as exc:  # sbatch's own error text
        lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
        raise LaunchError(f"sbatch refused the job ({config_path}): {lines[-1] if lines else exc}") from None


_TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
             "DEADLINE", "PREEMPTED", "SPECIAL_EXIT")


def slurm_state(job_id: str) -> str | None:
    """JobState from slurmctld (`scontrol show job`), else the jobcomp file (`sacct -c`); None if unknown.

    submitit's own watcher asks plain `sacct`, which fails where accounting is off (the test Slurm).
    """
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=30)
    found = re.search(r"\bJobState=(\S+)", out.stdout) if out.returncode == 0 else None
    if found:
        return found.group(1)
    out = subprocess.run(["sacct", "-c", "-n", "-P", "-o", "JobID,State", "-j", job_id],
                         capture_output=True, text=True, timeout=30)
    states = [line.split("|")[1] for line in out.stdout.splitlines() if line.startswith(f"{job_id}|")]
    return states[-1].split()[0] if states else None


def wait_results(job: submitit.Job, timeout_s: float, poll_s: float = 1.0, grace_s: float = 15.0) -> list[Any]:
    """Every task's result; raises LaunchError if the job ends without them or runs past `timeout_s`."""
    import time

    if not isinstance(job, submitit.SlurmJob):
        return job.results()
    tasks = [job.task(i) for i in range(job.num_tasks)] if job.num_tasks > 1 else [job]
    deadline = time.monotonic() + timeout_s
    ended_at = None
    state = None
    while time.monotonic() < deadline:
        if all(t.paths.result_pickle.exists() for t in tasks):
            return job.results()  # raises submitit's FailedJobError if a task raised
        state = slurm_state(str(job.job_id))
        if state and state.split()[0] in _TERMINAL:
            ended_at = ended_at or time.monotonic()
            if time.monotonic() - ended_at > grace_s:
                missing = [t.task_id for t in tasks if not t.paths.result_pickle.exists()]
                raise LaunchError(f"Slurm job {job.job_id} ended {state} without results from task(s) "
                                  f"{missing}; logs: {job.paths.stdout}, {job.paths.stderr}")
        else:
            ended_at = None  # running, or pending again after a requeue
        time.sleep(poll_s)
    raise LaunchError(f"Slurm job {job.job_id} still {state or 'unknown'} after {timeout_s:.0f} s; "
                      f"logs: {job.paths.stdout}")


def first_error(job: submitit.Job) -> str | None:
    """The first `asyncflow-hpc: error:` line any task of `job` wrote (rank, role and cause), if any."""
    marker = "asyncflow-hpc: error: "
    for log in sorted(Path(job.paths.folder).glob("*_log.*")):
        try:
            text = log.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith(marker):
                return line[len(marker):].strip()
    return None


def submit(cfg, config_path: str, overrides: list[str], wait: bool, *, cluster: str | None = None,
           folder: str | None = None) -> int:
    """`asyncflow-hpc submit`: submit, print where the logs go; with `wait`, wait and return 0/1."""
    job = submit_job(cfg, config_path, overrides, cluster=cluster, folder=folder)
    where = "Slurm" if isinstance(job, submitit.SlurmJob) else "local processes"
    print(f"asyncflow-hpc: submitted job {job.job_id} to {where}; logs in {job.paths.folder}", flush=True)
    if not wait:
        print(f"asyncflow-hpc: follow with: tail -f {job.paths.stdout}", flush=True)
        return 0
    lc = cfg.launch
    try:
        results = wait_results(job, timeout_s=60.0 * lc.time_min * (lc.max_requeues + 1) + 600)
    except (submitit.core.utils.FailedJobError, submitit.core.utils.UncompletedJobError, LaunchError) as exc:
        lines = [x.strip() for x in str(exc).strip().splitlines() if x.strip()]
        why = first_error(job) or (lines[-1] if lines else repr(exc))
        print(f"asyncflow-hpc: error: job {job.job_id} failed: {why} (logs in {job.paths.folder})",
              file=sys.stderr, flush=True)
        return 1
    for res in results:
        if "rank" in res:
            print(f"asyncflow-hpc: rank {res['rank']}/{res['world_size']} on {res['hostname']} "
                  f"(slurm job {res['job_id']}, env from {res['source']}) done", flush=True)
    print(f"asyncflow-hpc: job {job.job_id} completed; stdout of task 0: {job.paths.stdout}", flush=True)
    return 0
