"""`python -m asyncflow_hpc` is the `asyncflow-hpc` console script."""

from asyncflow_hpc.cli import main

raise SystemExit(main())
