"""Configuration of checkpoints: where, how often, how many are kept, and what the warning signal does."""

from __future__ import annotations

from dataclasses import dataclass

from asyncflow_hpc.configlib import fail, opt


@dataclass(kw_only=True)
class CheckpointConfig:
    """Checkpoints of the trainer, RNG, store rows and prompt schedule (see docs/reliability.md)."""

    dir: str = opt("{run_dir}/checkpoints", "Where checkpoints go; {run_dir} is run.dir resolved.")
    every_steps: int = opt(0, "Write a checkpoint every N trainer steps (0 = only on the warning signal / at the end).")
    keep: int = opt(2, "How many of the newest checkpoints to keep (older ones are deleted after a new one is complete).")
    at_end: bool = opt(False, "Also write a checkpoint after the last step.")
    on_signal: bool = opt(True, "On the warning signal (SIGUSR2, Slurm --signal), checkpoint at the next step "
                                "boundary and end the run (the launcher then requeues it).")
    stop_after_steps: int = opt(0, "Testing/ops aid: behave as if the warning signal came after this many steps "
                                   "of this segment (0 = never).")

    def __post_init__(self) -> None:
        if not self.dir:
            raise fail("dir", "must not be empty")
        for name in ("every_steps", "stop_after_steps"):
            if getattr(self, name) < 0:
                raise fail(name, f"must be >= 0, got {getattr(self, name)}")
        if self.keep < 1:
            raise fail("keep", f"must be >= 1, got {self.keep}")

    def resolved_dir(self, run_dir: str) -> str:
        return self.dir.replace("{run_dir}", run_dir)
