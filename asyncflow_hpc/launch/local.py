"""Build and run the command that starts the ranks: `mpiexec` on one machine, `srun` inside an allocation.

    cmd, env = launch_command(cfg, "configs/smoke.yaml", ["workflow.steps=2"])

The ranks run `python -m asyncflow_hpc.main CONFIG OVERRIDES...` (see main.py).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Sequence

from asyncflow_hpc.errors import LaunchError


def find_mpiexec(configured: str = "") -> str:
    """The mpiexec beside this Python (the PyPI MPI wheel), else the first on PATH."""
    if configured:
        path = shutil.which(configured)
        if not path:
            raise LaunchError(f"launch.mpiexec={configured!r}: not found or not executable")
        return path
    here = Path(sys.executable).parent / "mpiexec"
    if here.exists():
        return str(here)
    path = shutil.which("mpiexec") or shutil.which("mpirun")
    if not path:
        raise LaunchError("mpiexec not found: `pip install mpi4py mpich` (or load the site MPI module), "
                          "or set launch.mpiexec")
    return path


def mpi_flavour(mpiexec: str) -> str:
    """'mpich' | 'openmpi' | 'unknown', from `mpiexec --version` (no MPI_Init in the launcher)."""
    try:
        out = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=20)
        text = (out.stdout + out.stderr).lower()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if "hydra" in text or "mpich" in text:
        return "mpich"
    if "open mpi" in text or "openrte" in text or "prte" in text or "open-mpi" in text:
        return "openmpi"
    return "unknown"


def in_allocation(env: Mapping[str, str]) -> bool:
    """Inside a Slurm allocation (sbatch/salloc) but not inside a job step."""
    return bool(env.get("SLURM_JOB_ID")) and env.get("SLURM_STEP_ID") is None and env.get("SLURM_STEPID") is None


def rank_argv(config_path: str | None, overrides: Sequence[str]) -> list[str]:
    argv = [sys.executable, "-m", "asyncflow_hpc.main"]
    if config_path:
        argv.append(config_path)
    return argv + list(overrides)


def launch_command(cfg, config_path: str | None, overrides: Sequence[str],
                   env: Mapping[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The command (and extra environment) that starts every rank of `cfg`'s job."""
    env = os.environ if env is None else env
    lc = cfg.launch
    launcher = lc.launcher
    if launcher == "auto":
        launcher = "srun" if in_allocation(env) else "mpiexec"
    extra_env = {"PYTHONUNBUFFERED": "1"}
    one_host = _one_host(launcher, lc, env)
    iface = "lo" if one_host else (lc.iface or env.get("GLOO_SOCKET_IFNAME", ""))
    extra_env.update(mpi_socket_env(iface, one_host, env))
    if launcher == "srun":
        if not shutil.which("srun"):
            raise LaunchError("launch.launcher=srun but `srun` is not on PATH")
        ntasks = env.get("SLURM_NTASKS") or env.get("SLURM_NPROCS") or str(cfg.topology.world_size)
        mpi = lc.srun_mpi
        if mpi == "auto":
            mpi = "pmix" if mpi_flavour(find_mpiexec(lc.mpiexec)) == "openmpi" else "pmi2"
        cmd = ["srun", f"--mpi={mpi}", "-n", str(ntasks), "--kill-on-bad-exit=1", *lc.srun_args]
    else:
        mpiexec = find_mpiexec(lc.mpiexec)
        cmd = [mpiexec, "-n", str(cfg.topology.world_size)]
        flavour = mpi_flavour(mpiexec)
        if flavour == "mpich" and _monitored(cfg):
            # The launcher's monitor kills the job itself, naming the dead rank; with hydra's own
            # clean-up every rank would vanish at once and the culprit could not be told apart.
            cmd.append("-disable-auto-cleanup")
        if flavour == "mpich" and iface and not one_host:
            cmd += ["-iface", iface]  # the address hydra's proxies and PMI use between hosts
        if flavour == "openmpi":
            cmd.append("--oversubscribe")
            extra_env.update({"OMPI_MCA_osc": env.get("OMPI_MCA_osc", "^ucx")})
            if hasattr(os, "geteuid") and os.geteuid() == 0:
                extra_env.update({"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"})
        cmd += list(lc.mpiexec_args)
    return cmd + rank_argv(config_path, overrides), extra_env


_HOST_FLAGS = ("-hosts", "-host", "--host", "-f", "-hostfile", "--hostfile", "-machinefile", "--machinefile")


def _one_host(launcher: str, lc, env: Mapping[str, str]) -> bool:
    """Whether every rank runs on this host: srun in a one-node allocation, mpiexec without a host list."""
    if launcher == "srun":
        return (env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or "1") == "1"
    return not any(a.split("=")[0] in _HOST_FLAGS for a in lc.mpiexec_args)


