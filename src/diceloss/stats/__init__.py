"""The statistics layer: ``(input, target) -> I, P, G (, E, F)`` per (sample, class).

Every loss in the family is a small function of these sums; they are the only part
that touches every voxel. :func:`compute_stats` checks the inputs, picks a backend and returns an
:class:`OverlapStats`. Statistics are accumulated in float32 (float64 for float64 input).
"""

from __future__ import annotations

from torch import Tensor

from .. import _checks, _layout
from .dispatch import available, resolve
from .types import OverlapStats, StatsRequest, compute_dtype

__all__ = [
    "OverlapStats",
    "StatsRequest",
    "available",
    "compute_dtype",
    "compute_stats",
    "stats_from_layout",
]


def stats_from_layout(prep: _layout.Prepared, request: StatsRequest, backend: str = "auto") -> OverlapStats:
    """Statistics of already checked inputs (a :class:`~diceloss._layout.Prepared`); the entry point for the
    losses. ``backend``: "auto" | "reference" | "fused" | "triton" (checked by the caller)."""
    module, plan = resolve(backend, prep, request)
    return module.compute(prep, request, plan)


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
        >>> import torch
        >>> x = torch.tensor([[[2.0, -1.0], [-2.0, 1.0]]])   # (B=1, C=2, N=2)
        >>> t = torch.tensor([[0, 1]])
        >>> s = compute_stats(x, t, mode="multiclass")
        >>> tuple(s.intersection.shape)
        (1, 2)
    """
    _checks.check_backend(backend)
    label_smoothing = _checks.check_nonnegative("label_smoothing", label_smoothing, at_most=1.0)
    if focal_gamma is not None:
        focal_gamma = _checks.check_nonnegative("focal_gamma", focal_gamma)
    prep = _layout.prepare(
        input,
        target,
        mode=mode,
        from_logits=_checks.check_bool("from_logits", from_logits),
        ignore_index=_checks.check_ignore_index(ignore_index),
        mask=mask,
    )
    request = StatsRequest(
        squared=_checks.check_bool("squared", squared),
        soft_label=_checks.check_bool("soft_label", soft_label),
        cross_entropy=_checks.check_bool("cross_entropy", cross_entropy),
        label_smoothing=label_smoothing,
        focal_gamma=focal_gamma,
    )
    return stats_from_layout(prep, request, backend)
