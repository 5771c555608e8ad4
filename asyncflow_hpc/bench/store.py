"""`asyncflow-hpc bench store [--quick] [--json] [--transferqueue]`: the sample store over real MPI ranks.

Launches `mpiexec -n N python -m asyncflow_hpc.bench._store_worker` once per scenario:
  grpo 1p/1c       GRPO rows (512 int32 prompt ids, 1,024 int32 response ids, 1,024 float32
                   behaviour log-probs, a float32 reward; 10 KiB), one producer, one consumer
  grpo 2p/2c       the same, two producers, two consumers, policy grpo_group (groups of 8)
  small 1p/1c      12-byte rows (int64 + float32), batches of 256
  1 MiB rows       puts then gets of 1 MiB rows in batches of 16 (and of 8), and in the same job raw
                   MPI Put/Get + Flush and memcpy of the same bytes -> bw_over_memcpy (16-row batches);
                   gets stream with claims sent ahead (iter_batches prefetch), blocking gets beside
Rank 0 of each job is a dedicated store rank (controller + storage). With --transferqueue the GRPO
workload also runs on the PyPI `transferqueue` package in its own venv (created on first use under
~/.cache/asyncflow_hpc/tq_venv) and vs_transferqueue = our grpo 1p/1c rows/s / theirs.
--json prints one JSON object as the last line (rows_per_s, gbps, bw_over_memcpy, vs_transferqueue, ...).
--hosts 2 runs every scenario a second time with ranks on two hosts made of network namespaces
(scripts/netns_hosts.sh; the ones named by $ASYNCFLOW_NETNS, else temporary ones: needs root), MPI
over TCP between them: the store rank on host 0, producers on host 1, consumers on host 0 (1 MiB rows:
putter and getter on host 1), and reports those inter-host figures beside the intra-host ones.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from asyncflow_hpc.errors import LaunchError
from asyncflow_hpc.launch.local import find_mpiexec

ROOT = Path(__file__).resolve().parents[2]
TQ_VENV = Path(os.environ.get("ASYNCFLOW_TQ_VENV", Path.home() / ".cache" / "asyncflow_hpc" / "tq_venv"))


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "OMP_NUM_THREADS": "1"})
    env.setdefault("OMPI_MCA_osc", "^ucx")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _last_json(text: str) -> dict | None:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return None


def run_scenario(mpiexec: str, ranks: int, scenario: str, extra: list[str], timeout: float,
                 hosts: Any = None, per_rank: list[int] | None = None) -> dict:
    argv = [sys.executable, "-m", "asyncflow_hpc.bench._store_worker", "--scenario", scenario, *extra]
    env = _env()
    if hosts is not None:  # NetnsHosts: hydra on host 0 places rank r on host per_rank[r]
        from asyncflow_hpc.launch.hosts import INTER_HOST_MPICH_ENV

        cmd = hosts.mpiexec_cmd(mpiexec, per_rank, argv)
        env.update(INTER_HOST_MPICH_ENV)
    else:
        cmd = [mpiexec, "-n", str(ranks), *argv]
        if "openmpi" in mpiexec.lower() or "ompi" in mpiexec.lower():
            cmd.insert(1, "--oversubscribe")
    return _run_json(cmd, " ".join(cmd), timeout, env=env, cwd=ROOT)


def _run_json(cmd: list[str], what: str, timeout: float, **kw: Any) -> dict:
    """Run `cmd`; its stdout's last JSON line, or a LaunchError naming `what` with the stderr tail."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        raise LaunchError(f"bench store: {what} ran past {timeout:.0f}s") from None
    out = _last_json(proc.stdout)
    if proc.returncode != 0 or out is None:
        raise LaunchError(f"bench store: {what} exited {proc.returncode}: {proc.stderr.strip()[-800:]}")
    return out


