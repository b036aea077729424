"""Differential tests against MONAI 1.6.1 (pinned in the ``test`` extra): values and gradients to 1e-6.

Shared semantics (see shared/reference/peers.md, section 2): MONAI's ``DiceLoss(softmax=True,
to_onehot_y=True)`` is diceloss's per-sample multiclass Dice with s_nr = s_dr = 1e-5, the mean over
(B, C). Where the two differ by design the comparison is arranged to be exact:

* MONAI's class ``weight`` is not normalised: its mean is ``mean_{b,c} w_c (1 - D_bc)``, diceloss's
  ``sum_c w_c (1 - D_bc) / sum_c w_c``. Weighted cases compare ``reduction="none"`` (both give
  ``w_c (1 - D_bc)``) and ``"mean"`` with weights scaled to sum to the number of classes kept.
* MONAI's ``jaccard=True`` is ``(2I + s)/(2(P + G - I) + s)``: with s = 0 it equals diceloss's Jaccard.
* MONAI's Generalized Dice returns 0 for a group with no present class (diceloss: uniform weights);
  the random targets here always have a present class.
* ``ignore_index`` equal to a real class: MONAI pushes that class to 0, diceloss drops it
  (``test_ignore_real_class_differs_by_design``).
"""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch

monai_losses = pytest.importorskip("monai.losses")

from diceloss import functional as DF  # noqa: E402

TOL = dict(rtol=1e-6, atol=1e-6)
BACKEND = "reference"


def _data(mode, seed, *, B=2, C=3, S=(4, 5), soft=False):
    g = torch.Generator().manual_seed(seed)
    c = 1 if mode == "binary" else C
    x = torch.randn(B, c, *S, generator=g, dtype=torch.float64) * 2
    if mode == "multiclass":
        if soft:
            t = torch.softmax(2 * torch.randn(B, C, *S, generator=g, dtype=torch.float64), 1)
        else:
            t = torch.randint(0, C, (B, 1, *S), generator=g)
    else:
        t = torch.rand(B, c, *S, generator=g, dtype=torch.float64)
        if not soft:
            t = (t > 0.6).double()
        t[:, :, 0, 0] = 1.0  # every class present in every sample
    return x, t


def _monai_act(mode):
    if mode == "multiclass":
        return dict(softmax=True, to_onehot_y=True)
    return dict(sigmoid=True)


def _compare(ours_fn, monai_fn, x):
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = monai_fn(xb)
    got = ours_fn(xa)
    ref = ref.reshape(got.shape)
    torch.testing.assert_close(got, ref, **TOL)
    (ga,) = torch.autograd.grad(got.sum(), xa)
    (gb,) = torch.autograd.grad(ref.sum(), xb)
    torch.testing.assert_close(ga, gb, **TOL)


DICE_GRID = list(
    itertools.product(
        ["multiclass", "binary", "multilabel"],  # mode
        [True, False],  # include_background
        [False, True],  # batch
        [False, True],  # squared
        ["mean", "sum", "none"],  # reduction
    )
)


@pytest.mark.parametrize("mode,include_background,batch,squared,reduction", DICE_GRID)
def test_dice_loss(mode, include_background, batch, squared, reduction):
    x, t = _data(mode, seed=len(DICE_GRID))
    monai = monai_losses.DiceLoss(
        include_background=include_background,
        squared_pred=squared,
        batch=batch,
        reduction=reduction,
        **_monai_act(mode),
    )
    _compare(
        lambda inp: DF.dice_loss(
            inp,
            t,
            mode=mode,
            include_background=include_background,
            batch_dice=batch,
            squared=squared,
            reduction=reduction,
            backend=BACKEND,
        ),
        lambda inp: monai(inp, t),
        x,
    )


