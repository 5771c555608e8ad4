"""Weight-sync errors: each names the rank, role, version and (where it applies) the bucket."""

from __future__ import annotations

from asyncflow_hpc.errors import RankError, WaitTimeout


class WeightSyncError(RankError):
    """A weight sync failed; the job cannot continue with consistent weights on this rank."""

    def __init__(self, message: str, *, rank: int | None = None, role: str | None = None,
                 version: int | None = None, bucket: int | None = None):
        super().__init__(message, rank=rank, role=role)
        self.version = version
        self.bucket = bucket


class ChecksumError(WeightSyncError):
    """A received bucket does not match the checksum the trainer leader computed before sending."""


class LayoutMismatchError(WeightSyncError):
    """Sender and receiver planned different bucket layouts (different tensors, shapes, dtypes or bucket_mb)."""


class VersionError(WeightSyncError):
    """A received version tag is not newer than the last one staged or applied (versions are monotone)."""


__all__ = ["WeightSyncError", "ChecksumError", "LayoutMismatchError", "VersionError", "WaitTimeout"]
