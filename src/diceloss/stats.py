"""The statistics layer: ``(input, target) -> I, P, G (, E, F)`` per (sample, class).

Every loss in the family is a small function of these sums (see DESIGN.md); they are the only part
that touches every voxel. :func:`compute_stats` checks the inputs, picks a backend and returns an
:class:`OverlapStats`. Statistics are accumulated in float32 (float64 for float64 input).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from . import _checks, _layout


class StatsRequest(NamedTuple):
    """Which statistics a head needs.

    squared: P and G sum p**2 and g**2 (V-Net) instead of p and g.
    soft_label: the intersection is sum(min(p, g)) (Dice semimetric) instead of sum(p * g); only when not squared
        (with squares the product form already is the semimetric).
    cross_entropy: also E, the cross-entropy (softmax) or binary cross-entropy (sigmoid) summed per
        (sample, class), with targets smoothed by ``label_smoothing``.
    focal_gamma: also F, the focal term with this gamma (None: not computed).
    """

    squared: bool = False
    soft_label: bool = False
    cross_entropy: bool = False
    label_smoothing: float = 0.0
    focal_gamma: float | None = None


class OverlapStats(NamedTuple):
    """Per-(sample, class) sums, each of shape (B, C), over the valid (unmasked) positions n.

    intersection:  I = sum_n m p g   (sum_n m min(p, g) for the semimetric)
    pred_volume:   P = sum_n m p^q
    target_volume: G = sum_n m g^q
    count:         M = sum_n m, the number of valid positions (per class, equal across classes in
                   multiclass mode)
    cross_entropy: E = sum_n m g~ (-log p) (multiclass, g~ the smoothed target) or sum_n m BCE(x, g~)
                   (binary, multilabel); None unless asked
    focal:         F = the focal analogue of E; None unless asked
    """

    intersection: Tensor
    pred_volume: Tensor
    target_volume: Tensor
    count: Tensor
    cross_entropy: Tensor | None = None
    focal: Tensor | None = None


def stats_from_prepared(prep: _layout.Prepared, request: StatsRequest, backend: str = "auto") -> OverlapStats:
    """Statistics of already checked inputs; the entry point for the losses."""
    impl = select_backend(backend, prep, request)
    return impl.compute(prep, request)


def compute_stats(
    input: Tensor,
    target: Tensor,
    *,
    mode: str = "multiclass",
    from_logits: bool = True,
    ignore_index: int | None = None,
    mask: Tensor | None = None,
    squared: bool = False,
    soft_label: bool = False,
    cross_entropy: bool = False,
    label_smoothing: float = 0.0,
    focal_gamma: float | None = None,
    backend: str = "auto",
) -> OverlapStats:
    """Per-(sample, class) overlap statistics of a prediction and a target.

    Args:
        input: logits (``from_logits=True``) or probabilities, (B, C, *spatial); (B, 1, *spatial) or
            (B, *spatial) in binary mode.
        target: class indices (B, *spatial) or (B, 1, *spatial), or one-hot / soft probabilities
            (B, C, *spatial) in multiclass mode; the input's shape in binary and multilabel modes.
        mode: "binary" | "multiclass" | "multilabel".
        ignore_index: target value marking positions (multiclass) or elements (binary, multilabel) to skip.
        mask: (B, *spatial) or (B, 1, *spatial), 0 = ignore.
        squared, soft_label, cross_entropy, label_smoothing, focal_gamma: see :class:`StatsRequest`.
        backend: "auto" | "reference" | "fused" | "triton".

    Returns:
        :class:`OverlapStats`, each field (B, C) in float32 (float64 for float64 input), differentiable
        with respect to ``input``.

    Example:
        >>> x = torch.tensor([[[2.0, -1.0], [-2.0, 1.0]]])   # (B=1, C=2, N=2)
        >>> t = torch.tensor([[0, 1]])
        >>> s = compute_stats(x, t, mode="multiclass")
        >>> tuple(s.intersection.shape)
        (1, 2)
    """
    _checks.check_backend(backend)
    _checks.check_nonnegative("label_smoothing", label_smoothing, at_most=1.0)
    if focal_gamma is not None:
        _checks.check_nonnegative("focal_gamma", focal_gamma)
    prep = _layout.prepare(
        input, target, mode=mode, from_logits=from_logits, ignore_index=ignore_index, mask=mask
    )
    request = StatsRequest(
        squared=squared,
        soft_label=soft_label,
        cross_entropy=cross_entropy,
        label_smoothing=float(label_smoothing),
        focal_gamma=None if focal_gamma is None else float(focal_gamma),
    )
    return stats_from_prepared(prep, request, backend)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype for an input dtype: float64 stays, everything else sums in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# Imported last: the backends import OverlapStats and StatsRequest from this module.
from .backends import load_all, select_backend  # noqa: E402

load_all()