def mpi_socket_env(iface: str, one_host: bool, env: Mapping[str, str]) -> dict[str, str]:
    """Environment that makes MPICH's netmod listen on `iface` only (loopback on one host), not every interface.

    UCX (the wheel's default netmod) listens on every network device: UCX_NET_DEVICES=lo on one host; across
    hosts only where this host has no RDMA device (the list would also exclude InfiniBand/RoCE ports). libfabric's
    tcp/sockets providers (MPIR_CVAR_CH4_NETMOD=ofi): FI_TCP_IFACE / FI_SOCKETS_IFACE. Values already in the
    environment win. Hydra's own control port cannot be restricted (docs/reliability.md)."""
    if not iface:
        return {}
    out = {"FI_TCP_IFACE": iface, "FI_SOCKETS_IFACE": iface}
    if one_host or not (os.path.isdir("/sys/class/infiniband") and os.listdir("/sys/class/infiniband")):
        out["UCX_NET_DEVICES"] = iface
    return {k: v for k, v in out.items() if k not in env}


def _monitored(cfg) -> bool:
    return bool(cfg.monitor.enabled)


def heartbeat_dir(cfg) -> str:
    return os.path.join(cfg.run.resolved_dir, "heartbeat")


def run(cfg, config_path: str | None, overrides: Sequence[str], *, dry_run: bool = False) -> int:
    """Print the launch command, run it under the failure monitor, and return its exit code."""
    cmd, extra_env = launch_command(cfg, config_path, overrides)
    print("asyncflow-hpc: launching: " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    if dry_run:
        return 0
    env = dict(os.environ)
    env.update(extra_env)
    # Ranks share the node's cores: give torch one thread each unless the user says otherwise.
    env.setdefault("OMP_NUM_THREADS", str(cfg.device.threads_per_rank))
    temps = _job_temps(cfg, env)
    try:
        if not _monitored(cfg):
            temps.start()
            try:
                return subprocess.run(cmd, env=env).returncode
            except FileNotFoundError as exc:
                raise LaunchError(f"cannot start {cmd[0]}: {exc}") from None
            except KeyboardInterrupt:
                return 130
        return _run_monitored(cfg, cmd, env, temps)
    finally:
        temps.stop()
        temps.clean()  # what an aborted job left (shared-memory segments, hydra's hwloc file, its temp folder)


def _job_temps(cfg, env: dict[str, str]):
    """Start-up of the job: remove what a killed launch of the same job left (before any MPI_Init), give the ranks
    a job-scoped temp folder (vLLM's vllm_dist_* and ipc sockets land there), and note the job's files."""
    import getpass

    from asyncflow_hpc.launch.cleanup import ENV_TMPDIR, JobTemps, clean_stale, job_key, job_tmpdir, record_path

    run_dir, key = cfg.run.resolved_dir, job_key(env)
    clean_stale(run_dir, key, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    base = env.get("TMPDIR") or "/tmp"
    tmpdir = job_tmpdir(key, base, os.getpid())
    try:
        os.makedirs(tmpdir, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise LaunchError(f"cannot create the job's temp folder {tmpdir}: {exc} (set TMPDIR to a writable "
                          "node-local folder)") from None
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    # Compiled-kernel caches stay where they were (shared across jobs), not in the job's folder.
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(base, f"torchinductor_{user}"))
    env["TMPDIR"] = env[ENV_TMPDIR] = tmpdir
    hb = heartbeat_dir(cfg) if _monitored(cfg) else None
    return JobTemps(record=record_path(run_dir, key, pid=os.getpid()), heartbeat_dir=hb, tmpdir=tmpdir, key=key)


def _run_monitored(cfg, cmd: list[str], env: dict[str, str], temps) -> int:
    """The child in its own process group (signals forwarded), watched by launch/monitor.py."""
    import shutil as _sh
    import signal

    import socket

    from asyncflow_hpc.launch.monitor import ENV_DIR, ENV_INTERVAL, ENV_LAUNCHER, StopRequest, watch

    hb = heartbeat_dir(cfg)
    _sh.rmtree(hb, ignore_errors=True)  # beats of an earlier launch of this run must not be read as ours
    os.makedirs(hb, exist_ok=True)
    env[ENV_DIR], env[ENV_INTERVAL] = os.path.abspath(hb), str(cfg.monitor.interval_s)
    env[ENV_LAUNCHER] = f"{socket.gethostname()}:{os.getpid()}"
    try:
        proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    except FileNotFoundError as exc:
        raise LaunchError(f"cannot start {cmd[0]}: {exc}") from None

    is_srun = os.path.basename(cmd[0]) == "srun"
    stop = StopRequest(srun=is_srun)

    def forward(signum, _frame):
        """Ctrl-C / TERM: watch() ends the job (one line, exit 130 / 143; see monitor.stop_job). The warning
        signal (USR2): straight to the ranks (their heartbeats name their pids), because MPICH's hydra
        processes die on an unexpected USR2; srun forwards it to its tasks itself."""
        from asyncflow_hpc.launch.monitor import read_heartbeats

        try:
            if signum != signal.SIGUSR2:
                stop.signum = stop.signum or signum
                return
            if is_srun:
                proc.send_signal(signum)
                return
            host = socket.gethostname()
            for rec in read_heartbeats(hb).values():
                if rec.get("host") == host and rec.get("status") == "running":
                    os.kill(int(rec["pid"]), signum)
        except (ProcessLookupError, PermissionError, ValueError):
            pass

    temps.start()  # notes the MPI temp files this job's processes hold (in the run dir's record)
    old = {s: signal.signal(s, forward) for s in (signal.SIGUSR2, signal.SIGINT, signal.SIGTERM)}
    try:
        return watch(proc, hb, cfg.topology.world_size, cfg.monitor, stop=stop)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
