#!/usr/bin/env python
"""Submit an asyncflow_hpc job with submitit: to Slurm where `sbatch` exists, to local processes otherwise.

    python launchers/submit.py configs/smoke.yaml [key=value ...] [--wait]

Same as `asyncflow-hpc submit`; the work is in asyncflow_hpc/launch/submitit_launch.py. Slurm
resources come from the `launch.*` keys (nodes, tasks_per_node, cpus_per_task, gpus_per_node,
partition, time_min, signal_delay_s, max_requeues, folder, slurm_extra), e.g.

    python launchers/submit.py configs/smoke.yaml launch.partition=debug launch.slurm_extra.account=abc --wait
"""

from __future__ import annotations

import sys
from pathlib import Path

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asyncflow_hpc.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["submit", *sys.argv[1:]]))
