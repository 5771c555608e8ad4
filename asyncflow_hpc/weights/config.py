"""Configuration of the trainer -> rollout weight sync."""

from __future__ import annotations

from dataclasses import dataclass

from asyncflow_hpc.configlib import fail, opt


@dataclass(kw_only=True)
class WeightSyncConfig:
    """Bucketed weight broadcast from the trainer leader to the rollout ranks."""

    bucket_mb: float = opt(64.0, "Size bound of one broadcast bucket, in MiB.")
    timeout_s: float = opt(120.0, "Timeout of one weight sync; the error names rank, role and version.")

    def __post_init__(self) -> None:
        if self.bucket_mb <= 0:
            raise fail("bucket_mb", f"must be > 0, got {self.bucket_mb}")
        if self.timeout_s <= 0:
            raise fail("timeout_s", f"must be > 0, got {self.timeout_s}")
