"""Configuration of the prompt dataset."""

from __future__ import annotations

from dataclasses import dataclass

from asyncflow_hpc.configlib import opt


@dataclass(kw_only=True)
class DataConfig:
    """Prompts to roll out on, and held-out prompts to evaluate on."""

    train_path: str = opt("", "Prompt file (JSONL/parquet, GSM8K-style question/answer); empty = the synthetic task.")
