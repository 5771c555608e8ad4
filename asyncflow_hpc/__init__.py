"""asyncflow_hpc: asynchronous streaming RL post-training as one MPI job (AsyncFlow, arXiv 2507.01663).

Nothing heavy is imported here: torch, mpi4py, h5py, vllm and torch_npu are imported lazily by
the modules that need them, so `import asyncflow_hpc` and the CLI work on any machine.
"""

__version__ = "0.1.0"
