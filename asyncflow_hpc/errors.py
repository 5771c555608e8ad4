"""User-facing error types: each says what was wrong, where, and (where it can) what to do."""

from __future__ import annotations


class AsyncFlowError(Exception):
    """Base class of every error the CLI prints as one line (no traceback)."""


class ConfigError(AsyncFlowError, ValueError):
    """A configuration key, value, file or override is wrong; `key` names it (dotted) where one is known."""

    def __init__(self, message: str = "", *, key: str | None = None):
        super().__init__(message)
        self.key = key


class TopologyError(ConfigError):
    """The requested roles cannot be laid out on the ranks of this job."""


class LaunchError(AsyncFlowError):
    """A launcher (mpiexec, srun, sbatch, submitit) could not be found or started."""


class RankError(AsyncFlowError):
    """A failure on a named rank: carries rank and role so the message says where."""

    def __init__(self, message: str, *, rank: int | None = None, role: str | None = None):
        where = []
        if rank is not None:
            where.append(f"rank {rank}")
        if role is not None:
            where.append(f"role {role}")
        prefix = f"[{', '.join(where)}] " if where else ""
        super().__init__(prefix + message)
        self.rank = rank
        self.role = role


class WaitTimeout(RankError, TimeoutError):
    """A blocking wait ran past its timeout; the message names what was awaited."""
