"""MONAI's Dice-family losses with MONAI 1.6's arguments and values, on diceloss's statistics.

``from diceloss.compat.monai import DiceLoss`` in place of ``from monai.losses import DiceLoss``: the
constructor takes the same arguments (plus a keyword-only ``backend``), ``forward(input, target)`` takes
the same tensors and returns the same values and gradients, MONAI's quirks included:

* class ``weight`` multiplies the per-(sample, class) losses and "mean" is the plain mean over them: the
  weights are not normalised (a weight of 2 everywhere doubles the loss);
* ``jaccard=True`` computes ``(2I + s_nr) / (2(P + G - I) + s_dr)``, not ``(I + s_nr) / (P + G - I + s_dr)``;
* ``reduction="none"`` returns (B, C, 1, ...) (one 1 per spatial dimension), and (C, 1, ...) with
  ``batch=True``; ``TverskyLoss`` returns (B, C) or (C,); ``GeneralizedDiceLoss`` (B, 1, 1, ...) or
  (1, 1, ...);
* ``ignore_index`` naming a real class k keeps p_k on the other positions while g_k is zero everywhere, so
  that class scores about 1 and stays in the mean ("suppress class k" rather than "ignore");
* ``GeneralizedDiceLoss`` gives 0 when no class of a sample is present (false positives are free there),
  with weights computed in float32;
* ``DiceCELoss``: the cross-entropy always reads the raw input as logits (whatever ``softmax`` / ``sigmoid``
  / ``other_act`` say), one channel uses ``BCEWithLogitsLoss(pos_weight=weight)``, and the Dice term gets
  ``weight[1:]`` without background;
* ``DiceFocalLoss``: the focal term is the *sigmoid* focal loss even with ``softmax=True``, on the raw input,
  and its ``weight`` has one entry per class kept (not C);
* the single-channel warnings (``softmax``, ``to_onehot_y``, ``include_background`` ignored) are kept.

Differences that remain (all at float rounding unless stated):

* statistics accumulate in float32 for float16 / bfloat16 input, where MONAI sums in half precision and
  overflows past 65504 (its loss then reads exactly 1.0, or NaN); results are float32 for half input;
* the intersection is a sum of products (``soft_label=True``: a sum of ``min(p, g)``), where MONAI uses
  the L1 identity ``(|p| + |g| - |p - g|) / 2``: equal in exact arithmetic for ``p, g >= 0``, closer to
  the exact value in floating point (the L1 form cancels on small objects in large volumes). With an
  ``other_act`` that returns negative values and ``soft_label=True`` the two differ (MONAI's ``|p|``);
* with a soft one-hot target and ``ignore_index`` naming a channel k, MONAI weights each position by
  ``1 - g_k``; here positions with ``g_k >= 0.5`` are dropped and the others kept in full (equal for hard
  targets);
* ``DiceFocalLoss`` with soft targets: the focal term here is
  ``-[g (1-p)^gamma log p + (1-g) p^gamma log(1-p)]``, MONAI's ``BCE(x, g) * sigmoid(-x(2g-1))^gamma``;
  equal for 0/1 targets;
* bad input raises ``ValueError`` / ``TypeError`` (MONAI: a ``RuntimeError`` from ``scatter_`` for an
  out-of-range label), and 2-D input (B, C) without a spatial dimension is rejected (MONAI sums over the
  whole tensor there). An input / target shape mismatch raises :class:`ShapeMismatchError`, both a
  ``ValueError`` and the ``AssertionError`` MONAI raises;
* ``DiceFocalLoss`` computes the focal term element-wise in MONAI's float32 arithmetic below float64 (equal
  to MONAI's to the bit), and from diceloss's fused statistics for float64 input.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _checks, heads
from ..stats import OverlapStats, StatsRequest
from ._common import check_float_input, check_tensor, dense, index_target, overlap_stats

_REDUCTIONS = ("mean", "sum", "none")


class ShapeMismatchError(ValueError, AssertionError):
    """Input and target shapes disagree. MONAI raises ``AssertionError`` there (its tests, and users'
    ``except AssertionError``, expect it); diceloss raises ``ValueError`` for bad input. This is both."""


def _reduction_value(reduction, choices=_REDUCTIONS) -> str:
    value = getattr(reduction, "value", reduction)  # MONAI's LossReduction enum
    if value not in choices:
        raise ValueError(f"reduction must be one of {', '.join(repr(c) for c in choices)}; got {reduction!r}")
    return value


def _check_activation(sigmoid: bool, softmax: bool, other_act: Callable | None) -> None:
    if other_act is not None and not callable(other_act):
        raise TypeError(f"other_act must be None or callable but is {type(other_act).__name__}.")
    if int(sigmoid) + int(softmax) + int(other_act is not None) > 1:
        raise ValueError(
            "Incompatible values: more than 1 of [sigmoid=True, softmax=True, other_act is not None]."
        )


def _warn_single(what: str) -> None:
    warnings.warn(f"single channel prediction, `{what}` ignored.", stacklevel=3)


class _Layout:
    """MONAI's input handling (activation, ``to_onehot_y``, ``ignore_index``) in diceloss's layout."""

    def __init__(
        self,
        x: Tensor,
        p: Tensor | None,
        activation: str,
        target: Tensor,
        is_index: bool,
        mode: str,
        mask: Tensor | None,
        ignore_index: int | None,
    ):
        self.x, self.p, self.activation = x, p, activation
        self.target, self.is_index, self.mode = target, is_index, mode
        self.mask, self.ignore_index = mask, ignore_index

    def stats(self, request: StatsRequest, backend: str) -> OverlapStats:
        logits = self.x if self.p is None else self.p
        return overlap_stats(
            logits,
            self.target,
            mode=self.mode,
            activation=self.activation,
            request=request,
            backend=backend,
            mask=self.mask,
            ignore_index=self.ignore_index,
        )

    def dense_target(self) -> Tensor:
        """The target as (B, C, N) floating (a one-hot of index targets, float32 as MONAI's ``one_hot``)."""
        if not self.is_index:
            return self.target
        C = self.x.shape[1]
        safe = self.target
        if self.ignore_index is not None:
            safe = torch.where(safe == self.ignore_index, torch.zeros_like(safe), safe)
        return F.one_hot(safe, C).movedim(-1, 1).to(torch.float32)


def _layout(
    input: Tensor,
    target: Tensor,
    *,
    sigmoid: bool,
    softmax: bool,
    other_act: Callable | None,
    to_onehot_y: bool,
    ignore_index: int | None = None,
    include_background: bool = True,
) -> _Layout:
    input = check_tensor("input", input)
    target = check_tensor("target", target)
    check_float_input(input, 3, "(B, C, *spatial) with at least one spatial dimension")
    if target.device != input.device:
        raise ValueError(f"input and target must be on one device, got {input.device} and {target.device}")
    B, C = input.shape[:2]
    spatial = tuple(input.shape[2:])
    x = input.reshape(B, C, -1)

    # activation: diceloss applies softmax / sigmoid inside the backend where it can; the rest is applied here
    p = None
    activation = "none"
    if softmax and C == 1:
        _warn_single("softmax=True")
    index = to_onehot_y and C > 1
    if to_onehot_y and C == 1:
        _warn_single("to_onehot_y=True")
    if not include_background and C == 1:
        _warn_single("include_background=False")
    if sigmoid:
        if index:
            p = torch.sigmoid(x)
        else:
            activation = "sigmoid"
    elif softmax and C > 1:
        activation = "softmax"
    elif other_act is not None:
        p = other_act(input).reshape(B, C, -1)
    mode = "multiclass" if (index or activation == "softmax") else ("binary" if C == 1 else "multilabel")

    if index:
        if (
            target.ndim != input.ndim
            or target.shape[0] != B
            or target.shape[1] != 1
            or tuple(target.shape[2:]) != spatial
        ):
            raise ValueError(
                f"to_onehot_y=True expects class indices of shape (B, 1, *spatial) = {(B, 1, *spatial)}, got "
                f"{tuple(target.shape)}"
            )
        t = index_target(target.reshape(B, -1), C, ignore_index)
        # MONAI masks the positions labelled ignore_index (also a real class k: g_k is then 0 everywhere)
        return _Layout(x, p, activation, t, True, mode, None, ignore_index)

    if tuple(target.shape) != tuple(input.shape):
        raise ShapeMismatchError(
            f"ground truth has different shape {tuple(target.shape)} from input {tuple(input.shape)}; "
            "class indices (B, 1, *spatial) need to_onehot_y=True"
        )
    g = dense(target, input.dtype).reshape(B, C, -1)
    mask = None
    if ignore_index is not None:
        if C == 1:
            mask = g[:, 0] != ignore_index
        elif 0 <= ignore_index < C:
            mask = g[:, ignore_index] < 0.5
        else:
            mask = g.sum(dim=1) > 0  # a sentinel: positions whose target is all zero
    return _Layout(x, p, activation, g, False, mode, mask, None)


def _spatial_ones(input: Tensor) -> list[int]:
    return [1] * (input.ndim - 2)


def _class_weight(weight) -> Tensor | None:
    if weight is None:
        return None
    w = torch.as_tensor(weight)
    if w.is_complex() or w.dtype == torch.bool:
        raise TypeError(f"weight must hold real numbers, got dtype {w.dtype}")
    if w.ndim > 1:
        raise ValueError(
            f"weight must be a number or a 1-D sequence with one entry per class, got shape {tuple(w.shape)}"
        )
    if _checks.value_checks_enabled(w.device) and bool((w < 0).any()):
        raise ValueError("the value/values of the `weight` should be no less than 0.")
    return w


def _check_smoothing(smooth_nr: float, smooth_dr: float) -> tuple[float, float]:
    for name, v in (("smooth_nr", smooth_nr), ("smooth_dr", smooth_dr)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):  # NumPy scalars are numbers
            raise TypeError(f"{name} must be a number, got {type(v).__name__}")
    return float(smooth_nr), float(smooth_dr)


def _batch_and_background(stats: Sequence[Tensor], batch: bool, include_background: bool) -> list[Tensor]:
    out = []
    for s in stats:
        if batch:
            s = s.sum(dim=0, keepdim=True)
        if not include_background and s.shape[1] > 1:
            s = s[:, 1:]
        out.append(s)
    return out


class _MonaiLoss(nn.Module):
    """What MONAI's five losses share: the activation and target arguments, checked and stored once, and
    the layout they give; for the compound losses (Dice + CE / focal) the Dice term and the lambdas.

    Subclasses pass their own arguments on; ``reductions`` are the reductions the class accepts.
    """

    def __init__(
        self,
        *,
        include_background: bool,
        to_onehot_y: bool,
        sigmoid: bool,
        softmax: bool,
        other_act: Callable | None,
        reduction: str,
        smooth_nr: float,
        smooth_dr: float,
        batch: bool,
        soft_label: bool = False,
        ignore_index: int | None = None,
        backend: str,
        reductions: Sequence[str] = _REDUCTIONS,
    ) -> None:
        super().__init__()
        _check_activation(sigmoid, softmax, other_act)
        _checks.check_backend(backend)
        self.reduction = _reduction_value(reduction, reductions)
        self.include_background = include_background
        self.to_onehot_y = to_onehot_y
        self.sigmoid = sigmoid
        self.softmax = softmax
        self.other_act = other_act
        self.smooth_nr, self.smooth_dr = _check_smoothing(smooth_nr, smooth_dr)
        self.batch = batch
        self.soft_label = soft_label
        self.ignore_index = ignore_index
        self.backend = backend

    def _layout(self, input: Tensor, target: Tensor, ignore_index: int | None) -> _Layout:
        return _layout(
            input,
            target,
            sigmoid=self.sigmoid,
            softmax=self.softmax,
            other_act=self.other_act,
            to_onehot_y=self.to_onehot_y,
            ignore_index=ignore_index,
            include_background=self.include_background,
        )

    def _dice_term(self, lambda_dice: float, other: str, lambda_other: float, **dice_options) -> None:
        """For the compound losses: ``self.dice`` (a :class:`DiceLoss` with this loss's arguments and
        ``dice_options``) and ``self.lambda_dice``; both lambdas checked as MONAI checks them (``other``
        names the second one in the message)."""
        self.dice = DiceLoss(
            include_background=self.include_background,
            to_onehot_y=self.to_onehot_y,
            sigmoid=self.sigmoid,
            softmax=self.softmax,
            other_act=self.other_act,
            reduction=self.reduction,
            smooth_nr=self.smooth_nr,
            smooth_dr=self.smooth_dr,
            batch=self.batch,
            backend=self.backend,
            **dice_options,
        )
        if lambda_dice < 0.0:
            raise ValueError("lambda_dice should be no less than 0.0.")
        if lambda_other < 0.0:
            raise ValueError(f"{other} should be no less than 0.0.")
        self.lambda_dice = lambda_dice


class DiceLoss(_MonaiLoss):
    r"""MONAI's ``DiceLoss`` (1.6), per (sample, class)::

        f = 1 - (2 I + smooth_nr) / (P + G + smooth_dr)                 (jaccard: 2 (P + G - I) + smooth_dr)

    ``I = sum p g``, ``P = sum p``, ``G = sum g`` over the spatial positions (``squared_pred``:
    ``P = sum p^2``, ``G = sum g^2``; ``soft_label``: ``I = sum min(p, g)``), also over the batch with
    ``batch=True``. ``weight``
    multiplies f per class (one entry per class kept, or a number); "mean" is the plain mean of f over
    (sample, class), "sum" the sum, "none" f of shape (B, C, 1, ...) or (C, 1, ...) with ``batch``.

    input (B, C, *S): probabilities, or logits with ``sigmoid`` / ``softmax`` / ``other_act``. target
    (B, C, *S), or class indices (B, 1, *S) with ``to_onehot_y=True``.

    Example:
        >>> loss = DiceLoss(softmax=True, to_onehot_y=True, include_background=False)
        >>> x = torch.randn(2, 3, 8, 8, requires_grad=True)
        >>> t = torch.randint(0, 3, (2, 1, 8, 8))
        >>> loss(x, t).backward()
    """

    class_weight: Tensor | None

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable | None = None,
        squared_pred: bool = False,
        jaccard: bool = False,
        reduction: str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        weight: Sequence[float] | float | int | Tensor | None = None,
        soft_label: bool = False,
        ignore_index: int | None = None,
        *,
        backend: str = "auto",
    ) -> None:
        if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
            raise TypeError(f"ignore_index must be an int or None, got {ignore_index!r}")
        super().__init__(
            include_background=include_background,
            to_onehot_y=to_onehot_y,
            sigmoid=sigmoid,
            softmax=softmax,
            other_act=other_act,
            reduction=reduction,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            batch=batch,
            soft_label=soft_label,
            ignore_index=ignore_index,
            backend=backend,
        )
        self.squared_pred = squared_pred
        self.jaccard = jaccard
        self.register_buffer("class_weight", _class_weight(weight))

    def _request(self, **extra) -> StatsRequest:
        return StatsRequest(
            squared=self.squared_pred, soft_label=self.soft_label and not self.squared_pred, **extra
        )

    def _from_stats(self, input: Tensor, stats: OverlapStats) -> Tensor:
        I, P, G = _batch_and_background(stats[:3], self.batch, self.include_background)
        numerator = 2 * I + self.smooth_nr
        if self.jaccard:
            denominator = 2 * (P + G - I) + self.smooth_dr
        else:
            denominator = P + G + self.smooth_dr
        f = 1 - numerator / denominator
        num_classes = f.shape[1]
        if self.class_weight is not None and num_classes != 1:
            w = self.class_weight
            if w.ndim == 0:
                w = w.expand(num_classes)
            elif w.shape[0] != num_classes:
                raise ValueError(
                    "The length of the `weight` sequence should be the same as the number of classes. If "
                    "`include_background=False`, the weight should not include the background "
                    "category class 0. "
                    f"Expected {num_classes}, got {w.shape[0]}."
                )
            f = f * w.to(f)
        if self.reduction == "mean":
            return f.mean()
        if self.reduction == "sum":
            return f.sum()
        if self.batch:
            return f[0].view([num_classes] + _spatial_ones(input))
        return f.view([f.shape[0], num_classes] + _spatial_ones(input))

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        layout = self._layout(input, target, self.ignore_index)
        return self._from_stats(input, layout.stats(self._request(), self.backend))


