"""Heads: the losses as functions of the per-(group, class) statistics.

Every loss of the Dice family is a few operations on the sums of :func:`diceloss.compute_stats`
(``I``, ``P``, ``G``, the count ``M``, the cross-entropy ``E``, the focal term ``F``), each of shape
(G, C): G groups (the samples, or one group for batch Dice) by C classes. A head holds the loss's own
parameters (smoothing, log, alpha and beta, weighting, lambdas) and turns the statistics into the
loss with plain PyTorch ops, so autograd differentiates it and every backend serves every head.

A head is called as ``head(stats, selection, reduction, batch)``:

* ``selection`` (:class:`Selection`): which classes are kept (background and a real class named by
  ``ignore_index`` are dropped), the class weights, and what the target was (multiclass or not, class
  indices or dense), as the layout found them; the default keeps every class, unweighted;
* ``reduction``: "mean" | "sum" | "none";
* ``batch``: whether the statistics were summed over the batch (one group), which only changes the
  shape of ``reduction="none"``.

``head.terms(...)`` also returns the detached terms of a compound loss (``{"dice": ..., "ce": ...}``).
``head.request(base)`` names the statistics the head needs beyond ``base`` (the cross-entropy, the
focal term).

Example:
    >>> import torch, diceloss
    >>> from diceloss.heads import DiceHead, TverskyHead
    >>> x = torch.zeros(1, 2, 4)                       # logits: both classes at 0.5
    >>> t = torch.tensor([[0, 0, 1, 1]])
    >>> stats = diceloss.compute_stats(x, t)
    >>> round(float(DiceHead()(stats)), 4)
    0.5
    >>> round(float(TverskyHead(alpha=0.3, beta=0.7)(stats)), 4)
    0.5
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ._checks import (
    ABSENT_POLICIES,
    WEIGHTINGS,
    check_bool,
    check_choice,
    check_compound_reduction,
    check_nonnegative,
    check_smoothing,
    set_field,
)
from .stats import OverlapStats, StatsRequest

# ----------------------------------------------------------------------------------------------
# scores and reductions on (G, K) tensors


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
    # != 0, not > 0: a NaN weight (possible with value checks off) must give NaN, never a silent 0
    counted = den != 0
    per_group = torch.where(counted, num / torch.where(counted, den, torch.ones_like(den)), torch.zeros_like(num))
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
    counted = den != 0  # a NaN weight gives NaN, not 0
    return torch.where(counted, num / torch.where(counted, den, torch.ones_like(den)), torch.zeros_like(num))


# ----------------------------------------------------------------------------------------------
# class selection


class Selection(NamedTuple):
    """What the layout tells a head about the classes: made by the pipeline from the checked inputs.

    kept: the classes scored (background and a real class named by ``ignore_index`` dropped), None for all.
    weight: per-class weights (C,) in the accumulation dtype, or None.
    multiclass: the mode was "multiclass" (softmax cross-entropy) rather than binary / multilabel.
    target_is_index: the target held class indices (the cross-entropy's weighted mean divides by sum w_c G_c).
    linear_target_volume: sum_n m g per (group, class) where the statistics hold sum_n m g^2 (squared=True) and the
        cross-entropy's normaliser needs the plain sum (soft targets with a weight); None: G serves.
    """

    kept: tuple[int, ...] | None = None
    weight: Tensor | None = None
    multiclass: bool = True
    target_is_index: bool = True
    linear_target_volume: Tensor | None = None


ALL_CLASSES = Selection()


def select_classes(stats: OverlapStats, selection: Selection) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """I, P, G and the weights of the classes kept."""
    kept, w = selection.kept, selection.weight
    if kept is None:
        return stats.intersection, stats.pred_volume, stats.target_volume, w
    index = list(kept)
    w = None if w is None else w[index]
    return stats.intersection[:, index], stats.pred_volume[:, index], stats.target_volume[:, index], w


# ----------------------------------------------------------------------------------------------
# head objects


def _check_smoothing(head: Head) -> None:
    check_smoothing(head.smooth_nr, head.smooth_dr)
    set_field(head, "smooth_nr", float(head.smooth_nr))
    set_field(head, "smooth_dr", float(head.smooth_dr))


class Head:
    """A loss as a function of :class:`~diceloss.stats.OverlapStats`; see the module docstring."""

    def request(self, base: StatsRequest) -> StatsRequest:
        """The statistics this head needs: ``base`` (squared, soft_label) plus its own terms."""
        return base

    def check_reduction(self, reduction: str) -> None:
        """Raise when the head cannot produce ``reduction`` (the compound heads take no "none")."""

    def terms(
        self, stats: OverlapStats, selection: Selection = ALL_CLASSES, reduction: str = "mean", batch: bool = False
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """(loss, detached terms); the terms are empty except for compound heads."""
        return self(stats, selection, reduction, batch), {}

    def __call__(
        self, stats: OverlapStats, selection: Selection = ALL_CLASSES, reduction: str = "mean", batch: bool = False
    ) -> Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class _ClassHead(Head):
    """A per-class score, ``1 - score`` per (group, class), reduced with the class weights and ``absent``."""

    smooth_nr: float = 1e-5
    smooth_dr: float = 1e-5
    absent: str = "include"

    def __post_init__(self) -> None:
        check_choice("absent", self.absent, ABSENT_POLICIES)
        _check_smoothing(self)

    def class_losses(self, I: Tensor, P: Tensor, G: Tensor) -> Tensor:
        """The loss per (group, class), before the reduction."""
        raise NotImplementedError

    def __call__(
        self, stats: OverlapStats, selection: Selection = ALL_CLASSES, reduction: str = "mean", batch: bool = False
    ) -> Tensor:
        I, P, G, w = select_classes(stats, selection)
        present = (G.detach() > 0) if self.absent == "exclude" else None
        return reduce_class_losses(self.class_losses(I, P, G), w, present, reduction, batch)


@dataclass(frozen=True)
class DiceHead(_ClassHead):
    """Per class ``1 - D`` (``-log D`` with ``log=True``), ``D = (2I + s_nr) / (P + G + s_dr)``."""

    log: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        set_field(self, "log", check_bool("log", self.log))

    def class_losses(self, I: Tensor, P: Tensor, G: Tensor) -> Tensor:
        score = dice_score(I, P, G, self.smooth_nr, self.smooth_dr)
        return neg_log(score) if self.log else 1 - score


@dataclass(frozen=True)
class JaccardHead(_ClassHead):
    """Per class ``1 - J``, ``J = (I + s_nr) / (P + G - I + s_dr)``."""

    def class_losses(self, I: Tensor, P: Tensor, G: Tensor) -> Tensor:
        return 1 - jaccard_score(I, P, G, self.smooth_nr, self.smooth_dr)


@dataclass(frozen=True)
class TverskyHead(_ClassHead):
    """Per class ``(1 - T) ** exponent``, ``T = (I + s_nr) / (I + alpha (P - I) + beta (G - I) + s_dr)``."""

    alpha: float = 0.5
    beta: float = 0.5
    exponent: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        set_field(self, "alpha", check_nonnegative("alpha", self.alpha))
        set_field(self, "beta", check_nonnegative("beta", self.beta))
        if self.alpha + self.beta <= 0:
            raise ValueError(
                f"alpha + beta must be > 0 (alpha weighs false positives, beta false negatives), got "
                f"alpha={self.alpha}, beta={self.beta}"
            )
        set_field(self, "exponent", check_nonnegative("exponent", self.exponent, positive=True))

    def class_losses(self, I: Tensor, P: Tensor, G: Tensor) -> Tensor:
        loss = 1 - tversky_score(I, P, G, self.alpha, self.beta, self.smooth_nr, self.smooth_dr)
        return safe_pow(loss, self.exponent)


@dataclass(frozen=True)
class GeneralizedDiceHead(Head):
    """Per group ``1 - (2 sum_c w_c I_c + s_nr) / (sum_c w_c (P_c + G_c) + s_dr)``, ``w_c = 1/G_c^2 | 1/G_c | 1``.

    Its class weights are its own: a ``selection.weight`` is not used.
    """

    weighting: str = "square"
    smooth_nr: float = 1e-5
    smooth_dr: float = 1e-5

    def __post_init__(self) -> None:
        _check_smoothing(self)
        check_choice("weighting", self.weighting, WEIGHTINGS)

    def __call__(
        self, stats: OverlapStats, selection: Selection = ALL_CLASSES, reduction: str = "mean", batch: bool = False
    ) -> Tensor:
        I, P, G, _ = select_classes(stats, selection)
        loss = generalized_dice_loss(I, P, G, self.weighting, self.smooth_nr, self.smooth_dr)
        return reduce_groups(loss, reduction, batch)


@dataclass(frozen=True)
class CompoundHead(Head):
    """``lambda_dice * dice + lambda_other * other`` with ``other`` the cross-entropy ("ce") or the focal term.

    The pixel-wise term is reduced as ``torch.nn.functional`` would (:func:`cross_entropy_term`);
    ``reduction`` is "mean" or "sum". ``terms`` returns the detached Dice and pixel-wise terms.
    """

    dice: DiceHead = DiceHead()
    other: str = "ce"
    lambda_dice: float = 1.0
    lambda_other: float = 1.0
    label_smoothing: float = 0.0
    gamma: float = 2.0

    def __post_init__(self) -> None:
        check_choice("other", self.other, ("ce", "focal"))
        set_field(self, "lambda_dice", check_nonnegative("lambda_dice", self.lambda_dice))
        other = "lambda_ce" if self.other == "ce" else "lambda_focal"
        set_field(self, "lambda_other", check_nonnegative(other, self.lambda_other))
        if self.other == "ce":
            set_field(self, "label_smoothing", check_nonnegative("label_smoothing", self.label_smoothing, at_most=1.0))
        else:
            set_field(self, "gamma", check_nonnegative("gamma", self.gamma))

    @property
    def loss_name(self) -> str:
        return "DiceCELoss" if self.other == "ce" else "DiceFocalLoss"

    def check_reduction(self, reduction: str) -> None:
        check_compound_reduction(reduction, self.loss_name)

    def request(self, base: StatsRequest) -> StatsRequest:
        if self.other == "ce":
            return base._replace(cross_entropy=True, label_smoothing=float(self.label_smoothing))
        return base._replace(focal_gamma=float(self.gamma))

    def terms(
        self, stats: OverlapStats, selection: Selection = ALL_CLASSES, reduction: str = "mean", batch: bool = False
    ) -> tuple[Tensor, dict[str, Tensor]]:
        dice = self.dice(stats, selection, reduction, batch)
        sums = stats.cross_entropy if self.other == "ce" else stats.focal
        # with a weight every multiclass target takes cross_entropy's class-index mean, sum w_c E_c / sum w_c G_c,
        # so index, one-hot and soft one-hot targets of the same labels give the same loss (cross_entropy divides
        # probability targets by the positions, which is the same without a weight). With squared=True, G is
        # sum g^2: the same for hard targets; for soft targets the pipeline hands the plain sum over.
        w = selection.weight
        G = stats.target_volume if selection.linear_target_volume is None else selection.linear_target_volume
        other = cross_entropy_term(
            sums,
            G,
            stats.count,
            w,
            mode="multiclass" if selection.multiclass else "multilabel",
            target_is_index=selection.target_is_index or w is not None,
            reduction=reduction,
        )
        scaled_dice = dice if self.lambda_dice == 1 else self.lambda_dice * dice
        scaled_other = other if self.lambda_other == 1 else self.lambda_other * other
        return scaled_dice + scaled_other, {"dice": dice.detach(), self.other: other.detach()}

    def __call__(
        self, stats: OverlapStats, selection: Selection = ALL_CLASSES, reduction: str = "mean", batch: bool = False
    ) -> Tensor:
        return self.terms(stats, selection, reduction, batch)[0]


__all__ = [
    "Head",
    "Selection",
    "DiceHead",
    "JaccardHead",
    "TverskyHead",
    "GeneralizedDiceHead",
    "CompoundHead",
    "select_classes",
    "dice_score",
    "jaccard_score",
    "tversky_score",
    "neg_log",
    "safe_pow",
    "ratio_or_one",
    "reduce_class_losses",
    "reduce_groups",
    "generalized_dice_loss",
    "cross_entropy_term",
    "LOG_FLOOR",
]
