"""segmentation_models_pytorch's Dice, Jaccard, Tversky and Lovász losses with SMP 0.6's arguments and values.

:class:`LovaszLoss` is not a head on the statistics: it runs :func:`diceloss.functional.lovasz_loss` and lists
its own differences from SMP; the rest of this docstring is about the Dice family.

``from diceloss.compat.smp import DiceLoss`` in place of ``from segmentation_models_pytorch.losses import
DiceLoss``: same constructor (plus a keyword-only ``backend``), same ``forward(y_pred, y_true)``, same values
and gradients, SMP's conventions included:

* batch-level statistics: the sums run over the batch and the positions together, one score per class;
* a class absent from the whole batch's target contributes 0 (and no gradient: false positives on it cost
  nothing) but still counts in the class mean;
* ``smooth`` enters twice: ``D = (I + s) / max((P + G)/2 + s, eps) = (2I + 2s) / (P + G + 2s)``; Jaccard
  ``(I + s) / max(P + G - I + s, eps)``; Tversky ``(I + s) / max(I + alpha (P - I) + beta (G - I) + s, eps)``;
* ``log_loss``: ``-log(max(score, eps))`` per class instead of ``1 - score``;
* ``classes`` keeps those per-class losses (after the zeroing); ``class_weights``: ``sum w l / sum w``;
* ``TverskyLoss(gamma)`` raises the class *mean* to ``gamma`` (not each class term);
* ``ignore_index`` removes positions (multiclass) or elements (binary, multilabel) from every sum.

Differences that remain:

* SMP computes the intersection by the L1 identity ``(P + G - sum |p - g|) / 2``. Here class-index targets
  (multiclass) use the sum of products ``sum p g``, equal for 0/1 targets, and dense targets (binary,
  multilabel) the sum of ``min(p, g)``, equal for any target in [0, 1]; both agree with SMP to float
  rounding, and are closer to the exact value: SMP's form cancels catastrophically in float32 on a small
  object in a large volume (17 % error in the Dice of a 125-voxel object in a 128x256x256 volume);
* statistics accumulate in float32 for float16 / bfloat16 input (SMP sums in half precision and returns
  NaN past 65504); the result is float32 there;
* bad input raises ``ValueError`` / ``TypeError`` where SMP asserts or fails inside ``F.one_hot``; class
  indices may be any integer dtype (SMP needs int64).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .. import _checks
from ..lovasz import lovasz_loss
from ..stats import StatsRequest
from ._common import check_float_input, check_tensor, dense, index_target, overlap_stats

MODES = ("binary", "multiclass", "multilabel")


class _SMPLoss(nn.Module):
    """SMP's pipeline: activation, layout, batch-level statistics, zeroing, class selection, weights."""

    def __init__(
        self,
        mode: str,
        classes: Sequence[int] | None = None,
        log_loss: bool = False,
        from_logits: bool = True,
        smooth: float = 0.0,
        ignore_index: int | None = None,
        eps: float = 1e-7,
        class_weights: Sequence[float] | None = None,
        *,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        _checks.check_choice("mode", mode, MODES)
        _checks.check_backend(backend)
        if class_weights is not None and mode == "binary":
            raise ValueError("class_weights are not supported with mode=binary")
        if classes is not None:
            if mode == "binary":
                raise ValueError("Masking classes is not supported with mode=binary")
            classes = torch.as_tensor(classes, dtype=torch.long)
        if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
            raise TypeError(f"ignore_index must be an int or None, got {ignore_index!r}")
        self.mode = mode
        self.classes = classes
        self.log_loss = log_loss
        self.from_logits = from_logits
        self.smooth = smooth
        self.ignore_index = ignore_index
        self.eps = eps
        self.class_weights = (
            None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float)
        )
        self.backend = backend

    def score(self, I: Tensor, P: Tensor, G: Tensor) -> Tensor:
        raise NotImplementedError

    def aggregate(self, loss: Tensor) -> Tensor:
        if self.class_weights is not None:
            weights = self.class_weights.to(loss.device)
            if self.classes is not None:
                weights = weights[self.classes]
            return (loss * weights).sum() / weights.sum()
        return loss.mean()

    def _stats(self, y_pred: Tensor, y_true: Tensor):
        y_pred = check_tensor("y_pred", y_pred)
        y_true = check_tensor("y_true", y_true)
        if y_true.device != y_pred.device:
            raise ValueError(
                f"y_pred and y_true must be on one device, got {y_pred.device} and {y_true.device}"
            )
        if y_pred.ndim < 2 or y_true.ndim < 1 or y_true.shape[0] != y_pred.shape[0]:
            raise ValueError(
                f"y_pred (N, C, *spatial) and y_true must share the batch size, got {tuple(y_pred.shape)} "
                f"and {tuple(y_true.shape)}"
            )
        check_float_input(y_pred, 2, "(N, C, *spatial)")
        bs = y_pred.shape[0]
        activation = ("softmax" if self.mode == "multiclass" else "sigmoid") if self.from_logits else "none"
        if self.mode == "binary":
            if y_true.numel() != y_pred.numel():
                raise ValueError(
                    f"binary mode expects y_pred (N, 1, *spatial) and y_true of as many elements, got "
                    f"{tuple(y_pred.shape)} and {tuple(y_true.shape)}"
                )
            x = y_pred.reshape(bs, 1, -1)
            t = dense(y_true, y_pred.dtype).reshape(bs, 1, -1)
            request = StatsRequest(soft_label=True)  # sum min(p, g): SMP's L1 intersection, any target
        elif self.mode == "multiclass":
            x = y_pred.reshape(bs, y_pred.shape[1], -1)
            if y_true.numel() != bs * x.shape[2]:
                raise ValueError(
                    f"multiclass mode expects class indices y_true (N, *spatial) for y_pred (N, C, *spatial),"
                    f" got {tuple(y_true.shape)} and {tuple(y_pred.shape)}"
                )
            t = index_target(y_true.reshape(bs, -1), x.shape[1], self.ignore_index)
            request = StatsRequest()  # 0/1 targets: sum p g equals the L1 form
        else:
            if tuple(y_true.shape) != tuple(y_pred.shape):
                raise ValueError(
                    f"multilabel mode expects y_true of y_pred's shape {tuple(y_pred.shape)}, got "
                    f"{tuple(y_true.shape)}"
                )
            x = y_pred.reshape(bs, y_pred.shape[1], -1)
            t = dense(y_true, y_pred.dtype).reshape(bs, x.shape[1], -1)
            request = StatsRequest(soft_label=True)
        stats = overlap_stats(
            x,
            t,
            mode=self.mode,
            activation=activation,
            request=request,
            backend=self.backend,
            ignore_index=self.ignore_index,
        )
        return stats.intersection.sum(0), stats.pred_volume.sum(0), stats.target_volume.sum(0)

    def forward(self, y_pred: Tensor, y_true: Tensor) -> Tensor:
        I, P, G = self._stats(y_pred, y_true)
        scores = self.score(I, P, G)
        loss = -torch.log(scores.clamp_min(self.eps)) if self.log_loss else 1.0 - scores
        loss = loss * (G.detach() > 0).to(loss.dtype)  # SMP: a class absent from the batch contributes 0
        if self.classes is not None:
            loss = loss[self.classes.to(loss.device)]
        return self.aggregate(loss)