class GeneralizedDiceLoss(_MonaiLoss):
    r"""MONAI's ``GeneralizedDiceLoss`` (1.6), per sample (or for the batch with ``batch=True``)::

        f = 1 - (2 sum_c w_c I_c + smooth_nr) / (sum_c w_c (P_c + G_c) + smooth_dr)

    ``w_type``: "square" ``w = 1/G^2``, "simple" ``1/G``, "uniform" 1, computed in float32; a class absent
    from the target takes the largest finite weight of its sample (of the batch with ``batch``), and a
    sample with no class present gets weights 0, so its loss is 0 whatever the prediction.
    ``reduction="none"``: (B, 1, 1, ...), or (1, 1, ...) with ``batch``.

    Example:
        >>> loss = GeneralizedDiceLoss(softmax=True, to_onehot_y=True)
        >>> x = torch.randn(2, 3, 8, 8)
        >>> t = torch.randint(0, 3, (2, 1, 8, 8))
        >>> tuple(GeneralizedDiceLoss(softmax=True, to_onehot_y=True, reduction="none")(x, t).shape)
        (2, 1, 1, 1)
    """

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable | None = None,
        w_type: str = "square",
        reduction: str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        soft_label: bool = False,
        *,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            include_background=include_background,
            to_onehot_y=to_onehot_y,
            sigmoid=sigmoid,
            softmax=softmax,
            other_act=other_act,
            reduction=reduction,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            batch=batch,
            soft_label=soft_label,
            backend=backend,
        )
        w_type = getattr(w_type, "value", w_type)
        _checks.check_choice("w_type", w_type, ("square", "simple", "uniform"))
        self.w_type = w_type

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        layout = self._layout(input, target, None)
        stats = layout.stats(StatsRequest(soft_label=self.soft_label), self.backend)
        I, P, G = _batch_and_background(stats[:3], self.batch, self.include_background)
        ground = G.detach().float()
        if self.w_type == "simple":
            w = torch.reciprocal(ground)
        elif self.w_type == "square":
            w = torch.reciprocal(ground * ground)
        else:
            w = torch.ones_like(ground)
        infs = torch.isinf(w)
        w = torch.where(infs, torch.zeros_like(w), w)
        largest = w.max() if self.batch else w.max(dim=1, keepdim=True)[0]
        w = w + infs * largest
        numer = 2.0 * (I * w).sum(dim=1) + self.smooth_nr
        denom = ((P + G) * w).sum(dim=1) + self.smooth_dr
        f = 1.0 - numer / denom
        if self.reduction == "mean":
            return f.mean()
        if self.reduction == "sum":
            return f.sum()
        return f.view([f.shape[0], 1] + _spatial_ones(input))[0 if self.batch else slice(None)]


