"""Dice-family losses as ``nn.Module`` classes: thin holders of options around :mod:`diceloss.functional`.

Options are checked in the constructor, so a wrong option fails where it is written, not at the
first batch. ``forward(input, target, mask=None)``; shapes as in :mod:`diceloss.functional`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from . import _checks, functional
from .functional import _check_overlap_options, _check_tversky

_COMMON_DOC = """
    Args:
        mode: "binary" | "multiclass" | "multilabel" (see :mod:`diceloss.functional` for the shapes).
        from_logits: ``True``: ``input`` holds logits (softmax over C in multiclass mode, sigmoid
            otherwise); ``False``: probabilities in [0, 1].
        include_background: keep class 0 (multiclass, multilabel); ignored in binary mode.
        weight: one non-negative weight per class, length C (also without background; its weight is then
            unused). Per-class losses are multiplied by it; "mean" divides by the sum of the weights of the
            classes averaged.
        ignore_index: multiclass: a class index marking positions to skip (any integer; a real class is
            also dropped from the class mean); binary, multilabel: a target value marking elements to skip.
        batch_dice: sum the statistics over the batch before the head (one Dice per class).
        smooth_nr, smooth_dr: added to numerator and denominator; ``smooth_nr <= smooth_dr``.
        absent: "include" every class in the mean, or "exclude" the classes absent from a group's target
            (a true mean over present classes; a group with none contributes 0 and is still counted).
            "exclude" hides false positives on absent classes.
        soft_label: intersection sum(min(p, g)) (Dice semimetric): with soft targets the loss is 0
            exactly at p = g; with hard targets it equals the ordinary loss.
        reduction: "mean" | "sum" | "none" ((B, K), or (K,) with ``batch_dice``).
        backend: "auto" | "reference" | "fused" | "triton".
        distributed: with ``batch_dice``, sum the statistics over the ranks of ``process_group``
            (torch.distributed) before the head, differentiably.
