"""Hard-label overlap metrics: Dice and IoU per sample and class, and an accumulating :class:`DiceMetric`.

Predictions become hard labels first (argmax over the classes in multiclass mode; a threshold in
binary and multilabel modes), then the counts per (sample, class) are

    I = |pred == c and target == c|,   P = |pred == c|,   G = |target == c|

over the valid positions; Dice = 2I / (P + G), IoU = I / (P + G - I). A class absent from both
prediction and target has no defined value: ``empty`` sets it ("nan", skipped by the means; "one";
"zero"; the vocabulary is :data:`EMPTY_POLICIES`, the default here "nan", see :mod:`diceloss.metrics`).
Class-index maps are counted with one ``bincount`` of (sample, target, prediction): no one-hot tensor.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import _checks, _layout, distributed

EMPTY_POLICIES = ("nan", "one", "zero")
"""The values a class absent from both prediction and target can take, for every metric of diceloss:
"nan" (undefined; left out of the means), "one" (a perfect score), "zero"."""

_FILL = {"nan": math.nan, "one": 1.0, "zero": 0.0}


def empty_fill(empty: str) -> float:
    """The number a score takes under the empty-class policy ``empty`` (one of :data:`EMPTY_POLICIES`)."""
    return _FILL[empty]


def _labels_multiclass(input: Tensor, target: Tensor, num_classes: int | None):
    """Hard class maps (B, N) of prediction and target, and C."""
    C = num_classes
    if input.is_floating_point():
        if input.ndim < 3:
            raise ValueError(
                f"multiclass scores must have shape (B, C, *spatial), got {tuple(input.shape)}; integer class maps "
                "are taken as (B, *spatial)"
            )
        if C is not None and input.shape[1] != C:
            raise ValueError(f"num_classes={C} differs from the scores' C = {input.shape[1]}")
        C = input.shape[1]
        spatial = tuple(input.shape[2:])
        pred = input.argmax(dim=1)
    else:
        if input.dtype == torch.bool:
            raise TypeError(
                "multiclass predictions must be class indices (integer) or scores (float), got bool"
            )
        pred = (
            input[:, 0]
            if input.ndim >= 3 and input.shape[1] == 1 and target.ndim == input.ndim - 1
            else input
        )
        spatial = tuple(pred.shape[1:])
    B = pred.shape[0]
    if target.is_floating_point() and target.ndim == len(spatial) + 2 and target.shape[1] not in (1,):
        if C is not None and target.shape[1] != C:
            raise ValueError(f"one-hot target has {target.shape[1]} channels, expected C = {C}")
        C = target.shape[1]
        tgt = target.argmax(dim=1)
    elif target.ndim == len(spatial) + 2 and target.shape[1] == 1:
        tgt = target[:, 0]
    else:
        tgt = target
    if tuple(tgt.shape) != (B, *spatial):
        raise ValueError(
            f"target of shape {tuple(target.shape)} does not match the prediction's (B, *spatial) = {(B, *spatial)}"
        )
    if C is None:
        raise ValueError("num_classes is needed when both prediction and target are class-index maps")
    if tgt.is_floating_point():
        tgt = tgt.round()
    return pred.reshape(B, -1).long(), tgt.reshape(B, -1).long(), C


def hard_counts(
    input: Tensor,
    target: Tensor,
    *,
    mode: str,
    threshold: float = 0.5,
    from_logits: bool = False,
    ignore_index: int | None = None,
    num_classes: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Counts (I, P, G), each (B, C) int64, of hard predictions against the target."""
    _checks.check_choice("mode", mode, _checks.MODES)
    if not isinstance(input, Tensor) or not isinstance(target, Tensor):
        raise TypeError("input and target must be torch.Tensor")
    if input.device != target.device:
        raise ValueError(f"input is on {input.device} but target on {target.device}")
    if mode == "multiclass":
        pred, tgt, C = _labels_multiclass(input, target, num_classes)
        B = pred.shape[0]
        valid = torch.ones_like(tgt, dtype=torch.bool) if ignore_index is None else tgt != ignore_index
        if _checks.value_checks_enabled(input.device):
            _layout.check_index_range(pred, C, what="prediction class indices")
            _layout.check_index_range(tgt, C, valid=None if ignore_index is None else valid,
                                      what="target class indices")
        b = torch.arange(B, device=pred.device)[:, None].expand_as(pred)
        flat = ((b * C + tgt.clamp(0, C - 1)) * C + pred.clamp(0, C - 1))[valid]
        conf = torch.bincount(flat, minlength=B * C * C).reshape(B, C, C)  # [b, target, prediction]
        inter = conf.diagonal(dim1=1, dim2=2)
        return inter.clone(), conf.sum(dim=1), conf.sum(dim=2)
    # binary and multilabel: elementwise
    if input.is_floating_point():
        pred = input > (0.0 if from_logits else threshold)
    else:
        pred = input != 0
    if tuple(pred.shape) != tuple(target.shape):
        if mode == "binary" and pred.numel() == target.numel() and pred.shape[0] == target.shape[0]:
            target = target.reshape(pred.shape)
        else:
            raise ValueError(
                f"prediction {tuple(input.shape)} and target {tuple(target.shape)} must have one shape"
            )
    B = pred.shape[0]
    C = 1 if mode == "binary" else pred.shape[1]
    valid = torch.ones_like(pred) if ignore_index is None else target != ignore_index
    tgt = (target > 0.5) & valid
    pred = pred & valid
    pred, tgt = pred.reshape(B, C, -1), tgt.reshape(B, C, -1)
    return (pred & tgt).sum(-1), pred.sum(-1), tgt.sum(-1)


