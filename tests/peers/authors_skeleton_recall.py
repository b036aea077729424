"""diceloss's Skeleton Recall against the authors' code (MIC-DKFZ/Skeleton-Recall), from a source tree:

    make peer-tests SKELETON_RECALL_SRC=/path/to/Skeleton-Recall

Their ``SoftSkeletonRecallLoss`` (``nnunetv2/training/loss/dice.py``, which also holds nnU-Net's
``MemoryEfficientSoftDiceLoss``) and ``SkeletonTransform`` (``.../custom_transforms/skeletonization.py``) are loaded
from the tree; the imports they make that the comparison does not run (nnU-Net's DDP all-gather, batchgeneratorsv2's
transform base class) are stubbed when not installed. The differences, each checked here:

* theirs is ``-mean R``, ours ``1 - mean R`` (the same gradient);
* theirs adds the smoothing to an integer skeleton sum (int + float is float32 in torch), ours sums in the input's
  dtype: equal to float32 rounding with integer skeletons, to 1e-12 with float ones;
* their transform skeletonises the union of the foreground and labels the tube by the label map; ours skeletonises
  each class: the same where classes do not touch.
"""

from __future__ import annotations

import _source_tree
import pytest
import torch

import diceloss
from diceloss import functional as DF
from diceloss.transforms import tubed_skeleton

ROOT = _source_tree.source_root("SKELETON_RECALL_SRC", "MIC-DKFZ/Skeleton-Recall")
DICE = _source_tree.load(
    ROOT / "nnunetv2/training/loss/dice.py", "skeleton_recall_authors_dice",
    stubs={"nnunetv2.utilities.ddp_allgather": {"AllGatherGrad": None}},
)


class _BasicTransform:
    def __init__(self):
        pass


SKEL = _source_tree.load(
    ROOT / "nnunetv2/training/data_augmentation/custom_transforms/skeletonization.py",
    "skeleton_recall_authors_transform",
    stubs={"batchgeneratorsv2.transforms.base.basic_transform": {"BasicTransform": _BasicTransform}},
)


def _softmax(x):
    return torch.softmax(x, 1)


def _labels(seed: int, B: int = 2, S=(28, 28)) -> torch.Tensor:
    """Thin structures at random places: class 1 in the top half, class 2 in the bottom half, at least 4 rows apart
    (so that no tube reaches the other class)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.zeros(B, *S, dtype=torch.long)
    half = S[0] // 2
    for b in range(B):
        for c, (lo, hi) in ((1, (1, half - 6)), (2, (half + 2, S[0] - 4))):
            for _ in range(2):
                r = int(torch.randint(lo, hi, (), generator=g))
                c0 = int(torch.randint(1, S[1] // 2, (), generator=g))
                w = int(torch.randint(2, 5, (), generator=g))
                t[b, r : r + w, c0 : c0 + S[1] // 3] = c
    return t


@pytest.mark.parametrize("seed", range(6))
def test_transform_equals_theirs_where_classes_are_apart(seed):
    t = _labels(seed)
    for b in range(t.shape[0]):
        seg = t[b].numpy()
        theirs = SKEL.SkeletonTransform(do_tube=True).apply({"segmentation": torch.from_numpy(seg[None])})["skel"][0]
        assert torch.equal(tubed_skeleton(t[b]), theirs.long())


@pytest.mark.parametrize("batch_dice", [False, True])
@pytest.mark.parametrize("shape", [(24, 28), (10, 12, 14)], ids=["2d", "3d"])
def test_loss_and_gradient_equal_theirs(batch_dice, shape):
    g = torch.Generator().manual_seed(len(shape) + batch_dice)
    B, C = 2, 3
    x = torch.randn(B, C, *shape, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, C, (B, *shape), generator=g)
    s = torch.randint(0, C, (B, *shape), generator=g) * (torch.rand(B, *shape, generator=g) < 0.3)
    theirs = DICE.SoftSkeletonRecallLoss(apply_nonlin=_softmax, batch_dice=batch_dice, do_bg=False, smooth=1e-5,
                                         ddp=False)(x, s[:, None].double())
    ours = DF.skeleton_recall_loss(x, t, skeleton=s, batch_dice=batch_dice, backend="fused")
    (g_theirs,) = torch.autograd.grad(theirs, x)
    (g_ours,) = torch.autograd.grad(ours, x)
    torch.testing.assert_close(ours, 1 + theirs, rtol=0, atol=1e-12)
    torch.testing.assert_close(g_ours, g_theirs, rtol=0, atol=1e-12)
    # their own integer skeleton (int16 from the loader): the smoothing makes their denominator float32
    theirs_int = DICE.SoftSkeletonRecallLoss(apply_nonlin=_softmax, batch_dice=batch_dice, do_bg=False, smooth=1e-5,
                                             ddp=False)(x, s[:, None].to(torch.int16))
    torch.testing.assert_close(ours.detach(), 1 + theirs_int.detach(), rtol=0, atol=1e-6)


def test_compound_equals_their_nnunet_terms():
    # DC_SkelREC_and_CE_loss: CE over every class + MemoryEfficientSoftDiceLoss(do_bg=False) + SoftSkeletonRecallLoss
    g = torch.Generator().manual_seed(7)
    t = _labels(7)
    x = torch.randn(2, 3, *t.shape[1:], generator=g, dtype=torch.float64, requires_grad=True)
    s = torch.stack([tubed_skeleton(t[b]) for b in range(2)])
    dice = DICE.MemoryEfficientSoftDiceLoss(apply_nonlin=_softmax, batch_dice=False, do_bg=False, smooth=1e-5,
                                            ddp=False)(x, t[:, None])
    srec = DICE.SoftSkeletonRecallLoss(apply_nonlin=_softmax, batch_dice=False, do_bg=False, smooth=1e-5,
                                       ddp=False)(x, s[:, None].double())
    ce = torch.nn.functional.cross_entropy(x, t)
    theirs = ce + dice + srec
    ours = diceloss.DiceCESkeletonRecallLoss(smooth_nr=1e-5, smooth_dr=1e-5)(x, t, skeleton=s)
    (g_theirs,) = torch.autograd.grad(theirs, x)
    (g_ours,) = torch.autograd.grad(ours, x)
    # their Dice and Skeleton Recall are -D and -R: ours 1 - D and 1 - R, 2 above
    torch.testing.assert_close(ours, theirs + 2, rtol=0, atol=1e-12)
    torch.testing.assert_close(g_ours, g_theirs, rtol=0, atol=1e-12)