class TverskyLoss(_MonaiLoss):
    r"""MONAI's ``TverskyLoss`` (1.6), per (sample, class)::

        f = 1 - (I + smooth_nr) / (I + alpha FP + beta FN + smooth_dr),   FP = P - I,  FN = G - I

    ``alpha`` weighs false positives, ``beta`` false negatives. ``reduction="none"``: (B, C), or (C,) with
    ``batch=True``. Inputs and the other arguments as in :class:`DiceLoss`.

    Example:
        >>> loss = TverskyLoss(softmax=True, to_onehot_y=True, alpha=0.3, beta=0.7)
        >>> x = torch.randn(2, 3, 8, 8)
        >>> t = torch.randint(0, 3, (2, 1, 8, 8))
        >>> float(loss(x, t)) > 0
        True
    """

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable | None = None,
        alpha: float = 0.5,
        beta: float = 0.5,
        reduction: str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        soft_label: bool = False,
        ignore_index: int | None = None,
        *,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            include_background=include_background,
            to_onehot_y=to_onehot_y,
            sigmoid=sigmoid,
            softmax=softmax,
            other_act=other_act,
            reduction=reduction,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            batch=batch,
            soft_label=soft_label,
            ignore_index=ignore_index,
            backend=backend,
        )
        self.alpha = alpha
        self.beta = beta

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        layout = self._layout(input, target, self.ignore_index)
        stats = layout.stats(StatsRequest(soft_label=self.soft_label), self.backend)
        I, P, G = _batch_and_background(stats[:3], self.batch, self.include_background)
        fp = (P - I) * self.alpha
        fn = (G - I) * self.beta
        score = 1.0 - (I + self.smooth_nr) / (I + fp + fn + self.smooth_dr)
        if self.reduction == "sum":
            return score.sum()
        if self.reduction == "none":
            return score[0] if self.batch else score
        return score.mean()


