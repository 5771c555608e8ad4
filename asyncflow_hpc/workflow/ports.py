"""The narrow interfaces the AsyncFlow roles (workflow/roles.py) are built from.

Each has a real implementation for jobs and an in-process one for fast tests:

| interface        | in a job (MPI ranks)                                  | in one process (threads)         |
|------------------|-------------------------------------------------------|----------------------------------|
| SampleStore      | store.rma.RMAStore (the prompt feed and sample store) | store.local.LocalStore           |
| WeightSource     | weights.sender.WeightSender (trainer leader)          | weights.local.LocalSender        |
| WeightSink       | weights.receiver.WeightReceiver (rollout ranks)       | weights.local.LocalReceiver      |
| TrainerGroupLink | MpiTrainerGroup (the trainer ranks' communicator)     | SoloTrainerGroup (one trainer)   |
| Recorder         | trace.recorder.TraceRecorder, or None                 | None                             |
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Protocol


class SampleStore(Protocol):
    """TransferQueue semantics: rows x columns, per-task exactly-once gets, end of stream (store/base.py)."""

    def put(self, columns: dict, meta: list) -> Any: ...
    def put_columns(self, row_ids: Any, columns: dict) -> None: ...
    def get(self, task: str, columns: list[str], n: int, **policy: Any) -> Any: ...
    def try_get(self, task: str, columns: list[str], n: int, **policy: Any) -> Any: ...
    def peek(self, task: str, columns: list[str]) -> Any: ...
    def stats(self) -> dict: ...
    def mark_done(self) -> None: ...
    def close(self) -> None: ...


class WeightSource(Protocol):
    """The trainer leader's end of the weight broadcast: a snapshot per version, sent in the background."""

    def send(self, named: Iterable[tuple[str, Any]], version: int) -> Any: ...
    def send_async(self, named: Iterable[tuple[str, Any]], version: int) -> Any: ...
    def close(self) -> None: ...


class WeightSink(Protocol):
    """A rollout rank's end: versions staged in the background, applied at a generation boundary."""

    running: bool

    def start(self) -> None: ...
    def poll(self) -> int | None: ...
    def wait_staged(self, min_version: int, timeout_s: float | None = None) -> int: ...
    def swap(self, apply_fn: Callable[[list, int], object]) -> int | None: ...
    def close(self, timeout_s: float = 10.0) -> None: ...
    def take_recv_spans(self) -> list[tuple[int, float, float, int]]: ...


class TrainerGroupLink(Protocol):
    """How the trainer leader shares each step's batch and decisions with the other trainer ranks."""

    size: int

    def share_batch(self, rows: list | None, step: int, clock: Any) -> list: ...
    def share(self, value: Any) -> Any: ...


class SoloTrainerGroup:
    """One trainer rank: nothing to share."""

    size = 1

    def share_batch(self, rows: list | None, step: int, clock: Any) -> list:
        assert rows is not None
        return rows

    def share(self, value: Any) -> Any:
        return value


class MpiTrainerGroup:
    """The trainer ranks' MPI communicator (rank 0 = the trainer leader); followers sleep while it waits."""

    def __init__(self, comm: Any, *, rank: int, timeout_s: float):
        self.comm, self.rank, self.timeout_s = comm, rank, timeout_s
        self.size = comm.Get_size()

    def share_batch(self, rows: list | None, step: int, clock: Any) -> list:
        from asyncflow_hpc.topology.comms import sleeping_barrier

        with clock.idle("wait_batch" if rows is None else "batch_bcast"):
            sleeping_barrier(self.comm, self.timeout_s, rank=self.rank, role="trainer",
                             what=f"the trainer leader's batch of step {step} (store.timeout_s)")
            return self.comm.bcast(rows, root=0)

    def share(self, value: Any) -> Any:
        return self.comm.bcast(value, root=0)
