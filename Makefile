# The two commands of the README. Both bootstrap .venv with the machine's python3.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: run test bench bench-ops

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# The MQAR recall study at its CPU preset: DeltaNet against linear and softmax attention.
run: $(STAMP)
	$(VENV)/bin/python -m experiments.mqar --config=configs/mqar.py:cpu --workdir=runs/mqar-cpu

test: $(STAMP)
	$(VENV)/bin/ruff check .
	DELTAJAX_NOTEBOOK_SMOKE=1 $(VENV)/bin/python -m pytest -q tests --nbmake notebooks

# Not one of the two set-up commands: compares the backends on this machine (GPU: H100 preset).
bench: $(STAMP)
	$(VENV)/bin/python -m experiments.compare_paths

# Times the op backends on this machine at small sizes (make run before the MQAR study).
bench-ops: $(STAMP)
	$(VENV)/bin/python -m experiments.bench_ops --preset=small
