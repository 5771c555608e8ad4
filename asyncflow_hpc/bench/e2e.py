"""`asyncflow-hpc bench e2e`: sync (colocated) vs async (AsyncFlow) on the same model, prompts, seeds, ranks.

    asyncflow-hpc bench e2e [--quick] [--json] [--config configs/bench_e2e.yaml] [key=value ...]

Both jobs run under real mpiexec ranks from one invocation; the ratio is async samples/s over sync
samples/s over the training loop (start-up and evaluation excluded, the same for both).
"""

from __future__ import annotations

import argparse
import shutil
from typing import Any

from asyncflow_hpc.bench.common import print_json_last, run_job, workdir


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="asyncflow-hpc bench e2e", description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/bench_e2e.yaml")
    p.add_argument("--quick", action="store_true", help="fewer steps (under two minutes here)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--keep", action="store_true", help="keep the run directories (traces, results)")
    p.add_argument("overrides", nargs="*", help="config overrides applied to both jobs")
    return p.parse_args(argv)


def _row(name: str, s: dict[str, Any]) -> str:
    return (f"{name:<7} {s['samples_per_s']:10.2f} {s['wall_s']:8.2f} {s['busy_fraction']:6.2f} "
            f"{s.get('exposed_sync_fraction', 0.0):8.3f}")


def main(argv: list[str]) -> int:
    ns = _args(argv)
    from asyncflow_hpc.config import load_config

    cfg = load_config(ns.config, ns.overrides)  # fail early on a bad config or override
    steps = 24 if ns.quick else cfg.workflow.steps
    common = [f"workflow.steps={steps}", *ns.overrides]
    wd = workdir("bench-e2e")
    try:
        sync = run_job(ns.config, ["workflow.mode=sync", *common], name="sync", workdir=wd)["summary"]
        asyn = run_job(ns.config, ["workflow.mode=async", "topology.colocate=false", *common], name="async",
                       workdir=wd)["summary"]
    finally:
        if not ns.keep:
            shutil.rmtree(wd, ignore_errors=True)
    ratio = asyn["samples_per_s"] / sync["samples_per_s"]
    emu = cfg.emulation
    print(f"bench e2e: {cfg.topology.world_size} ranks, {steps} steps of {cfg.data.prompts_per_step} prompts x "
          f"{cfg.rollout.n} responses; async: {cfg.topology.trainer_ranks} trainer + "
          f"{cfg.topology.world_size - cfg.topology.trainer_ranks} rollout ranks, eta={cfg.workflow.eta}")
    if emu.enabled:
        print(f"  device time emulated (2-core host): decode {emu.decode_s_per_token * 1e3:.2f} ms/token, train "
              f"{emu.train_s_per_token * 1e6:.0f} us/token, lengths lognormal(mu={emu.length_mu}, "
              f"sigma={emu.length_sigma}) <= {emu.length_max}")
    print(f"{'mode':<7} {'samples/s':>10} {'loop s':>8} {'busy':>6} {'exp.sync':>8}")
    print(_row("sync", sync))
    print(_row("async", asyn))
    print(f"async/sync = {ratio:.2f}x   staleness (async) {asyn.get('staleness_histogram')}")
    if ns.json:
        print_json_last({"async_over_sync": ratio, "busy_fraction_async": asyn["busy_fraction"],
                         "busy_fraction_sync": sync["busy_fraction"],
                         "exposed_sync_fraction": asyn["exposed_sync_fraction"],
                         "samples_per_s_async": asyn["samples_per_s"], "samples_per_s_sync": sync["samples_per_s"],
                         "steps": steps, "emulated_device_time": emu.enabled})
    return 0
