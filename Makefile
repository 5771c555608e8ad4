# The two commands of the README:
#   make run    install what is needed, then run the embedded default (tiny model, CPU, mpiexec)
#   make test   install what is needed (and a local Slurm), then run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/default.yaml

.PHONY: install run test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch 2.13.0 CPU comes from the local disk here; a cluster uses its own build of torch.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $@

run: install
	$(BIN)/asyncflow-hpc run $(CONFIG)

test: install
	bash .ci/slurm_up.sh
	$(BIN)/pytest -q tests

bench: install
	$(BIN)/asyncflow-hpc bench store --quick
	$(BIN)/asyncflow-hpc bench weights --quick
	$(BIN)/asyncflow-hpc bench e2e --quick

clean:
	rm -rf $(VENV) runs *.egg-info