@pytest.mark.parametrize("mode", ["multiclass", "multilabel"])
@pytest.mark.parametrize("soft_label", [False, True])
@pytest.mark.parametrize("from_logits", [True, False])
def test_dice_loss_soft_targets(mode, soft_label, from_logits):
    x, t = _data(mode, seed=3, soft=True)
    if not from_logits:
        x = torch.softmax(x, 1) if mode == "multiclass" else torch.sigmoid(x)
    act = {} if not from_logits else (dict(softmax=True) if mode == "multiclass" else dict(sigmoid=True))
    monai = monai_losses.DiceLoss(soft_label=soft_label, **act)
    _compare(
        lambda inp: DF.dice_loss(
            inp, t, mode=mode, soft_label=soft_label, from_logits=from_logits, backend=BACKEND
        ),
        lambda inp: monai(inp, t),
        x,
    )


@pytest.mark.parametrize("include_background", [True, False])
def test_dice_loss_weight(include_background):
    x, t = _data("multiclass", seed=4)
    w = torch.tensor([0.3, 1.5, 2.0], dtype=torch.float64)
    wm = w if include_background else w[1:]
    # reduction="none": both give w_c (1 - D_bc)
    monai = monai_losses.DiceLoss(
        include_background=include_background, weight=wm, reduction="none", softmax=True, to_onehot_y=True
    )
    _compare(
        lambda inp: DF.dice_loss(
            inp, t, include_background=include_background, weight=w, reduction="none", backend=BACKEND
        ),
        lambda inp: monai(inp, t),
        x,
    )
    # "mean" with the kept weights summing to the number of kept classes: the two normalisations agree
    k = wm.numel()
    w_norm = w * (k / wm.sum())
    monai = monai_losses.DiceLoss(
        include_background=include_background, weight=wm * (k / wm.sum()), softmax=True, to_onehot_y=True
    )
    _compare(
        lambda inp: DF.dice_loss(
            inp, t, include_background=include_background, weight=w_norm, backend=BACKEND
        ),
        lambda inp: monai(inp, t),
        x,
    )


@pytest.mark.parametrize("mode", ["multiclass", "multilabel"])
@pytest.mark.parametrize("batch", [False, True])
def test_jaccard_equals_monai_without_smoothing(mode, batch):
    x, t = _data(mode, seed=5)
    monai = monai_losses.DiceLoss(
        jaccard=True, batch=batch, smooth_nr=0.0, smooth_dr=0.0, reduction="none", **_monai_act(mode)
    )
    _compare(
        lambda inp: DF.jaccard_loss(
            inp,
            t,
            mode=mode,
            batch_dice=batch,
            smooth_nr=0.0,
            smooth_dr=0.0,
            reduction="none",
            backend=BACKEND,
        ),
        lambda inp: monai(inp, t),
        x,
    )


@pytest.mark.parametrize("ignore_index", [255, -1])
@pytest.mark.parametrize("batch", [False, True])
def test_dice_loss_ignore_index_outside_classes(ignore_index, batch):
    x, t = _data("multiclass", seed=6)
    t[:, :, 1] = ignore_index
    monai = monai_losses.DiceLoss(
        softmax=True, to_onehot_y=True, ignore_index=ignore_index, batch=batch, reduction="none"
    )
    _compare(
        lambda inp: DF.dice_loss(
            inp, t, ignore_index=ignore_index, batch_dice=batch, reduction="none", backend=BACKEND
        ),
        lambda inp: monai(inp, t),
        x,
    )


def test_ignore_real_class_differs_by_design():
    # MONAI masks the target of class 1 but not the prediction: that class is pushed to 0 and stays in the
    # mean. diceloss drops class 1 (and its positions) instead; on the other classes both agree.
    x, t = _data("multiclass", seed=7)
    monai = monai_losses.DiceLoss(softmax=True, to_onehot_y=True, ignore_index=1, reduction="none")
    ref = monai(x, t).reshape(2, 3)
    got = DF.dice_loss(x, t, ignore_index=1, reduction="none", backend=BACKEND)
    assert got.shape == (2, 2)
    torch.testing.assert_close(got, ref[:, [0, 2]], **TOL)
    assert (ref[:, 1] > 0.99).all()  # MONAI: class 1 has D ~ 0


TVERSKY_GRID = list(
    itertools.product(
        ["multiclass", "binary", "multilabel"],
        [(0.3, 0.7), (0.9, 0.1)],
        [True, False],  # include_background
        [False, True],  # batch
        ["mean", "none"],
    )
)


