# Set-up and the two main jobs. Each target creates .venv in the checkout and installs what it needs.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo test bench lint clean venv peer-tests

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install "$(TORCH)"
	touch $@

$(VENV)/.demo: $(VENV)/.torch pyproject.toml
	$(PIP) install -e ".[demo]"
	touch $@

$(VENV)/.test: $(VENV)/.torch pyproject.toml Makefile
	$(PIP) install -e ".[test,triton]"
	# segmentation_models_pytorch's package needs torchvision; its losses (tested against) need only torch
	$(PIP) install --no-deps segmentation-models-pytorch==0.6.0
	# SMP's own tests/test_losses.py, run on diceloss.compat.smp by tests/test_peer_smp.py: its sdist ships them
	rm -rf $(VENV)/peer-src && mkdir -p $(VENV)/peer-src
	$(PIP) download --no-deps --no-binary :all: segmentation-models-pytorch==0.6.0 -d $(VENV)/peer-src
	tar -xzf $(VENV)/peer-src/segmentation_models_pytorch-0.6.0.tar.gz -C $(VENV)/peer-src
	# panoptica, the peer of lesion_metrics, pins numpy<2.3 but runs with the numpy here: installed without its pins
	$(PIP) install --no-deps panoptica==2.1.7
	$(PIP) install "connected-components-3d<4" rich ruamel.yaml "pandas<3" "plotly<6" typer
	# Debian's chromium opens the eval report in tests/test_report.py (skipped without it); never fails the set-up
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			(apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || \
				echo "chromium: apt-get install failed; tests/test_report.py's browser test will skip"; \
		else echo "chromium: not installed (needs root and apt-get); tests/test_report.py's browser test will skip"; fi; }
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

# MONAI's own loss tests on diceloss.compat.monai, from a MONAI source tree (its sdist has no tests; not in
# `make test`): make peer-tests MONAI_SRC=/path/to/MONAI. Also runs SMP's loss tests (tests/test_peer_smp.py).
MONAI_TESTS := test_dice_loss.py test_generalized_dice_loss.py test_tversky_loss.py test_dice_ce_loss.py \
	test_dice_focal_loss.py
peer-tests: $(VENV)/.test
	@test -n "$(MONAI_SRC)" || { echo "peer-tests: set MONAI_SRC to the root of a MONAI source tree, e.g." \
		"git clone https://github.com/Project-MONAI/MONAI /tmp/MONAI && make peer-tests MONAI_SRC=/tmp/MONAI"; exit 2; }
	@test -d "$(MONAI_SRC)/tests/losses" || { echo "peer-tests: $(MONAI_SRC)/tests/losses not found;" \
		"MONAI_SRC must be the root of a MONAI source tree"; exit 2; }
	$(PIP) install parameterized  # MONAI's tests need it
	cd "$(MONAI_SRC)" && PYTHONPATH="$(CURDIR)/tests/peers" "$(CURDIR)/$(VENV)/bin/pytest" -p diceloss_peer_monai \
		--import-mode=append -p no:cacheprovider -rs $(addprefix tests/losses/,$(MONAI_TESTS))
	$(PY) -m pytest -q tests/test_peer_smp.py

bench: $(VENV)/.bench
	$(PY) benchmarks/run.py $(ARGS)
	$(PY) benchmarks/bench_eval.py

lint: $(VENV)/.test
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
