"""Prompt datasets: local JSONL/parquet files (GSM8K style) and the synthetic task of the embedded default."""
