"""Checkpoint directories on disk (no torch): atomic publish, newest lookup, keep-last-K, resume resolution.

    with staged_dir(root, step) as tmp:    # write into tmp; on success it is fsynced and renamed to step-NNNNNN
        ...
    latest(root)                           # newest complete checkpoint directory, or None
    resolve_resume("auto", root)           # "" -> None; "auto" -> newest that verifies, or None; a path -> it

A checkpoint is complete when its directory has the final name (`step-NNNNNN`) and holds
`meta.json`: both are only ever produced by the rename at the end of `staged_dir`, which first writes
`manifest.json` (size and sha256 of every file, see manifest.py) so that resume can verify it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from typing import Any, Callable, Iterator

from asyncflow_hpc.errors import AsyncFlowError

META = "meta.json"
_NAME = re.compile(r"^step-(\d{6,})$")


class CheckpointError(AsyncFlowError):
    """A checkpoint could not be written, found or read; the message names the path."""


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str) -> None:
    """fsync every file below `path`, then the directories (so the rename publishes durable bytes)."""
    for base, _dirs, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(base, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(base)


@contextlib.contextmanager
def staged_dir(root: str, step: int) -> Iterator[str]:
    """Yield a temporary directory beside the final one; publish it by rename only if the body succeeds."""
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, step_dir_name(step))
    tmp = os.path.join(root, f".tmp-{step_dir_name(step)}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        yield tmp
        if not os.path.exists(os.path.join(tmp, META)):
            raise CheckpointError(f"{tmp}: internal: a checkpoint must write {META} last")
        from asyncflow_hpc.checkpoint.manifest import write_manifest

        write_manifest(tmp)  # after every other file: it lists their sizes and sha256
        fsync_tree(tmp)
        if os.path.exists(final):  # the same step written again (e.g. at the end after a periodic one)
            old = final + f".old-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def list_checkpoints(root: str) -> list[tuple[int, str]]:
    """Complete checkpoints under `root`, oldest first: [(step, path)]."""
    if not os.path.isdir(root):
        return []
    out = []
    for name in os.listdir(root):
        m = _NAME.match(name)
        path = os.path.join(root, name)
        if m and os.path.isfile(os.path.join(path, META)):
            out.append((int(m.group(1)), path))
    return sorted(out)


def latest(root: str) -> str | None:
    found = list_checkpoints(root)
    return found[-1][1] if found else None


SHARDS = "trainer"  # a sharded trainer's state inside a checkpoint (checkpoint/sharded.py)


def trainer_state_mismatch(path: str, engine: str) -> str | None:
    """Why the checkpoint at `path` cannot resume a run with trainer.engine=`engine` (None if it can): a sharded
    trainer state (trainer/, trainer.engine=fsdp) and a whole model (model.safetensors) do not load into each other."""
    sharded = os.path.isdir(os.path.join(path, SHARDS))
    if sharded == (engine == "fsdp"):
        return None
    have = "a sharded trainer state (trainer.engine=fsdp)" if sharded else "a replicated trainer's whole model"
    return (f"{path}: holds {have}; this run has trainer.engine={engine}: resume with the trainer.engine that "
            f"wrote it (a sharded checkpoint reshards onto any number of trainer ranks)")


def prune(root: str, keep: int) -> list[str]:
    """Delete all but the newest `keep` checkpoints (and stale temporary directories); returns what went."""
    gone = []
    for _step, path in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(path, ignore_errors=True)
        gone.append(path)
    for name in os.listdir(root) if os.path.isdir(root) else []:
        # .shards-*: a sharded trainer's pieces whose checkpoint was never published (its leader died)
        if (name.startswith(".tmp-step-") and not name.endswith(f"-{os.getpid()}")) or name.startswith(".shards-"):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    return gone


def resolve_resume(resume: str, root: str, log: Callable[[str], None] | None = print) -> str | None:
    """The checkpoint to resume from, verified against its manifest.

    '' -> None; 'auto' -> the newest checkpoint in root that verifies (None if there is none; the ones
    skipped are logged with the reason); a path -> that checkpoint (or a folder's newest), which must verify.
    """
    from asyncflow_hpc.checkpoint.manifest import verify

    if not resume:
        return None
    if resume == "auto":
        return _newest_verified(root, log)
    path = resume
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, META)):
        inner = latest(path)  # a checkpoints folder: its newest checkpoint
        if inner:
            path = inner
    if not os.path.isfile(os.path.join(path, META)):
        raise CheckpointError(f"resume={resume!r}: no complete checkpoint there (expected {path}/{META}, or a "
                              f"folder of step-NNNNNN checkpoints); use resume=auto to continue from {root}")
    verify(path, warn=log)
    read_meta(path)
    return path


def _newest_verified(root: str, log: Callable[[str], None] | None) -> str | None:
    from asyncflow_hpc.checkpoint.manifest import verify

    found = list_checkpoints(root)
    skipped = []
    for _step, path in reversed(found):
        try:
            verify(path, warn=log)
            read_meta(path)
            return path
        except CheckpointError as exc:
            skipped.append(str(exc))
            if log:
                log(f"asyncflow-hpc: resume=auto: skipping {path}: {exc}")
    if skipped:
        raise CheckpointError(f"resume=auto: none of the {len(found)} checkpoints in {root} verifies (newest: "
                              f"{skipped[0]}); remove them, or resume='' to start fresh")
    return None


def read_meta(path: str) -> dict[str, Any]:
    try:
        with open(os.path.join(path, META), encoding="utf-8") as fh:
            meta = json.load(fh)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}/{META}: cannot read checkpoint metadata: {exc}") from None
    if not isinstance(meta, dict) or "step" not in meta:
        raise CheckpointError(f"{path}/{META}: not an asyncflow_hpc checkpoint (no 'step')")
    return meta


def write_json(path: str, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=1, default=float)
        fh.flush()
        os.fsync(fh.fileno())