def _check_compound_shapes(input: Tensor, target: Tensor) -> None:
    check_tensor("input", input)
    check_tensor("target", target)
    if input.dim() != target.dim():
        raise ValueError(
            "the number of dimensions for input and target should be the same, got shape "
            f"{tuple(input.shape)} and {tuple(target.shape)}; if target is not one-hot encoded, "
            "please provide a "
            "tensor with shape B1H[WD]."
        )
    if target.shape[1] != 1 and target.shape[1] != input.shape[1]:
        raise ValueError(
            "number of channels for target is neither 1 (without one-hot encoding) nor the same "
            "as input, got "
            f"shape {tuple(input.shape)} and {tuple(target.shape)}."
        )


class DiceCELoss(_MonaiLoss):
    r"""MONAI's ``DiceCELoss`` (1.6): ``lambda_dice * DiceLoss + lambda_ce * CE``.

    The Dice term is :class:`DiceLoss` with the same arguments (``weight[1:]`` without background). CE is
    ``torch.nn.CrossEntropyLoss(weight, label_smoothing)`` on the raw input read as logits, whatever
    activation the Dice term uses, with class indices (B, 1, *S) squeezed or a (B, C, *S) target read as
    probabilities; for a single channel, ``BCEWithLogitsLoss(pos_weight=weight)`` (no label smoothing).
    ``reduction``: "mean" or "sum".

    Example:
        >>> loss = DiceCELoss(softmax=True, to_onehot_y=True, lambda_ce=0.5)
        >>> x = torch.randn(2, 3, 8, 8, requires_grad=True)
        >>> t = torch.randint(0, 3, (2, 1, 8, 8))
        >>> loss(x, t).backward()
    """

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable | None = None,
        squared_pred: bool = False,
        jaccard: bool = False,
        reduction: str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        weight: Tensor | Sequence[float] | None = None,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        label_smoothing: float = 0.0,
        *,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            include_background=include_background,
            to_onehot_y=to_onehot_y,
            sigmoid=sigmoid,
            softmax=softmax,
            other_act=other_act,
            reduction=reduction,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            batch=batch,
            backend=backend,
            reductions=("mean", "sum"),
        )
        if weight is not None:
            weight = torch.as_tensor(weight)
            if weight.ndim != 1:
                raise ValueError(
                    f"weight must be 1-D with one entry per class, got shape {tuple(weight.shape)}"
                )
        self._dice_term(
            lambda_dice,
            "lambda_ce",
            lambda_ce,
            squared_pred=squared_pred,
            jaccard=jaccard,
            weight=None if weight is None else (weight if include_background else weight[1:]),
        )
        _checks.check_nonnegative("label_smoothing", label_smoothing, at_most=1.0)
        self.register_buffer("weight", weight)
        self.lambda_ce = lambda_ce
        self.label_smoothing = float(label_smoothing)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        _check_compound_shapes(input, target)
        d = self.dice
        C = input.shape[1]
        layout = self._layout(input, target, None)
        softmax_ce = C > 1 and layout.activation == "softmax"
        sigmoid_bce = C == 1 and layout.activation == "sigmoid" and self.weight is None
        shared = softmax_ce or sigmoid_bce
        extra = {}
        if shared:
            extra = dict(cross_entropy=True, label_smoothing=self.label_smoothing if C > 1 else 0.0)
        stats = layout.stats(d._request(**extra), self.backend)
        dice = d._from_stats(input, stats)
        if C > 1:
            if not shared:  # the Dice term reads other probabilities: CE gets its own softmax statistics
                ce_layout = _layout(
                    input,
                    target,
                    sigmoid=False,
                    softmax=True,
                    other_act=None,
                    to_onehot_y=target.shape[1] == 1,
                )
                stats = ce_layout.stats(
                    StatsRequest(cross_entropy=True, label_smoothing=self.label_smoothing), self.backend
                )
            ce = heads.cross_entropy_term(
                stats.cross_entropy,
                stats.target_volume,
                stats.count,
                self.weight,
                mode="multiclass",
                target_is_index=target.shape[1] == 1,
                reduction=self.reduction,
            )
        elif sigmoid_bce:
            ce = heads.cross_entropy_term(
                stats.cross_entropy,
                stats.target_volume,
                stats.count,
                None,
                mode="binary",
                target_is_index=False,
                reduction=self.reduction,
            )
        elif self.weight is None:
            bce_layout = _layout(
                input, target, sigmoid=True, softmax=False, other_act=None, to_onehot_y=False
            )
            stats = bce_layout.stats(StatsRequest(cross_entropy=True), self.backend)
            ce = heads.cross_entropy_term(
                stats.cross_entropy,
                stats.target_volume,
                stats.count,
                None,
                mode="binary",
                target_is_index=False,
                reduction=self.reduction,
            )
        else:  # pos_weight is not a function of the summed BCE: computed element-wise, as MONAI does
            ce = F.binary_cross_entropy_with_logits(
                input, dense(target, input.dtype), pos_weight=self.weight, reduction=self.reduction
            )
        return self.lambda_dice * dice + self.lambda_ce * ce


