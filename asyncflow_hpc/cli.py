"""`asyncflow-hpc` command line: run, submit, config show, bench, trace.

    asyncflow-hpc run configs/default.yaml [key=value ...] [--dry-run]   # mpiexec here, srun in an allocation
    asyncflow-hpc submit configs/default.yaml [key=value ...] [--wait]   # submitit: Slurm, or local processes
    asyncflow-hpc config show configs/default.yaml [key=value ...] [--keys]
    asyncflow-hpc bench {store,weights,e2e,simulator,rollout,trainer} [--quick] [--json]
    asyncflow-hpc model import SRC DST                                 # GGUF / HF dir -> local safetensors dir
    asyncflow-hpc trace {summary,plot,export,simulate,replay} TRACE.h5 ...

Errors in the user's input print one line (`asyncflow-hpc: error: ...`) and exit 2, no traceback; paths,
engine requirements and size rules are checked before any process starts (preflight.py). Overrides may
also follow the flags: `asyncflow-hpc run CONFIG --dry-run key=value`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from asyncflow_hpc import __version__
from asyncflow_hpc.errors import AsyncFlowError
from asyncflow_hpc.preflight import preflight

BENCHES = ("store", "weights", "e2e", "simulator", "rollout", "trainer")


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, e.g. workflow.eta=2")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="asyncflow-hpc", description="Asynchronous streaming RL post-training on MPI ranks.")
    p.add_argument("--version", action="version", version=f"asyncflow-hpc {__version__}")
    sub = p.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    run = sub.add_parser("run", help="launch the job's ranks (mpiexec here, srun inside an allocation)")
    _config_args(run)
    run.add_argument("--dry-run", action="store_true", help="print the launch command only")
    submit = sub.add_parser("submit", help="submit the job with submitit (Slurm if present, else local)")
    _config_args(submit)
    submit.add_argument("--wait", action="store_true", help="wait for the job and return its exit status")
    cfg = sub.add_parser("config", help="inspect configuration")
    cfg_sub = cfg.add_subparsers(dest="config_verb", metavar="show")
    cfg_sub.required = True
    show = cfg_sub.add_parser("show", help="print the resolved config (YAML)")
    show.add_argument("config", nargs="?", help="YAML config file (default: built-in defaults)")
    show.add_argument("overrides", nargs="*", metavar="key=value")
    show.add_argument("--keys", action="store_true", help="list every key with its type, default and help")
    show.add_argument("--layout", action="store_true", help="also print the role of every rank")
    bench = sub.add_parser("bench", help="benchmarks (both sides of a comparison in one run)")
    bench.add_argument("name", choices=BENCHES)
    bench.add_argument("args", nargs=argparse.REMAINDER)
    trace = sub.add_parser("trace", help="inspect, plot, export, simulate and replay HDF5 traces")
    trace.add_argument("args", nargs=argparse.REMAINDER)
    model = sub.add_parser("model", help="import a model (GGUF file or HF directory) into a local directory")
    model.add_argument("args", nargs=argparse.REMAINDER)
    return p


def _split_overrides(config: str | None, overrides: list[str]) -> tuple[str | None, list[str]]:
    # `config show key=value` without a file: the first positional is an override.
    if config is not None and "=" in config and not os.path.exists(config):
        return None, [config, *overrides]
    return config, overrides


def _config_show(ns: argparse.Namespace) -> int:
    import yaml

    from asyncflow_hpc.config import JobConfig, load_config
    from asyncflow_hpc.configlib import help_lines

    if ns.keys:
        print("\n".join(help_lines(JobConfig)))
        return 0
    path, overrides = _split_overrides(ns.config, ns.overrides)
    cfg = load_config(path, overrides)
    preflight(cfg, int(os.environ.get("SLURM_NTASKS") or cfg.topology.world_size))
    print(f"# resolved from {path or '<defaults>'}" + (f" with {' '.join(overrides)}" if overrides else ""))
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip())
    if ns.layout:
        from asyncflow_hpc.topology.roles import plan_layout

        layout = plan_layout(cfg.topology.world_size, cfg.topology)
        print(f"# layout: {layout.describe()}")
        for r in range(layout.world_size):
            print(f"#   rank {r}: {'+'.join(str(x) for x in layout.roles[r])}")
    return 0


def _run(ns: argparse.Namespace) -> int:
    from asyncflow_hpc.config import load_config
    from asyncflow_hpc.env import launched_as_rank
    from asyncflow_hpc.launch.local import run

    cfg = load_config(ns.config, ns.overrides)
    if launched_as_rank():
        # Already one rank of an MPI/srun launch: act as that rank instead of launching again.
        from asyncflow_hpc.main import rank_main

        return rank_main([ns.config, *ns.overrides])
    world = int(os.environ.get("SLURM_NTASKS") or cfg.topology.world_size)
    preflight(cfg, world)  # fail here, before any process starts: layout, paths, engine needs, store size
    return run(cfg, ns.config, ns.overrides, dry_run=ns.dry_run)


def _submit(ns: argparse.Namespace) -> int:
    from asyncflow_hpc.config import load_config
    from asyncflow_hpc.launch.submitit_launch import submit

    cfg = load_config(ns.config, ns.overrides)
    preflight(cfg, cfg.topology.world_size)
    return submit(cfg, ns.config, list(ns.overrides), wait=ns.wait)


def _parse(argv: list[str]) -> argparse.Namespace:
    """Like parse_args, but key=value overrides may also come after the flags (`run CFG --dry-run k=v`)."""
    parser = _parser()
    ns, extra = parser.parse_known_args(argv)
    if extra and hasattr(ns, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
        ns.overrides = [*ns.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return ns


def _delegate(module: str, argv: list[str]) -> int:
    mod = importlib.import_module(module)
    return int(mod.main(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ns = _parse(argv)
    try:
        if ns.verb == "run":
            return _run(ns)
        if ns.verb == "submit":
            return _submit(ns)
        if ns.verb == "config":
            return _config_show(ns)
        if ns.verb == "bench":
            return _delegate(f"asyncflow_hpc.bench.{ns.name}", ns.args)
        if ns.verb == "trace":
            return _delegate("asyncflow_hpc.trace.cli", ns.args)
        if ns.verb == "model":
            return _delegate("asyncflow_hpc.models.importer", ns.args)
    except AsyncFlowError as exc:
        print(f"asyncflow-hpc: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before the launcher's own handler is installed (or in another verb)
        print("asyncflow-hpc: interrupted (SIGINT)", file=sys.stderr, flush=True)
        return 130
    return 2


def print_json_last(obj: dict) -> None:
    """Benchmarks: the JSON object is the last line of stdout."""
    print(json.dumps(obj, sort_keys=True), flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