def ensure_tq_venv() -> Path:
    """The transferqueue venv (it needs Ray and installs top-level packages: never in our venv)."""
    py = TQ_VENV / "bin" / "python"
    if py.exists() and subprocess.run([str(py), "-c", "import transfer_queue"], capture_output=True).returncode == 0:
        return py
    print(f"creating {TQ_VENV} with transferqueue (once)...", file=sys.stderr, flush=True)
    base = shutil.which("python3") or sys.executable
    for cmd in ([base, "-m", "venv", str(TQ_VENV)], [str(py), "-m", "pip", "install", "-q", "transferqueue"]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise LaunchError(f"bench store --transferqueue: {' '.join(cmd)} failed: {proc.stderr.strip()[-500:]}")
    return py


def run_tq(rows: int, timeout: float) -> dict:
    py = ensure_tq_venv()
    cmd = [str(py), str(Path(__file__).with_name("_store_tq.py")), "--rows", str(rows), "--batch", "64"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return _run_json(cmd, "transferqueue run", timeout, env=env, cwd="/tmp")


def scenarios(quick: bool) -> list[tuple[str, str, int, list[str]]]:
    grpo = "6000" if quick else "30000"
    return [("grpo 1p/1c", "grpo", 3, ["--producers", "1", "--rows", grpo]),
            ("grpo 2p/2c grpo_group", "grpo", 5, ["--producers", "2", "--rows", grpo, "--policy", "grpo_group"]),
            ("small 1p/1c", "small", 3, ["--producers", "1", "--rows", "50000" if quick else "200000",
                                          "--batch", "256"]),
            ("1 MiB rows", "bw", 3, ["--rows", "128", "--batch", "16", "--reps", "3" if quick else "6"]),
            ("1 MiB rows, 8-row batches", "bw", 3, ["--rows", "128", "--batch", "8", "--reps", "3" if quick else "6"])]


def inter_placement(scenario: str, ranks: int, extra: list[str]) -> list[int]:
    """Host of each rank across two hosts: store rank 0 on host 0, producers on host 1, consumers on
    host 0 (so every row crosses once); for 1 MiB rows the putter and getter (1, 2) on host 1."""
    if scenario == "bw":
        return [0] + [1] * (ranks - 1)
    producers = int(extra[extra.index("--producers") + 1])
    return [0] + [1] * producers + [0] * (ranks - 1 - producers)


def _two_hosts():
    """(NetnsHosts, made_here): $ASYNCFLOW_NETNS if it names hosts that exist, else temporary ones."""
    import uuid

    from asyncflow_hpc.launch.hosts import NetnsHosts, netns_available

    name = os.environ.get("ASYNCFLOW_NETNS")
    if name:
        return NetnsHosts.load(name), False
    reason = netns_available()
    if reason:
        raise LaunchError(f"bench store --hosts 2: cannot make namespace hosts: {reason}")
    return NetnsHosts.up(2, "afb" + uuid.uuid4().hex[:4]), True


def _inter_table(intra: dict[str, dict], inter: dict[str, dict]) -> str:
    lines = [f"{'two hosts (TCP)':<24}{'rows/s':>12}{'GB/s':>9}{'get p50 ms':>12}{'get p99 ms':>12}"
             f"{'inter/intra':>13}{'MB on wire':>12}"]
    for name, r in inter.items():
        if "rows_per_s" in r:
            ratio = r["rows_per_s"] / intra[name]["rows_per_s"]
            lines.append(f"{name:<24}{r['rows_per_s']:>12.0f}{r['gbps']:>9.3f}{r['get_p50_ms']:>12.2f}"
                         f"{r['get_p99_ms']:>12.2f}{ratio:>13.2f}{r['wire_bytes'] / 1e6:>12.1f}")
    bw = inter.get("1 MiB rows")
    if bw:
        lines.append(f"1 MiB rows GB/s across hosts: store put {bw['store_put']:.2f} get {bw['store_get']:.2f} | "
                     f"raw MPI put {bw['mpi_put']:.2f} get {bw['mpi_get']:.2f} | {bw['wire_bytes'] / 1e6:.0f} MB on wire")
    return "\n".join(lines)


def run_inter(mpiexec: str, quick: bool) -> dict[str, dict]:
    from asyncflow_hpc.launch.hosts import traffic_delta

    hosts, made = _two_hosts()
    try:
        out = {}
        for name, scenario, ranks, extra in scenarios(quick):
            before = hosts.traffic()
            r = run_scenario(mpiexec, ranks, scenario, extra, timeout=300, hosts=hosts,
                             per_rank=inter_placement(scenario, ranks, extra))
            r["wire_bytes"] = sum(tx for tx, _ in traffic_delta(before, hosts.traffic()).values())
            out[name] = r
        return out
    finally:
        if made:
            hosts.down()


def _table(results: dict[str, dict], tq: dict | None) -> str:
    lines = [f"{'scenario':<24}{'rows/s':>12}{'GB/s':>9}{'get p50 ms':>12}{'get p99 ms':>12}"]
    for name, r in results.items():
        if "rows_per_s" in r:
            lines.append(f"{name:<24}{r['rows_per_s']:>12.0f}{r['gbps']:>9.3f}{r['get_p50_ms']:>12.2f}{r['get_p99_ms']:>12.2f}")
    if tq:
        lines.append(f"{'transferqueue grpo':<24}{tq['rows_per_s']:>12.0f}{tq['gbps']:>9.3f}{tq['get_p50_ms']:>12.2f}"
                     f"{tq['get_p99_ms']:>12.2f}")
    for name, bw in results.items():
        if "bw_over_memcpy" in bw:
            lines.append(f"{name} GB/s: store put {bw['store_put']:.2f} get {bw['store_get']:.2f} (blocking gets "
                         f"{bw['store_get_blocking']:.2f}) | raw MPI put {bw['mpi_put']:.2f} get {bw['mpi_get']:.2f} | "
                         f"memcpy as put {bw['memcpy']:.2f} as get {bw['memcpy_get']:.2f} | "
                         f"bw_over_memcpy {bw['bw_over_memcpy']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="asyncflow-hpc bench store", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small workloads, under a minute")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--transferqueue", action="store_true", help="also run the GRPO workload on PyPI transferqueue")
    ap.add_argument("--mpiexec", help="mpiexec to launch the ranks with (default: the one beside python)")
    ap.add_argument("--hosts", type=int, choices=[1, 2], default=1,
                    help="2: also run every scenario across two network-namespace hosts (MPI over TCP)")
    args = ap.parse_args(argv)
    mpiexec = find_mpiexec(args.mpiexec or "")
    results: dict[str, Any] = {}
    for name, scenario, ranks, extra in scenarios(args.quick):
        results[name] = run_scenario(mpiexec, ranks, scenario, extra, timeout=300)
    tq = run_tq(1024 if args.quick else 4096, timeout=600) if args.transferqueue else None
    inter = run_inter(mpiexec, args.quick) if args.hosts == 2 else None
    main_r, bw = results["grpo 1p/1c"], results["1 MiB rows"]
    summary = {"rows_per_s": main_r["rows_per_s"], "gbps": main_r["gbps"],
               "get_p50_ms": main_r["get_p50_ms"], "get_p99_ms": main_r["get_p99_ms"],
               "bw_over_memcpy": bw["bw_over_memcpy"], "bw_row_bytes": bw["row_bytes"], "bw_batch_rows": 16,
               "bw_over_memcpy_8_row_batches": results["1 MiB rows, 8-row batches"]["bw_over_memcpy"],
               "vs_transferqueue": (main_r["rows_per_s"] / tq["rows_per_s"]) if tq else None,
               "transferqueue": tq, "scenarios": results, "mpiexec": mpiexec, "quick": args.quick,
               "inter_host": inter}
    print(_table(results, tq))
    if inter:
        print(_inter_table(results, inter))
    vs = "n/a" if tq is None else f"{summary['vs_transferqueue']:.1f}"
    print(f"rows/s (grpo 1p/1c) {summary['rows_per_s']:.0f}; bw_over_memcpy {summary['bw_over_memcpy']:.2f}; "
          f"vs_transferqueue {vs}")
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