def _sigmoid_focal(x: Tensor, g: Tensor, gamma: float, alpha) -> Tensor:
    """MONAI's ``sigmoid_focal_loss``, element-wise, in float32 as MONAI computes it."""
    x, g = x.float(), g.float()
    loss = x - x * g - F.logsigmoid(x)
    loss = (F.logsigmoid(-x * (g * 2 - 1)) * gamma).exp() * loss
    if alpha is not None:
        a = torch.as_tensor(alpha, device=x.device, dtype=x.dtype)
        if a.ndim == 0:
            factor = g * a + (1 - g) * (1 - a)
        else:
            if a.shape[0] != g.shape[1]:
                raise ValueError(
                    f"The length of alpha ({a.shape[0]}) must match the number of classes ({g.shape[1]})."
                )
            a = a.view([-1] + [1] * (g.ndim - 2))
            factor = torch.where(g == 1, a, torch.ones_like(a))
        loss = factor * loss
    return loss


class DiceFocalLoss(_MonaiLoss):
    r"""MONAI's ``DiceFocalLoss`` (1.6): ``lambda_dice * DiceLoss + lambda_focal * FocalLoss``.

    The focal term is MONAI's *sigmoid* focal loss on the raw input (also with ``softmax=True``)::

        -[g (1 - p)^gamma log p + (1 - g) p^gamma log(1 - p)] * w_c,   p = sigmoid(x)

    ("mean": over every element; "sum": the spatial mean per (sample, class), summed; "none": element-wise
    (B, C, *S), to which the Dice term (B, C, 1, ...) broadcasts). ``weight`` (one entry per class kept, or
    a number) goes to both terms; ``alpha`` balances positives and negatives as in MONAI.

    Example:
        >>> loss = DiceFocalLoss(sigmoid=True, gamma=2.0)
        >>> x = torch.randn(2, 3, 8, 8)
        >>> t = (torch.rand(2, 3, 8, 8) > 0.7).float()
        >>> float(loss(x, t)) > 0
        True
    """

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable | None = None,
        squared_pred: bool = False,
        jaccard: bool = False,
        reduction: str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        gamma: float = 2.0,
        weight: Sequence[float] | float | int | Tensor | None = None,
        lambda_dice: float = 1.0,
        lambda_focal: float = 1.0,
        alpha: float | Sequence[float] | None = None,
        *,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            include_background=include_background,
            to_onehot_y=to_onehot_y,
            sigmoid=sigmoid,
            softmax=softmax,
            other_act=other_act,
            reduction=reduction,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            batch=batch,
            backend=backend,
        )
        self._dice_term(
            lambda_dice, "lambda_focal", lambda_focal, squared_pred=squared_pred, jaccard=jaccard, weight=weight
        )
        _checks.check_nonnegative("gamma", gamma)
        self.lambda_focal = lambda_focal
        self.gamma = float(gamma)
        self.alpha = alpha

    def _focal_weight(self, num_classes: int) -> Tensor | None:
        w = self.dice.class_weight
        if w is None:
            return None
        if w.ndim > 0:
            if num_classes == 1:
                raise ValueError("Per-class class_weight is not supported for single-channel outputs.")
            if w.numel() != num_classes:
                raise ValueError(
                    f"The number of class_weight ({w.numel()}) must match the number of output "
                    f"channels ({num_classes})."
                )
        return w

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        _check_compound_shapes(input, target)
        d = self.dice
        B, C = input.shape[:2]
        layout = self._layout(input, target, None)
        shared = layout.activation == "sigmoid" and not layout.is_index
        # below float64 the focal term is MONAI's own float32 arithmetic, element by element: a float32 sum in
        # any other order (even the exact sum, rounded) differs from MONAI's by an ulp or two, past the rtol
        # of 1e-7 MONAI's tests compare at. float64 input takes the fused statistics (error ~1e-16).
        direct = self.alpha is not None or self.reduction == "none" or input.dtype != torch.float64
        request = d._request(focal_gamma=self.gamma) if shared and not direct else d._request()
        stats = layout.stats(request, self.backend)
        dice = d._from_stats(input, stats)

        drop_bg = not self.include_background and C > 1
        kept = C - 1 if drop_bg else C
        w = self._focal_weight(kept)
        if direct:
            g = layout.dense_target().reshape(input.shape)
            x = input
            if drop_bg:
                x, g = x[:, 1:], g[:, 1:]
            focal = _sigmoid_focal(x, g, self.gamma, self.alpha)
            if w is not None:
                focal = focal * (
                    w.to(focal) if w.ndim == 0 else w.to(focal).view([1, kept] + _spatial_ones(x))
                )
            if self.reduction == "sum":
                focal = focal.mean(dim=list(range(2, focal.ndim))).sum()
            elif self.reduction == "mean":
                focal = focal.mean()
        else:
            if not shared:  # focal reads sigmoid(x) of the raw input against a dense target
                x = input.reshape(B, C, -1)
                fl_mode = "binary" if C == 1 else "multilabel"
                stats = overlap_stats(
                    x,
                    layout.dense_target().to(x.dtype),
                    mode=fl_mode,
                    activation="sigmoid",
                    request=StatsRequest(focal_gamma=self.gamma),
                    backend=self.backend,
                )
            Fsum = stats.focal[:, 1:] if drop_bg else stats.focal
            if w is not None:
                Fsum = Fsum * w.to(Fsum)
            N = math.prod(input.shape[2:])
            if self.reduction == "mean":
                focal = Fsum.sum() / (B * kept * N)
            else:
                focal = Fsum.sum() / N
        return self.lambda_dice * dice + self.lambda_focal * focal


