"""``torchmetrics.Metric`` classes of Dice, IoU and calibration error, for training loops that log with Lightning.

:class:`DiceTorchMetric`, :class:`IoUTorchMetric` and :class:`CalibrationErrorTorchMetric` hold per-class sums
as ``add_state(..., dist_reduce_fx="sum")`` states, so ``self.log("val_dice", self.dice)`` in a
``LightningModule`` accumulates them over an epoch and torchmetrics sums them over the ranks. They compute
the numbers of :class:`diceloss.metrics.DiceMetric` (and :func:`~diceloss.metrics.dice_score`,
:func:`~diceloss.metrics.iou_score`) and :class:`diceloss.metrics.CalibrationErrorMetric` (and
:func:`~diceloss.metrics.calibration_error`), with the same options and input rules; ``compute()``
returns the NaN-ignoring mean over the scored classes (``reduction="mean"``, a scalar, as ``self.log``
needs) or the (K,) values per class (``reduction="none"``).

torchmetrics is optional: this module imports without it, and the classes raise an ``ImportError`` that
says ``pip install torchmetrics`` when one is made. Outside torchmetrics use the plain classes
:class:`~diceloss.metrics.DiceMetric` and :class:`~diceloss.metrics.CalibrationErrorMetric` (``update``,
``compute``, ``reset``, an all-reduce under ``torch.distributed``).

Example:
    >>> import torch
    >>> metric = DiceTorchMetric(mode="multiclass", num_classes=3)
    >>> metric.update(torch.tensor([[0, 1, 1, 2]]), torch.tensor([[0, 1, 2, 2]]))
    >>> metric.compute()
    tensor(0.7778, dtype=torch.float64)
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _checks, _layout
from .calibration import _check_bins, _default_binning, batch_state, errors_of_state
from .overlap import _finish, _score, hard_counts

try:
    from torchmetrics import Metric as _Base

    _MISSING: ImportError | None = None
except ImportError as err:  # torchmetrics is optional
    _Base = torch.nn.Module
    _MISSING = err


def _require(name: str) -> None:
    if _MISSING is not None:
        raise ImportError(
            f"{name} is a torchmetrics.Metric and needs torchmetrics, which is not installed (pip install "
            "torchmetrics); without it use diceloss.metrics.DiceMetric or CalibrationErrorMetric"
        ) from _MISSING


def _num_classes(cls: str, mode: str, num_classes: int | None) -> int:
    if mode == "binary":
        if num_classes not in (None, 1):
            raise ValueError(f"binary mode has one class, got num_classes={num_classes}")
        return 1
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(
            f"{cls} needs num_classes (a positive integer) in {mode} mode, to size its states, got {num_classes!r}"
        )
    return num_classes


class _OverlapTorchMetric(_Base):
    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        num_classes: int | None = None,
        include_background: bool = True,
        threshold: float = 0.5,
        from_logits: bool = False,
        ignore_index: int | None = None,
        aggregation: str = "sample",
        reduction: str = "mean",
        **kwargs,
    ) -> None:
        _require(type(self).__name__)
        super().__init__(**kwargs)
        _checks.check_choice("mode", mode, _checks.MODES)
        _checks.check_choice("aggregation", aggregation, ("sample", "global"))
        _checks.check_choice("reduction", reduction, ("none", "mean"))
        C = _num_classes(type(self).__name__, mode, num_classes)
        _layout._kept_classes(mode, C, include_background, ignore_index)  # raises when no class is left
        self.mode, self.num_classes = mode, (None if mode == "binary" else C)
        self.include_background, self.threshold, self.from_logits = include_background, threshold, from_logits
        self.ignore_index, self.aggregation, self.reduction = ignore_index, aggregation, reduction
        for name in ("score_sum", "counted", "num", "den"):  # per class: sum of per-sample scores, samples, sums
            self.add_state(name, default=torch.zeros(C, dtype=torch.float64), dist_reduce_fx="sum")

    def _num_den(self, I: Tensor, P: Tensor, G: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def update(self, input: Tensor, target: Tensor) -> None:
        I, P, G = hard_counts(
            input.detach(), target.detach(), mode=self.mode, threshold=self.threshold,
            from_logits=self.from_logits, ignore_index=self.ignore_index, num_classes=self.num_classes,
        )
        if I.shape[1] != self.num.shape[0]:
            raise ValueError(f"{type(self).__name__} was made for {self.num.shape[0]} classes, got a batch with "
                             f"{I.shape[1]}")
        num, den = self._num_den(I, P, G)
        per_sample = _score(num, den, "nan")
        counted = ~torch.isnan(per_sample)
        self.score_sum += torch.where(counted, per_sample, torch.zeros_like(per_sample)).sum(0)
        self.counted += counted.double().sum(0)
        self.num += num.double().sum(0)
        self.den += den.double().sum(0)

    def compute(self) -> Tensor:
        if self.aggregation == "sample":
            score = _score(self.score_sum, self.counted, "nan")
        else:
            score = _score(self.num, self.den, "nan")
        out = _finish(score[None], self.include_background, self.mode, self.reduction, self.ignore_index)
        return out[0] if self.reduction == "none" else out


class DiceTorchMetric(_OverlapTorchMetric):
    """Hard Dice 2I / (P + G) as a ``torchmetrics.Metric``: the numbers of :class:`~diceloss.metrics.DiceMetric`.

    Options as :class:`~diceloss.metrics.DiceMetric` (``aggregation="sample"``: the mean over samples of the
    per-sample Dice, classes empty in a sample left out; ``"global"``: 2 sum I / sum (P + G)), plus
    ``reduction`` ("mean": a scalar; "none": (K,)) and torchmetrics' keyword arguments. ``num_classes`` is
    required outside binary mode (the states are sized at construction).
    """

    def _num_den(self, I, P, G):
        return 2 * I, P + G


class IoUTorchMetric(_OverlapTorchMetric):
    """Hard IoU I / (P + G - I) as a ``torchmetrics.Metric``; options as :class:`DiceTorchMetric`. Per sample it
    is :func:`~diceloss.metrics.iou_score`; ``aggregation="global"`` is sum I / sum (P + G - I)."""

    def _num_den(self, I, P, G):
        return I, P + G - I


class CalibrationErrorTorchMetric(_Base):
    """A calibration error (ECE, ACE, MCE) as a ``torchmetrics.Metric``: the numbers of
    :class:`~diceloss.metrics.CalibrationErrorMetric`, with its options plus ``reduction`` ("mean": a scalar;
    "none": (K,)). ``update(probs, target, mask=None)``; ``num_classes`` is required outside binary mode.
    One state, summed over the ranks: the bin sums (K, bins, 3) (``aggregation="global"``, equal-width bins)
    or the sum of per-sample errors and the samples counted, (2, K) (``aggregation="sample"``).
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        bins: int = 10,
        kind: str = "ece",
        binning: str | None = None,
        aggregation: str = "global",
        num_classes: int | None = None,
        include_background: bool = True,
        from_logits: bool = False,
        ignore_index: int | None = None,
        reduction: str = "mean",
        **kwargs,
    ) -> None:
        _require(type(self).__name__)
        super().__init__(**kwargs)
        _checks.check_choice("mode", mode, _checks.MODES)
        _checks.check_choice("aggregation", aggregation, ("sample", "global"))
        _checks.check_choice("reduction", reduction, ("none", "mean"))
        binning = _default_binning(kind, binning)
        if aggregation == "global" and binning == "mass":
            raise ValueError(
                "aggregation='global' accumulates per-bin sums and needs binning='width'; got binning='mass' "
                "(equal-mass bins depend on every probability at once): pass binning='width' or aggregation='sample'"
            )
        C = _num_classes(type(self).__name__, mode, num_classes)
        kept = _layout._kept_classes(mode, C, include_background, ignore_index)
        K = C if kept is None else len(kept)
        self.kind, self.aggregation, self.reduction = kind, aggregation, reduction
        self._options = dict(mode=mode, bins=_check_bins(bins), binning=binning, from_logits=from_logits,
                             include_background=include_background, ignore_index=ignore_index)
        shape = (K, bins, 3) if aggregation == "global" else (2, K)
        self.add_state("state", default=torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, probs: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        state = batch_state(probs.detach(), target.detach(), kind=self.kind, aggregation=self.aggregation,
                            mask=mask, **self._options)
        if state.shape != self.state.shape:
            raise ValueError(f"{type(self).__name__} has a state of shape {tuple(self.state.shape)}, got a batch "
                             f"whose state has shape {tuple(state.shape)}: the number of classes differs")
        self.state += state

    def compute(self) -> Tensor:
        return errors_of_state(self.state, self.kind, self.aggregation, self.reduction)


__all__ = ["DiceTorchMetric", "IoUTorchMetric", "CalibrationErrorTorchMetric"]
