# mri2mri: `make demo` sets everything up and runs the experiment; `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# On this project's CPU machines torch 2.13.0 is the CPU wheel; on a GPU machine any torch >= 2.4
# works: `make demo TORCH_SPEC="torch==2.5.1"` (or install torch into .venv yourself first).
TORCH_SPEC ?= torch==2.13.0
STAMP   = $(VENV)/.installed

.PHONY: setup demo test bench bench-quality lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mri2mri demo $(DEMO_ARGS)

# Two test processes, a whole test file each (a file's shared fixtures are built once): alone, the
# suite keeps about one core busy (file reads, N4, subprocess starts), so two share 2 cores well.
# Then, by themselves, the few tests that measure how busy the machine is (marked `alone`; pytest
# exits 5 when TEST_ARGS selects none of them). TEST_WORKERS=0 runs the first part in one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not alone" $(TEST_ARGS)
	$(BIN)/python -m pytest -q -m alone $(TEST_ARGS) || [ $$? -eq 5 ]

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# Quality on the 27 real patients, cross-validated by site (benchmarks/folds_by_site.json): the
# default at 128 px (the ready-made models' size), 600 s per run, two seeds, beside the
# intensity-map table fitted on each fold's training patients (6 folds x 2 seeds x 600 s: about
# 2 h 15 min on 2 CPU cores; run it alone on the machine). QUALITY_ARGS adds configurations
# ("--configs default pix2pix") or screens at a fixed number of steps ("--steps 3000").
bench-quality: $(STAMP)
	$(BIN)/python benchmarks/ablation.py --image-size 128 --configs default --skip-builtin $(QUALITY_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts

clean:
	rm -rf $(VENV) outputs build *.egg-info src/*.egg-info .pytest_cache