class HausdorffDTLoss(nn.Module):
    r"""MONAI's ``HausdorffDTLoss`` (1.6), per (sample, class kept)::

        f = mean_n (p_n - g_n)^2 (d_P(n)^alpha + d_G(n)^alpha)

    d_X = the distance transform of X's foreground plus that of its background (the distance to the nearest
    position of the other label), X_P = [p > 0.5], X_G = [g > 0.5], on an isotropic unit grid, rounded to
    float32 as MONAI does; a mask that is empty or full has the field 0 (so a structure the prediction misses
    entirely costs only ``(p - g)^2 d_G^alpha``). ``batch=True`` takes the mean over the batch and the positions
    per class; ``reduction="none"`` returns (B, K, 1, ...) ((1, K, 1, ...) with ``batch``). The fields come from
    diceloss's exact transform on the input's device (MONAI: SciPy, or cuCIM on CUDA).

    Differences: any number of spatial dimensions is accepted (MONAI: 2D and 3D only); bad input raises
    ``ValueError`` / ``TypeError``, a shape mismatch :class:`ShapeMismatchError`. For the loss with voxel
    spacing, masks, ``ignore_index`` and a field for a missed structure, use :class:`diceloss.HausdorffDTLoss`.

    Example:
        >>> loss = HausdorffDTLoss(softmax=True, to_onehot_y=True)
        >>> x = torch.randn(2, 3, 8, 8)
        >>> t = torch.randint(0, 3, (2, 1, 8, 8))
        >>> loss(x, t).shape
        torch.Size([])
    """

    def __init__(
        self,
        alpha: float = 2.0,
        include_background: bool = False,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable | None = None,
        reduction: str = "mean",
        batch: bool = False,
    ) -> None:
        super().__init__()
        _check_activation(sigmoid, softmax, other_act)
        if isinstance(alpha, (bool, np.bool_)) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha):
            raise TypeError(f"alpha must be a finite number, got {alpha!r}")
        self.alpha = float(alpha)
        self.include_background = include_background
        self.to_onehot_y = to_onehot_y
        self.sigmoid = sigmoid
        self.softmax = softmax
        self.other_act = other_act
        self.reduction = _reduction_value(reduction)
        self.batch = batch

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        from .._layout import Prepared
        from ..hausdorff import _fields_and_loss

        input = check_tensor("input", input)
        target = check_tensor("target", target)
        check_float_input(input, 3, "(B, C, *spatial) with at least one spatial dimension")
        if target.device != input.device:
            raise ValueError(f"input and target must be on one device, got {input.device} and {target.device}")
        B, C = input.shape[:2]
        spatial = tuple(input.shape[2:])
        x, activation = input, "none"
        if self.sigmoid:
            activation = "sigmoid"
        if self.softmax:
            if C == 1:
                _warn_single("softmax=True")
            else:
                activation = "softmax"
        if self.other_act is not None:
            x = self.other_act(input)
        if self.to_onehot_y:
            if C == 1:
                _warn_single("to_onehot_y=True")
            else:
                if target.ndim != input.ndim or target.shape[1] != 1 or tuple(target.shape[2:]) != spatial:
                    raise ValueError(f"to_onehot_y=True expects class indices of shape (B, 1, *spatial) = "
                                     f"{(B, 1, *spatial)}, got {tuple(target.shape)}")
                t = index_target(target.reshape(B, -1), C, None)
                target = F.one_hot(t, C).movedim(-1, 1).to(torch.float32).reshape(B, C, *spatial)
        kept = None
        if not self.include_background:
            if C == 1:
                _warn_single("include_background=False")
            else:
                kept = tuple(range(1, C))
        if tuple(target.shape) != tuple(input.shape):
            raise ShapeMismatchError(
                f"ground truth has different shape {tuple(target.shape)} from input {tuple(input.shape)}; "
                "class indices (B, 1, *spatial) need to_onehot_y=True"
            )
        prep = Prepared(
            logits=x.reshape(B, C, -1),
            target=dense(target, input.dtype).reshape(B, C, -1),
            target_is_index=False,
            mask=None,
            ignore_index=None,
            activation=activation,
            num_classes=C,
            mode="multilabel",
            kept_classes=kept,
            spatial_shape=spatial,
        )
        f = _fields_and_loss(prep, self.alpha, None, "zero", None, field_dtype=torch.float32)  # (B, K)
        if self.batch:
            f = f.mean(dim=0, keepdim=True)
        if self.reduction == "mean":
            return f.mean()
        if self.reduction == "sum":
            return f.sum()
        return f.view(*f.shape, *_spatial_ones(input))


