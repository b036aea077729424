"""The reference backend against closed-form values, for every loss and option.

Two kinds of check:

* literal values worked out by hand (in the comments) on a 1 x 2 x 4 case of probabilities;
* the independent NumPy oracle of ``tests/_oracle.py`` (plain loops, no code shared with diceloss),
  compared on small random cases over the whole option grid, for every head of the registry
  (``tests/conftest.py``) and every option it takes. The oracle knows the Dice family, the heads on the
  statistics; a loss that is not a head (Lovász, clDice, Hausdorff-DT ...) is compared with its own oracle in
  its own test file (``tests/test_lovasz.py`` ...), and here only module against function.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _oracle import oracle
from conftest import LOSS, LOSSES, MODES, losses

import diceloss
from diceloss import functional as DF

BACKEND = "reference"

# ----------------------------------------------------------------------------------------------
# literal hand-computed values
#
# B = 1, C = 2, N = 4, probabilities (from_logits=False), target classes t = [1, 1, 0, 0]:
#   p1 = [0.9, 0.6, 0.2, 0.1]   p0 = 1 - p1 = [0.1, 0.4, 0.8, 0.9]
#   class 1: I = 0.9 + 0.6 = 1.5, P = 1.8, G = 2
#   class 0: I = 0.8 + 0.9 = 1.7, P = 2.2, G = 2
#   squared: P1 = .81 + .36 + .04 + .01 = 1.22, P0 = .01 + .16 + .64 + .81 = 1.62, G = 2

P1 = [0.9, 0.6, 0.2, 0.1]
HAND_T = [1, 1, 0, 0]


def hand_input():
    p1 = torch.tensor(P1, dtype=torch.float64)
    return torch.stack([1 - p1, p1])[None], torch.tensor([HAND_T])


NO_SMOOTH = dict(smooth_nr=0.0, smooth_dr=0.0, from_logits=False, backend=BACKEND)

HAND_CASES = [
    # dice: D0 = 3.4/4.2, D1 = 3/3.8
    ("dice", {}, 1 - (3.4 / 4.2 + 3 / 3.8) / 2),
    ("dice", {"include_background": False}, 1 - 3 / 3.8),
    ("dice", {"weight": [1.0, 3.0]}, (1 * (1 - 3.4 / 4.2) + 3 * (1 - 3 / 3.8)) / 4),
    ("dice", {"weight": [5.0, 3.0], "include_background": False}, 1 - 3 / 3.8),
    ("dice", {"reduction": "sum"}, (1 - 3.4 / 4.2) + (1 - 3 / 3.8)),
    ("dice", {"squared": True}, 1 - (3.4 / 3.62 + 3 / 3.22) / 2),
    ("dice", {"log": True}, -(math.log(3.4 / 4.2) + math.log(3 / 3.8)) / 2),
    # jaccard: J0 = 1.7/(4.2 - 1.7) = 1.7/2.5, J1 = 1.5/2.3
    ("jaccard", {}, 1 - (1.7 / 2.5 + 1.5 / 2.3) / 2),
    # tversky alpha .3 (FP = P - I), beta .7 (FN = G - I):
    #   T0 = 1.7/(1.7 + .3*.5 + .7*.3) = 1.7/2.06 ; T1 = 1.5/(1.5 + .3*.3 + .7*.5) = 1.5/1.94
    ("tversky", {"alpha": 0.3, "beta": 0.7}, 1 - (1.7 / 2.06 + 1.5 / 1.94) / 2),
    (
        "tversky",
        {"alpha": 0.3, "beta": 0.7, "exponent": 0.75},
        ((1 - 1.7 / 2.06) ** 0.75 + (1 - 1.5 / 1.94) ** 0.75) / 2,
    ),
    # generalized dice, square: w0 = w1 = 1/4 -> 1 - 2*(1.7 + 1.5)/(4.2 + 3.8) = 1 - 6.4/8
    ("gdl", {}, 1 - 6.4 / 8),
    ("gdl", {"weighting": "uniform"}, 1 - 6.4 / 8),
    ("gdl", {"include_background": False}, 1 - 3 / 3.8),
]


@pytest.mark.parametrize("kind,opts,expected", HAND_CASES)
def test_hand_values(kind, opts, expected):
    x, t = hand_input()
    got = LOSS[kind].call(x, t, **NO_SMOOTH, **opts)
    assert float(got) == pytest.approx(expected, abs=1e-12)


def test_hand_values_reduction_none():
    x, t = hand_input()
    got = DF.dice_loss(x, t, reduction="none", **NO_SMOOTH)
    assert got.shape == (1, 2)
    torch.testing.assert_close(got, torch.tensor([[1 - 3.4 / 4.2, 1 - 3 / 3.8]], dtype=torch.float64))


def test_hand_value_default_smoothing():
    # D1 = (3 + 1e-5)/(3.8 + 1e-5), D0 = (3.4 + 1e-5)/(4.2 + 1e-5)
    x, t = hand_input()
    got = DF.dice_loss(x, t, from_logits=False, backend=BACKEND)
    expected = 1 - ((3.4 + 1e-5) / (4.2 + 1e-5) + (3 + 1e-5) / (3.8 + 1e-5)) / 2
    assert float(got) == pytest.approx(expected, abs=1e-14)


def test_hand_value_binary_and_soft_label():
    # binary: p = [0.9, 0.6, 0.2, 0.1], g = [1, 0.5, 0, 0] (soft)
    #   product: I = .9 + .3 = 1.2, P = 1.8, G = 1.5 -> D = 2.4/3.3
    #   semimetric: I = min: .9 + .5 = 1.4 -> D = 2.8/3.3
    p = torch.tensor([[P1]], dtype=torch.float64)
    g = torch.tensor([[[1.0, 0.5, 0.0, 0.0]]], dtype=torch.float64)
    d = DF.dice_loss(p, g, mode="binary", **NO_SMOOTH)
    s = DF.dice_loss(p, g, mode="binary", soft_label=True, **NO_SMOOTH)
    assert float(d) == pytest.approx(1 - 2.4 / 3.3, abs=1e-12)
    assert float(s) == pytest.approx(1 - 2.8 / 3.3, abs=1e-12)


def test_hand_value_cross_entropy():
    # CE of probabilities: -(log .9 + log .6 + log .8 + log .9)/4 ; dice part as above
    x, t = hand_input()
    ce = -(math.log(0.9) + math.log(0.6) + math.log(0.8) + math.log(0.9)) / 4
    got = DF.dice_ce_loss(x, t, lambda_dice=0.0, **NO_SMOOTH)
    assert float(got) == pytest.approx(ce, abs=1e-12)
    # weighted (w = [1, 3]): (3 (-log .9 - log .6) + 1 (-log .8 - log .9)) / (3 + 3 + 1 + 1)
    wce = (3 * -(math.log(0.9) + math.log(0.6)) - (math.log(0.8) + math.log(0.9))) / 8
    got = DF.dice_ce_loss(x, t, lambda_dice=0.0, weight=[1.0, 3.0], **NO_SMOOTH)
    assert float(got) == pytest.approx(wce, abs=1e-12)
    both = DF.dice_ce_loss(x, t, lambda_dice=2.0, lambda_ce=0.5, **NO_SMOOTH)
    assert float(both) == pytest.approx(2 * (1 - (3.4 / 4.2 + 3 / 3.8) / 2) + 0.5 * ce, abs=1e-12)


def test_hand_value_focal():
    # softmax focal, gamma = 2: -sum (1 - p_t)^2 log p_t / 4 over p_t = [.9, .6, .8, .9]
    x, t = hand_input()
    pt = [0.9, 0.6, 0.8, 0.9]
    fl = -sum((1 - q) ** 2 * math.log(q) for q in pt) / 4
    got = DF.dice_focal_loss(x, t, lambda_dice=0.0, gamma=2.0, **NO_SMOOTH)
    assert float(got) == pytest.approx(fl, abs=1e-12)


def test_hand_value_ignore_index_and_mask():
    # ignore position 1 (label 255): class 1: I = .9, P = .9 + .2 + .1 = 1.2, G = 1 -> 1.8/2.2 ;
    # class 0: I = 1.7, P = .1 + .8 + .9 = 1.8, G = 2 -> 3.4/3.8
    x, t = hand_input()
    t_ign = torch.tensor([[1, 255, 0, 0]])
    expected = 1 - (3.4 / 3.8 + 1.8 / 2.2) / 2
    got = DF.dice_loss(x, t_ign, ignore_index=255, **NO_SMOOTH)
    assert float(got) == pytest.approx(expected, abs=1e-12)
    mask = torch.tensor([[1, 0, 1, 1]])
    got = DF.dice_loss(x, t, mask, **NO_SMOOTH)
    assert float(got) == pytest.approx(expected, abs=1e-12)


def test_hand_value_ignore_real_class():
    # ignore_index = 1 with C = 3: class 1 leaves the mean, its positions leave every sum.
    # p (probabilities), positions 0..3, t = [0, 1, 2, 2]: position 1 ignored
    p = torch.tensor(
        [[[0.7, 0.1, 0.2, 0.1], [0.2, 0.8, 0.1, 0.1], [0.1, 0.1, 0.7, 0.8]]], dtype=torch.float64
    )
    t = torch.tensor([[0, 1, 2, 2]])
    # class 0: I = .7, P = .7 + .2 + .1 = 1.0, G = 1 -> 1.4/2.0
    # class 2: I = 1.5, P = .1 + .7 + .8 = 1.6, G = 2 -> 3.0/3.6
    got = DF.dice_loss(p, t, ignore_index=1, reduction="none", **NO_SMOOTH)
    torch.testing.assert_close(got, torch.tensor([[1 - 1.4 / 2.0, 1 - 3.0 / 3.6]], dtype=torch.float64))
    got = DF.dice_loss(p, t, ignore_index=1, **NO_SMOOTH)
    assert float(got) == pytest.approx(1 - (1.4 / 2.0 + 3.0 / 3.6) / 2, abs=1e-12)


# ----------------------------------------------------------------------------------------------
# the independent oracle (tests/_oracle.py) over the option grid


def _case(mode, seed, *, target="index", B=2, C=3, N=7, ignore=None, probs=False):
    g = torch.Generator().manual_seed(seed)
    C = 1 if mode == "binary" else C
    x = torch.randn(B, C, N, generator=g, dtype=torch.float64) * 2
    if probs:
        x = torch.softmax(x, 1) if mode == "multiclass" else torch.sigmoid(x)
    if mode == "multiclass":
        t = torch.randint(0, C, (B, N), generator=g)
        if ignore is not None:
            t[:, ::3] = ignore
        if target == "onehot":
            t = F.one_hot(t, C).permute(0, 2, 1).double()
        elif target == "soft":
            t = torch.softmax(torch.randn(B, C, N, generator=g, dtype=torch.float64) * 3, 1)
    else:
        if target == "soft":
            t = torch.rand(B, C, N, generator=g, dtype=torch.float64)
        else:
            t = (torch.rand(B, C, N, generator=g) > 0.5).double()
        if ignore is not None:
            t[..., ::3] = ignore
    return x, t


OPTION_GRID = [
    {},
    {"include_background": False},
    {"weight": [0.2, 1.0, 3.0]},
    {"weight": [9.0, 1.0, 3.0], "include_background": False},
    {"batch_dice": True},
    {"batch_dice": True, "reduction": "none"},
    {"reduction": "none"},
    {"reduction": "sum"},
    {"squared": True},
    {"log": True},
    {"smooth_nr": 0.5, "smooth_dr": 1.0},
    {"smooth_nr": 0.0, "smooth_dr": 1e-5},
    {"absent": "exclude"},
    {"absent": "exclude", "weight": [1.0, 2.0, 0.5], "reduction": "sum"},
    {"absent": "exclude", "batch_dice": True},
    {"soft_label": True},
    {"ignore_index": 255},
    {"ignore_index": -100},
    {"ignore_index": 1},
    {"ignore_index": 1, "include_background": False, "weight": [1.0, 4.0, 2.0], "reduction": "none"},
    {"mask": True},
    {"mask": True, "batch_dice": True, "weight": [1.0, 2.0, 3.0]},
    {"from_logits": False},
    {"alpha": 0.3, "beta": 0.7},
    {"alpha": 1.0, "beta": 0.0, "exponent": 0.75},
    {"exponent": 2.0, "absent": "exclude"},
    {"weighting": "simple"},
    {"weighting": "uniform"},
    {"label_smoothing": 0.1},
    {"label_smoothing": 0.2, "weight": [0.5, 1.0, 2.0], "ignore_index": 255},
    {"gamma": 0.0},
    {"gamma": 0.5, "weight": [0.5, 1.0, 2.0]},
    {"lambda_dice": 0.3, "lambda_ce": 2.0},
    {"lambda_dice": 0.3, "lambda_focal": 0.1, "batch_dice": True},
]



def _applicable(info, mode, opts):
    if not info.head:  # the oracle knows the heads only (the module docstring)
        return False
    keys = set(opts) - {"mask"}
    if not info.takes(*keys):
        return False
    if info.unreduced is None and opts.get("reduction") == "none":
        return False
    ii = opts.get("ignore_index")
    if mode != "multiclass" and ii is not None and ii not in (255, -100):
        return False
    return True


def _grid():
    out = []
    for info in LOSSES:
        for mode in MODES:
            for i, opts in enumerate(OPTION_GRID):
                if _applicable(info, mode, opts):
                    out.append(pytest.param(info.name, mode, opts, id=f"{info.name}-{mode}-{i}"))
    return out


@pytest.mark.parametrize("kind,mode,opts", _grid())
def test_against_oracle(kind, mode, opts):
    opts = dict(opts)
    C = 3
    if mode == "binary" and "weight" in opts:
        opts["weight"] = opts["weight"][:1]
        C = 1
    use_mask = opts.pop("mask", False)
    x, t = _case(
        mode,
        seed=len(str(opts)) + 7 * len(kind),
        ignore=opts.get("ignore_index"),
        probs=not opts.get("from_logits", True),
        C=C,
    )
    mask = None
    if use_mask:
        mask = (torch.arange(x.shape[-1]) % 4 != 1)[None].expand(x.shape[0], -1).clone()
        mask[1, :2] = False
    got = LOSS[kind].call(x, t, mask, mode=mode, backend=BACKEND, **opts)
    want = oracle(kind, x.numpy(), t.numpy(), None if mask is None else mask.numpy(), mode=mode, **opts)
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-10, atol=1e-12)


# the oracle knows the heads only (the module docstring)
HEADS = losses(lambda info: info.head)


@pytest.mark.parametrize("info", HEADS)
@pytest.mark.parametrize("target", ["onehot", "soft"])
def test_probability_targets_against_oracle(info, target):
    x, t = _case("multiclass", seed=3, target=target)
    opts = {"soft_label": True} if target == "soft" and info.soft_targets else {}
    if info.compound:
        opts["weight"] = [0.5, 1.0, 2.0]
    got = info.call(x, t, backend=BACKEND, **opts)
    want = oracle(info.name, x.numpy(), t.numpy(), **opts)
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("info", HEADS)
def test_onehot_ignore_channel_against_oracle(info):
    # a one-hot target with ignore_index naming a channel: positions of that channel drop out
    x, t = _case("multiclass", seed=5, target="onehot")
    got = info.call(x, t, ignore_index=2, backend=BACKEND)
    want = oracle(info.name, x.numpy(), t.numpy(), ignore_index=2)
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("info", LOSSES)
def test_module_equals_function(info):
    # the registry's example options (weights, exponents, weighting, smoothing, lambdas) through both forms
    x, t = _case("multiclass", seed=11)
    x, t = x.reshape(*x.shape[:2], *info.fit(x.shape[-1])), t.reshape(t.shape[0], *info.fit(t.shape[-1]))
    module = info.make(backend=BACKEND, **info.example)
    got = float(module(x, t))
    assert got == pytest.approx(float(info.call(x, t, backend=BACKEND, **info.example)), abs=1e-14)


def test_compound_components():
    x, t = _case("multiclass", seed=12)
    loss = diceloss.DiceCELoss(lambda_dice=2.0, lambda_ce=3.0, backend=BACKEND)
    total = loss(x, t)
    dice = DF.dice_loss(x, t, backend=BACKEND)
    ce = F.cross_entropy(x, t)
    torch.testing.assert_close(loss.components["dice"], dice)
    torch.testing.assert_close(loss.components["ce"], ce)
    torch.testing.assert_close(total, 2 * dice + 3 * ce)
    assert not loss.components["ce"].requires_grad
    focal = diceloss.DiceFocalLoss(gamma=0.0, backend=BACKEND)
    focal(x, t)
    torch.testing.assert_close(focal.components["focal"], ce)


def test_compute_stats_fields():
    x, t = _case("multiclass", seed=13)
    s = diceloss.compute_stats(x, t, mode="multiclass", cross_entropy=True, focal_gamma=0.0, backend=BACKEND)
    p = torch.softmax(x, 1)
    g = F.one_hot(t, 3).permute(0, 2, 1).double()
    torch.testing.assert_close(s.intersection, (p * g).sum(-1))
    torch.testing.assert_close(s.pred_volume, p.sum(-1))
    torch.testing.assert_close(s.target_volume, g.sum(-1))
    torch.testing.assert_close(s.count, torch.full((2, 3), 7.0, dtype=torch.float64))
    torch.testing.assert_close(s.cross_entropy, (g * -torch.log(p)).sum(-1))
    torch.testing.assert_close(s.focal, s.cross_entropy)
    assert diceloss.compute_stats(x, t).cross_entropy is None


# ----------------------------------------------------------------------------------------------
# the pixel-wise terms against torch.nn.functional directly


@pytest.mark.parametrize("ignore_index", [None, 255, -100, 0, 2])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.15])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_ce_equals_torch_cross_entropy(ignore_index, label_smoothing, weighted, reduction):
    g = torch.Generator().manual_seed(21)
    x = torch.randn(2, 4, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 4, (2, 3, 5), generator=g)
    if ignore_index is not None:
        t[:, 0] = ignore_index
    w = torch.tensor([0.3, 1.0, 2.0, 0.7], dtype=torch.float64) if weighted else None
    ref = F.cross_entropy(
        x,
        t,
        weight=w,
        ignore_index=-100 if ignore_index is None else ignore_index,
        label_smoothing=label_smoothing,
        reduction=reduction,
    )
    got = DF.dice_ce_loss(
        x,
        t,
        weight=w,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        lambda_dice=0.0,
        reduction=reduction,
        backend=BACKEND,
    )
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    (gx_ref,) = torch.autograd.grad(ref, x)
    (gx,) = torch.autograd.grad(got, x)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weighted", [False, True])
def test_ce_probability_targets_equal_torch(label_smoothing, weighted):
    g = torch.Generator().manual_seed(22)
    x = torch.randn(2, 3, 6, generator=g, dtype=torch.float64)
    t = torch.softmax(torch.randn(2, 3, 6, generator=g, dtype=torch.float64), 1)
    w = torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64) if weighted else None
    got = DF.dice_ce_loss(x, t, weight=w, label_smoothing=label_smoothing, lambda_dice=0.0, backend=BACKEND)
    # the weighted sum is cross_entropy's; its "mean" divides by sum_n sum_c w_c g_c (cross_entropy's mean for
    # class indices), which is the number of positions without a weight
    ref_sum = F.cross_entropy(x, t, weight=w, label_smoothing=label_smoothing, reduction="sum")
    den = t.numel() / 3 if w is None else float((w[None, :, None] * t).sum())
    torch.testing.assert_close(got, ref_sum / den, rtol=1e-12, atol=1e-12)
    if not weighted:
        torch.testing.assert_close(
            got, F.cross_entropy(x, t, label_smoothing=label_smoothing), rtol=1e-12, atol=1e-12
        )
    # a one-hot target gives cross_entropy of the class indices, weight and all
    idx = t.argmax(1)
    onehot = F.one_hot(idx, 3).movedim(-1, 1).double()
    got = DF.dice_ce_loss(
        x, onehot, weight=w, label_smoothing=label_smoothing, lambda_dice=0.0, backend=BACKEND
    )
    torch.testing.assert_close(
        got, F.cross_entropy(x, idx, weight=w, label_smoothing=label_smoothing), rtol=1e-12, atol=1e-12
    )


def test_ce_everything_ignored_is_zero_not_nan():
    x = torch.randn(1, 3, 4, dtype=torch.float64, requires_grad=True)
    t = torch.full((1, 4), 255)
    got = DF.dice_ce_loss(x, t, ignore_index=255, lambda_dice=0.0, backend=BACKEND)
    assert float(got.detach()) == 0.0
    got.backward()
    assert torch.all(x.grad == 0)


@pytest.mark.parametrize("mode", ["binary", "multilabel"])
@pytest.mark.parametrize("weighted", [False, True])
def test_bce_equals_torch(mode, weighted):
    g = torch.Generator().manual_seed(23)
    C = 1 if mode == "binary" else 3
    x = torch.randn(2, C, 8, generator=g, dtype=torch.float64)
    t = torch.rand(2, C, 8, generator=g, dtype=torch.float64)
    w = torch.tensor([0.5, 2.0, 1.5][:C], dtype=torch.float64) if weighted else None
    ref = F.binary_cross_entropy_with_logits(x, t, weight=None if w is None else w[None, :, None])
    got = DF.dice_ce_loss(x, t, mode=mode, weight=w, lambda_dice=0.0, backend=BACKEND)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    # label smoothing moves the targets towards 1/2
    ref = F.binary_cross_entropy_with_logits(x, t * 0.8 + 0.1)
    got = DF.dice_ce_loss(x, t, mode=mode, label_smoothing=0.2, lambda_dice=0.0, backend=BACKEND)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    # with probabilities in: binary_cross_entropy
    ref = F.binary_cross_entropy(torch.sigmoid(x), t)
    got = DF.dice_ce_loss(torch.sigmoid(x), t, mode=mode, from_logits=False, lambda_dice=0.0, backend=BACKEND)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "mode,target",
    [("multiclass", "index"), ("multiclass", "soft"), ("binary", "soft"), ("multilabel", "index")],
)
def test_focal_equals_ce_at_gamma_zero(mode, target):
    x, t = _case(mode, seed=24, target=target)
    w = [0.5] if mode == "binary" else [0.5, 1.0, 2.0]
    ce = DF.dice_ce_loss(x, t, mode=mode, weight=w, lambda_dice=0.0, backend=BACKEND)
    fl = DF.dice_focal_loss(x, t, mode=mode, weight=w, gamma=0.0, lambda_dice=0.0, backend=BACKEND)
    torch.testing.assert_close(fl, ce, rtol=1e-12, atol=1e-12)


def test_sigmoid_focal_matches_torchvision_formula():
    # sigmoid focal, per element: -[g (1-p)^gamma log p + (1-g) p^gamma log(1-p)], mean over elements
    x, t = _case("multilabel", seed=25)
    p = torch.sigmoid(x)
    fl = -(t * (1 - p) ** 2 * F.logsigmoid(x) + (1 - t) * p**2 * F.logsigmoid(-x)).mean()
    got = DF.dice_focal_loss(x, t, mode="multilabel", gamma=2.0, lambda_dice=0.0, backend=BACKEND)
    torch.testing.assert_close(got, fl, rtol=1e-12, atol=1e-12)


def test_hand_value_log_dice_below_the_floor():
    # binary, empty target, p = 1 at 200 positions: D = 1e-5 / (200 + 1e-5) ~ 5e-8 < 1e-7, where -log D
    # continues along its tangent: (1e-7 - D)/1e-7 - log(1e-7)
    p = torch.ones(1, 1, 200, dtype=torch.float64, requires_grad=True)
    g = torch.zeros(1, 1, 200, dtype=torch.float64)
    D = 1e-5 / (200 + 1e-5)
    got = DF.dice_loss(p, g, mode="binary", from_logits=False, log=True, backend=BACKEND)
    assert float(got.detach()) == pytest.approx((1e-7 - D) / 1e-7 - math.log(1e-7), abs=1e-12)
    got.backward()
    # dL/dp = -(1/1e-7) dD/dp = 1e7 * 1e-5 / (200 + 1e-5)^2 at every position: descent lowers p
    assert torch.allclose(p.grad, torch.full_like(p, 1e7 * 1e-5 / (200 + 1e-5) ** 2))