def _score(num: Tensor, den: Tensor, empty: str) -> Tensor:
    num, den = num.double(), den.double()
    return torch.where(den > 0, num / den.clamp_min(1), torch.full_like(num, empty_fill(empty)))


def _finish(score: Tensor, include_background: bool, mode: str, reduction: str) -> Tensor:
    if not include_background and mode != "binary":
        score = score[:, 1:]
    if reduction == "mean":
        return torch.nanmean(score)
    return score


def _check_metric_options(empty: str, reduction: str) -> None:
    _checks.check_choice("empty", empty, EMPTY_POLICIES)
    _checks.check_choice("reduction", reduction, ("none", "mean"))


def dice_score(
    input: Tensor,
    target: Tensor,
    *,
    mode: str,
    threshold: float = 0.5,
    from_logits: bool = False,
    include_background: bool = True,
    empty: str = "nan",
    reduction: str = "none",
    ignore_index: int | None = None,
    num_classes: int | None = None,
) -> Tensor:
    """Hard Dice 2I / (P + G) per sample and class.

    Args:
        input: hard labels (integer: class indices (B, *S) in multiclass mode, 0/1 of the target's shape
            otherwise) or scores (float: argmax over C in multiclass mode; otherwise thresholded at
            ``threshold``, or at 0 with ``from_logits=True``).
        target: class indices (B, *S) / (B, 1, *S) or one-hot (B, C, *S) in multiclass mode; 0/1 of the
            input's shape otherwise.
        empty: value for a class absent from both: "nan" | "one" | "zero".
        reduction: "none" -> (B, K) float64; "mean" -> the NaN-ignoring mean, ().
        ignore_index: target value whose positions (elements) are skipped.
        num_classes: C, needed only when prediction and target are both class-index maps.

    Example:
        >>> pred = torch.tensor([[0, 1, 1, 2]])
        >>> gt = torch.tensor([[0, 1, 2, 2]])
        >>> dice_score(pred, gt, mode="multiclass", num_classes=3)
        tensor([[1.0000, 0.6667, 0.6667]], dtype=torch.float64)
    """
    _check_metric_options(empty, reduction)
    I, P, G = hard_counts(
        input,
        target,
        mode=mode,
        threshold=threshold,
        from_logits=from_logits,
        ignore_index=ignore_index,
        num_classes=num_classes,
    )
    return _finish(_score(2 * I, P + G, empty), include_background, mode, reduction)


