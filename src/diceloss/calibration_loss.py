r"""L1 average calibration error loss (Barfoot et al., MICCAI 2024 UNSURE, arXiv 2403.06759): hard and soft binning.

Each class c is scored one-vs-rest: its probability p against its target g. The valid positions of a sample are
split into K bins of p (:mod:`diceloss.stats.bins`); bin k holds n_k positions (a sum of shares for soft bins) with
mean probability conf_k = sum p / n_k and mean target acc_k = sum g / n_k. Per (sample b, class c)::

    L[b, c] = 1/|K+| sum_{k in K+} |conf_k - acc_k|,       K+ = the bins with n_k >= empty_weight

(0 when no bin is filled), averaged over the classes and samples (``absent="exclude"``, the default: over the
classes present in the sample's target, as the authors' ``ignore_empty_classes=True``). With ``batch_dice=True``
the bin sums run over the batch first (one value per class).

* ``soft=False``: hard bins (k/K, (k+1)/K]: the adaptive calibration error of MONAI's
  ``CalibrationErrorMetric(calibration_reduction="average")`` and of :func:`diceloss.metrics.calibration_error`
  with ``kind="ace", binning="width"``, made a loss: its gradient moves each conf_k (sign(conf_k - acc_k) / (n_k
  |K+|) per position of the bin), the bins stay put.
* ``soft=True``: each probability splits linearly between its two nearest bin centres (k + 1/2)/K, so the bin
  weights, counts and targets move with p too: a smoother loss (the authors' "soft L1 ACE").

It is trained with Dice + cross-entropy: the authors weigh Dice : CE : ACE = 1 : 1 : 1 (their bundles) and the
MONAI tutorial 1 : 1 : 0.3. The statistics are the (B, C, K, 3) bin sums of :mod:`diceloss.stats.bins`, computed
without one-hot targets over the whole volume and without saving the probabilities (the backward recomputes
them), by a chunked PyTorch path or the Triton kernels of :mod:`diceloss.stats.triton.bins`.

Example:
    >>> import torch
    >>> from diceloss.calibration_loss import calibration_loss
    >>> p = torch.tensor([[[0.9, 0.8, 0.3, 0.1]]])                  # binary probabilities
    >>> g = torch.tensor([[[1.0, 0.0, 0.0, 0.0]]])
    >>> # bins [0, .5]: conf .2, acc 0; (.5, 1]: conf .85, acc .5: (0.2 + 0.35) / 2
    >>> round(float(calibration_loss(p, g, mode="binary", bins=2, from_logits=False)), 6)
    0.275
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
from torch import Tensor

from ._checks import (
    ABSENT_POLICIES,
    check_choice,
    check_nonnegative,
    check_option_fields,
    set_field,
)
from ._layout import prepare
from .distributed import all_reduce_sum
from .heads import reduce_class_losses
from .losses import _Option, _OptionsModule
from .stats import bins as bin_stats
from .stats.types import COL_BIN_G, COL_BIN_N, COL_BIN_P

__all__ = ["calibration_loss", "CalibrationLoss", "CalibrationOptions", "l1_ace_of_bin_sums"]

# more bins than this is a mistake (a typo, or probabilities passed as the count)
MAX_BINS = 10_000


def _check_bins(bins: object) -> int:
    if isinstance(bins, bool) or not isinstance(bins, numbers.Integral):
        raise TypeError(f"bins must be an int, got {bins!r} ({type(bins).__name__})")
    if not 1 <= int(bins) <= MAX_BINS:
        raise ValueError(f"bins must be in [1, {MAX_BINS}], got {bins}")
    return int(bins)


@dataclass(frozen=True)
class CalibrationOptions:
    """The options of :func:`calibration_loss` / :class:`CalibrationLoss`, checked when made."""

    mode: str = "multiclass"
    from_logits: bool = True
    include_background: bool = True
    ignore_index: int | None = None
    batch_dice: bool = False
    bins: int = 20
    soft: bool = False
    empty_weight: float = 0.01
    absent: str = "exclude"
    reduction: str = "mean"
    backend: str = "auto"
    distributed: bool = False
    process_group: object = None

    def __post_init__(self) -> None:
        check_choice("absent", self.absent, ABSENT_POLICIES)
        check_option_fields(self, bools=("from_logits", "include_background", "batch_dice", "soft", "distributed"))
        set_field(self, "bins", _check_bins(self.bins))
        set_field(self, "empty_weight", check_nonnegative("empty_weight", self.empty_weight, positive=True))
        if self.distributed and not self.batch_dice:
            raise ValueError(
                "distributed=True sums the bin sums over the ranks, which only batch_dice=True needs; the "
                "per-sample loss (batch_dice=False) needs no synchronisation"
            )


def l1_ace_of_bin_sums(sums: Tensor, empty_weight: float = 0.01) -> Tensor:
    """The L1 average calibration error of bin sums (..., K, 3) (columns SP, SG, N): the mean over the bins with
    N >= ``empty_weight`` of |SP - SG| / N; 0 where no bin is filled. Differentiable (plain PyTorch)."""
    sp, sg, n = sums[..., COL_BIN_P], sums[..., COL_BIN_G], sums[..., COL_BIN_N]
    filled = n >= empty_weight
    gap = torch.where(filled, (sp - sg).abs() / torch.where(filled, n, torch.ones_like(n)), torch.zeros_like(n))
    count = filled.sum(-1)
    return torch.where(count > 0, gap.sum(-1) / count.clamp_min(1), torch.zeros_like(gap[..., 0]))


def _class_losses(input: Tensor, target: Tensor, mask: Tensor | None, o: CalibrationOptions):
    """(per (group, class kept) losses, present (or None))."""
    prep = prepare(
        input,
        target,
        mode=o.mode,
        from_logits=o.from_logits,
        ignore_index=o.ignore_index,
        mask=mask,
        include_background=o.include_background,
    )
    backend = bin_stats.select_backend(o.backend, prep, o.bins)
    sums = bin_stats.compute(prep, o.bins, o.soft, backend)
    if prep.kept_classes is not None:
        sums = sums[:, list(prep.kept_classes)]
    if o.batch_dice:
        sums = sums.sum(dim=0, keepdim=True)
        if o.distributed:
            sums = all_reduce_sum(sums, o.process_group)
    losses = l1_ace_of_bin_sums(sums, o.empty_weight)
    present = (sums[..., COL_BIN_G].detach().sum(-1) > 0) if o.absent == "exclude" else None
    return losses, present


def _calibration(input, target, mask, o: CalibrationOptions) -> Tensor:
    losses, present = _class_losses(input, target, mask, o)
    return reduce_class_losses(losses, None, present, o.reduction, o.batch_dice)


_ARGS = """
    Args:
        mode: "binary" | "multiclass" | "multilabel", with the input conventions of :mod:`diceloss.functional`
            (class indices, (B, 1, *S), one-hot or soft targets: a soft target enters the bins as its value).
        from_logits: ``True``: logits (softmax over C in multiclass mode, sigmoid otherwise); ``False``:
            probabilities.
        include_background: keep class 0 (the authors' default keeps it); ignored in binary mode.
        ignore_index: multiclass: a class index marking positions to skip (a real class is also dropped from the
            class mean); binary, multilabel: a target value marking elements to skip.
        batch_dice: sum the bin sums over the batch first (one value per class: the calibration of the batch).
        bins: K, the number of equal-width bins (the authors' 20).
        soft: split each probability between its two nearest bin centres (soft L1 ACE) instead of one bin.
        empty_weight: a bin counts when its count (a sum of shares with ``soft``) is at least this (the authors'
            0.01); with hard bins any value in (0, 1] counts the non-empty bins.
        absent: "exclude" (default): a class absent from a sample's target is left out of that sample's mean (the
            authors' ``ignore_empty_classes=True``; see the differences in docs/losses/calibration.md);
            "include": every class counts (an absent class is calibrated towards p = 0).
        reduction: "mean" | "sum" | "none" ((B, K) per sample and class, or (K,) with ``batch_dice``; with
            ``absent="exclude"`` an absent class reads 0).
        backend: "auto" | "reference" | "fused" | "triton", for the bin sums.
        distributed: with ``batch_dice``, sum the bin sums over the ranks of ``process_group`` first,
            differentiably."""


def calibration_loss(
    input: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    *,
    bins: int = 20,
    soft: bool = False,
    empty_weight: float = 0.01,
    absent: str = "exclude",
    mode: str = "multiclass",
    from_logits: bool = True,
    include_background: bool = True,
    ignore_index: int | None = None,
    batch_dice: bool = False,
    reduction: str = "mean",
    backend: str = "auto",
    distributed: bool = False,
    process_group=None,
) -> Tensor:
    r"""L1 average calibration error loss (Barfoot et al., 2024). See :class:`diceloss.CalibrationLoss`.

    Example:
        >>> import diceloss
        >>> x = torch.randn(2, 3, 16, 16, requires_grad=True)
        >>> t = torch.randint(0, 3, (2, 16, 16))
        >>> loss = diceloss.functional.dice_ce_loss(x, t) + 0.3 * calibration_loss(x, t, soft=True)
        >>> loss.backward()
    """
    options = CalibrationOptions(
        mode, from_logits, include_background, ignore_index, batch_dice, bins, soft, empty_weight, absent, reduction,
        backend, distributed, process_group,
    )
    return _calibration(input, target, mask, options)


class CalibrationLoss(_OptionsModule):
    __doc__ = (
        r"""L1 average calibration error (Barfoot et al., MICCAI 2024 UNSURE): the mean over the filled bins of
    |mean probability - mean target|, per (sample, class), made differentiable, with hard or soft bins. Added to
    Dice + cross-entropy it lowers the calibration errors (ACE, MCE) of a segmentation network at no cost in Dice.

    Per (sample, class), over K equal-width bins of the class's probability (n_k positions in bin k, or a sum of
    shares with ``soft=True``)::

        L = 1/|K+| sum_{k in K+} |sum_k p - sum_k g| / n_k,     K+ = {k : n_k >= empty_weight}

    averaged over the classes (present in the sample's target, by default) and the samples. Range: [0, 1].
    """
        + _ARGS
        + """

    Shape:
        input (B, C, *S) (binary: (B, 1, *S) or (B, *S)); target as in :mod:`diceloss.functional`; mask (B, *S)
        or (B, 1, *S). Output () for "mean" / "sum", (B, K) or (K,) for "none".

    Example:
        >>> import diceloss
        >>> dice_ce, ace = diceloss.DiceCELoss(), CalibrationLoss(soft=True)
        >>> x = torch.randn(2, 3, 32, 32, requires_grad=True)
        >>> t = torch.randint(0, 3, (2, 32, 32))
        >>> (dice_ce(x, t) + 0.3 * ace(x, t)).backward()           # the MONAI tutorial's 1 : 1 : 0.3
        >>> ace.bins = 0
        Traceback (most recent call last):
        ...
        ValueError: bins must be in [1, 10000], got 0
    """
    )

    mode = _Option()
    from_logits = _Option()
    include_background = _Option()
    ignore_index = _Option()
    batch_dice = _Option()
    bins = _Option()
    soft = _Option()
    empty_weight = _Option()
    absent = _Option()
    reduction = _Option()
    backend = _Option()
    distributed = _Option()
    process_group = _Option()

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        bins: int = 20,
        soft: bool = False,
        empty_weight: float = 0.01,
        absent: str = "exclude",
        from_logits: bool = True,
        include_background: bool = True,
        ignore_index: int | None = None,
        batch_dice: bool = False,
        reduction: str = "mean",
        backend: str = "auto",
        distributed: bool = False,
        process_group=None,
    ) -> None:
        super().__init__()
        self._options = CalibrationOptions(
            mode, from_logits, include_background, ignore_index, batch_dice, bins, soft, empty_weight, absent,
            reduction, backend, distributed, process_group,
        )

    def forward(self, input: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        return _calibration(input, target, mask, self._options)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, bins={self.bins}, soft={self.soft}, reduction={self.reduction!r}"
