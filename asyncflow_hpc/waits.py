"""The one back-off wait: poll a condition, sleeping between polls (ranks share cores: never spin).

    wait_until(req.Test, timeout_s=60, what="every rank's trace file", rank=r, role="trainer")

The pause starts at `pause_min` and doubles up to `pause_max`; past `timeout_s` (None: never) it raises
errors.WaitTimeout naming the rank, the role and what was awaited, or returns False with raise_timeout=False.
"""

from __future__ import annotations

import time
from typing import Callable


def wait_until(ready: Callable[[], object], *, timeout_s: float | None, what: str, rank: int = -1, role: str = "",
               pause_min: float = 1e-4, pause_max: float = 2e-3, raise_timeout: bool = True) -> bool:
    from asyncflow_hpc.errors import WaitTimeout

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    pause = pause_min
    while not ready():
        if deadline is not None and time.monotonic() > deadline:
            if not raise_timeout:
                return False
            raise WaitTimeout(f"waited {timeout_s:g}s for {what}", rank=rank if rank >= 0 else None,
                              role=role or None)
        time.sleep(pause)
        pause = min(pause * 2, pause_max)
    return True
