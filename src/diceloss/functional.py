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

from torch import Tensor

from ._checks import check_weight
from ._pipeline import LossOptions, run
from .blob import blob_loss
from .boundary import boundary_loss
from .calibration_loss import calibration_loss
from .cldice import cldice_loss, dice_cldice_loss
from .hausdorff import hausdorff_dt_loss
from .heads import CompoundHead, DiceHead, GeneralizedDiceHead, JaccardHead, TverskyHead
from .lovasz import lovasz_loss
from .skeleton_recall import dice_ce_skeleton_recall_loss, skeleton_recall_loss
from .unified_focal import unified_focal_loss
from .wasserstein import generalized_wasserstein_dice_loss

Weight = Sequence[float] | Tensor | None


def _weight(weight: Weight, input: Tensor) -> Tensor | None:
    """The checked weight as a tensor; a sequence lands on the input's device (a tensor must already be there)."""
    w = check_weight(weight)
    if w is not None and not isinstance(weight, Tensor):
        w = w.to(input.device)
    return w


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
    options = LossOptions(
        mode, from_logits, include_background, ignore_index, batch_dice, squared, soft_label, reduction, backend,
        distributed, process_group,
    )
    head = DiceHead(smooth_nr, smooth_dr, absent, log=log)
    return run(input, target, mask, _weight(weight, input), options, head)[0]


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
    options = LossOptions(
        mode, from_logits, include_background, ignore_index, batch_dice, False, soft_label, reduction, backend,
        distributed, process_group,
    )
    head = JaccardHead(smooth_nr, smooth_dr, absent)
    return run(input, target, mask, _weight(weight, input), options, head)[0]


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
    options = LossOptions(
        mode, from_logits, include_background, ignore_index, batch_dice, False, soft_label, reduction, backend,
        distributed, process_group,
    )
    head = TverskyHead(smooth_nr, smooth_dr, absent, alpha=alpha, beta=beta, exponent=exponent)
    return run(input, target, mask, _weight(weight, input), options, head)[0]


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
    options = LossOptions(
        mode, from_logits, include_background, ignore_index, batch_dice, False, soft_label, reduction, backend,
        distributed, process_group,
    )
    head = GeneralizedDiceHead(weighting, smooth_nr, smooth_dr)
    return run(input, target, mask, None, options, head)[0]


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
    dice = DiceHead(smooth_nr, smooth_dr, absent, log=log)
    head = CompoundHead(dice, "ce", lambda_dice, lambda_ce, label_smoothing=label_smoothing)
    head.check_reduction(reduction)
    options = LossOptions(
        mode, from_logits, include_background, ignore_index, batch_dice, squared, soft_label, reduction, backend,
        distributed, process_group,
    )
    return run(input, target, mask, _weight(weight, input), options, head)[0]


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
    dice = DiceHead(smooth_nr, smooth_dr, absent, log=log)
    head = CompoundHead(dice, "focal", lambda_dice, lambda_focal, gamma=gamma)
    head.check_reduction(reduction)
    options = LossOptions(
        mode, from_logits, include_background, ignore_index, batch_dice, squared, soft_label, reduction, backend,
        distributed, process_group,
    )
    return run(input, target, mask, _weight(weight, input), options, head)[0]


__all__ = [
    "dice_loss",
    "jaccard_loss",
    "tversky_loss",
    "generalized_dice_loss",
    "dice_ce_loss",
    "dice_focal_loss",
    "hausdorff_dt_loss",
    "lovasz_loss",
    "cldice_loss",
    "dice_cldice_loss",
    "skeleton_recall_loss",
    "dice_ce_skeleton_recall_loss",
    "boundary_loss",
    "calibration_loss",
    "blob_loss",
    "unified_focal_loss",
    "generalized_wasserstein_dice_loss",
]