@pytest.mark.parametrize("mode,ab,include_background,batch,reduction", TVERSKY_GRID)
def test_tversky_loss(mode, ab, include_background, batch, reduction):
    alpha, beta = ab
    x, t = _data(mode, seed=8)
    monai = monai_losses.TverskyLoss(
        alpha=alpha,
        beta=beta,
        include_background=include_background,
        batch=batch,
        reduction=reduction,
        **_monai_act(mode),
    )
    _compare(
        lambda inp: DF.tversky_loss(
            inp,
            t,
            mode=mode,
            alpha=alpha,
            beta=beta,
            include_background=include_background,
            batch_dice=batch,
            reduction=reduction,
            backend=BACKEND,
        ),
        lambda inp: monai(inp, t),
        x,
    )


@pytest.mark.parametrize("soft_label", [False, True])
def test_tversky_soft_targets(soft_label):
    x, t = _data("multilabel", seed=9, soft=True)
    monai = monai_losses.TverskyLoss(alpha=0.3, beta=0.7, sigmoid=True, soft_label=soft_label)
    _compare(
        lambda inp: DF.tversky_loss(
            inp, t, mode="multilabel", alpha=0.3, beta=0.7, soft_label=soft_label, backend=BACKEND
        ),
        lambda inp: monai(inp, t),
        x,
    )


GDL_GRID = list(
    itertools.product(
        ["multiclass", "binary", "multilabel"],
        ["square", "simple", "uniform"],
        [True, False],  # include_background
        [False, True],  # batch
        ["mean", "none"],
    )
)


@pytest.mark.parametrize("mode,weighting,include_background,batch,reduction", GDL_GRID)
def test_generalized_dice_loss(mode, weighting, include_background, batch, reduction):
    x, t = _data(mode, seed=10)
    monai = monai_losses.GeneralizedDiceLoss(
        w_type=weighting,
        include_background=include_background,
        batch=batch,
        reduction=reduction,
        **_monai_act(mode),
    )
    _compare(
        lambda inp: DF.generalized_dice_loss(
            inp,
            t,
            mode=mode,
            weighting=weighting,
            include_background=include_background,
            batch_dice=batch,
            reduction=reduction,
            backend=BACKEND,
        ),
        lambda inp: monai(inp, t),
        x,
    )


@pytest.mark.parametrize("batch", [False, True])
def test_generalized_dice_absent_class_takes_largest_weight(batch):
    # class 2 absent from sample 0 (and class 1 from sample 1): MONAI's inf-weight replacement, per group
    x, _ = _data("multiclass", seed=11, S=(6,))
    t = torch.tensor([[[0, 1, 1, 0, 0, 1]], [[0, 0, 2, 2, 0, 0]]])
    monai = monai_losses.GeneralizedDiceLoss(softmax=True, to_onehot_y=True, batch=batch, reduction="none")
    _compare(
        lambda inp: DF.generalized_dice_loss(inp, t, batch_dice=batch, reduction="none", backend=BACKEND),
        lambda inp: monai(inp, t),
        x,
    )


def test_generalized_dice_no_present_class_differs_by_design():
    # no foreground anywhere, include_background=False: MONAI returns 0 (false positives are free)
    x, _ = _data("multiclass", seed=12)
    t = torch.zeros(2, 1, 4, 5, dtype=torch.long)
    monai = monai_losses.GeneralizedDiceLoss(softmax=True, to_onehot_y=True, include_background=False)
    assert float(monai(x, t)) == 0.0
    ours = DF.generalized_dice_loss(x, t, include_background=False, backend=BACKEND)
    assert float(ours) > 0.99


@pytest.mark.parametrize("soft_label", [False, True])
def test_generalized_dice_soft_targets(soft_label):
    x, t = _data("multilabel", seed=13, soft=True)
    monai = monai_losses.GeneralizedDiceLoss(sigmoid=True, soft_label=soft_label, reduction="none")
    _compare(
        lambda inp: DF.generalized_dice_loss(
            inp, t, mode="multilabel", soft_label=soft_label, reduction="none", backend=BACKEND
        ),
        lambda inp: monai(inp, t),
        x,
    )


