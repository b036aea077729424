"""What :mod:`diceloss.compat.monai` and :mod:`diceloss.compat.smp` share: tensor checks, target layouts,
and the one door to diceloss's statistics layer (:func:`overlap_stats`)."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _checks, _layout
from .._layout import _check_tensor as check_tensor
from ..stats import OverlapStats, StatsRequest, stats_from_layout

__all__ = ["check_tensor", "check_float_input", "dense", "index_target", "overlap_stats"]


def check_float_input(input: Tensor, min_ndim: int, layout: str) -> None:
    if not input.is_floating_point():
        raise TypeError(f"input must be a floating tensor, got dtype {input.dtype}")
    if input.ndim < min_ndim:
        raise ValueError(f"input must have shape {layout}, got {tuple(input.shape)}")


def dense(target: Tensor, dtype: torch.dtype) -> Tensor:
    """A dense target as a floating tensor (bool and integer masks become ``dtype``)."""
    return target if target.is_floating_point() else target.to(dtype)


def index_target(labels: Tensor, num_classes: int, ignore_index: int | None) -> Tensor:
    """Class indices (B, N) as int64; out-of-range values (other than ``ignore_index``) raise ValueError.

    Floating labels are truncated with ``.long()``, as the peers do. The range check reads the values, so it
    follows :func:`diceloss.set_value_checks` (on for CPU tensors in eager mode).
    """
    if labels.dtype == torch.bool or labels.is_complex():
        raise TypeError(f"class-index targets must be integer or floating, got dtype {labels.dtype}")
    t = labels.long()
    if _checks.value_checks_enabled(t.device):
        _layout.check_index_range(t, num_classes, ignore_index=ignore_index,
                                  context=f" for input with {num_classes} channels")
    return t


def overlap_stats(
    logits: Tensor,
    target: Tensor,
    *,
    mode: str,
    activation: str,
    request: StatsRequest,
    backend: str,
    mask: Tensor | None = None,
    ignore_index: int | None = None,
) -> OverlapStats:
    """Statistics (B, C) of already laid-out tensors through :func:`diceloss.stats.stats_from_layout`.

    logits: (B, C, N) floating; target: (B, N) int64 class indices, or (B, C, N) floating; mask: (B, N) bool
    or None; ignore_index: a target value marking invalid positions (index targets) or elements (dense
    targets in binary / multilabel mode). The peers' own input conventions are checked by the callers,
    so this builds the :class:`~diceloss._layout.Prepared` directly instead of going through
    :func:`~diceloss._layout.prepare`, whose diceloss-specific value rules (for instance a multiclass
    soft target summing to 1) the peers do not have.
    """
    B, C, N = logits.shape
    is_index = not target.is_floating_point()
    prep = _layout.Prepared(
        logits=logits,
        target=target,
        target_is_index=is_index,
        mask=mask,
        ignore_index=ignore_index,
        activation=activation,
        num_classes=C,
        mode=mode,
        kept_classes=None,
        spatial_shape=(N,),
    )
    return stats_from_layout(prep, request, backend)