"""


class _OverlapLoss(nn.Module):
    """Options shared by the per-class losses."""

    weight: Tensor | None

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        from_logits: bool = True,
        include_background: bool = True,
        weight: Sequence[float] | Tensor | None = None,
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
    ) -> None:
        super().__init__()
        _check_overlap_options(
            mode,
            reduction,
            smooth_nr,
            smooth_dr,
            backend,
            absent,
            ignore_index,
            distributed,
            batch_dice,
        )
        self.mode = mode
        self.from_logits = from_logits
        self.include_background = include_background
        self.register_buffer("weight", _checks.check_weight(weight))
        self.ignore_index = ignore_index
        self.batch_dice = batch_dice
        self.smooth_nr = smooth_nr
        self.smooth_dr = smooth_dr
        self.absent = absent
        self.soft_label = soft_label
        self.reduction = reduction
        self.backend = backend
        self.distributed = distributed
        self.process_group = process_group

    def _overlap_options(self) -> functional._Overlap:
        # built per call: `weight` is a buffer and follows the module across devices
        return functional._Overlap(
            self.mode,
            self.from_logits,
            self.include_background,
            self.weight,
            self.ignore_index,
            self.batch_dice,
            self.backend,
            self.distributed,
            self.process_group,
        )

    def _head_options(self) -> dict:
        return dict(
            smooth_nr=self.smooth_nr,
            smooth_dr=self.smooth_dr,
            absent=self.absent,
            soft_label=self.soft_label,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, reduction={self.reduction!r}, batch_dice={self.batch_dice}"


class DiceLoss(_OverlapLoss):
    __doc__ = (
        r"""Dice loss, per class ``1 - D`` (``-log D`` with ``log=True``)::

        D = (2 I + s_nr) / (P + G + s_dr),   I = sum p g,  P = sum p^q,  G = sum g^q

    with q = 2 for ``squared=True`` (V-Net), sums over the valid positions of a sample (or of the
    batch with ``batch_dice``). Range: [0, 1]; [0, 17.12] with ``log=True``
    (``-log D`` down to D = 1e-7, continued by its tangent line, so the gradient never vanishes).
    """
        + _COMMON_DOC
        + """        squared: V-Net denominator sum p^2 + sum g^2.
        log: ``-log D`` per class instead of ``1 - D``.

    Shape:
        input (B, C, *S), target (B, *S) / (B, 1, *S) / (B, C, *S), mask (B, *S) or (B, 1, *S);
        output () for "mean" / "sum", (B, K) or (K,) for "none".

    Example:
        >>> loss = DiceLoss()
        >>> x = torch.randn(2, 3, 8, 8, requires_grad=True)
        >>> t = torch.randint(0, 3, (2, 8, 8))
        >>> loss(x, t).backward()
    """
    )

    def __init__(self, mode: str = "multiclass", *, squared: bool = False, log: bool = False, **kwargs) -> None:
        super().__init__(mode, **kwargs)
        self.squared = squared
        self.log = log

    def forward(self, input: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        # the options were checked by the constructor: straight to the implementation (per-call cost)
        return functional._dice_loss(
            input, target, mask, self._overlap_options(), self.squared, self.log, self.smooth_nr, self.smooth_dr,
            self.absent, self.soft_label, self.reduction,
        )


class JaccardLoss(_OverlapLoss):
    __doc__ = (
        r"""Jaccard (soft IoU) loss, per class ``1 - J``, ``J = (I + s_nr) / (P + G - I + s_dr)``.
    Range: [0, 1].

    MONAI's ``DiceLoss(jaccard=True)`` computes ``(2I + s) / (2(P + G - I) + s)`` instead: the same
    value up to how the smoothing enters.
    """
        + _COMMON_DOC
        + """
    Example:
        >>> loss = JaccardLoss(mode="multilabel")
        >>> x = torch.randn(2, 3, 16)
        >>> t = (torch.rand(2, 3, 16) > 0.5).float()
        >>> 0 <= float(loss(x, t)) <= 1
        True
    """
    )

    def forward(self, input: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        return functional._jaccard_loss(
            input, target, mask, self._overlap_options(), self.smooth_nr, self.smooth_dr, self.absent,
            self.soft_label, self.reduction,
        )


class TverskyLoss(_OverlapLoss):
    __doc__ = (
        r"""Tversky loss, per class ``(1 - T) ** exponent`` (focal Tversky for exponent != 1)::

        T = (I + s_nr) / (I + alpha (P - I) + beta (G - I) + s_dr)

    ``alpha`` weighs false positives, ``beta`` false negatives; alpha = beta = 0.5 gives Dice,
    alpha = beta = 1 Jaccard. The exponent applies per class, before the class mean (Abraham & Khan,
    2019). Range: [0, 1].
    """
        + _COMMON_DOC
        + """        alpha, beta: >= 0, not both 0.
        exponent: > 0; 0.75 is the focal Tversky of the paper.

    Example:
        >>> loss = TverskyLoss(alpha=0.3, beta=0.7, exponent=0.75)
        >>> x = torch.randn(2, 4, 8, 8, 8)
        >>> t = torch.randint(0, 4, (2, 8, 8, 8))
        >>> float(loss(x, t)) > 0
        True
    """
    )

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        alpha: float = 0.5,
        beta: float = 0.5,
        exponent: float = 1.0,
        **kwargs,
    ) -> None:
        super().__init__(mode, **kwargs)
        _check_tversky(alpha, beta, exponent)
        self.alpha, self.beta, self.exponent = alpha, beta, exponent

    def forward(self, input: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        return functional._tversky_loss(
            input, target, mask, self._overlap_options(), self.alpha, self.beta, self.exponent, self.smooth_nr,
            self.smooth_dr, self.absent, self.soft_label, self.reduction,
        )


class GeneralizedDiceLoss(nn.Module):
    r"""Generalized Dice loss (Sudre et al., 2017), per group (sample, or the batch with ``batch_dice``)::

        1 - (2 sum_c w_c I_c + s_nr) / (sum_c w_c (P_c + G_c) + s_dr),   w_c = 1/G_c^2 | 1/G_c | 1

    ``weighting``: "square" | "simple" | "uniform". A class absent from the group's target takes the
    group's largest finite weight (MONAI's rule); a group with no present class takes uniform weights,
    so false positives are still penalised (MONAI returns 0 there). Takes no ``weight``: the weights
    are its own. Range: [0, 1].

    Shape: output () for "mean" / "sum"; (B,), or () with ``batch_dice``, for "none".

    Example:
        >>> loss = GeneralizedDiceLoss(weighting="simple")
        >>> x = torch.randn(2, 3, 8, 8)
        >>> t = torch.randint(0, 3, (2, 8, 8))
        >>> tuple(GeneralizedDiceLoss(reduction="none")(x, t).shape)
        (2,)
    """

    def __init__(
        self,
        mode: str = "multiclass",
        *,
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
    ) -> None:
        super().__init__()
        _check_overlap_options(
            mode, reduction, smooth_nr, smooth_dr, backend, "include", ignore_index, distributed, batch_dice
        )
        _checks.check_choice("weighting", weighting, _checks.WEIGHTINGS)
        self.overlap = functional._Overlap(
            mode, from_logits, include_background, None, ignore_index, batch_dice, backend, distributed, process_group
        )
        self.weighting = weighting
        self.smooth_nr = smooth_nr
        self.smooth_dr = smooth_dr
        self.soft_label = soft_label
        self.reduction = reduction

    def forward(self, input: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        return functional._generalized_dice_loss(
            input, target, mask, self.overlap, self.weighting, self.smooth_nr, self.smooth_dr, self.soft_label,
            self.reduction,
        )


class _CompoundLoss(_OverlapLoss):
    """A Dice loss plus a pixel-wise term; ``components`` holds the detached terms of the last call."""

    def __init__(
        self, name: str, mode: str, squared: bool, log: bool, reduction: str, lambdas: dict[str, float], **kwargs
    ) -> None:
        _checks.check_compound_reduction(reduction, name)
        super().__init__(mode, reduction=reduction, **kwargs)
        for key, value in lambdas.items():
            _checks.check_nonnegative(key, value)
        self.squared = squared
        self.log = log
        self.components: dict[str, Tensor] = {}


class DiceCELoss(_CompoundLoss):
    __doc__ = (
        r"""``lambda_dice * DiceLoss + lambda_ce * cross-entropy``.

    The cross-entropy is ``torch.nn.functional.cross_entropy`` in multiclass mode (same ``weight``,
    ``ignore_index`` and ``label_smoothing`` semantics; with a ``weight``, one-hot and soft targets
    take the weighted mean of class indices, ``sum_n sum_c w_c g_c``, so every target format of the
    same labels gives the same loss) and ``binary_cross_entropy_with_logits`` in binary and
    multilabel modes, with ``weight`` a per-channel factor. ``mask`` removes positions from both.
    ``reduction``: "mean" or "sum" only. ``components`` holds the detached ``dice`` and ``ce`` terms
    of the last call, for logging. Range: [0, inf).
    """
        + _COMMON_DOC
        + """        squared, log: as in :class:`DiceLoss`.
        lambda_dice, lambda_ce: non-negative factors of the two terms.
        label_smoothing: in [0, 1], as in ``cross_entropy`` (binary: targets move towards 1/2).

    Example:
        >>> loss = DiceCELoss(include_background=False)
        >>> x = torch.randn(2, 3, 8, 8, requires_grad=True)
        >>> t = torch.randint(0, 3, (2, 8, 8))
        >>> loss(x, t).backward()
        >>> sorted(loss.components)
        ['ce', 'dice']
    """
    )

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        squared: bool = False,
        log: bool = False,
        reduction: str = "mean",
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        label_smoothing: float = 0.0,
        **kwargs,
    ) -> None:
        lambdas = dict(lambda_dice=lambda_dice, lambda_ce=lambda_ce)
        super().__init__("DiceCELoss", mode, squared, log, reduction, lambdas, **kwargs)
        _checks.check_nonnegative("label_smoothing", label_smoothing, at_most=1.0)
        self.lambda_dice, self.lambda_ce, self.label_smoothing = lambda_dice, lambda_ce, label_smoothing

    def forward(self, input: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        total, dice, ce = functional._dice_ce(
            input,
            target,
            mask,
            self._overlap_options(),
            squared=self.squared,
            log=self.log,
            lambda_dice=self.lambda_dice,
            lambda_ce=self.lambda_ce,
            label_smoothing=self.label_smoothing,
            **self._head_options(),
        )
        self.components = {"dice": dice, "ce": ce}
        return total


class DiceFocalLoss(_CompoundLoss):
    __doc__ = (
        r"""``lambda_dice * DiceLoss + lambda_focal * focal loss``.

    The focal term is a softmax focal loss in multiclass mode,
    ``-sum_c w_c g_c (1 - p_c)^gamma log p_c`` per position, and a sigmoid one per element otherwise,
    reduced like the cross-entropy of :class:`DiceCELoss` (which it equals at ``gamma=0``).
    ``reduction``: "mean" or "sum" only. ``components`` holds the detached ``dice`` and ``focal``
    terms of the last call. Range: [0, inf).
    """
        + _COMMON_DOC
        + """        squared, log: as in :class:`DiceLoss`.
        gamma: focusing parameter, >= 0.
        lambda_dice, lambda_focal: non-negative factors of the two terms.

    Example:
        >>> loss = DiceFocalLoss(mode="multilabel", gamma=2.0)
        >>> x = torch.randn(2, 3, 8, 8)
        >>> t = (torch.rand(2, 3, 8, 8) > 0.7).float()
        >>> float(loss(x, t)) > 0
        True
    """
    )

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        squared: bool = False,
        log: bool = False,
        reduction: str = "mean",
        gamma: float = 2.0,
        lambda_dice: float = 1.0,
        lambda_focal: float = 1.0,
        **kwargs,
    ) -> None:
        lambdas = dict(lambda_dice=lambda_dice, lambda_focal=lambda_focal)
        super().__init__("DiceFocalLoss", mode, squared, log, reduction, lambdas, **kwargs)
        _checks.check_nonnegative("gamma", gamma)
        self.gamma, self.lambda_dice, self.lambda_focal = gamma, lambda_dice, lambda_focal

    def forward(self, input: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        total, dice, focal = functional._dice_focal(
            input,
            target,
            mask,
            self._overlap_options(),
            squared=self.squared,
            log=self.log,
            gamma=self.gamma,
            lambda_dice=self.lambda_dice,
            lambda_focal=self.lambda_focal,
            **self._head_options(),
        )
        self.components = {"dice": dice, "focal": focal}
        return total


__all__ = ["DiceLoss", "JaccardLoss", "TverskyLoss", "GeneralizedDiceLoss", "DiceCELoss", "DiceFocalLoss"]

# torch is used in the doctest examples
_ = torch