def _tversky(I: Tensor, P: Tensor, G: Tensor, alpha: float, beta: float, smooth: float, eps: float) -> Tensor:
    fp = P - I
    fn = G - I
    return (I + smooth) / (I + alpha * fp + beta * fn + smooth).clamp_min(eps)


class DiceLoss(_SMPLoss):
    r"""SMP's ``DiceLoss`` (0.6): per class, over the whole batch, ``1 - D`` (``-log max(D, eps)`` with
    ``log_loss``)::

        D_c = (I_c + smooth) / max((P_c + G_c) / 2 + smooth, eps),   zeroed where G_c = 0

    then the mean over the classes (``classes`` selects, ``class_weights``: ``sum w l / sum w``).

    Shapes: binary y_pred (N, 1, *S), y_true (N, *S) or (N, 1, *S); multiclass y_pred (N, C, *S), y_true
    class indices (N, *S); multilabel both (N, C, *S). Output: ().

    Example:
        >>> loss = DiceLoss("multiclass", smooth=1.0)
        >>> x = torch.randn(2, 3, 8, 8, requires_grad=True)
        >>> t = torch.randint(0, 3, (2, 8, 8))
        >>> loss(x, t).backward()
    """

    def score(self, I: Tensor, P: Tensor, G: Tensor) -> Tensor:
        return _tversky(I, P, G, 0.5, 0.5, self.smooth, self.eps)


