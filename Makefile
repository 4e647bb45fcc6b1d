# Set-up contract: `make demo` and `make test` work on a fresh clone (they create .venv).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install lock demo test test-all bench bench-lowprec bench-alloc bench-survey clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Every package is pinned in requirements/lock.txt and installed without dependency resolution:
# torch/torchvision come from this machine's disk, the rest from the registry. The lock leaves out
# triton (0.9 GB, torch.compile's GPU compiler), so the venv is ~5 GB, and --no-cache-dir keeps
# no second copy of the downloads. `pip check` must then report nothing but triton's absence.
$(STAMP): pyproject.toml requirements/lock.txt | $(BIN)/python
	$(BIN)/pip install -q --no-cache-dir --no-deps -r requirements/lock.txt
	$(BIN)/pip install -q --no-cache-dir --no-deps -e .
	@$(BIN)/pip check > $(VENV)/pip-check.txt || { grep -v 'requires triton' $(VENV)/pip-check.txt \
		&& echo "requirements/lock.txt misses what is listed above: run make lock" >&2 && exit 1 || true; }
	touch $(STAMP)

# Re-resolve the pins after a change to pyproject.toml's dependencies (needs the registry).
lock: | $(BIN)/python
	$(BIN)/pip install -q --dry-run --ignore-installed --no-cache-dir --report $(VENV)/lock-report.json \
		torch==2.14.1 torchvision==0.29.1 -e '.[test]'
	$(BIN)/python requirements/lock.py $(VENV)/lock-report.json > $(VENV)/lock.txt && mv $(VENV)/lock.txt requirements/lock.txt

install: $(STAMP)

# The main job: train a small EfficientNet on the built-in digits with the `demo` recipe.
demo: $(STAMP)
	$(BIN)/python -m effnets train --recipe demo --data digits --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ""

# Speed / memory comparison with timm and torchvision (benchmarks/bench.py; ~15 min on 2 cores,
# BENCH_ARGS=--quick: ~3 min).
bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

# bf16 / int8 / ONNX Runtime on a trained efficientnet_b0 (trains it on digits first; ~15 min).
bench-lowprec: $(STAMP)
	$(BIN)/python benchmarks/lowprec.py $(BENCH_ARGS)

# effnets.optimize against timm / torchvision on the rest of the zoo (benchmarks/survey.py; ~4 min).
bench-survey: $(STAMP)
	$(BIN)/python benchmarks/survey.py $(BENCH_ARGS)

# What glibc's allocator costs effnets, timm and torchvision (benchmarks/allocator.py; ~9 min).
bench-alloc: $(STAMP)
	$(BIN)/python benchmarks/allocator.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
