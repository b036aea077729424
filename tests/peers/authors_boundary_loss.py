"""diceloss's boundary loss against the authors' code (LIVIAETS/boundary-loss), from a source tree:

    make peer-tests BOUNDARY_LOSS_SRC=/path/to/boundary-loss

Their ``SurfaceLoss`` (``losses.py``) and ``one_hot2dist`` (``utils.py``, which still calls ``np.bool``, removed
in NumPy 1.24: given back as ``bool`` while it loads and runs) are loaded from the tree. Checked:

* with their map (``convention="kervadec"``, their ``resolution`` as the spacing) the loss and its gradient are
  theirs (they compute in float32: 1e-6), 2D, isotropic and anisotropic;
* their map at an anisotropic spacing is not 0 on the boundary voxels (the "-1" of boundary-loss#45), ours is.
"""

from __future__ import annotations

import _source_tree
import numpy as np
import pytest
import torch

from diceloss import functional as DF
from diceloss.transforms import signed_distance

ROOT = _source_tree.source_root("BOUNDARY_LOSS_SRC", "LIVIAETS/boundary-loss")


@pytest.fixture(scope="module")
def authors():
    had = hasattr(np, "bool")
    if not had:
        np.bool = bool  # their one_hot2dist: seg[k].astype(np.bool)
    utils = _source_tree.load(ROOT / "utils.py", "utils")
    losses = _source_tree.load(ROOT / "losses.py", "boundary_loss_authors_losses")
    yield utils, losses
    if not had:
        del np.bool


def _labels(seed: int, B: int = 2, S=(20, 24)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.zeros(B, *S, dtype=torch.long)
    yy, xx = torch.meshgrid(torch.arange(S[0]), torch.arange(S[1]), indexing="ij")
    for b in range(B):
        for c in (1, 2):
            cy, cx = (float(torch.rand((), generator=g)) * n for n in S)
            ry, rx = (2 + float(torch.rand((), generator=g)) * n / 4 for n in S)
            t[b][((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = c
    return t


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.6, 2.5)])
@pytest.mark.parametrize("seed", range(3))
def test_loss_with_their_map_equals_theirs(authors, spacing, seed):
    utils, losses = authors
    t = _labels(seed)
    C = 3
    onehot = torch.nn.functional.one_hot(t, C).movedim(-1, 1)
    dist = torch.stack([torch.from_numpy(utils.one_hot2dist(onehot[b].numpy(), resolution=spacing,
                                                            dtype=np.float32)) for b in range(2)])
    phi = torch.stack([signed_distance(t[b], spacing=spacing, num_classes=C, convention="kervadec")
                       for b in range(2)])
    torch.testing.assert_close(phi, dist, rtol=0, atol=1e-5)
    x = torch.randn(2, C, *t.shape[1:], generator=torch.Generator().manual_seed(seed), dtype=torch.float64,
                    requires_grad=True)
    probs = torch.softmax(x, 1)
    theirs = losses.SurfaceLoss(idc=[1, 2])(probs, dist)
    ours = DF.boundary_loss(x, t, distance_map=phi.double())
    (g_theirs,) = torch.autograd.grad(theirs, x)
    (g_ours,) = torch.autograd.grad(ours, x)
    torch.testing.assert_close(ours, theirs.double(), rtol=0, atol=1e-6)
    torch.testing.assert_close(g_ours, g_theirs, rtol=0, atol=1e-6)


def test_their_map_is_off_zero_on_the_boundary_at_anisotropic_spacing(authors):
    utils, _ = authors
    t = torch.zeros(16, 16, dtype=torch.long)
    t[4:12, 5:11] = 1
    onehot = torch.nn.functional.one_hot(t, 2).movedim(-1, 0).numpy()
    spacing = (2.0, 0.5)
    theirs = torch.from_numpy(utils.one_hot2dist(onehot, resolution=spacing, dtype=np.float32))[1]
    ours = signed_distance(t, spacing=spacing, num_classes=2)[1]
    # the boundary voxels of the box: inside, with a face neighbour outside
    edge = torch.zeros_like(t, dtype=torch.bool)
    edge[4:12, 5:11] = True
    edge[5:11, 6:10] = False
    assert torch.all(ours[edge] == 0)
    assert torch.any(theirs[edge] != 0)  # -(EDT - 1) with EDT = 0.5 or 2 on the boundary voxels