def iou_score(
    input: Tensor,
    target: Tensor,
    *,
    mode: str,
    threshold: float = 0.5,
    from_logits: bool = False,
    include_background: bool = True,
    empty: str = "nan",
    reduction: str = "none",
    ignore_index: int | None = None,
    num_classes: int | None = None,
) -> Tensor:
    """Hard IoU I / (P + G - I) per sample and class; arguments as :func:`dice_score`.

    Example:
        >>> pred = torch.tensor([[0, 1, 1, 2]])
        >>> gt = torch.tensor([[0, 1, 2, 2]])
        >>> iou_score(pred, gt, mode="multiclass", num_classes=3)
        tensor([[1.0000, 0.5000, 0.5000]], dtype=torch.float64)
    """
    _check_metric_options(empty, reduction)
    I, P, G = hard_counts(
        input,
        target,
        mode=mode,
        threshold=threshold,
        from_logits=from_logits,
        ignore_index=ignore_index,
        num_classes=num_classes,
    )
    return _finish(_score(I, P + G - I, empty), include_background, mode, reduction)


class DiceMetric:
    """Accumulates hard Dice over batches: ``update(input, target)``, ``compute()``, ``reset()``.

    ``aggregation="sample"``: the mean over samples of the per-sample Dice per class (classes empty in
    a sample are left out, as ``empty="nan"``); ``"global"``: 2 sum I / sum (P + G) over everything seen.
    ``compute()`` returns (K,) per class with ``reduction="none"``, or their NaN-ignoring mean. The
    state is sums only; under ``torch.distributed`` ``compute()`` sums it over the ranks first.

    Example:
        >>> metric = DiceMetric(mode="multiclass", num_classes=3)
        >>> metric.update(torch.tensor([[0, 1, 1, 2]]), torch.tensor([[0, 1, 2, 2]]))
        >>> metric.compute(reduction="none")
        tensor([1.0000, 0.6667, 0.6667], dtype=torch.float64)
    """

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
        process_group=None,
    ) -> None:
        _checks.check_choice("mode", mode, _checks.MODES)
        _checks.check_choice("aggregation", aggregation, ("sample", "global"))
        self.mode = mode
        self.num_classes = num_classes
        self.include_background = include_background
        self.threshold = threshold
        self.from_logits = from_logits
        self.ignore_index = ignore_index
        self.aggregation = aggregation
        self.process_group = process_group
        self.reset()

    def reset(self) -> None:
        self._state: Tensor | None = (
            None  # (4, C): sum of per-sample Dice, samples counted, sum 2I, sum P + G
        )

    @torch.no_grad()
    def update(self, input: Tensor, target: Tensor) -> None:
        I, P, G = hard_counts(
            input,
            target,
            mode=self.mode,
            threshold=self.threshold,
            from_logits=self.from_logits,
            ignore_index=self.ignore_index,
            num_classes=self.num_classes,
        )
        per_sample = _score(2 * I, P + G, "nan")
        counted = ~torch.isnan(per_sample)
        state = torch.stack(
            [
                torch.where(counted, per_sample, torch.zeros_like(per_sample)).sum(0),
                counted.double().sum(0),
                (2 * I).double().sum(0),
                (P + G).double().sum(0),
            ]
        )
        if self._state is not None and self._state.shape != state.shape:
            raise ValueError(f"update with {state.shape[1]} classes after {self._state.shape[1]}")
        self._state = state if self._state is None else self._state + state

    def compute(self, reduction: str = "mean") -> Tensor:
        _checks.check_choice("reduction", reduction, ("none", "mean"))
        import torch.distributed as dist

        in_group = dist.is_available() and dist.is_initialized()
        state = self._state
        if state is None:
            # A rank that saw no batch must still join the all-reduce, with zeros, or the others hang.
            if self.num_classes is None and self.mode != "binary":
                raise RuntimeError(
                    "DiceMetric.compute() called before any update(); pass num_classes to the constructor so that "
                    "a rank without data can contribute zeros"
                )
            classes = 1 if self.mode == "binary" else self.num_classes
            device = torch.device("cpu")
            if in_group and dist.get_backend(self.process_group) == "nccl":
                device = torch.device("cuda", torch.cuda.current_device())
            state = torch.zeros(4, classes, dtype=torch.float64, device=device)
        if in_group:
            state = distributed.all_reduce_sum_(state.clone(), self.process_group)
        if self.aggregation == "sample":
            score = _score(state[0], state[1], "nan")
        else:
            score = _score(state[2], state[3], "nan")
        return (
            _finish(score[None], self.include_background, self.mode, reduction)[0]
            if reduction == "none"
            else _finish(score[None], self.include_background, self.mode, "mean")
        )


__all__ = ["EMPTY_POLICIES", "dice_score", "iou_score", "hard_counts", "DiceMetric"]
