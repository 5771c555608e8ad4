"""`asyncflow-hpc trace VERB ...`: dispatch to the trace views and tools.

    asyncflow-hpc trace summary T.h5
    asyncflow-hpc trace plot T.h5 -o timeline.png
    asyncflow-hpc trace export T.h5 -o trace.json
    asyncflow-hpc trace simulate T.h5 [--rollout-ranks N] [--trainer-ranks M] [--eta K] [--devices D]
    asyncflow-hpc trace replay T.h5 [--steps N] [--json]

Each verb is a `main(argv) -> int` named by dotted path in VERBS and imported only when used, so
another module adds a verb with one line here or `register_verb(...)`. Errors are
TraceError (an AsyncFlowError): the top-level CLI prints them as one line.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, Sequence

VERBS: dict[str, tuple[str, str]] = {
    "summary": ("asyncflow_hpc.trace.cli:summary_main",
                "throughput, busy/idle per role, bubble ratio, staleness, weight sync"),
    "plot": ("asyncflow_hpc.trace.cli:plot_main", "per-rank timeline and reward/staleness/occupancy curves (PNG)"),
    "export": ("asyncflow_hpc.trace.cli:export_main", "Chrome/Perfetto trace-event JSON"),
    "simulate": ("asyncflow_hpc.trace.simcli:main",
                 "predict throughput/idle for another split, eta or size; recommend a split"),
    "replay": ("asyncflow_hpc.trace.replay:main",
               "re-feed the recorded rows to a fresh trainer; per-step losses must match bit-for-bit"),
}


def register_verb(name: str, target: str, help: str) -> None:
    """Add a verb: `target` is 'package.module:function' taking argv and returning an exit code."""
    VERBS[name] = (target, help)


def _resolve(target: str) -> Callable[[list[str]], int]:
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def usage() -> str:
    lines = ["usage: asyncflow-hpc trace VERB [ARGS...]", "", "verbs:"]
    lines += [f"  {name:<10} {help}" for name, (_, help) in VERBS.items()]
    lines += ["", "`asyncflow-hpc trace VERB --help` for the options of a verb."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"asyncflow-hpc trace: unknown verb {verb!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return int(_resolve(VERBS[verb][0])(rest) or 0)


def _parser(verb: str, help: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"asyncflow-hpc trace {verb}", description=help)
    p.add_argument("trace", help="trace file (HDF5) written by a run")
    return p


def summary_main(argv: list[str]) -> int:
    from asyncflow_hpc.trace.reader import read_trace
    from asyncflow_hpc.trace.summary import format_summary, summarize

    p = _parser("summary", VERBS["summary"][1])
    p.add_argument("--json", action="store_true", help="also print one JSON object as the last line")
    args = p.parse_args(argv)
    s = summarize(read_trace(args.trace))
    print(format_summary(s))
    if args.json:
        import dataclasses
        import json

        d = dataclasses.asdict(s)
        d["staleness"] = {str(k): v for k, v in s.staleness.items()}
        print(json.dumps(d))
    return 0


def plot_main(argv: list[str]) -> int:
    from asyncflow_hpc.trace.plot import plot_trace
    from asyncflow_hpc.trace.reader import read_trace

    p = _parser("plot", VERBS["plot"][1])
    p.add_argument("-o", "--output", default="timeline.png", help="PNG to write (default timeline.png)")
    args = p.parse_args(argv)
    d = plot_trace(read_trace(args.trace), args.output)
    print(f"wrote {args.output}: {len(d.ranks)} ranks, {sum(len(b) for b in d.bars.values())} spans")
    return 0


def export_main(argv: list[str]) -> int:
    from asyncflow_hpc.trace.export import export_chrome
    from asyncflow_hpc.trace.reader import read_trace

    p = _parser("export", VERBS["export"][1])
    p.add_argument("-o", "--output", default="trace.json", help="JSON file to write (default trace.json)")
    args = p.parse_args(argv)
    n = export_chrome(read_trace(args.trace), args.output)
    print(f"wrote {args.output}: {n} trace events (open in https://ui.perfetto.dev or chrome://tracing)")
    return 0


if __name__ == "__main__":
    from asyncflow_hpc.errors import AsyncFlowError

    try:
        raise SystemExit(main())
    except AsyncFlowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1)
