# Set-up contract: `make demo` and `make test` work on a fresh clone (they create .venv).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-all bench bench-lowprec bench-alloc bench-survey clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch/torchvision come from this machine's disk (pinned to what lies there); the rest from the registry.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

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
