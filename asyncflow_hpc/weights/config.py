"""Configuration of the trainer -> rollout weight sync (buckets, checksums, timeouts, swap policy)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from asyncflow_hpc.configlib import fail, opt


@dataclass(kw_only=True)
class WeightSyncConfig:
    """Bucketed weight broadcast from the trainer leader to the rollout ranks."""

    bucket_mb: float = opt(32.0, "Size bound of one broadcast bucket, in MiB. Buckets are pipelined and "
                                 "bucket k is verified while later ones arrive, so one huge bucket leaves the "
                                 "whole checksum exposed; tiny ones pay a per-collective cost (32 measured best "
                                 "on gloo; on NCCL/HCCL it also bounds the device send/receive buffers).")
    large_tensors: Literal["split", "own"] = opt(
        "split", "A tensor larger than bucket_mb: 'split' cuts it over several buckets, 'own' gives it one "
                 "bucket of its own (larger than the bound).")
    checksum: Literal["blocksum64", "none"] = opt(
        "blocksum64", "Per-bucket checksum verified on receipt: 'blocksum64' (vectorised mod-2^64 sums over "
                      "an int64 view, ~17 GB/s per core) or 'none'.")
    timeout_s: float = opt(120.0, "Timeout of each wait inside one sync (header, checksums, each bucket); "
                                  "the error names rank, role, version and bucket.")
    version_wait_s: float = opt(1800.0, "How long a rollout rank waits for the NEXT version's header "
                                        "(must exceed the longest trainer step).")
    staging_buffers: int = opt(2, "Host staging buffers per rollout rank: 2 lets version v+2 arrive while "
                                  "v+1 stays staged and swappable; 1 halves host memory, but a newer version "
                                  "then overwrites an unswapped one (the swap waits for the newer one).")
    swap_policy: Literal["all", "staggered"] = opt(
        "all", "When rollout instances swap a staged version: 'all' at each instance's next generation "
               "boundary; 'staggered' group by group, so the other groups keep producing (sub-step asynchrony).")
    stagger_groups: int = opt(-1, "Number of swap groups for swap_policy=staggered (instance i is in group "
                                  "i mod groups, group j swaps j boundaries later); -1 = one group per instance.")

    def __post_init__(self) -> None:
        if self.bucket_mb <= 0:
            raise fail("bucket_mb", f"must be > 0, got {self.bucket_mb}")
        if self.timeout_s <= 0:
            raise fail("timeout_s", f"must be > 0, got {self.timeout_s}")
        if self.version_wait_s <= 0:
            raise fail("version_wait_s", f"must be > 0, got {self.version_wait_s}")
        if self.staging_buffers not in (1, 2):
            raise fail("staging_buffers", f"must be 1 or 2, got {self.staging_buffers}")
        if self.stagger_groups == 0 or self.stagger_groups < -1:
            raise fail("stagger_groups", f"must be >= 1 or -1 (one per instance), got {self.stagger_groups}")

    @property
    def bucket_bytes(self) -> int:
        return max(1, int(self.bucket_mb * 2**20))
