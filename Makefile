# Set-up and the two main jobs. Each target creates .venv in the checkout and installs what it needs.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo test bench lint clean venv peer-tests docs

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install "$(TORCH)"
	# setup.py builds the prebuilt CPU kernel against this torch: no build isolation (it would fetch a CUDA torch)
	$(PIP) install "setuptools>=70.1"
	touch $@

$(VENV)/.demo: $(VENV)/.torch pyproject.toml
	$(PIP) install --no-build-isolation -e ".[demo]"
	touch $@

$(VENV)/.test: $(VENV)/.torch pyproject.toml Makefile
	$(PIP) install --no-build-isolation -e ".[test,triton]"
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
	$(PIP) install --no-build-isolation -e ".[bench]"
	$(PIP) install --no-deps nnunetv2==2.8.1
	touch $@

venv: $(VENV)/.torch

demo: $(VENV)/.demo
	$(VENV)/bin/diceloss demo $(ARGS)

# the prebuilt CPU kernel (setup.py, in place), rebuilt when its sources change
$(VENV)/.kernel: $(VENV)/.test setup.py src/diceloss/stats/cpu/build.py \
		$(wildcard src/diceloss/stats/cpu/*.cpp src/diceloss/stats/cpu/*.h)
	$(PIP) install --no-build-isolation --no-deps -e .
	touch $@

test: $(VENV)/.test $(VENV)/.kernel
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -n 2 -q $(ARGS)

# MONAI's own loss tests on diceloss.compat.monai, from a MONAI source tree (its sdist has no tests; not in
# `make test`): make peer-tests MONAI_SRC=/path/to/MONAI LOVASZ_SRC=/path/to/LovaszSoftmax. Also runs SMP's loss
# tests (tests/test_peer_smp.py) and diceloss.lovasz against the authors' pytorch/lovasz_losses.py from LOVASZ_SRC
# (a checkout of github.com/bermanmaxim/LovaszSoftmax; tests/peers/diceloss_peer_lovasz.py).
# Skeleton Recall, the boundary loss and the calibration loss against their authors' code from SKELETON_RECALL_SRC,
# BOUNDARY_LOSS_SRC and ACE_LOSS_SRC (checkouts of MIC-DKFZ/Skeleton-Recall, LIVIAETS/boundary-loss and
# cai4cai/Average-Calibration-Losses; tests/peers/authors_*.py). The blob loss and the unified focal loss against
# BLOB_LOSS_SRC and UFL_SRC (checkouts of neuronflow/blob_loss and mlyg/unified-focal-loss; TensorFlow is installed).
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
	@test -f "$(LOVASZ_SRC)/pytorch/lovasz_losses.py" || { echo "peer-tests: set LOVASZ_SRC to the root of a" \
		"LovaszSoftmax checkout, e.g. git clone https://github.com/bermanmaxim/LovaszSoftmax /tmp/LovaszSoftmax"; exit 2; }
	LOVASZ_SRC="$(LOVASZ_SRC)" $(PY) -m pytest -q -p no:cacheprovider tests/peers/diceloss_peer_lovasz.py
	@# issue 13: Skeleton Recall, boundary and calibration losses against the authors' code (tests/peers/authors_*.py)
	@test -d "$(SKELETON_RECALL_SRC)" || { echo "peer-tests: set SKELETON_RECALL_SRC to a checkout of" \
		"github.com/MIC-DKFZ/Skeleton-Recall"; exit 2; }
	@test -d "$(BOUNDARY_LOSS_SRC)" || { echo "peer-tests: set BOUNDARY_LOSS_SRC to a checkout of" \
		"github.com/LIVIAETS/boundary-loss"; exit 2; }
	@test -d "$(ACE_LOSS_SRC)" || { echo "peer-tests: set ACE_LOSS_SRC to a checkout of" \
		"github.com/cai4cai/Average-Calibration-Losses"; exit 2; }
	SKELETON_RECALL_SRC="$(SKELETON_RECALL_SRC)" BOUNDARY_LOSS_SRC="$(BOUNDARY_LOSS_SRC)" ACE_LOSS_SRC="$(ACE_LOSS_SRC)" \
		$(PY) -m pytest -q -p no:cacheprovider tests/peers/authors_skeleton_recall.py \
		tests/peers/authors_boundary_loss.py tests/peers/authors_calibration_loss.py
	@# issue 13: blob loss and unified focal loss against the authors' code (the latter needs TensorFlow)
	@test -d "$(BLOB_LOSS_SRC)" || { echo "peer-tests: set BLOB_LOSS_SRC to a checkout of" \
		"github.com/neuronflow/blob_loss"; exit 2; }
	@test -d "$(UFL_SRC)" || { echo "peer-tests: set UFL_SRC to a checkout of github.com/mlyg/unified-focal-loss"; \
		exit 2; }
	$(PIP) install tensorflow-cpu  # the authors' unified focal loss is Keras code
	BLOB_LOSS_SRC="$(BLOB_LOSS_SRC)" UFL_SRC="$(UFL_SRC)" $(PY) -m pytest -q -p no:cacheprovider \
		tests/peers/authors_blob_loss.py tests/peers/authors_unified_focal.py

bench: $(VENV)/.bench $(VENV)/.kernel
	$(PY) benchmarks/run.py $(ARGS)
	$(PY) benchmarks/bench_eval.py
	# the losses beyond the Dice family, each against its peers (2D and 3D workloads)
	$(PY) benchmarks/bench_lovasz.py
	$(PY) benchmarks/bench_cldice.py
	$(PY) benchmarks/bench_hausdorff.py
	$(PY) benchmarks/bench_sum_losses_a.py
	$(PY) benchmarks/bench_sum_losses_b.py

# the documentation pages (docs/, mkdocs.yml) into site/; --strict: a warning (a broken link, a page left out of
# the nav) fails the build
$(VENV)/.docs: $(VENV)/.torch pyproject.toml
	$(PIP) install --no-build-isolation -e ".[docs]"
	touch $@

docs: $(VENV)/.docs
	$(VENV)/bin/mkdocs build --strict --site-dir site

lint: $(VENV)/.test
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build dist site src/*.egg-info .pytest_cache .ruff_cache src/diceloss/stats/cpu/_kernel*.so
