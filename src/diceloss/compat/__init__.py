"""Drop-in replacements for the Dice-family losses of other libraries, on diceloss's statistics layer.

* :mod:`diceloss.compat.monai`: ``DiceLoss``, ``GeneralizedDiceLoss``, ``TverskyLoss``, ``DiceCELoss``,
  ``DiceFocalLoss`` with MONAI 1.6's constructor arguments and values, quirks included.
* :mod:`diceloss.compat.smp`: ``DiceLoss``, ``JaccardLoss``, ``TverskyLoss`` with
  segmentation_models_pytorch 0.6's arguments and values (batch-level statistics, absent-class zeroing,
  its ``2 * smooth``).

Swapping the import keeps the numbers (to float rounding) and runs the sums on the fastest diceloss
backend (``backend="auto"``), without the one-hot target and the full-size temporaries of the originals.
The differences that remain are listed in each module's docstring and in the README.

Example:
    >>> import torch
    >>> from diceloss.compat.monai import DiceLoss        # was: from monai.losses import DiceLoss
    >>> loss = DiceLoss(softmax=True, to_onehot_y=True)
    >>> x = torch.randn(2, 3, 8, 8)
    >>> t = torch.randint(0, 3, (2, 1, 8, 8))
    >>> loss(x, t).shape
    torch.Size([])
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _checks, _layout
from ..stats import OverlapStats, StatsRequest, stats_from_prepared


def check_tensor(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


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
    if _checks.value_checks_enabled(t.device) and t.numel():
        bad = (t < 0) | (t >= num_classes)
        if ignore_index is not None:
            bad &= t != ignore_index
        if bool(bad.any()):
            values = torch.unique(t[bad])[:8].tolist()
            raise ValueError(
                f"class indices must be in [0, {num_classes - 1}] for input with {num_classes} channels, got "
                f"{values}" + (f" (ignore_index is {ignore_index})" if ignore_index is not None else "")
            )
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
    """Statistics (B, C) of already laid-out tensors through :func:`diceloss.stats.stats_from_prepared`.

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
    return stats_from_prepared(prep, request, backend)


from . import monai, smp  # noqa: E402  (the submodules use the helpers above)

__all__ = ["monai", "smp"]
