"""Merge, on resume, the per-rank trace files that a killed run segment left (it never reached its merge).

    merged = merge_left_segments(ck.trace_segments, resume_step=ck.start)   # rank 0, before the new segment starts

A segment killed without a graceful stop (kill -9, a hard requeue, a node failure) leaves only its per-rank
files `trace.rankNNNNN.h5` (and their twins `.h5.alt`, flushed alternately every `trace.flush_s`, so that one
of the two is whole even when the kill came during a flush) beside the missing merged `trace.h5`. The next
resume merges them into the path the segment would have had, so `result.json` lists it under
`trace_segments`. The merged file says `recovered = 1` and `superseded_from_step` = the step the run resumed
from: what that segment recorded at or after that step was redone by the next segment (samples with
`version_consumed >= superseded_from_step` were trained on again there).
"""

from __future__ import annotations

import glob
import os
from typing import Callable, Sequence

from asyncflow_hpc.trace.merge import merge_traces
from asyncflow_hpc.trace.reader import read_trace
from asyncflow_hpc.trace.recorder import ALT_SUFFIX
from asyncflow_hpc.trace.schema import TraceError


def rank_files(merged: str) -> list[str]:
    """The per-rank files a segment left beside its (missing) merged trace: trace.rank00003.h5 ..."""
    base, ext = os.path.splitext(merged)
    return sorted(glob.glob(f"{glob.escape(base)}.rank[0-9][0-9][0-9][0-9][0-9]{ext or '.h5'}"))


def best_rank_file(path: str) -> tuple[str | None, str]:
    """The complete one of a killed rank's two files (`path`, `path + ALT_SUFFIX`: the recorder alternates between
    them, so at most one was being written at the kill): the readable one with the later flush. Returns
    (file or None, why the others were not taken)."""
    best, gen, why = None, -1, []
    for cand in (path, path + ALT_SUFFIX):
        if not os.path.exists(cand):
            continue
        try:
            g = int(read_trace(cand).attrs.get("flush_gen", 0))
        except (TraceError, TypeError, ValueError) as exc:
            why.append(f"{cand}: {exc}")
            continue
        if g > gen:
            best, gen = cand, g
    return best, "; ".join(why)


def merge_left_segments(segments: Sequence[str], resume_step: int | None = None,
                        log: Callable[[str], None] | None = None) -> list[str]:
    """Merge every listed segment whose merged file is missing but whose per-rank files exist; the per-rank files
    that went into a merged file are removed. A per-rank file that cannot be read is left as it is (named in the
    log); a segment with no readable file stays unmerged. Returns the merged paths."""
    done = []
    for seg in segments:
        if os.path.exists(seg):
            continue
        files = rank_files(seg)
        readable, used = [], []
        for f in files:
            best, why = best_rank_file(f)
            if best:
                readable.append(best)
                used.append(f)
            elif log:
                log(f"asyncflow-hpc: warning: killed segment's trace {f} is unreadable, not merged: {why}")
        if not readable:
            continue
        attrs = {"recovered": 1}
        if resume_step is not None:
            attrs["superseded_from_step"] = int(resume_step)
        try:
            merge_traces(readable, seg, extra_attrs=attrs)
        except TraceError as exc:
            if log:
                log(f"asyncflow-hpc: warning: cannot merge the killed segment's traces into {seg}: {exc}")
            continue
        for f in used:
            for p in (f, f + ALT_SUFFIX):
                try:
                    os.remove(p)
                except OSError:
                    pass
        done.append(seg)
        if log:
            log(f"asyncflow-hpc: merged {len(readable)} per-rank trace file(s) of a killed segment -> {seg}")
    return done
