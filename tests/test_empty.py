"""The empty-case table, cell by cell, with the default smoothing (s_nr = s_dr = 1e-5).

| target  | prediction | per-class loss | gradient                                    |
|---------|------------|----------------|---------------------------------------------|
| empty   | empty      | 0              | non-negative (it would push a prediction down) |
| empty   | p > 0      | ~1             | positive: descent lowers the prediction     |
| present | empty      | ~1             | negative where the target is: descent raises it |
| present | exact      | 0              | ~0 through saturated logits                 |

and ``absent="exclude"`` and the Generalized Dice rules for absent classes.

The values hold for the losses whose registry row has ``empty_table`` (the Dice family, and GWDL and blob, whose
value there is a Dice ratio with the same smoothing). For the others (Hausdorff-DT, Lovász, clDice, Skeleton
Recall, boundary, calibration, Unified Focal) the signs of the table are checked: the loss is >= 0, 0 when both
are empty or the prediction is exact, and descent never raises a prediction where the target is empty nor lowers
one where it is; a loss that needs a 2-D image gets the same positions as 5 x 10.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from conftest import LOSS, LOSSES, losses

from diceloss import functional as DF

BACKEND = "reference"
N = 50

# The table is checked for every overlap loss of the registry (the compound losses add a pixel-wise term,
# which has its own rules), plus the variants of a loss whose options change a cell: (loss, options).
# The expected values below read the options: alpha weighs the false positives (1 without it), squared
# sums p**2, log gives -log D, exponent (1 - D) ** exponent.
_OPTIONS = {"tversky": dict(alpha=0.3, beta=0.7)}
_VARIANTS = {
    "dice_squared": ("dice", dict(squared=True)),
    "dice_log": ("dice", dict(log=True)),
    "focal_tversky": ("tversky", dict(alpha=0.3, beta=0.7, exponent=0.75)),
}
CASES = {
    **{info.name: (info, _OPTIONS.get(info.name, {})) for info in losses(lambda info: not info.compound)},
    **{name: (LOSS[base], opts) for name, (base, opts) in _VARIANTS.items()},
}
OVERLAP = {name: functools.partial(info.call, **opts) for name, (info, opts) in CASES.items()}


def _binary(p, g):
    return torch.tensor([[p]], dtype=torch.float64).expand(1, 1, N).clone(), torch.tensor(
        [[g]], dtype=torch.float64
    ).expand(1, 1, N).clone()


def _fit(kind, *tensors):
    """The tensors (B, C, N) with the N positions as a spatial shape the loss takes (5 x 10 for clDice)."""
    S = CASES[kind][0].fit(tensors[0].shape[-1])
    return tuple(z.reshape(*z.shape[:-1], *S) for z in tensors)


def _table(kind) -> bool:
    return CASES[kind][0].empty_table


def _loss_and_grad(kind, p, g, **kw):
    p, g = _fit(kind, p, g)
    p = p.clone().requires_grad_(True)
    loss = OVERLAP[kind](p, g, mode="binary", from_logits=False, backend=BACKEND, **kw)
    (grad,) = torch.autograd.grad(loss, p)
    return float(loss.detach()), grad


@pytest.mark.parametrize("kind", list(OVERLAP))
def test_both_empty_gives_zero(kind):
    p, g = _binary(0.0, 0.0)
    loss, grad = _loss_and_grad(kind, p, g)
    assert loss == pytest.approx(0.0, abs=1e-12)
    assert (grad >= 0).all()


@pytest.mark.parametrize("kind", list(OVERLAP))
@pytest.mark.parametrize("p_value", [0.3, 0.05, 1.0])
def test_target_empty_prediction_not(kind, p_value):
    p, g = _binary(p_value, 0.0)
    loss, grad = _loss_and_grad(kind, p, g)
    if not _table(kind):
        assert math.isfinite(loss) and loss >= 0
        assert (grad >= 0).all(), "descent must never raise a prediction where the target is empty"
        return
    opts = CASES[kind][1]
    P = N * p_value if not opts.get("squared") else N * p_value**2
    # the score of every head here, with I = 0 and G = 0 (Tversky: alpha = 0.3 weighs the false positives)
    D = 1e-5 / (opts.get("alpha", 1.0) * P + 1e-5)
    if opts.get("log"):
        assert loss == pytest.approx(-math.log(D), rel=1e-9)
    elif "exponent" in opts:
        assert loss == pytest.approx((1 - D) ** opts["exponent"], rel=1e-9)
    else:
        assert loss == pytest.approx(1 - D, rel=1e-9)
    assert loss > 0.99
    assert (grad > 0).all(), "descent must lower a prediction where the target is empty"


@pytest.mark.parametrize("kind", list(OVERLAP))
def test_target_empty_prediction_not_through_logits(kind):
    # the gradient reaches the logits and pushes them down, also for a class of a multiclass softmax
    x, g = _fit(kind, torch.full((1, 1, N), 0.5, dtype=torch.float64), torch.zeros(1, 1, N, dtype=torch.float64))
    x.requires_grad_(True)
    loss = OVERLAP[kind](x, g, mode="binary", backend=BACKEND)
    (grad,) = torch.autograd.grad(loss, x)
    if _table(kind):
        assert float(loss.detach()) > 0.99 and (grad > 0).all()
    else:
        assert float(loss.detach()) >= 0 and (grad >= 0).all()

    t = torch.zeros(1, 1, N, dtype=torch.long)
    t[..., : N // 2] = 1  # class 2 absent from the target
    (x,) = _fit(kind, torch.zeros(1, 3, N, dtype=torch.float64))
    (t,) = _fit(kind, t)
    t = t[:, 0]
    x.requires_grad_(True)
    info = CASES[kind][0]
    per_class = info.unreduced == "class"
    kw = {"reduction": "none"} if per_class else {}
    if per_class and not info.default_background("multiclass"):
        kw["include_background"] = True  # every column, so that column 2 is class 2
    loss = OVERLAP[kind](x, t, backend=BACKEND, **kw)
    if per_class:
        assert float(loss[0, 2].detach()) > (0.99 if _table(kind) else -1e-12)
        loss = loss[0, 2]
    (grad,) = torch.autograd.grad(loss, x)
    if _table(kind):
        assert (grad[0, 2] > 0).all(), "descent must lower the logits of the absent class"
    else:
        assert (grad[0, 2] >= 0).all(), "descent must never raise the logits of the absent class"


@pytest.mark.parametrize("kind", list(OVERLAP))
def test_target_present_prediction_empty(kind):
    p, g = _binary(0.0, 1.0)
    loss, grad = _loss_and_grad(kind, p, g)
    if not _table(kind):
        # a target everywhere is a degenerate shape for the geometric losses (its skeleton, its boundary are empty)
        assert math.isfinite(loss) and loss >= 0
        assert (grad <= 0).all(), "descent must never lower the prediction where the target is"
        return
    G = float(N)
    D = 1e-5 / (G + 1e-5)
    if CASES[kind][1].get("log"):
        assert loss == pytest.approx(-math.log(D), rel=1e-9)
    else:
        assert loss > 0.99
    assert (grad < 0).all(), "descent must raise the prediction where the target is"


@pytest.mark.parametrize("kind", list(OVERLAP))
def test_target_present_prediction_exact(kind):
    g = (torch.arange(N) % 3 == 0).double()[None, None]
    p = g.clone()
    loss, _ = _loss_and_grad(kind, p, g)
    assert loss == pytest.approx(0.0, abs=1e-12)
    # through saturated logits the gradient vanishes too
    x, g = _fit(kind, (g * 2 - 1) * 40, g)
    x.requires_grad_(True)
    loss = OVERLAP[kind](x, g, mode="binary", backend=BACKEND)
    (grad,) = torch.autograd.grad(loss, x)
    assert abs(float(loss.detach())) < 1e-9 and grad.abs().max() < 1e-9


def test_log_dice_gradient_does_not_vanish_far_below_the_floor():
    # D ~ 1e-5 / 1e6: a clamp at 1e-7 would give a constant loss and no gradient at all
    p = torch.full((1, 1, 10**6), 1.0, dtype=torch.float64, requires_grad=True)
    g = torch.zeros_like(p)
    loss = DF.dice_loss(p, g, mode="binary", from_logits=False, log=True, backend=BACKEND)
    (grad,) = torch.autograd.grad(loss, p)
    assert float(loss.detach()) <= 1 - math.log(1e-7) + 1e-9
    assert (grad > 0).all()
    p = torch.zeros((1, 1, 10**6), dtype=torch.float64, requires_grad=True)
    loss = DF.dice_loss(p, 1 - g, mode="binary", from_logits=False, log=True, backend=BACKEND)
    (grad,) = torch.autograd.grad(loss, p)
    assert (grad < 0).all()


@pytest.mark.parametrize("info", LOSSES)
def test_everything_ignored_gives_zero_not_nan(info):
    S = info.fit(6)  # 2 x 3 for a loss that needs a 2-D image
    x = torch.randn(2, 3, *S, dtype=torch.float64, requires_grad=True)
    t = torch.full((2, *S), 255)
    loss = info.call(x, t, ignore_index=255, backend=BACKEND)
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-12)
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.all(grad == 0)


# ----------------------------------------------------------------------------------------------
# absent="exclude"


def _probs(rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_absent_exclude_is_a_true_mean_over_present_classes():
    # one sample, 3 classes, probabilities; class 2 absent from the target, with false positives
    p = _probs([[[0.7, 0.6, 0.1, 0.2], [0.2, 0.3, 0.8, 0.5], [0.1, 0.1, 0.1, 0.3]]])
    t = torch.tensor([[0, 0, 1, 1]])
    kw = dict(from_logits=False, smooth_nr=0.0, smooth_dr=1e-12, backend=BACKEND)
    per = DF.dice_loss(p, t, reduction="none", **kw)
    excl = DF.dice_loss(p, t, absent="exclude", **kw)
    assert float(excl) == pytest.approx(float(per[0, :2].mean()), abs=1e-12)
    incl = DF.dice_loss(p, t, **kw)
    assert float(incl) == pytest.approx(float(per[0].mean()), abs=1e-12)
    # weighted: a true weighted mean over the present classes
    w = [2.0, 1.0, 5.0]
    excl_w = DF.dice_loss(p, t, absent="exclude", weight=w, **kw)
    assert float(excl_w) == pytest.approx(float((2 * per[0, 0] + per[0, 1]) / 3), abs=1e-12)
    # reduction="none": the absent class reads 0; "sum" leaves it out
    none = DF.dice_loss(p, t, absent="exclude", reduction="none", **kw)
    torch.testing.assert_close(none, torch.cat([per[:, :2], torch.zeros(1, 1, dtype=torch.float64)], 1))
    assert float(DF.dice_loss(p, t, absent="exclude", reduction="sum", **kw)) == pytest.approx(
        float(per[0, :2].sum()), abs=1e-12
    )


def test_absent_exclude_group_without_present_class_counts_as_zero():
    # binary, 2 samples: sample 1 has no target at all (and false positives) -> contributes 0, still counted
    p = _probs([[[0.9, 0.8, 0.1, 0.2]], [[0.4, 0.4, 0.4, 0.4]]])
    g = _probs([[[1.0, 1.0, 0.0, 0.0]], [[0.0, 0.0, 0.0, 0.0]]])
    kw = dict(mode="binary", from_logits=False, backend=BACKEND)
    per = DF.dice_loss(p, g, reduction="none", **kw)
    excl = DF.dice_loss(p, g, absent="exclude", **kw)
    assert float(excl) == pytest.approx(float(per[0, 0]) / 2, abs=1e-12)
    assert float(per[1, 0]) > 0.99  # "include" charges the false positives of sample 1


def test_absent_exclude_hides_false_positives():
    # the documented cost: predictions on an absent class change neither the loss nor its gradient
    x = torch.randn(1, 3, 8, dtype=torch.float64)
    t = (torch.arange(8) % 2 == 0).double().expand(1, 3, 8).clone()
    t[:, 2] = 0
    for kind in [info.name for info in losses(lambda info: info.takes("absent") and not info.compound)]:
        a = OVERLAP[kind](x, t, mode="multilabel", absent="exclude", backend=BACKEND)
        x2 = x.clone()
        x2[:, 2] = 10.0  # confident false positives everywhere on class 2
        x2.requires_grad_(True)
        b = OVERLAP[kind](x2, t, mode="multilabel", absent="exclude", backend=BACKEND)
        assert float(a) == pytest.approx(float(b.detach()), abs=1e-12)
        (grad,) = torch.autograd.grad(b, x2)
        assert torch.all(grad[:, 2] == 0)


def test_absent_exclude_with_batch_dice_uses_the_whole_batch():
    # class 2 present in sample 1 only: with batch Dice it is present in the (single) group
    p = torch.softmax(torch.randn(2, 3, 6, dtype=torch.float64), 1)
    t = torch.tensor([[0, 0, 1, 1, 0, 1], [0, 2, 2, 1, 0, 0]])
    kw = dict(from_logits=False, backend=BACKEND)
    assert float(DF.dice_loss(p, t, absent="exclude", batch_dice=True, **kw)) == pytest.approx(
        float(DF.dice_loss(p, t, batch_dice=True, **kw)), abs=1e-12
    )
    per = DF.dice_loss(p, t, reduction="none", **kw)
    want = (per[0, :2].mean() + per[1].mean()) / 2
    assert float(DF.dice_loss(p, t, absent="exclude", **kw)) == pytest.approx(float(want), abs=1e-12)


# ----------------------------------------------------------------------------------------------
# Generalized Dice


def test_gdl_absent_class_takes_the_largest_weight_of_its_group():
    # C = 3, G = [2, 1, 0] (class 2 absent), square weights: w = [1/4, 1, 1 (largest finite)]
    p = _probs([[[0.6, 0.5, 0.2], [0.3, 0.1, 0.7], [0.1, 0.4, 0.1]]])
    t = torch.tensor([[0, 0, 1]])
    I = [0.6 + 0.5, 0.7, 0.0]
    P = [1.3, 1.1, 0.6]
    G = [2.0, 1.0, 0.0]
    w = [1 / 4, 1.0, 1.0]
    want = 1 - 2 * sum(wi * ii for wi, ii in zip(w, I)) / sum(wi * (pi + gi) for wi, pi, gi in zip(w, P, G))
    got = DF.generalized_dice_loss(p, t, from_logits=False, smooth_nr=0.0, smooth_dr=0.0, backend=BACKEND)
    assert float(got) == pytest.approx(want, abs=1e-12)
    # simple weights: w = [1/2, 1, 1]
    w = [1 / 2, 1.0, 1.0]
    want = 1 - 2 * sum(wi * ii for wi, ii in zip(w, I)) / sum(wi * (pi + gi) for wi, pi, gi in zip(w, P, G))
    got = DF.generalized_dice_loss(
        p, t, from_logits=False, weighting="simple", smooth_nr=0.0, smooth_dr=0.0, backend=BACKEND
    )
    assert float(got) == pytest.approx(want, abs=1e-12)


def test_gdl_weights_per_group():
    # sample 0 lacks class 2, sample 1 lacks class 1: each takes the largest weight of its own sample
    p = torch.softmax(torch.randn(2, 3, 5, dtype=torch.float64), 1)
    t = torch.tensor([[0, 1, 1, 0, 0], [2, 0, 0, 0, 0]])
    none = DF.generalized_dice_loss(p, t, from_logits=False, reduction="none", backend=BACKEND)
    for b in range(2):
        alone = DF.generalized_dice_loss(p[b : b + 1], t[b : b + 1], from_logits=False, backend=BACKEND)
        assert float(none[b]) == pytest.approx(float(alone), abs=1e-12)
    # batch Dice: one group, weights from the batch's G = [6, 2, 1]
    batch = DF.generalized_dice_loss(
        p, t, from_logits=False, batch_dice=True, smooth_nr=0.0, smooth_dr=0.0, backend=BACKEND
    )
    g = torch.nn.functional.one_hot(t, 3).permute(0, 2, 1).double()
    I, P, G = (p * g).sum((0, 2)), p.sum((0, 2)), g.sum((0, 2))
    w = 1 / G**2
    assert float(batch) == pytest.approx(float(1 - 2 * (w * I).sum() / (w * (P + G)).sum()), abs=1e-12)


@pytest.mark.parametrize("weighting", ["square", "simple", "uniform"])
def test_gdl_group_without_present_class_still_penalises_false_positives(weighting):
    # no present class (include_background=False, background-only target): uniform weights, not 0
    p = torch.softmax(torch.randn(1, 3, 6, dtype=torch.float64), 1).requires_grad_(True)
    t = torch.zeros(1, 6, dtype=torch.long)
    loss = DF.generalized_dice_loss(
        p, t, from_logits=False, include_background=False, weighting=weighting, backend=BACKEND
    )
    P = float(p.detach()[0, 1:].sum())
    assert float(loss.detach()) == pytest.approx(1 - 1e-5 / (P + 1e-5), abs=1e-12)
    (grad,) = torch.autograd.grad(loss, p)
    assert (grad[0, 1:] > 0).all()
    # nothing predicted either: 0
    q = torch.zeros(1, 3, 6, dtype=torch.float64)
    q[:, 0] = 1
    assert float(
        DF.generalized_dice_loss(
            q, t, from_logits=False, include_background=False, weighting=weighting, backend=BACKEND
        )
    ) == pytest.approx(0.0, abs=1e-12)


def test_gdl_binary_empty_target():
    p, g = _binary(0.3, 0.0)
    loss, grad = _loss_and_grad("gdl", p, g)
    assert loss > 0.99 and (grad > 0).all()


@pytest.mark.parametrize("info", losses(lambda info: not info.compound and info.takes("smooth_nr", "smooth_dr")))
def test_zero_smoothing_both_empty_is_a_perfect_match_not_nan(info):
    fn = info.call
    S = info.fit(8)  # 2 x 4 for a loss that needs a 2-D image
    p = torch.zeros(1, 1, *S, dtype=torch.float64, requires_grad=True)
    g = torch.zeros(1, 1, *S, dtype=torch.float64)
    loss = fn(p, g, mode="binary", from_logits=False, smooth_nr=0.0, smooth_dr=0.0)
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert torch.isfinite(p.grad).all()
    # and with a false positive, zero smoothing scores the class as fully wrong
    q = torch.full((1, 1, *S), 0.3, dtype=torch.float64)
    got = float(fn(q, g, mode="binary", from_logits=False, smooth_nr=0.0, smooth_dr=0.0))
    if info.empty_table:
        assert got == 1.0
    else:  # a false positive on an empty target costs what the loss says it costs, never a NaN
        assert math.isfinite(got) and got >= 0