class SoftclDiceLoss(nn.Module):
    r"""MONAI's ``SoftclDiceLoss`` (1.6), one value per sample::

        tprec = (sum S(p) g + smooth_nr) / (sum S(p) + smooth_dr)
        tsens = (sum S(g) p + smooth_nr) / (sum S(g) + smooth_dr)
        f = 1 - 2 tprec tsens / (tprec + tsens + smooth)

    with the sums over the classes kept *and* the positions of a sample (the classes pooled into one ratio: a
    class with a long skeleton outweighs a thin one), S the authors' soft skeleton with ``iter_`` rounds (here
    :func:`diceloss.cldice.soft_skeleton`, whose backward recomputes the rounds instead of storing them: the same
    values and, away from ties in the pooling, the same gradients in a fraction of the memory). ``smooth`` keeps a
    perfect prediction at about ``smooth / 4`` (5e-5 by default), not 0. ``reduction="none"`` returns (B,).
    ``forward(input, target)``: ``input`` first, as MONAI >= 1.5 (1.4 and older took ``(y_true, y_pred)``,
    dropped channel 0 always, and pooled the batch too, so a single-channel input scored exactly 0).

    Differences: bad input raises ``ValueError`` / ``TypeError`` (an out-of-range label for ``to_onehot_y``, a
    tensor without 2 or 3 spatial dimensions, where MONAI's pooling fails or returns None); a shape mismatch
    :class:`ShapeMismatchError`. For clDice per (sample, class) with masks, ``ignore_index``, batch statistics and
    a precomputed target skeleton, use :class:`diceloss.ClDiceLoss`.

    Example:
        >>> loss = SoftclDiceLoss(softmax=True, to_onehot_y=True, include_background=False)
        >>> x = torch.randn(2, 3, 16, 16)
        >>> t = torch.randint(0, 3, (2, 1, 16, 16))
        >>> loss(x, t).shape
        torch.Size([])
    """

    def __init__(
        self,
        iter_: int = 3,
        smooth_nr: float = 1.0,
        smooth_dr: float = 1.0,
        smooth: float = 1e-4,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        _check_activation(sigmoid, softmax, other_act)
        if isinstance(iter_, bool) or not isinstance(iter_, numbers.Integral):
            raise TypeError(f"iter_ must be an integer but got {type(iter_).__name__}.")
        if iter_ < 0:
            raise ValueError(f"iter_ must be a non-negative integer but got {iter_}.")
        smooth_nr, smooth_dr = _check_smoothing(smooth_nr, smooth_dr)
        if isinstance(smooth, (bool, np.bool_)) or not isinstance(smooth, numbers.Real):
            raise TypeError(f"smooth must be a number, got {type(smooth).__name__}")
        if not smooth > 0:
            raise ValueError(f"smooth must be a positive value but got {smooth}.")
        self.iter = int(iter_)
        self.smooth_nr, self.smooth_dr, self.smooth = smooth_nr, smooth_dr, float(smooth)
        self.include_background = include_background
        self.to_onehot_y = to_onehot_y
        self.sigmoid = sigmoid
        self.softmax = softmax
        self.other_act = other_act
        self.reduction = _reduction_value(reduction)

    def _prepared(self, input: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """MONAI's input handling: the activation, ``to_onehot_y``, the background; (p, g) of one shape."""
        input = check_tensor("input", input)
        target = check_tensor("target", target)
        check_float_input(input, 4, "(B, C, H, W) or (B, C, D, H, W)")
        if input.ndim > 5:
            raise ValueError(f"input must have shape (B, C, H, W) or (B, C, D, H, W), got {tuple(input.shape)}")
        if target.device != input.device:
            raise ValueError(f"input and target must be on one device, got {input.device} and {target.device}")
        C = input.shape[1]
        p = input
        if self.sigmoid:
            p = torch.sigmoid(p)
        if self.softmax:
            if C == 1:
                _warn_single("softmax=True")
            else:
                p = torch.softmax(p, dim=1)
        if self.other_act is not None:
            p = self.other_act(p)
        if self.to_onehot_y:
            if C == 1:
                _warn_single("to_onehot_y=True")
            else:
                target = _one_hot(target, input)
        if not self.include_background:
            if C == 1:
                _warn_single("include_background=False")
            else:
                p, target = p[:, 1:], target[:, 1:]
        if tuple(target.shape) != tuple(p.shape):
            raise ShapeMismatchError(
                f"ground truth has different shape {tuple(target.shape)} from input {tuple(p.shape)}; "
                "class indices (B, 1, *spatial) need to_onehot_y=True"
            )
        return p, dense(target, input.dtype)

    def _per_sample(self, p: Tensor, g: Tensor) -> Tensor:
        from ..cldice import _skeleton_values, soft_skeleton

        skel_p = soft_skeleton(p.contiguous(), self.iter)
        with torch.no_grad():
            skel_g = _skeleton_values(g.detach(), self.iter)
        dims = list(range(1, p.ndim))
        tprec = ((skel_p * g).sum(dims) + self.smooth_nr) / (skel_p.sum(dims) + self.smooth_dr)
        tsens = ((skel_g * p).sum(dims) + self.smooth_nr) / (skel_g.sum(dims) + self.smooth_dr)
        return 1.0 - 2.0 * (tprec * tsens) / (tprec + tsens + self.smooth)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        f = self._per_sample(*self._prepared(input, target))
        if self.reduction == "mean":
            return f.mean()
        if self.reduction == "sum":
            return f.sum()
        return f


def _one_hot(target: Tensor, input: Tensor) -> Tensor:
    """MONAI's ``one_hot`` of class indices (B, 1, *spatial): float32 (B, C, *spatial)."""
    B, C = input.shape[:2]
    spatial = tuple(input.shape[2:])
    if target.ndim != input.ndim or target.shape[0] != B or target.shape[1] != 1 or tuple(target.shape[2:]) != spatial:
        raise ValueError(
            f"to_onehot_y=True expects class indices of shape (B, 1, *spatial) = {(B, 1, *spatial)}, got "
            f"{tuple(target.shape)}"
        )
    t = index_target(target.reshape(B, -1), C, None)
    return F.one_hot(t, C).movedim(-1, 1).to(torch.float32).reshape(B, C, *spatial)


class SoftDiceclDiceLoss(nn.Module):
    r"""MONAI's ``SoftDiceclDiceLoss`` (1.6): ``(1 - alpha) DiceLoss + alpha SoftclDiceLoss``.

    The Dice term is :class:`DiceLoss` (per (sample, class), MONAI's arguments), the clDice term
    :class:`SoftclDiceLoss` (per sample, classes pooled), with the same ``include_background``, activation,
    ``smooth_nr`` / ``smooth_dr`` (1 by default, for both) and ``reduction``; ``to_onehot_y`` is applied once,
    before both. With ``reduction="none"`` MONAI adds a (B, C, 1, ...) Dice to a (B,) clDice, and PyTorch
    broadcasts them into (B, C, 1, ..., B); the same here. ``backend`` (keyword-only) is the Dice term's.

    Example:
        >>> loss = SoftDiceclDiceLoss(softmax=True, to_onehot_y=True, alpha=0.3)
        >>> x = torch.randn(2, 3, 16, 16, requires_grad=True)
        >>> t = torch.randint(0, 3, (2, 1, 16, 16))
        >>> loss(x, t).backward()
    """

    def __init__(
        self,
        iter_: int = 3,
        alpha: float = 0.5,
        smooth_nr: float = 1.0,
        smooth_dr: float = 1.0,
        smooth: float = 1e-4,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable | None = None,
        reduction: str = "mean",
        *,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if isinstance(alpha, (bool, np.bool_)) or not isinstance(alpha, numbers.Real):
            raise TypeError(f"alpha must be a number, got {type(alpha).__name__}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1] but got {alpha}.")
        self.dice = DiceLoss(
            include_background=include_background,
            to_onehot_y=False,
            sigmoid=sigmoid,
            softmax=softmax,
            other_act=other_act,
            reduction=reduction,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            backend=backend,
        )
        self.cldice = SoftclDiceLoss(
            iter_=iter_,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            smooth=smooth,
            include_background=include_background,
            to_onehot_y=False,
            sigmoid=sigmoid,
            softmax=softmax,
            other_act=other_act,
            reduction=reduction,
        )
        self.alpha = float(alpha)
        self.to_onehot_y = to_onehot_y

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        input = check_tensor("input", input)
        target = check_tensor("target", target)
        if input.dim() != target.dim():
            raise ValueError(
                "the number of dimensions for input and target should be the same, got shape "
                f"{tuple(input.shape)} and {tuple(target.shape)}."
            )
        if target.shape[1] != 1 and target.shape[1] != input.shape[1]:
            raise ValueError(
                "number of channels for target is neither 1 nor the same as input, got shape "
                f"{tuple(input.shape)} and {tuple(target.shape)}."
            )
        if self.to_onehot_y:
            if input.shape[1] == 1:
                _warn_single("to_onehot_y=True")
            else:
                target = _one_hot(target, input)
        return (1.0 - self.alpha) * self.dice(input, target) + self.alpha * self.cldice(input, target)


__all__ = [
    "DiceLoss",
    "GeneralizedDiceLoss",
    "TverskyLoss",
    "DiceCELoss",
    "DiceFocalLoss",
    "HausdorffDTLoss",
    "SoftclDiceLoss",
    "SoftDiceclDiceLoss",
    "ShapeMismatchError",
]
