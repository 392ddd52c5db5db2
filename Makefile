# Two entry points for a fresh machine with only Python 3.10+:
#   make demo   set up .venv, pretrain on the bundled chr20 excerpt, report held-out bits per base
#   make test   set up .venv, run the whole test suite
# torch is installed first and pinned so pip never resolves a multi-GB CUDA build on a CPU machine;
# override with e.g. `make test TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu124"`.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV ?= .venv
BIN := $(VENV)/bin

$(BIN)/dna-mdlm: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip "setuptools>=77"
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/dna-mdlm

demo: venv
	rm -rf runs/demo  # the demo always starts fresh
	$(BIN)/dna-mdlm pretrain --config demo --out runs/demo

test: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

.PHONY: venv demo test
