"""A checkpoint's manifest: every file's size and sha256, written last and atomically, verified on load.

    write_manifest(tmp)      # inside staged_dir, after meta.json: manifest.json via a temporary file + rename
    verify(path)             # raises CheckpointError naming the checkpoint and the file that does not match

A checkpoint written before manifests existed (meta.json without "format") has none: `verify` accepts it
with a warning (it cannot be checked); its pickled files are then read with torch's weights_only=True
loader only, or refused (see state.py).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable

from asyncflow_hpc.checkpoint.files import META, CheckpointError

MANIFEST = "manifest.json"
FORMAT = 2  # meta.json "format": 2 = no pickle, with a manifest
_CHUNK = 1 << 20


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _files(root: str) -> list[str]:
    out = []
    for base, _dirs, names in os.walk(root):
        for name in names:
            rel = os.path.relpath(os.path.join(base, name), root)
            if rel != MANIFEST and not rel.startswith(MANIFEST + "."):
                out.append(rel)
    return sorted(out)


def write_manifest(root: str) -> dict[str, Any]:
    """Hash every file under `root` and publish manifest.json by rename (so it is whole or absent)."""
    files = {rel: {"size": os.path.getsize(os.path.join(root, rel)), "sha256": sha256_file(os.path.join(root, rel))}
             for rel in _files(root)}
    doc = {"format": FORMAT, "algorithm": "sha256", "files": files}
    tmp = os.path.join(root, MANIFEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, os.path.join(root, MANIFEST))
    return doc


def _read_manifest(path: str) -> dict[str, Any] | None:
    mpath = os.path.join(path, MANIFEST)
    if not os.path.exists(mpath):
        return None
    try:
        with open(mpath, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} is unreadable ({exc}); the checkpoint cannot be "
                              f"verified") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), dict):
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} has no 'files' table; the checkpoint cannot be verified")
    return doc


def _legacy(path: str) -> bool:
    """meta.json written before manifests (no "format" key)."""
    try:
        with open(os.path.join(path, META), encoding="utf-8") as fh:
            meta = json.load(fh)
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "format" not in meta


def verify(path: str, warn: Callable[[str], None] | None = print) -> None:
    """Check every file the manifest lists (present, same size, same sha256); raise CheckpointError otherwise."""
    doc = _read_manifest(path)
    if doc is None:
        if _legacy(path):
            if warn:
                warn(f"asyncflow-hpc: checkpoint {path} has no {MANIFEST} (written by an older version): "
                     f"its files cannot be verified")
            return
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} is missing, so the checkpoint cannot be verified "
                              f"(incomplete copy?)")
    for rel, want in sorted(doc["files"].items()):
        fpath = os.path.join(path, rel)
        if os.path.isabs(rel) or os.path.normpath(rel).startswith(".."):
            raise CheckpointError(f"checkpoint {path}: {MANIFEST} names a file outside the checkpoint: {rel!r}")
        if not os.path.isfile(fpath):
            raise CheckpointError(f"checkpoint {path}: file {rel} is missing (listed in {MANIFEST})")
        size = os.path.getsize(fpath)
        if size != want.get("size"):
            raise CheckpointError(f"checkpoint {path}: file {rel} has {size} bytes, the manifest says "
                                  f"{want.get('size')} (truncated or replaced)")
        if sha256_file(fpath) != want.get("sha256"):
            raise CheckpointError(f"checkpoint {path}: file {rel} does not match its sha256 in {MANIFEST} "
                                  f"(corrupted or modified)")
