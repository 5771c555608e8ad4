"""Launching the job: mpiexec on one machine, srun inside an allocation, sbatch templates, submitit."""
