"""The public heads on (groups, classes) statistics: analytic values, identities between heads, and the losses as
heads of diceloss.compute_stats (what a user composing a head with the statistics gets)."""

from __future__ import annotations

import pytest
import torch

import diceloss
from diceloss import functional as DF
from diceloss.heads import (
    CompoundHead,
    DiceHead,
    GeneralizedDiceHead,
    JaccardHead,
    Selection,
    TverskyHead,
)
from diceloss.stats import OverlapStats


def _stats(I, P, G, count=None):
    I, P, G = (torch.tensor(v, dtype=torch.float64) for v in (I, P, G))
    return OverlapStats(I, P, G, torch.ones_like(I) if count is None else count)


def _problem(seed=0, B=3, C=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, 7, 6, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, C, (B, 7, 6), generator=g)
    return x, t


def test_dice_head_by_hand():
    # one group, two classes: D_0 = (2*3 + 0) / (4 + 5 + 0) = 2/3, D_1 = 2*1 / (2 + 2) = 1/2
    stats = _stats([[3.0, 1.0]], [[4.0, 2.0]], [[5.0, 2.0]])
    head = DiceHead(smooth_nr=0.0, smooth_dr=0.0)
    torch.testing.assert_close(head(stats, reduction="none"), torch.tensor([[1 / 3, 1 / 2]], dtype=torch.float64))
    torch.testing.assert_close(head(stats), torch.tensor((1 / 3 + 1 / 2) / 2, dtype=torch.float64))
    # weights (1, 3): (1/3 + 3/2) / 4; keeping class 1 only: 1/2
    torch.testing.assert_close(
        head(stats, Selection(weight=torch.tensor([1.0, 3.0], dtype=torch.float64))),
        torch.tensor((1 / 3 + 3 / 2) / 4, dtype=torch.float64),
    )
    torch.testing.assert_close(head(stats, Selection(kept=(1,))), torch.tensor(0.5, dtype=torch.float64))


def test_tversky_half_half_is_dice_and_one_one_is_jaccard():
    g = torch.Generator().manual_seed(1)
    G = torch.rand(4, 5, generator=g, dtype=torch.float64) * 10
    P = torch.rand(4, 5, generator=g, dtype=torch.float64) * 10
    I = torch.minimum(P, G) * torch.rand(4, 5, generator=g, dtype=torch.float64)
    stats = OverlapStats(I, P, G, torch.ones_like(I))
    exact = dict(smooth_nr=0.0, smooth_dr=0.0)  # the smoothing enters each formula differently
    for reduction in ("none", "mean", "sum"):
        torch.testing.assert_close(
            TverskyHead(alpha=0.5, beta=0.5, **exact)(stats, reduction=reduction),
            DiceHead(**exact)(stats, reduction=reduction),
        )
        torch.testing.assert_close(
            TverskyHead(alpha=1.0, beta=1.0, **exact)(stats, reduction=reduction),
            JaccardHead(**exact)(stats, reduction=reduction),
        )


def test_absent_exclude_leaves_classes_without_target_out_of_the_mean():
    stats = _stats([[0.0, 2.0]], [[3.0, 2.0]], [[0.0, 2.0]])  # class 0 absent from the target
    head = DiceHead(smooth_nr=0.0, smooth_dr=1e-5, absent="exclude")
    want = 1 - (2 * 2.0) / (2.0 + 2.0 + 1e-5)
    torch.testing.assert_close(head(stats), torch.tensor(want, dtype=torch.float64))


@pytest.mark.parametrize("options", [{}, {"include_background": False}, {"weight": [1.0, 0.5, 2.0, 1.0]},
                                     {"batch_dice": True}, {"ignore_index": 2}])
def test_heads_of_compute_stats_are_the_losses(options):
    x, t = _problem()
    stats = diceloss.compute_stats(x, t, ignore_index=options.get("ignore_index"))
    kept = [c for c in range(4) if not (c == 0 and options.get("include_background") is False)
            and c != options.get("ignore_index")]
    weight = options.get("weight")
    selection = Selection(
        kept=None if len(kept) == 4 else tuple(kept),
        weight=None if weight is None else torch.tensor(weight, dtype=torch.float64),
    )
    batch = options.get("batch_dice", False)
    if batch:
        stats = OverlapStats(*(None if f is None else f.sum(0, keepdim=True) for f in stats))
    for head, fn, extra in [
        (DiceHead(), DF.dice_loss, {}),
        (JaccardHead(), DF.jaccard_loss, {}),
        (TverskyHead(alpha=0.3, beta=0.7, exponent=0.75), DF.tversky_loss, dict(alpha=0.3, beta=0.7, exponent=0.75)),
    ]:
        torch.testing.assert_close(head(stats, selection, "mean", batch), fn(x, t, **options, **extra))
    if weight is None:
        gdl = GeneralizedDiceHead(weighting="simple")
        torch.testing.assert_close(gdl(stats, selection, "mean", batch),
                                   DF.generalized_dice_loss(x, t, weighting="simple", **options))


def test_compound_head_terms_and_request():
    x, t = _problem(2)
    head = CompoundHead(DiceHead(log=True), "ce", lambda_dice=0.5, lambda_other=2.0, label_smoothing=0.1)
    request = head.request(diceloss.stats.StatsRequest())
    assert request.cross_entropy and request.label_smoothing == 0.1
    stats = diceloss.compute_stats(x, t, cross_entropy=True, label_smoothing=0.1)
    total, terms = head.terms(stats)
    assert sorted(terms) == ["ce", "dice"] and not terms["dice"].requires_grad
    torch.testing.assert_close(total, DF.dice_ce_loss(x, t, log=True, lambda_dice=0.5, lambda_ce=2.0,
                                                      label_smoothing=0.1))
    torch.testing.assert_close(total, 0.5 * terms["dice"] + 2.0 * terms["ce"])
    focal = CompoundHead(DiceHead(), "focal", gamma=1.5)
    assert focal.request(diceloss.stats.StatsRequest()).focal_gamma == 1.5
    with pytest.raises(ValueError, match="DiceFocalLoss adds terms of different shapes"):
        focal.check_reduction("none")


@pytest.mark.parametrize(
    "make,error,message",
    [
        (lambda: DiceHead(smooth_nr=1.0, smooth_dr=0.0), ValueError, "must not exceed smooth_dr"),
        (lambda: DiceHead(absent="skip"), ValueError, "absent must be one of"),
        (lambda: TverskyHead(alpha=0.0, beta=0.0), ValueError, "alpha \\+ beta must be > 0"),
        (lambda: GeneralizedDiceHead(weighting="log"), ValueError, "weighting must be one of"),
        (lambda: CompoundHead(other="bce"), ValueError, "other must be one of"),
        (lambda: CompoundHead(lambda_other=-1.0), ValueError, "lambda_ce must be finite"),
    ],
)
def test_heads_check_their_parameters(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_heads_are_immutable_values():
    head = DiceHead(log=True)
    with pytest.raises(AttributeError):
        head.log = False  # type: ignore[misc]
    assert head == DiceHead(log=True) and hash(head) == hash(DiceHead(log=True))
