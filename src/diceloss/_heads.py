"""Heads: the losses as functions of the per-(group, class) statistics.

Everything here works on small (G, K) tensors (G groups: the samples, or one group for batch Dice;
K classes kept) with plain PyTorch ops, so autograd differentiates the heads and every backend gets
every head for free.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def ratio_or_one(num: Tensor, den: Tensor) -> Tensor:
    """num / den, and 1 where den == 0.

    The denominators of the overlap scores are sums of non-negative terms plus s_dr, so they vanish
    only with s_dr = 0 on a class empty in both target and prediction: a perfect match, score 1
    (not NaN), with a zero gradient.
    """
    nonzero = den != 0
    return torch.where(nonzero, num / torch.where(nonzero, den, torch.ones_like(den)), torch.ones_like(num))


def dice_score(I: Tensor, P: Tensor, G: Tensor, smooth_nr: float, smooth_dr: float) -> Tensor:
    """D = (2I + s_nr) / (P + G + s_dr)."""
    if smooth_dr > 0:
        # P and G are sums of non-negative terms: the denominator is at least s_dr, no guard needed
        # (two ops and their backward nodes fewer on every call)
        return (2 * I + smooth_nr) / (P + G + smooth_dr)
    return ratio_or_one(2 * I + smooth_nr, P + G + smooth_dr)


def jaccard_score(I: Tensor, P: Tensor, G: Tensor, smooth_nr: float, smooth_dr: float) -> Tensor:
    """J = (I + s_nr) / (P + G - I + s_dr)."""
    return ratio_or_one(I + smooth_nr, P + G - I + smooth_dr)


def tversky_score(
    I: Tensor, P: Tensor, G: Tensor, alpha: float, beta: float, smooth_nr: float, smooth_dr: float
) -> Tensor:
    """T = (I + s_nr) / (I + alpha (P - I) + beta (G - I) + s_dr).

    alpha weighs false positives, beta false negatives.
    """
    return ratio_or_one(I + smooth_nr, I + alpha * (P - I) + beta * (G - I) + smooth_dr)


# Below this score a log-Dice continues along its tangent line: the loss stays bounded, by
# 1 - log(LOG_FLOOR) = 17.12 at D = 0.
LOG_FLOOR = 1e-7


def neg_log(score: Tensor) -> Tensor:
    """-log(score) for score >= LOG_FLOOR, its tangent line below.

    A clamp would zero the gradient wherever D < 1e-7, which is where it is needed most: a class with
    no target and many false positives (D = s_nr / (P + s_dr)) or a present class the prediction
    misses entirely (D ~ s_nr / G). The tangent keeps the value bounded and the gradient non-zero.
    """
    safe = score.clamp_min(LOG_FLOOR)
    tangent = (LOG_FLOOR - score) / LOG_FLOOR - math.log(LOG_FLOOR)
    return torch.where(score >= LOG_FLOOR, -torch.log(safe), tangent)


def safe_pow(x: Tensor, exponent: float) -> Tensor:
    """x ** exponent for x >= 0 with a zero (not infinite) gradient at x = 0, also for exponent < 1."""
    if exponent == 1.0:
        return x
    x = x.clamp_min(0)
    positive = x > 0
    return torch.where(
        positive, torch.where(positive, x, torch.ones_like(x)).pow(exponent), torch.zeros_like(x)
    )


def reduce_class_losses(
    loss: Tensor,
    weight: Tensor | None,
    present: Tensor | None,
    reduction: str,
    batch_dice: bool,
) -> Tensor:
    """Reduce per-(group, class) losses (G, K) with class weights (K,) and an optional presence mask (G, K).

    mean: per group the weighted mean over the classes counted (all, or the present ones), then the
    mean over groups; a group with nothing counted contributes 0 and is still counted.
    sum: the weighted sum over everything counted. none: the weighted losses, (G, K), or (K,) for batch Dice.
    """
    factor = None
    if weight is not None:
        factor = weight.to(loss.dtype)[None, :].expand_as(loss)
    if present is not None:
        p = present.to(loss.dtype)
        factor = p if factor is None else factor * p
    weighted = loss if factor is None else loss * factor
    if reduction == "none":
        return weighted[0] if batch_dice else weighted
    if reduction == "sum":
        return weighted.sum()
    if factor is None:
        return loss.mean()
    num = weighted.sum(dim=1)
    den = factor.sum(dim=1)
    per_group = torch.where(
        den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(num)
    )
    return per_group.mean()


def generalized_dice_loss(
    I: Tensor, P: Tensor, G: Tensor, weighting: str, smooth_nr: float, smooth_dr: float
) -> Tensor:
    """1 - (2 sum_c w_c I_c + s_nr) / (sum_c w_c (P_c + G_c) + s_dr) per group, shape (G,).

    w_c = 1/G_c^2 ("square"), 1/G_c ("simple") or 1 ("uniform"), computed from the target alone (no
    gradient). A class absent from the group's target takes the largest finite weight of the group
    (MONAI's rule); a group with no present class takes uniform weights, so false positives still cost.
    """
    Gd = G.detach()
    if weighting == "uniform":
        w = torch.ones_like(Gd)
    else:
        w = 1.0 / (Gd * Gd) if weighting == "square" else 1.0 / Gd
        finite = torch.isfinite(w) & (Gd > 0)
        w = torch.where(finite, w, torch.zeros_like(w))
        largest = w.amax(dim=1, keepdim=True)
        w = torch.where(finite, w, largest.expand_as(w))
        any_present = finite.any(dim=1, keepdim=True)
        w = torch.where(any_present.expand_as(w), w, torch.ones_like(w))
    num = 2 * (w * I).sum(dim=1) + smooth_nr
    den = (w * (P + G)).sum(dim=1) + smooth_dr
    return 1 - ratio_or_one(num, den)


def reduce_groups(loss: Tensor, reduction: str, batch_dice: bool) -> Tensor:
    """Reduce per-group losses (G,): mean, sum, or none ((G,), or () for batch Dice)."""
    if reduction == "none":
        return loss[0] if batch_dice else loss
    return loss.sum() if reduction == "sum" else loss.mean()


def cross_entropy_term(
    E: Tensor,
    G: Tensor,
    count: Tensor,
    weight: Tensor | None,
    *,
    mode: str,
    target_is_index: bool,
    reduction: str,
) -> Tensor:
    """Cross-entropy (or focal) term from its per-(sample, class) sums E, as torch.nn.functional would reduce it.

    multiclass, ``target_is_index=True``: sum w_c E_c / sum w_c G_c (the weighted mean of ``cross_entropy``
    for class indices; the diceloss losses use it for every multiclass target, so the formats agree);
    multiclass, ``target_is_index=False``: sum w_c E_c / (number of valid positions) (``cross_entropy``'s
    mean for probability targets; the two agree without a weight);
    binary and multilabel: sum w_c E_c / (number of valid elements) (``weight`` a per-channel factor).
    A denominator of 0 (everything ignored) gives 0, not NaN.
    """
    w = None if weight is None else weight.to(E.dtype)
    num = (E if w is None else E * w).sum()
    if reduction == "sum":
        return num
    if mode == "multiclass":
        den = (G if w is None else G * w).sum() if target_is_index else count[:, 0].sum()
    else:
        den = count.sum()
    if w is None:
        # without a weight den counts positions (or elements): a whole number, 0 only when num is 0 too
        return num / den.clamp_min(1)
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(num))
