"""diceloss's UnifiedFocalLoss against the authors' Keras code (mlyg/unified-focal-loss ``loss_functions.py``).

Not collected by ``make test`` (the name does not start with ``test_``; CI has neither GitHub nor TensorFlow):
``make peer-tests UFL_SRC=/path/to/unified-focal-loss`` runs it with TensorFlow installed (``pip install
tensorflow-cpu``). The project never copies the authors' file in.

The authors' file does not parse as published (every version since 2021-11: the docstring of
``asymmetric_focal_loss`` sits at the indentation of the nested ``def loss_function``, an IndentationError), so
the test drops that one misplaced docstring before executing the file; nothing else is changed.

Their functions take (y_true, y_pred) of shape (B, *S, 2), the two-class softmax output, channels last. With the
same inputs: their focal term equals ours in 2D (on volumes it indexes the wrong axis: see the test), their
focal Tversky term is half of ours (they average the two
classes, the paper sums them: mlyg/unified-focal-loss#22), and their ``asym_unified_focal_loss(weight)`` puts
``weight`` on the Tversky term where the paper (and diceloss's ``lambda_focal``) puts lambda on the focal term.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import diceloss

SRC = os.environ.get("UFL_SRC")


@pytest.fixture(scope="module")
def authors():
    if not SRC:
        pytest.fail("set UFL_SRC to a checkout of mlyg/unified-focal-loss (make peer-tests UFL_SRC=...)")
    tf = pytest.importorskip("tensorflow", reason="the authors' code needs TensorFlow (pip install tensorflow-cpu)")
    text = (Path(SRC) / "loss_functions.py").read_text()
    # the one defect that keeps the file from parsing: a docstring at the indentation of the def above it
    fixed, n = re.subn(r'(def loss_function\(y_true, y_pred\):\n)    """For Imbalanced datasets.*?"""\n', r"\1",
                       text, flags=re.S)
    assert n == 1, "the authors' file changed: check the docstring fix"
    namespace: dict = {}
    exec(compile(fixed, str(Path(SRC) / "loss_functions.py"), "exec"), namespace)
    namespace["tf"] = tf
    return namespace


def _inputs(seed: int, spatial: tuple[int, ...]):
    g = torch.Generator().manual_seed(seed)
    p = 0.02 + 0.96 * torch.rand(2, 1, *spatial, generator=g, dtype=torch.float64)  # clear of their 1e-7 clip
    y = (torch.rand(2, 1, *spatial, generator=g) > 0.7).double()
    two_p = torch.cat([1 - p, p], 1).movedim(1, -1).numpy()
    two_y = torch.cat([1 - y, y], 1).movedim(1, -1).numpy()
    return p, y, two_p, two_y


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("spatial", [(16, 16), (6, 7, 8)])
def test_terms_equal_the_authors(authors, seed, spatial):
    tf = authors["tf"]
    p, y, two_p, two_y = _inputs(seed, spatial)
    yt, yp = tf.constant(two_y), tf.constant(two_p)
    focal = float(authors["asymmetric_focal_loss"](delta=0.6, gamma=0.5)(yt, yp))
    tversky = float(authors["asymmetric_focal_tversky_loss"](delta=0.6, gamma=0.5)(yt, yp))
    whole = float(authors["asym_unified_focal_loss"](weight=0.5, delta=0.6, gamma=0.5)(yt, yp))
    loss = diceloss.UnifiedFocalLoss("binary", from_logits=False, smooth_nr=1e-7, smooth_dr=1e-7)
    loss(p, y)
    np.testing.assert_allclose(float(loss.components["tversky"]), 2 * tversky, rtol=1e-10)
    np.testing.assert_allclose(whole, 0.5 * tversky + 0.5 * focal, rtol=1e-10)
    if len(spatial) == 2:
        np.testing.assert_allclose(float(loss.components["focal"]), focal, rtol=1e-10)
    else:
        # a bug of the authors' focal term on volumes: ``y_pred[:, :, :, 0]`` picks index 0 of the last *spatial*
        # axis of a (B, D, H, W, 2) tensor, not the background channel (and ``[..., 1]`` index 1 of it)
        ce = -two_y * np.log(two_p)
        back = 0.4 * (1 - two_p[:, :, :, 0]) ** 0.5 * ce[:, :, :, 0]
        fore = 0.6 * ce[:, :, :, 1]
        np.testing.assert_allclose(focal, np.mean(back + fore), rtol=1e-10)
        assert abs(float(loss.components["focal"]) - focal) > 1e-3
