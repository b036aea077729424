r"""Generalized Wasserstein Dice loss (Fidon et al., BrainLes 2017, arXiv 1707.00478).

A Dice loss in which a mistake costs the distance between the two classes it confuses. With M a K x K matrix
of distances between classes (normalised to a largest entry of 1), at each valid position n the Wasserstein
distance between the prediction p_n and the target label t_n is ``W_n = sum_c M[t_n, c] p_cn``, and per group
(a sample, or the batch with ``batch_dice``)::

    TP = sum_n alpha_{t_n} (1 - W_n)                              generalised true positives
    loss = 1 - (2 TP + s_nr) / (2 TP + sum_n W_n + s_dr)          weighting="default"
    loss = 1 - (2 TP + s_nr) / (sum_n alpha_{t_n} (2 - W_n) + s_dr)   weighting="GDL"

alpha_k = 0 for the background (class 0) and 1 otherwise ("default", the paper), or
``1 / (N_k + 1)``, N_k the number of valid positions of class k in the group ("GDL", Tilborghs et al. 2020,
the variant of MONAI and of the authors' code). Each sum is a function of the statistics of
:mod:`diceloss.stats.pairs`: V[k] = sum_{t_n = k} W_n and N[k]::

    TP = sum_k alpha_k (N_k - V_k),   sum_n W_n = sum_k V_k,   sum_n alpha_{t_n} (2 - W_n) = sum_k alpha_k (2 N_k - V_k)

so the loss is computed in one pass over the logits, without a one-hot target and without the
(B, K, K, N) distance map of a direct implementation. Binary mode compares (1 - p, p) with (1 - g, g), K = 2;
with M = [[0, 1], [1, 0]] it is the binary Dice loss.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import Tensor

from ._checks import (
    MODES,
    check_choice,
    check_option_fields,
    value_checks_enabled,
)
from ._layout import prepare
from .distributed import all_reduce_sum
from .heads import ratio_or_one, reduce_groups
from .losses import _Option, _OptionsModule
from .stats import compute_dtype
from .stats.pairs import wasserstein_sums

__all__ = ["generalized_wasserstein_dice_loss", "GeneralizedWassersteinDiceLoss", "WASSERSTEIN_WEIGHTINGS",
           "check_dist_matrix"]

WASSERSTEIN_WEIGHTINGS = ("default", "GDL")
_MODES = ("multiclass", "binary")


def check_dist_matrix(dist_matrix: object, *, check_values: bool = True) -> Tensor | None:
    """``dist_matrix`` as a floating (K, K) tensor divided by its largest entry, or None (every pair of distinct
    classes at distance 1). Raises TypeError / ValueError for anything that is not a square matrix of
    non-negative finite distances with a zero diagonal and a positive entry."""
    if dist_matrix is None:
        return None
    if isinstance(dist_matrix, np.ndarray):
        dist_matrix = torch.from_numpy(dist_matrix)
    elif isinstance(dist_matrix, (list, tuple)):
        try:
            dist_matrix = torch.as_tensor(dist_matrix, dtype=torch.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(f"dist_matrix must be a (C, C) tensor, array or nested sequence of numbers, got "
                            f"{dist_matrix!r}") from err
    if not isinstance(dist_matrix, Tensor):
        raise TypeError(f"dist_matrix must be a (C, C) tensor, array or nested sequence of numbers, got "
                        f"{type(dist_matrix).__name__}")
    m = dist_matrix.detach()
    if m.is_complex() or m.dtype == torch.bool:
        raise TypeError(f"dist_matrix must hold real distances, got dtype {m.dtype}")
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 2:
        raise ValueError(f"dist_matrix must be a square (C, C) matrix with C >= 2, got shape {tuple(m.shape)}")
    m = m.to(torch.float64 if m.dtype == torch.float64 else torch.float32)
    if check_values:
        if not bool(torch.isfinite(m).all()) or bool((m < 0).any()):
            raise ValueError(f"dist_matrix must hold finite distances >= 0, got {m.tolist()}")
        if bool((m.diagonal() != 0).any()):
            raise ValueError(f"dist_matrix must have a zero diagonal (the distance of a class to itself), got "
                             f"diagonal {m.diagonal().tolist()}")
        if not bool((m > 0).any()):
            raise ValueError("dist_matrix must have a positive entry (all distances 0 make every prediction perfect)")
    # the distances are normalised so that W_n <= 1 and TP >= 0 (the paper's M is in [0, 1]; MONAI divides too)
    return m / m.max()


@dataclasses.dataclass(frozen=True)
class WassersteinOptions:
    """The options of :func:`generalized_wasserstein_dice_loss`, validated once when made (immutable)."""

    mode: str = "multiclass"
    from_logits: bool = True
    ignore_index: int | None = None
    weighting: str = "default"
    batch_dice: bool = False
    smooth_nr: float = 1e-5
    smooth_dr: float = 1e-5
    reduction: str = "mean"
    backend: str = "auto"
    distributed: bool = False
    process_group: object = None

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, MODES)
        if self.mode not in _MODES:
            raise ValueError(
                "the generalized Wasserstein Dice loss compares distributions over exclusive classes: mode must "
                "be 'multiclass' or 'binary', got 'multilabel'"
            )
        check_choice("weighting", self.weighting, WASSERSTEIN_WEIGHTINGS)
        check_option_fields(self, bools=("from_logits", "batch_dice", "distributed"), smoothing=True)
        if self.distributed and not self.batch_dice:
            raise ValueError("distributed=True sums the statistics over the ranks, which only batch Dice needs "
                             "(batch_dice=True)")


def wasserstein_dice_from_sums(V: Tensor, N: Tensor, weighting: str, smooth_nr: float, smooth_dr: float) -> Tensor:
    """The loss per group (G,) from the per-(group, target class) sums V (Wasserstein mass) and N (count)."""
    if weighting == "GDL":
        alpha = 1.0 / (N.detach() + 1.0)
        tp = (alpha * (N - V)).sum(dim=1)
        den = (alpha * (2 * N - V)).sum(dim=1)
    else:
        # alpha = 0 for the background, 1 for every other class
        tp = (N[:, 1:] - V[:, 1:]).sum(dim=1)
        den = 2 * tp + V.sum(dim=1)
    return 1 - ratio_or_one(2 * tp + smooth_nr, den + smooth_dr)


def _default_matrix(K: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    return 1 - torch.eye(K, dtype=dtype, device=device)


def _loss(input: Tensor, target: Tensor, mask: Tensor | None, dist: Tensor | None, o: WassersteinOptions) -> Tensor:
    prep = prepare(input, target, mode=o.mode, from_logits=o.from_logits, ignore_index=o.ignore_index, mask=mask)
    K = 2 if o.mode == "binary" else prep.num_classes
    dtype = compute_dtype(input.dtype)
    if dist is None:
        dist = _default_matrix(K, dtype, input.device)
    else:
        if dist.shape[0] != K:
            what = "2 (binary mode compares background and foreground)" if o.mode == "binary" else f"C = {K}"
            raise ValueError(f"dist_matrix must be {K} x {K} for this input ({what}), got "
                             f"{tuple(dist.shape)}")
        dist = dist.to(device=input.device, dtype=dtype)
    V, N = wasserstein_sums(prep, dist, o.backend)
    if o.batch_dice:
        V, N = V.sum(dim=0, keepdim=True), N.sum(dim=0, keepdim=True)
        if o.distributed:
            V, N = all_reduce_sum(torch.stack([V, N], dim=-1), o.process_group).unbind(-1)
    loss = wasserstein_dice_from_sums(V, N, o.weighting, o.smooth_nr, o.smooth_dr)
    return reduce_groups(loss, o.reduction, o.batch_dice)


def generalized_wasserstein_dice_loss(
    input: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    *,
    dist_matrix: Tensor | np.ndarray | None = None,
    mode: str = "multiclass",
    from_logits: bool = True,
    ignore_index: int | None = None,
    weighting: str = "default",
    batch_dice: bool = False,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    reduction: str = "mean",
    backend: str = "auto",
    distributed: bool = False,
    process_group=None,
) -> Tensor:
    r"""Generalized Wasserstein Dice loss (Fidon et al., 2017), one value per group::

        W_n = sum_c M[t_n, c] p_cn,     TP = sum_n alpha_{t_n} (1 - W_n)
        loss = 1 - (2 TP + s_nr) / (2 TP + sum_n W_n + s_dr)            (weighting="default")

    See :class:`diceloss.GeneralizedWassersteinDiceLoss` for every argument. ``dist_matrix`` (C, C) (2 x 2 in
    binary mode) is divided by its largest entry; None puts every pair of distinct classes at distance 1.
    Range: [0, 1].

    Example:
        >>> M = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.5], [1.0, 0.5, 0.0]])
        >>> x = torch.tensor([[[9.0, -9.0, -9.0], [-9.0, 9.0, -9.0], [-9.0, -9.0, 9.0]]])  # (B=1, C=3, N=3)
        >>> t = torch.tensor([[0, 1, 2]])
        >>> float(generalized_wasserstein_dice_loss(x, t, dist_matrix=M)) < 1e-6
        True
    """
    o = WassersteinOptions(mode, from_logits, ignore_index, weighting, batch_dice, smooth_nr, smooth_dr, reduction,
                           backend, distributed, process_group)
    device = input.device if isinstance(input, Tensor) else torch.device("cpu")
    dist = check_dist_matrix(dist_matrix, check_values=value_checks_enabled(
        dist_matrix.device if isinstance(dist_matrix, Tensor) else device))
    return _loss(input, target, mask, dist, o)


class GeneralizedWassersteinDiceLoss(_OptionsModule):
    r"""Generalized Wasserstein Dice loss (Fidon et al., BrainLes 2017): a Dice loss whose errors cost the
    distance between the classes confused.

    Per group (a sample; the batch with ``batch_dice``), over the valid positions n with target label t_n::

        W_n  = sum_c M[t_n, c] p_cn                     Wasserstein distance of p_n to the label t_n
        TP   = sum_n alpha_{t_n} (1 - W_n)
        loss = 1 - (2 TP + s_nr) / (2 TP + sum_n W_n + s_dr)                    weighting="default"
        loss = 1 - (2 TP + s_nr) / (sum_n alpha_{t_n} (2 - W_n) + s_dr)         weighting="GDL"

    alpha_k = 0 for the background (class 0), 1 for the others ("default", the paper); or 1 / (N_k + 1) with N_k
    the number of valid positions of class k in the group ("GDL", Tilborghs et al. 2020). Range: [0, 1]; 0 for
    a perfect prediction. Computed in one pass from two statistics per (group, class), V_k = sum_{t_n = k} W_n
    and N_k (:mod:`diceloss.stats.pairs`): no one-hot target, no per-position distance map.

    Args:
        mode: "multiclass" | "binary" (the probabilities (1 - p, p)); "multilabel" has no class distribution
            and is refused.
        dist_matrix: (C, C) distances between classes (a tensor, array or nested list; 2 x 2 in binary mode),
            non-negative, zero on the diagonal, not necessarily symmetric; divided by its largest entry. Row k is
            the cost of predicting each class where the target is k. None: every pair of distinct classes at
            distance 1. Keyword only (MONAI takes it first).
        from_logits: ``True``: logits (softmax over C, or sigmoid in binary mode); ``False``: probabilities.
        ignore_index: multiclass: a class index marking positions to skip; binary: a target value.
        weighting: "default" | "GDL" (see above).
        batch_dice: one loss for the batch, the sums taken over every sample.
        smooth_nr, smooth_dr: added to numerator and denominator; ``smooth_nr <= smooth_dr``.
        reduction: "mean" | "sum" over the groups | "none": (B,), or () with ``batch_dice``.
        backend: "auto" | "reference" | "fused" | "triton".
        distributed: with ``batch_dice``, sum the statistics over the ranks of ``process_group``.

    Targets: class indices, or one-hot (B, C, *S) probabilities; a soft target is read as the expectation over
    its labels (the cost of the independent coupling, which is the Wasserstein distance only for hard labels).

    Shape:
        input (B, C, *S) (binary: (B, 1, *S) or (B, *S)); target (B, *S) / (B, 1, *S) / (B, C, *S); mask
        (B, *S) or (B, 1, *S); output () for "mean" / "sum", (B,) or () for "none".

    Example:
        >>> M = [[0.0, 1.0, 1.0], [1.0, 0.0, 0.5], [1.0, 0.5, 0.0]]
        >>> loss = GeneralizedWassersteinDiceLoss(dist_matrix=M)
        >>> x = torch.randn(2, 3, 8, 8, requires_grad=True)
        >>> t = torch.randint(0, 3, (2, 8, 8))
        >>> loss(x, t).backward()
    """

    mode = _Option()
    from_logits = _Option()
    ignore_index = _Option()
    weighting = _Option()
    batch_dice = _Option()
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
        dist_matrix: Tensor | np.ndarray | None = None,
        from_logits: bool = True,
        ignore_index: int | None = None,
        weighting: str = "default",
        batch_dice: bool = False,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        reduction: str = "mean",
        backend: str = "auto",
        distributed: bool = False,
        process_group=None,
    ) -> None:
        super().__init__()
        if not isinstance(mode, str) and isinstance(mode, (Tensor, np.ndarray, list, tuple)):
            raise TypeError("the first argument of GeneralizedWassersteinDiceLoss is mode; pass the distance matrix "
                            "by keyword: GeneralizedWassersteinDiceLoss(dist_matrix=M)")
        self._options = WassersteinOptions(mode, from_logits, ignore_index, weighting, batch_dice, smooth_nr,
                                           smooth_dr, reduction, backend, distributed, process_group)
        self.register_buffer("_dist", check_dist_matrix(dist_matrix))

    @property
    def dist_matrix(self) -> Tensor | None:
        """The normalised distance matrix (a buffer: it follows ``.to(device)``), or None."""
        return self._dist

    @dist_matrix.setter
    def dist_matrix(self, value) -> None:
        m = check_dist_matrix(value)
        self._dist = None if m is None else m.to(self._dist.device if self._dist is not None else m.device)

    def forward(self, input: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        return _loss(input, target, mask, self._dist, self._options)

    def extra_repr(self) -> str:
        o = self._options
        C = None if self._dist is None else self._dist.shape[0]
        return (f"C={C}, mode={o.mode!r}, weighting={o.weighting!r}, batch_dice={o.batch_dice}, "
                f"reduction={o.reduction!r}")
