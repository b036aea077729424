"""Dice-family losses as functions, the twins of the modules in :mod:`diceloss.losses`.

Every function takes ``input`` (logits, or probabilities with ``from_logits=False``) and ``target``:

================  =============================  ===============================================
mode              input                          target
================  =============================  ===============================================
``binary``        (B, 1, *S) or (B, *S)          the input's shape, values in [0, 1]
``multiclass``    (B, C, *S), C >= 2             class indices (B, *S) or (B, 1, *S), or one-hot /
                                                 soft probabilities (B, C, *S) summing to 1 over C
``multilabel``    (B, C, *S)                     (B, C, *S), values in [0, 1]
================  =============================  ===============================================

``*S`` is any number of spatial dimensions. Per (sample b, class c), over the valid positions n
(``mask``, ``ignore_index``), with p the probabilities and g the target probabilities::

    I = sum_n p g        P = sum_n p^q        G = sum_n g^q        (q = 2 with squared=True)

The heads below are functions of I, P and G; with ``batch_dice=True`` the sums also run over the
batch first. ``reduction="none"`` gives (B, K) per sample and class (K the classes kept: C, less the
background with ``include_background=False``, less a real class named by ``ignore_index``), or (K,)
with ``batch_dice=True``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from torch import Tensor

from . import _checks, _heads, _layout
from .stats import OverlapStats, StatsRequest, compute_dtype, stats_from_prepared

Weight = Sequence[float] | Tensor | None


def _weight_tensor(weight: Weight, input: Tensor) -> Tensor | None:
    w = _checks.check_weight(weight)
    if w is None:
        return None
    if not isinstance(weight, Tensor):
        w = w.to(input.device)
    return w


def _sum_groups(stats: OverlapStats) -> OverlapStats:
    return OverlapStats(*(None if f is None else f.sum(dim=0, keepdim=True) for f in stats))


class _Overlap(NamedTuple):
    """The options that decide which statistics are computed and how they are grouped.

    Every loss builds one from its arguments and hands it to :func:`_overlap`.
    """

    mode: str
    from_logits: bool
    include_background: bool
    weight: Weight
    ignore_index: int | None
    batch_dice: bool
    backend: str
    distributed: bool
    process_group: object


def _overlap(input: Tensor, target: Tensor, mask: Tensor | None, o: _Overlap, request: StatsRequest):
    """Check the inputs and compute the statistics, summed over the batch for batch Dice (and over ranks)."""
    w = _weight_tensor(o.weight, input)
    prep = _layout.prepare(
        input,
        target,
        mode=o.mode,
        from_logits=o.from_logits,
        ignore_index=o.ignore_index,
        mask=mask,
        include_background=o.include_background,
        weight=w,
    )
    stats = stats_from_prepared(prep, request, o.backend)
    if o.batch_dice:
        stats = _sum_groups(stats)
    if o.distributed:
        from .distributed import all_reduce_stats

        stats = all_reduce_stats(stats, o.process_group)
    if w is not None:
        w = w.to(compute_dtype(input.dtype))
    return prep, stats, w


def _kept(t: Tensor, kept: tuple[int, ...] | None) -> Tensor:
    return t if kept is None else t[:, list(kept)]


def _check_overlap_options(
    mode,
    reduction,
    smooth_nr,
    smooth_dr,
    backend,
    absent,
    ignore_index,
    distributed,
    batch_dice,
) -> None:
    _checks.check_loss_options(
        mode=mode,
        reduction=reduction,
        smooth_nr=smooth_nr,
        smooth_dr=smooth_dr,
        backend=backend,
        absent=absent,
        ignore_index=ignore_index,
    )
    if distributed and not batch_dice:
        raise ValueError(
            "distributed=True sums the statistics over the ranks, which only batch Dice needs; per-sample Dice "
            "(batch_dice=False) needs no synchronisation"
        )


def _per_class(prep, stats: OverlapStats, weight: Tensor | None, absent: str):
    """I, P, G and the weights of the classes kept, and which classes are present (for absent="exclude")."""
    kept = prep.kept_classes
    I = _kept(stats.intersection, kept)
    P = _kept(stats.pred_volume, kept)
    G = _kept(stats.target_volume, kept)
    w = weight if weight is None or kept is None else weight[list(kept)]
    present = (G.detach() > 0) if absent == "exclude" else None
    return I, P, G, w, present


def _dice_term(prep, stats, weight, *, log, smooth_nr, smooth_dr, absent, reduction, batch_dice) -> Tensor:
    """The Dice loss of the statistics: per class 1 - D (or -log D), reduced over the classes and groups."""
    I, P, G, w, present = _per_class(prep, stats, weight, absent)
    score = _heads.dice_score(I, P, G, smooth_nr, smooth_dr)
    loss = _heads.neg_log(score) if log else 1 - score
    return _heads.reduce_class_losses(loss, w, present, reduction, batch_dice)


def dice_loss(
    input: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    *,
    mode: str = "multiclass",
    from_logits: bool = True,
    include_background: bool = True,
    weight: Weight = None,
    ignore_index: int | None = None,
    batch_dice: bool = False,
    squared: bool = False,
    log: bool = False,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    absent: str = "include",
    soft_label: bool = False,
    reduction: str = "mean",
    backend: str = "auto",
    distributed: bool = False,
    process_group=None,
) -> Tensor:
    r"""Dice loss: per class ``1 - D`` (or ``-log D`` with ``log=True``), ``D = (2I + s_nr) / (P + G + s_dr)``.

    See :class:`diceloss.DiceLoss` for every argument. Range: [0, 1]; with ``log=True`` [0, 17.12]
    (``-log D`` down to D = 1e-7, its tangent line below, so the gradient never vanishes).

    Example:
        >>> x = torch.zeros(1, 2, 4)                  # logits: both classes at 0.5
        >>> t = torch.tensor([[0, 0, 1, 1]])
        >>> round(float(dice_loss(x, t)), 4)
        0.5
    """

    _check_overlap_options(
        mode, reduction, smooth_nr, smooth_dr, backend, absent, ignore_index, distributed, batch_dice
    )
    o = _Overlap(
        mode, from_logits, include_background, weight, ignore_index, batch_dice, backend, distributed, process_group
    )
    return _dice_loss(input, target, mask, o, squared, log, smooth_nr, smooth_dr, absent, soft_label, reduction)


def _dice_loss(input, target, mask, o: _Overlap, squared, log, smooth_nr, smooth_dr, absent, soft_label, reduction):
    """dice_loss with its options already checked (DiceLoss checks them once, in its constructor)."""
    prep, stats, w = _overlap(input, target, mask, o, StatsRequest(squared=squared, soft_label=soft_label))
    return _dice_term(
        prep,
        stats,
        w,
        log=log,
        smooth_nr=smooth_nr,
        smooth_dr=smooth_dr,
        absent=absent,
        reduction=reduction,
        batch_dice=o.batch_dice,
    )


def jaccard_loss(
    input: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    *,
    mode: str = "multiclass",
    from_logits: bool = True,
    include_background: bool = True,
    weight: Weight = None,
    ignore_index: int | None = None,
    batch_dice: bool = False,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    absent: str = "include",
    soft_label: bool = False,
    reduction: str = "mean",
    backend: str = "auto",
    distributed: bool = False,
    process_group=None,
) -> Tensor:
    r"""Jaccard (soft IoU) loss: per class ``1 - J``, ``J = (I + s_nr) / (P + G - I + s_dr)``.

    See :class:`diceloss.JaccardLoss`. Range: [0, 1].

    Example:
        >>> x = torch.zeros(1, 2, 4)
        >>> t = torch.tensor([[0, 0, 1, 1]])
        >>> round(float(jaccard_loss(x, t)), 4)
        0.6667
    """

    _check_overlap_options(
        mode, reduction, smooth_nr, smooth_dr, backend, absent, ignore_index, distributed, batch_dice
    )
    o = _Overlap(
        mode, from_logits, include_background, weight, ignore_index, batch_dice, backend, distributed, process_group
    )
    return _jaccard_loss(input, target, mask, o, smooth_nr, smooth_dr, absent, soft_label, reduction)


def _jaccard_loss(input, target, mask, o: _Overlap, smooth_nr, smooth_dr, absent, soft_label, reduction):
    """jaccard_loss with its options already checked (JaccardLoss checks them in its constructor)."""
    prep, stats, w = _overlap(input, target, mask, o, StatsRequest(soft_label=soft_label))
    I, P, G, w, present = _per_class(prep, stats, w, absent)
    loss = 1 - _heads.jaccard_score(I, P, G, smooth_nr, smooth_dr)
    return _heads.reduce_class_losses(loss, w, present, reduction, o.batch_dice)


def _check_tversky(alpha: float, beta: float, exponent: float) -> None:
    _checks.check_nonnegative("alpha", alpha)
    _checks.check_nonnegative("beta", beta)
    if alpha + beta <= 0:
        raise ValueError(
            f"alpha + beta must be > 0 (alpha weighs false positives, beta false negatives), got "
            f"alpha={alpha}, beta={beta}"
        )
    _checks.check_nonnegative("exponent", exponent, positive=True)


def tversky_loss(
    input: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    *,
    mode: str = "multiclass",
    from_logits: bool = True,
    include_background: bool = True,
    weight: Weight = None,
    ignore_index: int | None = None,
    batch_dice: bool = False,
    alpha: float = 0.5,
    beta: float = 0.5,
    exponent: float = 1.0,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    absent: str = "include",
    soft_label: bool = False,
    reduction: str = "mean",
    backend: str = "auto",
    distributed: bool = False,
    process_group=None,
) -> Tensor:
    r"""Tversky loss, focal with ``exponent != 1``: per class ``(1 - T) ** exponent``,
    ``T = (I + s_nr) / (I + alpha (P - I) + beta (G - I) + s_dr)``.

    ``alpha`` weighs false positives (P - I), ``beta`` false negatives (G - I); alpha = beta = 0.5 is
    Dice, alpha = beta = 1 is Jaccard. See :class:`diceloss.TverskyLoss`. Range: [0, 1].

    Example:
        >>> x = torch.zeros(1, 2, 4)
        >>> t = torch.tensor([[0, 0, 1, 1]])
        >>> round(float(tversky_loss(x, t, alpha=0.3, beta=0.7)), 4)
        0.5
    """

    _check_overlap_options(
        mode, reduction, smooth_nr, smooth_dr, backend, absent, ignore_index, distributed, batch_dice
    )
    _check_tversky(alpha, beta, exponent)
    o = _Overlap(
        mode, from_logits, include_background, weight, ignore_index, batch_dice, backend, distributed, process_group
    )
    return _tversky_loss(
        input, target, mask, o, alpha, beta, exponent, smooth_nr, smooth_dr, absent, soft_label, reduction
    )


def _tversky_loss(
    input, target, mask, o: _Overlap, alpha, beta, exponent, smooth_nr, smooth_dr, absent, soft_label, reduction
):
    """tversky_loss with its options already checked (TverskyLoss checks them in its constructor)."""
    prep, stats, w = _overlap(input, target, mask, o, StatsRequest(soft_label=soft_label))
    I, P, G, w, present = _per_class(prep, stats, w, absent)
    loss = 1 - _heads.tversky_score(I, P, G, alpha, beta, smooth_nr, smooth_dr)
    loss = _heads.safe_pow(loss, exponent)
    return _heads.reduce_class_losses(loss, w, present, reduction, o.batch_dice)


def generalized_dice_loss(
    input: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    *,
    mode: str = "multiclass",
    from_logits: bool = True,
    include_background: bool = True,
    ignore_index: int | None = None,
    batch_dice: bool = False,
    weighting: str = "square",
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    soft_label: bool = False,
    reduction: str = "mean",
    backend: str = "auto",
    distributed: bool = False,
    process_group=None,
) -> Tensor:
    r"""Generalized Dice loss (Sudre et al., 2017), per group (sample, or batch)::

        1 - (2 sum_c w_c I_c + s_nr) / (sum_c w_c (P_c + G_c) + s_dr),   w_c = 1/G_c^2 | 1/G_c | 1

    A class absent from a group's target takes the group's largest finite weight; a group with no
    present class takes uniform weights (false positives there still cost). ``reduction="none"``:
    (B,), or () with ``batch_dice=True``. See :class:`diceloss.GeneralizedDiceLoss`. Range: [0, 1].

    Example:
        >>> x = torch.zeros(1, 2, 4)
        >>> t = torch.tensor([[0, 0, 1, 1]])
        >>> round(float(generalized_dice_loss(x, t)), 4)
        0.5
    """

    _check_overlap_options(
        mode, reduction, smooth_nr, smooth_dr, backend, "include", ignore_index, distributed, batch_dice
    )
    _checks.check_choice("weighting", weighting, _checks.WEIGHTINGS)
    o = _Overlap(
        mode, from_logits, include_background, None, ignore_index, batch_dice, backend, distributed, process_group
    )
    return _generalized_dice_loss(input, target, mask, o, weighting, smooth_nr, smooth_dr, soft_label, reduction)


def _generalized_dice_loss(input, target, mask, o: _Overlap, weighting, smooth_nr, smooth_dr, soft_label, reduction):
    """generalized_dice_loss with its options already checked (GeneralizedDiceLoss checks them once)."""
    prep, stats, _ = _overlap(input, target, mask, o, StatsRequest(soft_label=soft_label))
    I, P, G, _, _ = _per_class(prep, stats, None, "include")
    loss = _heads.generalized_dice_loss(I, P, G, weighting, smooth_nr, smooth_dr)
    return _heads.reduce_groups(loss, reduction, o.batch_dice)


def _compound(
    input,
    target,
    mask,
    o: _Overlap,
    request: StatsRequest,
    *,
    other: str,
    log,
    smooth_nr,
    smooth_dr,
    absent,
    reduction,
    lambda_dice,
    lambda_other,
):
    """lambda_dice * Dice + lambda_other * (CE or focal) from one pass of statistics; also the detached terms."""
    prep, stats, w = _overlap(input, target, mask, o, request)
    dice = _dice_term(
        prep,
        stats,
        w,
        log=log,
        smooth_nr=smooth_nr,
        smooth_dr=smooth_dr,
        absent=absent,
        reduction=reduction,
        batch_dice=o.batch_dice,
    )
    other_sums = stats.cross_entropy if other == "ce" else stats.focal
    # with a weight every multiclass target takes cross_entropy's class-index mean, sum w_c E_c / sum w_c G_c,
    # so index, one-hot and soft one-hot targets of the same labels give the same loss (cross_entropy divides
    # probability targets by the positions, which is the same without a weight). With squared=True, G is
    # sum g^2: the same for hard targets; for soft targets with a weight the normaliser is then sum w_c g_c^2.
    other_term = _heads.cross_entropy_term(
        other_sums,
        stats.target_volume,
        stats.count,
        w,
        mode=o.mode,
        target_is_index=prep.target_is_index or w is not None,
        reduction=reduction,
    )
    scaled_dice = dice if lambda_dice == 1 else lambda_dice * dice
    scaled_other = other_term if lambda_other == 1 else lambda_other * other_term
    return scaled_dice + scaled_other, dice.detach(), other_term.detach()


def dice_ce_loss(
    input: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    *,
    mode: str = "multiclass",
    from_logits: bool = True,
    include_background: bool = True,
    weight: Weight = None,
    ignore_index: int | None = None,
    batch_dice: bool = False,
    squared: bool = False,
    log: bool = False,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    absent: str = "include",
    soft_label: bool = False,
    reduction: str = "mean",
    lambda_dice: float = 1.0,
    lambda_ce: float = 1.0,
    label_smoothing: float = 0.0,
    backend: str = "auto",
    distributed: bool = False,
    process_group=None,
) -> Tensor:
    r"""``lambda_dice * dice_loss + lambda_ce * CE``.

    CE is ``torch.nn.functional.cross_entropy`` (multiclass; same ``weight``, ``ignore_index``,
    ``label_smoothing`` semantics; with a ``weight``, one-hot and soft targets are divided by
    ``sum_n sum_c w_c g_c`` like class indices, so every target format of the same labels gives the
    same loss, where ``cross_entropy`` would divide probability targets by the number of positions)
    or ``binary_cross_entropy_with_logits`` with ``weight`` a per-channel factor (binary, multilabel;
    ``label_smoothing`` moves the targets towards 1/2). ``reduction`` is "mean" or "sum".
    See :class:`diceloss.DiceCELoss`. Range: [0, inf).

    Example:
        >>> x = torch.zeros(1, 2, 4)
        >>> t = torch.tensor([[0, 0, 1, 1]])
        >>> round(float(dice_ce_loss(x, t)), 4)   # 0.5 + log 2
        1.1931
    """

    o = _Overlap(
        mode, from_logits, include_background, weight, ignore_index, batch_dice, backend, distributed, process_group
    )
    _check_compound(
        "DiceCELoss", o, reduction, smooth_nr, smooth_dr, absent, lambda_dice=lambda_dice, lambda_ce=lambda_ce
    )
    _checks.check_nonnegative("label_smoothing", label_smoothing, at_most=1.0)
    return _dice_ce(
        input,
        target,
        mask,
        o,
        squared=squared,
        log=log,
        smooth_nr=smooth_nr,
        smooth_dr=smooth_dr,
        absent=absent,
        soft_label=soft_label,
        reduction=reduction,
        lambda_dice=lambda_dice,
        lambda_ce=lambda_ce,
        label_smoothing=label_smoothing,
    )[0]


def _check_compound(name: str, o: _Overlap, reduction, smooth_nr, smooth_dr, absent, **lambdas) -> None:
    _checks.check_compound_reduction(reduction, name)
    _check_overlap_options(
        o.mode, reduction, smooth_nr, smooth_dr, o.backend, absent, o.ignore_index, o.distributed, o.batch_dice
    )
    for key, value in lambdas.items():
        _checks.check_nonnegative(key, value)


def _dice_ce(
    input,
    target,
    mask,
    o: _Overlap,
    *,
    squared,
    log,
    smooth_nr,
    smooth_dr,
    absent,
    soft_label,
    reduction,
    lambda_dice,
    lambda_ce,
    label_smoothing,
):
    """(total, detached Dice, detached CE) of :func:`dice_ce_loss`, options already checked (by dice_ce_loss, or
    by DiceCELoss's constructor); the module keeps the terms for logging."""
    request = StatsRequest(
        squared=squared, soft_label=soft_label, cross_entropy=True, label_smoothing=float(label_smoothing)
    )
    return _compound(
        input,
        target,
        mask,
        o,
        request,
        other="ce",
        log=log,
        smooth_nr=smooth_nr,
        smooth_dr=smooth_dr,
        absent=absent,
        reduction=reduction,
        lambda_dice=lambda_dice,
        lambda_other=lambda_ce,
    )


def dice_focal_loss(
    input: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    *,
    mode: str = "multiclass",
    from_logits: bool = True,
    include_background: bool = True,
    weight: Weight = None,
    ignore_index: int | None = None,
    batch_dice: bool = False,
    squared: bool = False,
    log: bool = False,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    absent: str = "include",
    soft_label: bool = False,
    reduction: str = "mean",
    gamma: float = 2.0,
    lambda_dice: float = 1.0,
    lambda_focal: float = 1.0,
    backend: str = "auto",
    distributed: bool = False,
    process_group=None,
) -> Tensor:
    r"""``lambda_dice * dice_loss + lambda_focal * focal``.

    The focal term (Lin et al., 2017) is, per position, ``-sum_c w_c g_c (1 - p_c)^gamma log p_c``
    with the softmax in multiclass mode, and per element
    ``-w_c [g (1-p)^gamma log p + (1-g) p^gamma log(1-p)]`` with the sigmoid otherwise; it is reduced
    like the cross-entropy of :func:`dice_ce_loss`, which it equals at ``gamma=0``.
    See :class:`diceloss.DiceFocalLoss`. Range: [0, inf).

    Example:
        >>> x = torch.zeros(1, 2, 4)
        >>> t = torch.tensor([[0, 0, 1, 1]])
        >>> round(float(dice_focal_loss(x, t, gamma=0.0)), 4)   # gamma = 0: Dice + CE
        1.1931
    """

    o = _Overlap(
        mode, from_logits, include_background, weight, ignore_index, batch_dice, backend, distributed, process_group
    )
    _check_compound(
        "DiceFocalLoss", o, reduction, smooth_nr, smooth_dr, absent, lambda_dice=lambda_dice, lambda_focal=lambda_focal
    )
    _checks.check_nonnegative("gamma", gamma)
    return _dice_focal(
        input,
        target,
        mask,
        o,
        squared=squared,
        log=log,
        smooth_nr=smooth_nr,
        smooth_dr=smooth_dr,
        absent=absent,
        soft_label=soft_label,
        reduction=reduction,
        gamma=gamma,
        lambda_dice=lambda_dice,
        lambda_focal=lambda_focal,
    )[0]


def _dice_focal(
    input,
    target,
    mask,
    o: _Overlap,
    *,
    squared,
    log,
    smooth_nr,
    smooth_dr,
    absent,
    soft_label,
    reduction,
    gamma,
    lambda_dice,
    lambda_focal,
):
    """(total, detached Dice, detached focal) of :func:`dice_focal_loss`, options already checked."""
    request = StatsRequest(squared=squared, soft_label=soft_label, focal_gamma=float(gamma))
    return _compound(
        input,
        target,
        mask,
        o,
        request,
        other="focal",
        log=log,
        smooth_nr=smooth_nr,
        smooth_dr=smooth_dr,
        absent=absent,
        reduction=reduction,
        lambda_dice=lambda_dice,
        lambda_other=lambda_focal,
    )


__all__ = [
    "dice_loss",
    "jaccard_loss",
    "tversky_loss",
    "generalized_dice_loss",
    "dice_ce_loss",
    "dice_focal_loss",
]
