"""Prompt files: JSONL or parquet records with a question and a reference answer (GSM8K style).

Every problem is a DataError naming the file and line (or row) and what to do. Paths may hold
${VAR}; ${ASYNCFLOW_GSM8K_DIR} defaults to ../shared/data/gsm8k relative to the repository root.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from asyncflow_hpc.errors import AsyncFlowError

REPO_ROOT = Path(__file__).resolve().parents[2]


class DataError(AsyncFlowError):
    """A prompt file is missing or malformed."""


@dataclass(frozen=True)
class Example:
    id: int
    question: str
    answer: str  # the raw answer field (GSM8K: worked solution ending in '#### 42')
    reference: str  # the normalised final answer the verifier compares against


def gsm8k_dir() -> str:
    return os.environ.get("ASYNCFLOW_GSM8K_DIR") or str((REPO_ROOT / ".." / "shared" / "data" / "gsm8k").resolve())


def resolve_path(path: str) -> str:
    """Expand ${VAR} (ASYNCFLOW_GSM8K_DIR has a default) and ~."""
    path = path.replace("${ASYNCFLOW_GSM8K_DIR}", gsm8k_dir()).replace("$ASYNCFLOW_GSM8K_DIR", gsm8k_dir())
    out = os.path.expanduser(os.path.expandvars(path))
    if "$" in out:
        raise DataError(f"data path {path!r}: environment variable in {out!r} is not set")
    return out


def _records_jsonl(path: str):
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            yield f"{path}:{lineno}", rec


def _records_parquet(path: str):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading parquet needs pyarrow (pip install pyarrow), or convert to JSONL") from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise DataError(f"{path}: not a readable parquet file: {exc}") from None
    for i, rec in enumerate(table.to_pylist()):
        yield f"{path}: row {i}", rec


def load_examples(path: str, *, question_key: str = "question", answer_key: str = "answer",
                  reference_fn=None, limit: int = -1) -> list[Example]:
    """Read a JSONL/parquet prompt file. `reference_fn(answer) -> str` extracts the reference
    (default: GSM8K '####'); a record it rejects is an error naming the line."""
    from asyncflow_hpc.rewards.math_verify import gsm8k_reference

    reference_fn = reference_fn or gsm8k_reference
    path = resolve_path(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: prompt file not found (set data.train_path/test_path or ASYNCFLOW_GSM8K_DIR)")
    reader = _records_parquet if path.endswith((".parquet", ".pq")) else _records_jsonl
    out: list[Example] = []
    try:
        for where, rec in reader(path):
            if not isinstance(rec, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
            for key in (question_key, answer_key):
                if not isinstance(rec.get(key), str) or not rec[key].strip():
                    raise DataError(f"{where}: missing or empty string field {key!r} (have: {sorted(rec)}); "
                                    f"set data.question_key/data.answer_key")
            try:
                ref = reference_fn(rec[answer_key])
            except ValueError as exc:
                raise DataError(f"{where}: field {answer_key!r}: {exc}") from None
            out.append(Example(id=len(out), question=rec[question_key], answer=rec[answer_key], reference=ref))
            if 0 < limit <= len(out):
                break
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    if not out:
        raise DataError(f"{path}: no records")
    return out
