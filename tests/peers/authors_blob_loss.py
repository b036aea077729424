"""diceloss's BlobLoss against the authors' blob loss (neuronflow/blob_loss ``blob_loss.py``), run from a checkout.

Not collected by ``make test`` (the name does not start with ``test_``; CI cannot reach GitHub): ``make peer-tests
BLOB_LOSS_SRC=/path/to/blob_loss`` runs it, where the folder holds the authors' ``blob_loss.py``. The project
never copies that file in. The criterion is MONAI's ``DiceLoss`` on sigmoid probabilities, as in the authors'
example configuration (with the sigmoid applied before their masking: ``"sigmoid": True``).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from diceloss.functional import blob_loss
from diceloss.transforms import label_components

SRC = os.environ.get("BLOB_LOSS_SRC")


@pytest.fixture(scope="module")
def authors():
    if not SRC:
        pytest.fail("set BLOB_LOSS_SRC to a checkout of neuronflow/blob_loss (make peer-tests BLOB_LOSS_SRC=...)")
    spec = importlib.util.spec_from_file_location("neuronflow_blob_loss", Path(SRC) / "blob_loss.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("spatial", [(24, 24), (10, 12, 14)])
def test_blob_term_equals_the_authors(authors, seed, spatial):
    from monai.losses import DiceLoss

    g = torch.Generator().manual_seed(seed)
    B = 3
    x = torch.randn(B, 1, *spatial, generator=g, dtype=torch.float64)
    t = (torch.rand(B, 1, *spatial, generator=g) > 0.8).double()
    t[seed % B] = 0  # a sample without blobs: left out of their mean and of ours
    ids = torch.stack([label_components(t[b, 0].bool())[0] for b in range(B)])[:, None]
    crit = DiceLoss(include_background=True, sigmoid=False)
    x1 = x.clone().requires_grad_(True)
    want = authors.compute_blob_loss_multi(criterion=crit, network_outputs=torch.sigmoid(x1), multi_label=ids)
    (want_grad,) = torch.autograd.grad(want, x1)
    x2 = x.clone().requires_grad_(True)
    got = blob_loss(x2, t, mode="binary", instances=ids, lambda_global=0.0, backend="fused")
    (grad,) = torch.autograd.grad(got, x2)
    torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-12)


def test_compound_loss_equals_the_authors(authors):
    from monai.losses import DiceLoss

    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 1, 20, 20, generator=g, dtype=torch.float64)
    t = (torch.rand(2, 1, 20, 20, generator=g) > 0.85).double()
    ids = torch.stack([label_components(t[b, 0].bool())[0] for b in range(2)])[:, None]
    dice = {"dice": {"name": "dice", "loss": DiceLoss(include_background=True, sigmoid=False), "weight": 1.0,
                     "sigmoid": True}}
    want, _, _ = authors.compute_loss({"main_weight": 1.0, "blob_weight": 2.0}, dice, dice, x, t, ids)
    got = blob_loss(x, t, mode="binary", instances=ids, lambda_global=1.0, lambda_blob=2.0)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
