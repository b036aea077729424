"""diceloss's calibration loss against the authors' code (cai4cai/Average-Calibration-Losses), from a source tree:

    make peer-tests ACE_LOSS_SRC=/path/to/Average-Calibration-Losses

Their ``HardL1ACELoss`` and ``SoftL1ACELoss`` (``src/losses/hardl1ace.py``, ``softl1ace.py``; they need MONAI,
installed for the tests) are loaded from the tree. They compute in float32 and put their bin edges at
k (1 + eps) / K (eps the float32 epsilon): values and gradients agree to 1e-6 on random inputs. Their
``reduction="mean"`` divides by every (sample, class) pair, an empty class included at 0
(``ignore_empty_classes=True``); ours (``absent="exclude"``) by the present ones, so the comparison of the
mean uses ``reduction="sum"`` divided by B C; ``reduction="none"`` is the same per (sample, class).
"""

from __future__ import annotations

import _source_tree
import pytest
import torch

from diceloss import functional as DF

ROOT = _source_tree.source_root("ACE_LOSS_SRC", "cai4cai/Average-Calibration-Losses")
HARD = _source_tree.load(ROOT / "src/losses/hardl1ace.py", "ace_authors_hard")
SOFT = _source_tree.load(ROOT / "src/losses/softl1ace.py", "ace_authors_soft")


def _away_from_edges(draw, bins: int) -> torch.Tensor:
    """Logits whose probabilities are all at least 1e-6 from an inner bin edge k / K (redrawn until so): there
    their float32 probabilities and (1 + eps)-scaled edges may bin a value differently from ours."""
    for _ in range(100):
        x = draw()
        u = torch.softmax(x, 1) * bins
        if not bool(((u - u.round()).abs() < 1e-6 * bins).any()):
            return x.requires_grad_(True)
    raise RuntimeError("no draw away from the bin edges")


@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("shape", [(16, 18), (8, 9, 10)], ids=["2d", "3d"])
def test_equal_to_theirs(soft, include_background, shape):
    g = torch.Generator().manual_seed(len(shape) + 2 * soft + include_background)
    B, C = 2, 4
    x = _away_from_edges(lambda: 2 * torch.randn(B, C, *shape, generator=g, dtype=torch.float64), 20)
    t = torch.randint(0, C, (B, *shape), generator=g)
    t[1][t[1] == 3] = 2  # class 3 absent from the second sample
    onehot = torch.nn.functional.one_hot(t, C).movedim(-1, 1).double()
    cls = SOFT.SoftL1ACELoss if soft else HARD.HardL1ACELoss
    kw = dict(num_bins=20, include_background=include_background, softmax=True)
    theirs = cls(reduction="none", **kw)(x, onehot).reshape(B, -1)
    ours = DF.calibration_loss(x, t, soft=soft, include_background=include_background, reduction="none")
    torch.testing.assert_close(ours, theirs.double(), rtol=0, atol=1e-6)
    theirs_mean = cls(reduction="mean", **kw)(x, onehot)
    ours_mean = DF.calibration_loss(x, t, soft=soft, include_background=include_background, reduction="sum")
    ours_mean = ours_mean / theirs.numel()
    (g_theirs,) = torch.autograd.grad(theirs_mean, x)
    (g_ours,) = torch.autograd.grad(ours_mean, x)
    torch.testing.assert_close(g_ours, g_theirs, rtol=0, atol=1e-6)
