"""`asyncflow-hpc bench ...`: benchmarks that run both sides of a comparison in one job and print ratios."""