DICECE_GRID = list(
    itertools.product(
        [True, False],  # include_background
        [False, True],  # batch
        [False, True],  # squared
        ["mean", "sum"],
        [(1.0, 1.0), (0.3, 2.0)],  # lambdas
        [0.0, 0.1],  # label_smoothing
    )
)


@pytest.mark.parametrize("include_background,batch,squared,reduction,lambdas,label_smoothing", DICECE_GRID)
def test_dice_ce_loss_multiclass(include_background, batch, squared, reduction, lambdas, label_smoothing):
    x, t = _data("multiclass", seed=14)
    ld, lc = lambdas
    monai = monai_losses.DiceCELoss(
        softmax=True,
        to_onehot_y=True,
        include_background=include_background,
        batch=batch,
        squared_pred=squared,
        reduction=reduction,
        lambda_dice=ld,
        lambda_ce=lc,
        label_smoothing=label_smoothing,
    )
    _compare(
        lambda inp: DF.dice_ce_loss(
            inp,
            t,
            include_background=include_background,
            batch_dice=batch,
            squared=squared,
            reduction=reduction,
            lambda_dice=ld,
            lambda_ce=lc,
            label_smoothing=label_smoothing,
            backend=BACKEND,
        ),
        lambda inp: monai(inp, t),
        x,
    )


@pytest.mark.parametrize("include_background", [True, False])
def test_dice_ce_loss_weight(include_background):
    # MONAI: Dice weight = weight (or weight[1:]) unnormalised, CE weight = weight (F.cross_entropy).
    # With the kept weights summing to the number of kept classes both Dice means agree.
    x, t = _data("multiclass", seed=15)
    w = (
        torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64)
        if include_background
        else torch.tensor([3.0, 0.5, 1.5], dtype=torch.float64)
    )
    monai = monai_losses.DiceCELoss(
        softmax=True, to_onehot_y=True, include_background=include_background, weight=w
    )
    _compare(
        lambda inp: DF.dice_ce_loss(inp, t, include_background=include_background, weight=w, backend=BACKEND),
        lambda inp: monai(inp, t),
        x,
    )


def test_dice_ce_loss_soft_targets():
    # probability targets: MONAI's CE is F.cross_entropy of probabilities (divided by the positions), as here
    x, t = _data("multiclass", seed=16, soft=True)
    monai = monai_losses.DiceCELoss(softmax=True)
    _compare(lambda inp: DF.dice_ce_loss(inp, t, backend=BACKEND), lambda inp: monai(inp, t), x)


@pytest.mark.parametrize("batch", [False, True])
def test_dice_ce_loss_binary(batch):
    # binary: MONAI uses BCEWithLogitsLoss (its weight would be pos_weight, not compared)
    x, t = _data("binary", seed=17)
    monai = monai_losses.DiceCELoss(sigmoid=True, batch=batch)
    _compare(
        lambda inp: DF.dice_ce_loss(inp, t, mode="binary", batch_dice=batch, backend=BACKEND),
        lambda inp: monai(inp, t),
        x,
    )


def test_dice_loss_3d_and_1d():
    for S in ((3, 4, 2), (7,)):
        x, t = _data("multiclass", seed=18, S=S)
        monai = monai_losses.DiceLoss(softmax=True, to_onehot_y=True)
        _compare(
            lambda inp, t=t: DF.dice_loss(inp, t, backend=BACKEND), lambda inp, t=t, m=monai: m(inp, t), x
        )


@pytest.mark.parametrize("backend", ["auto"])
def test_default_backend_matches_monai(backend):
    # whatever backend "auto" picks here agrees with MONAI as well
    x, t = _data("multiclass", seed=19, B=2, C=4, S=(8, 8))
    x = x.float()
    monai = monai_losses.DiceCELoss(softmax=True, to_onehot_y=True, include_background=False)
    _compare(
        lambda inp: DF.dice_ce_loss(inp, t, include_background=False, backend=backend),
        lambda inp: monai(inp, t),
        x,
    )
