r"""Asymmetric unified focal loss (Yeung, Sala, Schönlieb, Rundo, CMIG 2022, arXiv 2102.04525), multiclass.

``L = lambda * L_maF + (1 - lambda) * L_maFT`` with the defaults lambda = 0.5, delta = 0.6, gamma = 0.5:

* the asymmetric focal Tversky term, summed over the classes kept (the paper's eq. 21)::

      mTI_c = (TP_c + s_nr) / (TP_c + delta FN_c + (1 - delta) FP_c + s_dr)
      L_maFT = (1 - mTI_bg) + sum_{c != bg} (1 - mTI_c)^(1 - gamma)

* the asymmetric focal term, per position summed over the classes and averaged over the positions::

      L_maF = -(1 / N) sum_n [ (1 - delta) g_bg (1 - p_bg)^gamma log p_bg + delta sum_{c != bg} g_c log p_c ]

so the background is suppressed (focal factor) in the cross-entropy and the foreground enhanced (exponent
1 - gamma < 1) in the Tversky term. Multiclass: class 0 is the background, every other class foreground.
Binary and multilabel: each channel is a foreground whose background is its complement (probability 1 - p,
target 1 - g), so a binary channel gives exactly the two-class loss of the authors' code, and a multilabel
input sums the losses of its channels.

The sums it needs, TP = I, FN = G - I, FP = P - I and the focal sum, come from one pass over the logits
(:mod:`diceloss.stats.focal_asym`); the background statistics of a binary channel are those of its
complement (I_bg = M - P - G + I, P_bg = M - P, G_bg = M - G).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from ._checks import (
    check_compound_reduction,
    check_nonnegative,
    check_option_fields,
)
from ._layout import prepare
from .distributed import all_reduce_sum
from .heads import safe_pow, tversky_score
from .losses import _Option, _OptionsModule
from .stats.focal_asym import COL_A, COL_G, COL_I, COL_M, COL_P, asymmetric_focal_sums

__all__ = ["unified_focal_loss", "UnifiedFocalLoss", "UnifiedFocalOptions", "unified_focal_from_sums"]


@dataclasses.dataclass(frozen=True)
class UnifiedFocalOptions:
    """The options of :func:`unified_focal_loss`, validated once when made (immutable)."""

    mode: str = "multiclass"
    from_logits: bool = True
    include_background: bool = True
    ignore_index: int | None = None
    batch_dice: bool = False
    lambda_focal: float = 0.5
    delta: float = 0.6
    gamma: float = 0.5
    smooth_nr: float = 1e-5
    smooth_dr: float = 1e-5
    reduction: str = "mean"
    backend: str = "auto"
    distributed: bool = False
    process_group: object = None

    def __post_init__(self) -> None:
        check_compound_reduction(self.reduction, "UnifiedFocalLoss")
        check_option_fields(
            self, bools=("from_logits", "include_background", "batch_dice", "distributed"), reductions=None,
            smoothing=True,
        )
        for name in ("lambda_focal", "delta"):
            object.__setattr__(self, name, check_nonnegative(name, getattr(self, name), at_most=1.0))
        gamma = check_nonnegative("gamma", self.gamma, at_most=1.0)
        if gamma == 1.0:
            raise ValueError("gamma must be in [0, 1): the foreground Tversky term is (1 - mTI)^(1 - gamma), a "
                             "constant at gamma = 1; got 1.0")
        object.__setattr__(self, "gamma", gamma)
        if self.distributed and not self.batch_dice:
            raise ValueError("distributed=True sums the statistics over the ranks, which only batch Dice needs "
                             "(batch_dice=True)")


def unified_focal_from_sums(
    sums: Tensor, o: UnifiedFocalOptions, kept: tuple[int, ...] | None
) -> tuple[Tensor, Tensor]:
    """(focal term, Tversky term) from the (G, C, 5) sums of :mod:`diceloss.stats.focal_asym`, reduced by
    ``o.reduction`` ("mean": Tversky averaged over the groups, focal averaged over the valid positions)."""
    I, P, G, M, A = (sums[..., k] for k in (COL_I, COL_P, COL_G, COL_M, COL_A))
    delta, gamma, s_nr, s_dr = o.delta, o.gamma, o.smooth_nr, o.smooth_dr
    # mTI = (TP + s) / (TP + delta FN + (1 - delta) FP + s): tversky_score's alpha weighs FP, beta FN
    fg = 1 - tversky_score(I, P, G, 1 - delta, delta, s_nr, s_dr)
    if o.mode == "multiclass":
        per_class = torch.cat([fg[:, :1], safe_pow(fg[:, 1:], 1 - gamma)], dim=1)
    else:
        bg = 1 - tversky_score(M - P - G + I, M - P, M - G, 1 - delta, delta, s_nr, s_dr)
        per_class = bg + safe_pow(fg, 1 - gamma)
    if kept is not None:
        per_class = per_class[:, list(kept)]
    per_group = per_class.sum(dim=1)
    a, m = A.sum(dim=0), M.sum(dim=0)
    if o.reduction == "sum":
        return a.sum(), per_group.sum()
    counted = m > 0
    # per class the mean over its valid elements (in multiclass mode every class has the same count)
    focal = torch.where(counted, a / torch.where(counted, m, torch.ones_like(m)), torch.zeros_like(a)).sum()
    return focal, per_group.mean()


def _terms(input: Tensor, target: Tensor, mask: Tensor | None, o: UnifiedFocalOptions) -> tuple[Tensor, Tensor]:
    prep = prepare(input, target, mode=o.mode, from_logits=o.from_logits, ignore_index=o.ignore_index, mask=mask,
                   include_background=o.include_background)
    sums = asymmetric_focal_sums(prep, o.delta, o.gamma, o.backend)
    if o.batch_dice:
        sums = sums.sum(dim=0, keepdim=True)
        if o.distributed:
            sums = all_reduce_sum(sums, o.process_group)
    return unified_focal_from_sums(sums, o, prep.kept_classes)


def _combine(focal: Tensor, tversky: Tensor, o: UnifiedFocalOptions) -> Tensor:
    return o.lambda_focal * focal + (1 - o.lambda_focal) * tversky


def unified_focal_loss(
    input: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    *,
    mode: str = "multiclass",
    from_logits: bool = True,
    include_background: bool = True,
    ignore_index: int | None = None,
    batch_dice: bool = False,
    lambda_focal: float = 0.5,
    delta: float = 0.6,
    gamma: float = 0.5,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    reduction: str = "mean",
    backend: str = "auto",
    distributed: bool = False,
    process_group=None,
) -> Tensor:
    r"""Asymmetric unified focal loss (Yeung et al., 2022): ``lambda_focal * L_maF + (1 - lambda_focal) * L_maFT``::

        L_maFT = (1 - mTI_0) + sum_{c >= 1} (1 - mTI_c)^(1 - gamma),  mTI = TP / (TP + delta FN + (1 - delta) FP)
        L_maF  = -(1/N) sum_n [(1 - delta) g_0 (1 - p_0)^gamma log p_0 + delta sum_{c >= 1} g_c log p_c]

    See :class:`diceloss.UnifiedFocalLoss` for every argument. Range: [0, inf) (the focal term is a
    cross-entropy); 0 for a perfect prediction.

    Example:
        >>> x = torch.tensor([[[4.0, -4.0, 4.0], [-4.0, 4.0, -4.0]]])      # (B=1, C=2, N=3)
        >>> t = torch.tensor([[0, 1, 0]])
        >>> float(unified_focal_loss(x, t)) < 0.05
        True
    """
    o = UnifiedFocalOptions(mode, from_logits, include_background, ignore_index, batch_dice, lambda_focal, delta,
                            gamma, smooth_nr, smooth_dr, reduction, backend, distributed, process_group)
    return _combine(*_terms(input, target, mask, o), o)


class UnifiedFocalLoss(_OptionsModule):
    r"""Asymmetric unified focal loss (Yeung, Sala, Schönlieb, Rundo, CMIG 2022), multiclass, binary and multilabel.

    ``L = lambda_focal * L_maF + (1 - lambda_focal) * L_maFT``, per group (a sample, or the batch with
    ``batch_dice``) for the Tversky term, over the valid positions of the batch for the focal term::

        mTI_c  = (TP_c + s_nr) / (TP_c + delta FN_c + (1 - delta) FP_c + s_dr)
        L_maFT = (1 - mTI_bg) + sum_{c != bg} (1 - mTI_c)^(1 - gamma)          summed over the classes kept
        L_maF  = -(1/N) sum_n [(1 - delta) g_bg (1 - p_bg)^gamma log p_bg + delta sum_{c != bg} g_c log p_c]

    The background (class 0 in multiclass mode) has its cross-entropy suppressed by the focal factor; the
    foreground classes are weighted by delta and enhanced in the Tversky term (exponent 1 - gamma < 1), which
    is what makes the loss robust to class imbalance. Binary and multilabel: each channel is a foreground whose
    background is its complement (1 - p, 1 - g), so a binary channel equals the two-class softmax loss, and a
    multilabel input sums its channels' losses. This is the paper's sum over the classes in L_maFT; the authors'
    code (and MONAI) average over the classes instead (mlyg/unified-focal-loss#22): see
    docs/losses/unified_focal.md. Range: [0, inf); 0 for a perfect prediction.

    Args:
        mode: "binary" | "multiclass" | "multilabel" (shapes as in :mod:`diceloss.functional`).
        from_logits: ``True``: logits (softmax over C in multiclass mode, sigmoid otherwise); ``False``:
            probabilities.
        include_background: keep class 0 (multiclass) or channel 0 (multilabel) in the Tversky sum; the focal
            term always covers every class (as the cross-entropy of :class:`diceloss.DiceCELoss`).
        ignore_index: multiclass: a class index marking positions to skip (a real class is also dropped from the
            Tversky sum); binary, multilabel: a target value marking elements to skip.
        batch_dice: the Tversky sums over the whole batch (one index per class).
        lambda_focal: lambda, the weight of the focal term in [0, 1]; the Tversky term gets 1 - lambda.
        delta: in [0, 1], the weight of the foreground (false negatives in mTI, the foreground cross-entropy).
        gamma: in [0, 1), the focal parameter: background suppression in L_maF, foreground enhancement in L_maFT.
        smooth_nr, smooth_dr: added to the numerator and the denominator of mTI (the authors use 1e-7).
        reduction: "mean" | "sum" (the Tversky terms summed over the groups, the focal terms over the positions).
        backend: "auto" | "reference" | "fused" | "triton".
        distributed: with ``batch_dice``, sum the statistics over the ranks of ``process_group``.

    ``components`` holds the detached ``focal`` and ``tversky`` terms of the last call (unweighted).

    Shape:
        input (B, C, *S) (binary: (B, 1, *S) or (B, *S)); target (B, *S) / (B, 1, *S) / (B, C, *S); mask (B, *S)
        or (B, 1, *S); output ().

    Example:
        >>> loss = UnifiedFocalLoss()
        >>> x = torch.randn(2, 4, 8, 8, requires_grad=True)
        >>> t = torch.randint(0, 4, (2, 8, 8))
        >>> loss(x, t).backward()
        >>> sorted(loss.components)
        ['focal', 'tversky']
    """

    mode = _Option()
    from_logits = _Option()
    include_background = _Option()
    ignore_index = _Option()
    batch_dice = _Option()
    lambda_focal = _Option()
    delta = _Option()
    gamma = _Option()
    smooth_nr = _Option()
    smooth_dr = _Option()
    reduction = _Option()
    backend = _Option()
    distributed = _Option()
    process_group = _Option()

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        from_logits: bool = True,
        include_background: bool = True,
        ignore_index: int | None = None,
        batch_dice: bool = False,
        lambda_focal: float = 0.5,
        delta: float = 0.6,
        gamma: float = 0.5,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        reduction: str = "mean",
        backend: str = "auto",
        distributed: bool = False,
        process_group=None,
    ) -> None:
        super().__init__()
        self._options = UnifiedFocalOptions(mode, from_logits, include_background, ignore_index, batch_dice,
                                            lambda_focal, delta, gamma, smooth_nr, smooth_dr, reduction, backend,
                                            distributed, process_group)
        self.components: dict[str, Tensor] = {}

    def forward(self, input: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        focal, tversky = _terms(input, target, mask, self._options)
        self.components = {"focal": focal.detach(), "tversky": tversky.detach()}
        return _combine(focal, tversky, self._options)

    def extra_repr(self) -> str:
        o = self._options
        return (f"mode={o.mode!r}, lambda_focal={o.lambda_focal}, delta={o.delta}, gamma={o.gamma}, "
                f"reduction={o.reduction!r}")
