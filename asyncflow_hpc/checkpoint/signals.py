"""The warning signal (SIGUSR2 from Slurm's --signal, or forwarded by the launcher): set a flag, never stop mid-step.

    flag = StopFlag.install()          # in the rank's main thread; replaces submitit's USR2 handler
    ... at each step boundary: if flag.requested(): checkpoint, leave the loop ...

The previous handler is kept (`flag.previous`) so that a submitit task can run submitit's own
requeue logic *after* the checkpoint is written (launch/submitit_launch.py).
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any


class StopFlag:
    """Set by the warning signal (or by `request()`); read at step boundaries."""

    _installed: "StopFlag | None" = None

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""
        self.at: float | None = None
        self.previous: Any = None

    @classmethod
    def install(cls, signum: int = signal.SIGUSR2) -> "StopFlag":
        """Install the handler once per process (later calls return the same flag)."""
        if cls._installed is not None:
            return cls._installed
        flag = cls()
        if threading.current_thread() is threading.main_thread():
            flag.previous = signal.signal(signum, flag._on_signal)
        cls._installed = flag
        return flag

    @classmethod
    def current(cls) -> "StopFlag | None":
        return cls._installed

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.request(f"signal {signal.Signals(signum).name}")

    def request(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason, self.at = reason, time.time()
            self._event.set()

    def requested(self) -> bool:
        return self._event.is_set()
