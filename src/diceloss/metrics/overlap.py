"""Hard-label overlap metrics: Dice and IoU per sample and class, and an accumulating :class:`DiceMetric`.

Predictions become hard labels first (argmax over the classes in multiclass mode; a threshold in
binary and multilabel modes), then the counts per (sample, class) are

    I = |pred == c and target == c|,   P = |pred == c|,   G = |target == c|

over the valid positions; Dice = 2I / (P + G), IoU = I / (P + G - I). A class absent from both
prediction and target has no defined value: ``empty`` sets it ("nan", skipped by the means; "one";
"zero"; the vocabulary is :data:`EMPTY_POLICIES`, the default here "nan", see :mod:`diceloss.metrics`).
Class-index maps are counted with three ``bincount`` of (sample, class), of the prediction, the target and
the positions where they agree: memory O(B * C), no one-hot tensor and no C x C confusion matrix.

The inputs follow the losses' rules (:func:`diceloss._layout.prepare`): the same layouts (a binary target
of another shape is an error even when its element count matches), one-hot targets of any real dtype
(float, int64 as ``F.one_hot`` returns, bool) whose rows sum to 1 (an all-zero row is an error, not
background), floating class indices that are whole numbers (never rounded), a non-empty dense batch. An
``ignore_index`` that names a class (multiclass, in [0, C)) drops that class, as the losses drop it from
K: it is not scored, not in the mean, and its column is absent with ``reduction="none"``.
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


def _check_common(input: object, target: object) -> tuple[Tensor, Tensor]:
    """The checks on any pair of tensors that the losses make too (:func:`diceloss._layout.prepare`)."""
    for name, t in (("input", input), ("target", target)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if input.device != target.device:
        raise ValueError(f"all tensors must be on one device, got input on {input.device}, target on {target.device}")
    for name, t in (("input", input), ("target", target)):
        if t.layout != torch.strided:
            raise TypeError(f"{name} must be a dense (strided) tensor, got layout {t.layout}; call .to_dense() first")
        if t.is_complex():
            raise TypeError(f"complex tensors are not supported, got {name} of dtype {t.dtype}")
        if t.is_floating_point() and t.dtype not in _layout.INPUT_DTYPES:
            raise TypeError(
                f"{name} dtype {t.dtype} is not supported: pass float16, bfloat16, float32 or float64, an integer "
                f"or a bool tensor (for example {name}.float())"
            )
    if input.ndim < 2:
        raise ValueError(f"input must have a batch dimension and at least one more, got shape {tuple(input.shape)}")
    if input.shape[0] == 0:
        raise ValueError(f"input must hold at least one sample, got shape {tuple(input.shape)}")
    return input, target


def _one_hot_labels(target: Tensor, C: int, ignore_index: int | None) -> Tensor:
    """Class indices (B, *S) of a one-hot target (B, C, *S) of any real dtype, checked as the losses check it."""
    if ignore_index is not None and not 0 <= ignore_index < C:
        raise ValueError(
            f"with one-hot targets, ignore_index must name a channel in [0, {C}), got {ignore_index}; with "
            "class-index targets any integer works"
        )
    if target.dtype == torch.bool:
        target = target.to(torch.uint8)
    if _checks.value_checks_enabled(target.device) and target.numel():
        lo, hi = (float(v) for v in torch.aminmax(target))
        if lo < 0 or hi > 1 or math.isnan(lo) or math.isnan(hi):
            raise ValueError(f"target values must be in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")
        sums = target.sum(dim=1, dtype=torch.float32)
        if ignore_index is not None:  # positions whose ignored channel is on drop out, as in the losses
            sums = sums[target[:, ignore_index] < 0.5]
        tol = 1e-2 if target.dtype in (torch.float16, torch.bfloat16) else 1e-4
        if sums.numel() and not bool(((sums - 1).abs() <= tol).all()):
            lo, hi = float(sums.min()), float(sums.max())
            hint = "; a target with several classes on at a position is multi-label: use mode='multilabel'"
            raise ValueError(
                "a one-hot target in multiclass mode must sum to 1 over the classes at every position (an all-zero "
                f"row is no class), got sums in [{lo:.4g}, {hi:.4g}]{hint if hi > 1 + tol else ''}"
            )
    return target.argmax(dim=1)


def _labels_multiclass(input: Tensor, target: Tensor, num_classes: int | None, ignore_index: int | None):
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
        squeeze = input.ndim >= 3 and input.shape[1] == 1 and (
            target.ndim == input.ndim - 1 or (target.ndim == input.ndim and target.shape[1] != 1)
        )
        pred = input[:, 0] if squeeze else input
        spatial = tuple(pred.shape[1:])
    B = pred.shape[0]
    if target.ndim == len(spatial) + 2 and target.shape[1] != 1:
        if tuple(target.shape[2:]) != spatial or target.shape[0] != B:
            raise ValueError(
                f"a one-hot target must have shape (B, C, *spatial) with (B, *spatial) = {(B, *spatial)} of the "
                f"prediction, got {tuple(target.shape)}"
            )
        if C is not None and target.shape[1] != C:
            raise ValueError(f"one-hot target has {target.shape[1]} channels, expected C = {C}")
        C = target.shape[1]
        tgt = _one_hot_labels(target, C, ignore_index)
    else:
        tgt = target[:, 0] if target.ndim == len(spatial) + 2 else target
        if tuple(tgt.shape) != (B, *spatial):
            raise ValueError(
                f"target of shape {tuple(target.shape)} does not match the prediction's (B, *spatial) = "
                f"{(B, *spatial)}; expected class indices (B, *spatial) or (B, 1, *spatial), or one-hot "
                "(B, C, *spatial)"
            )
        if tgt.dtype == torch.bool:
            raise TypeError(
                "class-index targets must be integer (or float holding whole numbers), got dtype torch.bool"
            )
    if C is None:
        raise ValueError("num_classes is needed when both prediction and target are class-index maps")
    if tgt.is_floating_point() and _checks.value_checks_enabled(tgt.device) and tgt.numel():
        if not bool((tgt == tgt.round()).all()):
            raise ValueError(
                "a floating target of shape (B, *spatial) is read as class indices and must hold whole numbers; "
                "got fractional values (for one-hot labels pass shape (B, C, *spatial))"
            )
        # in the floating dtype: inf or 1e20 would become an arbitrary int64 in the cast below
        _layout.check_index_range(tgt, C, ignore_index=ignore_index, what="target class indices")
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
    """Counts (I, P, G), each (B, C) int64, of hard predictions against the target.

    Every class has its column here, an ignored one too (its positions are skipped, so its G is 0); the
    scores drop it. The input rules are the losses' (:func:`diceloss._layout.prepare`): the same layouts,
    one-hot targets of any real dtype summing to 1, whole class indices, a non-empty dense batch. Memory is
    O(B * C): three ``bincount`` of (sample, class), of the prediction, the target and their agreements.
    """
    _checks.check_choice("mode", mode, _checks.MODES)
    input, target = _check_common(input, target)
    if mode == "multiclass":
        pred, tgt, C = _labels_multiclass(input, target, num_classes, ignore_index)
        B = pred.shape[0]
        valid = torch.ones_like(tgt, dtype=torch.bool) if ignore_index is None else tgt != ignore_index
        if _checks.value_checks_enabled(input.device):
            _layout.check_index_range(pred, C, what="prediction class indices")
            _layout.check_index_range(tgt, C, valid=None if ignore_index is None else valid,
                                      what="target class indices")
        offset = torch.arange(B, device=pred.device)[:, None] * C
        pred_bc = (offset + pred.clamp(0, C - 1))[valid]
        tgt_bc = (offset + tgt.clamp(0, C - 1))[valid]
        hit = pred_bc == tgt_bc
        n = B * C
        inter = torch.bincount(tgt_bc[hit], minlength=n).reshape(B, C)
        predicted = torch.bincount(pred_bc, minlength=n).reshape(B, C)
        return inter, predicted, torch.bincount(tgt_bc, minlength=n).reshape(B, C)
    # binary and multilabel: elementwise, in the losses' layouts
    if mode == "binary":
        input_bcn, target_bcn, _ = _layout._binary_layout(input, target)
    else:
        if input.ndim < 3 or tuple(target.shape) != tuple(input.shape):
            raise ValueError(
                "multilabel mode expects input (B, C, *spatial) and a target of the same shape, got input "
                f"{tuple(input.shape)} and target {tuple(target.shape)}"
            )
        input_bcn, target_bcn = input.reshape(*input.shape[:2], -1), target.reshape(*input.shape[:2], -1)
    if input_bcn.is_floating_point():
        pred = input_bcn > (0.0 if from_logits else threshold)
    else:
        pred = input_bcn != 0
    valid = None if ignore_index is None else target_bcn != ignore_index
    if _checks.value_checks_enabled(input.device) and target_bcn.numel() and target_bcn.dtype != torch.bool:
        vals = target_bcn if valid is None else target_bcn[valid]
        if vals.numel():
            lo, hi = (float(v) for v in torch.aminmax(vals))
            if lo < 0 or hi > 1 or math.isnan(lo) or math.isnan(hi):
                extra = "" if ignore_index is None else f" (or ignore_index, {ignore_index})"
                raise ValueError(f"target values must be in [0, 1]{extra}, got values in [{lo:.4g}, {hi:.4g}]")
    tgt = target_bcn > 0.5
    if valid is not None:
        tgt, pred = tgt & valid, pred & valid
    return (pred & tgt).sum(-1), pred.sum(-1), tgt.sum(-1)


def _score(num: Tensor, den: Tensor, empty: str) -> Tensor:
    num, den = num.double(), den.double()
    return torch.where(den > 0, num / den.clamp_min(1), torch.full_like(num, empty_fill(empty)))


def _finish(score: Tensor, include_background: bool, mode: str, reduction: str, ignore_index: int | None) -> Tensor:
    """Keep the scored classes, as the losses' K: background out without ``include_background`` (multiclass and
    multilabel), and in multiclass mode the class ``ignore_index`` names (when it is one of [0, C))."""
    kept = _layout._kept_classes(mode, score.shape[1], include_background, ignore_index)
    if kept is not None:
        score = score[:, list(kept)]
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
        reduction: "none" -> (B, K) float64; "mean" -> the NaN-ignoring mean, (). K is C less the classes
            dropped as by the losses: background without ``include_background`` (not in binary mode) and,
            in multiclass mode, the class ``ignore_index`` names.
        ignore_index: target value whose positions (elements in binary and multilabel modes) are skipped;
            in multiclass mode a value in [0, C) names a class, which is dropped from K (not scored, not in
            the mean), and with a one-hot target it must name a channel (positions where it is on drop out).
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
    return _finish(_score(2 * I, P + G, empty), include_background, mode, reduction, ignore_index)


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
    return _finish(_score(I, P + G - I, empty), include_background, mode, reduction, ignore_index)


class DiceMetric:
    """Accumulates hard Dice over batches: ``update(input, target)``, ``compute()``, ``reset()``.

    ``aggregation="sample"``: the mean over samples of the per-sample Dice per class (classes empty in
    a sample are left out, as ``empty="nan"``); ``"global"``: 2 sum I / sum (P + G) over everything seen.
    ``compute()`` returns (K,) per class with ``reduction="none"``, or their NaN-ignoring mean; K drops the
    classes :func:`dice_score` drops (background without ``include_background``, the class ``ignore_index``
    names). The inputs follow :func:`dice_score`'s rules, the losses' ones. The
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

    def _zeros(self, device: torch.device) -> Tensor:
        """The state of a rank that saw no batch."""
        if self.num_classes is None and self.mode != "binary":
            raise RuntimeError(
                "DiceMetric.compute() called before any update(); pass num_classes to the constructor so that "
                "a rank without data can contribute zeros"
            )
        classes = 1 if self.mode == "binary" else self.num_classes
        return torch.zeros(4, classes, dtype=torch.float64, device=device)

    def compute(self, reduction: str = "mean") -> Tensor:
        _checks.check_choice("reduction", reduction, ("none", "mean"))
        state = distributed.sum_state_over_ranks(self._state, self._zeros, self.process_group)
        if self.aggregation == "sample":
            score = _score(state[0], state[1], "nan")
        else:
            score = _score(state[2], state[3], "nan")
        out = _finish(score[None], self.include_background, self.mode, reduction, self.ignore_index)
        return out[0] if reduction == "none" else out


__all__ = ["EMPTY_POLICIES", "dice_score", "iou_score", "hard_counts", "DiceMetric"]
