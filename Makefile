# Two commands for a fresh machine: `make run` (the main job) and `make test` (the test suite).
# Both create .venv on first use and install what they need.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# torch/torchvision pinned to the wheels this project is developed and tested against (see README).
TORCH   ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install run test lint bench gpu-check clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Both halves (vision grid; forecasting grid, its last held-out window and a forecast past the end of ETTh1): the
# tables are printed and written to runs/quick/ and runs/quick-forecast/ (git-ignored); `favit-ps reproduce quick
# --out results` updates the committed results/quick* files on purpose.
run: $(STAMP)
	$(BIN)/favit-ps reproduce quick

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks docs
	@# pytest exits 5 when it collects nothing: that is a failure, not a pass.
	$(BIN)/python -m pytest -n 2 -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks docs
	$(BIN)/ruff format --check src tests benchmarks docs

bench: $(STAMP)
	$(BIN)/python benchmarks/attention.py

clean:
	rm -rf $(VENV) lightning_logs runs .pytest_cache

# Everything that needs a GPU (CUDA tests, attention benchmark at B=32, FaViT throughput, one Informer epoch),
# into one folder (never run on a GPU yet, so its duration is unknown). GPU_ARGS e.g. "--official-file PATH --data DIR" or "--dry-run".
GPU_OUT  ?= results/gpu-check
GPU_ARGS ?=
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py --out $(GPU_OUT) $(GPU_ARGS)