class JaccardLoss(_SMPLoss):
    r"""SMP's ``JaccardLoss`` (0.6): per class, over the whole batch, ``1 - J``::

        J_c = (I_c + smooth) / max(P_c + G_c - I_c + smooth, eps),   zeroed where G_c = 0

    Arguments and shapes as :class:`DiceLoss`.

    Example:
        >>> loss = JaccardLoss("multilabel")
        >>> x = torch.randn(2, 3, 8, 8)
        >>> t = (torch.rand(2, 3, 8, 8) > 0.5).float()
        >>> 0 <= float(loss(x, t)) <= 1
        True
    """

    def score(self, I: Tensor, P: Tensor, G: Tensor) -> Tensor:
        return _tversky(I, P, G, 1.0, 1.0, self.smooth, self.eps)


class TverskyLoss(_SMPLoss):
    r"""SMP's ``TverskyLoss`` (0.6): ``(mean_c l_c) ** gamma`` with, per class over the whole batch,
    ``l_c = 1 - T_c`` (zeroed where G_c = 0)::

        T_c = (I_c + smooth) / max(I_c + alpha (P_c - I_c) + beta (G_c - I_c) + smooth, eps)

    ``alpha`` weighs false positives, ``beta`` false negatives; ``gamma`` applies to the class mean (SMP's
    convention; diceloss's :class:`~diceloss.TverskyLoss` applies its ``exponent`` per class).

    Example:
        >>> loss = TverskyLoss("binary", alpha=0.3, beta=0.7, gamma=0.75)
        >>> x = torch.randn(2, 1, 8, 8)
        >>> t = (torch.rand(2, 1, 8, 8) > 0.5).float()
        >>> float(loss(x, t)) > 0
        True
    """

    def __init__(
        self,
        mode: str,
        classes: Sequence[int] | None = None,
        log_loss: bool = False,
        from_logits: bool = True,
        smooth: float = 0.0,
        ignore_index: int | None = None,
        eps: float = 1e-7,
        alpha: float = 0.5,
        beta: float = 0.5,
        gamma: float = 1.0,
        class_weights: Sequence[float] | None = None,
        *,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            mode, classes, log_loss, from_logits, smooth, ignore_index, eps, class_weights, backend=backend
        )
        self.alpha = alpha
        self.beta = beta
        self.gamma = gamma

    def score(self, I: Tensor, P: Tensor, G: Tensor) -> Tensor:
        return _tversky(I, P, G, self.alpha, self.beta, self.smooth, self.eps)

    def aggregate(self, loss: Tensor) -> Tensor:
        return super().aggregate(loss) ** self.gamma


