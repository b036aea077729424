# Set-up and the two main jobs. Each target creates .venv in the checkout and installs what it needs.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo test bench lint clean venv

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install "$(TORCH)"
	touch $@

$(VENV)/.demo: $(VENV)/.torch pyproject.toml
	$(PIP) install -e ".[demo]"
	touch $@

$(VENV)/.test: $(VENV)/.torch pyproject.toml
	$(PIP) install -e ".[test,triton]"
	# segmentation_models_pytorch's package needs torchvision; its losses (tested against) need only torch
	$(PIP) install --no-deps segmentation-models-pytorch==0.6.0
	touch $@

$(VENV)/.bench: $(VENV)/.test
	$(PIP) install -e ".[bench]"
	$(PIP) install --no-deps nnunetv2==2.8.1
	touch $@

venv: $(VENV)/.torch

demo: $(VENV)/.demo
	$(VENV)/bin/diceloss demo $(ARGS)

test: $(VENV)/.test
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -n 2 -q $(ARGS)

bench: $(VENV)/.bench
	$(PY) benchmarks/run.py $(ARGS)
	$(PY) benchmarks/bench_eval.py

lint: $(VENV)/.test
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