class LovaszLoss(nn.Module):
    r"""SMP's ``LovaszLoss`` (0.6): the Lovász hinge (binary, multilabel) or Lovász-softmax (multiclass) of
    :func:`diceloss.functional.lovasz_loss`, with SMP's arguments and layouts:

    * ``binary``: y_pred (N, 1, *S) or (N, *S) logits, y_true of as many elements; ``multilabel``: every channel
      of a sample pooled into one binary problem (SMP flattens (N, C, *S) per sample; diceloss's own
      ``mode="multilabel"`` scores each channel as a class instead);
    * ``multiclass``: y_pred (N, C, *S), y_true class indices (N, *S); the softmax over C, the mean over the
      classes present in the group's target (``classes="present"``);
    * ``per_image``: one loss per sample, then the mean over the batch; otherwise one loss for the batch;
    * ``ignore_index``: positions (multiclass) or elements (binary, multilabel) whose target equals it are left
      out.

    Differences from SMP 0.6, each where SMP is wrong:

    * ``from_logits=False`` is honoured (SMP accepts it and ignores it: it takes the softmax of probabilities,
      or the hinge of probabilities): multiclass then reads y_pred as probabilities, binary and multilabel use
      the Lovász-sigmoid errors ``|y - p|`` (half the hinge on the margins ``2p - 1``);
    * every pixel ignored gives 0 with a zero gradient (SMP returns an empty (0, C) tensor in multiclass mode,
      which cannot be backpropagated; with ``per_image`` one such sample makes SMP's mean fail);
    * bool targets work (SMP's ``1 - gt`` raises on them); soft targets and labels out of range raise a
      ValueError (SMP computes with them);
    * float64 inputs work (SMP's ``_lovasz_grad`` casts to float32 and ``torch.dot`` then raises);
    * the Lovász weights are computed in closed form: in float32 they keep their digits where SMP's
      difference of consecutive Jaccard values cancels (single weights of a 2**19-element segment off by more
      than 100 %; the loss of an 8 x 256 x 256 batch off by 1e-6, here 1e-7);
    * float16 / bfloat16 inputs are computed in float32 (the loss is float32).

    Example:
        >>> loss = LovaszLoss("multiclass", per_image=True, ignore_index=255)
        >>> x = torch.randn(2, 3, 8, 8, requires_grad=True)
        >>> t = torch.randint(0, 3, (2, 8, 8))
        >>> loss(x, t).backward()
    """

    def __init__(
        self,
        mode: str,
        per_image: bool = False,
        ignore_index: int | None = None,
        from_logits: bool = True,
    ) -> None:
        super().__init__()
        _checks.check_choice("mode", mode, MODES)
        self.mode = mode
        self.per_image = _checks.check_bool("per_image", per_image)
        self.ignore_index = _checks.check_ignore_index(ignore_index)
        self.from_logits = _checks.check_bool("from_logits", from_logits)

    def forward(self, y_pred: Tensor, y_true: Tensor) -> Tensor:
        y_pred = check_tensor("y_pred", y_pred)
        y_true = check_tensor("y_true", y_true)
        mode = self.mode
        if mode == "multilabel":
            # SMP pools the channels of a sample into one binary problem
            if tuple(y_true.shape) != tuple(y_pred.shape) or y_pred.ndim < 2:
                raise ValueError(
                    f"multilabel mode expects y_true of y_pred's shape (N, C, *spatial), got {tuple(y_pred.shape)} "
                    f"and {tuple(y_true.shape)}"
                )
            y_pred = y_pred.reshape(y_pred.shape[0], 1, -1)
            y_true = y_true.reshape(y_true.shape[0], 1, -1)
            mode = "binary"
        elif mode == "binary" and y_pred.ndim >= 2 and y_true.ndim >= 1 and y_true.numel() == y_pred.numel():
            # SMP flattens both: any layout of as many elements per sample
            y_pred = y_pred.reshape(y_pred.shape[0], 1, -1)
            y_true = y_true.reshape(y_true.shape[0], 1, -1) if y_true.shape[0] == y_pred.shape[0] else y_true
        return lovasz_loss(
            y_pred,
            y_true,
            mode=mode,
            from_logits=self.from_logits,
            ignore_index=self.ignore_index,
            per_image=self.per_image,
            classes="present",
        )

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, per_image={self.per_image}, ignore_index={self.ignore_index}"


__all__ = ["DiceLoss", "JaccardLoss", "TverskyLoss", "LovaszLoss"]
