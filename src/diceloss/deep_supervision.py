"""Deep supervision: one loss over the outputs of a network at several resolutions.

Networks such as nnU-Net's U-Net or U-Net++ return logits at the full resolution and at lower
decoder levels. :class:`DeepSupervisionLoss` applies any loss to each output against the target
brought to that output's size, and sums the results with weights that halve per level.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import MODES, check_choice


def _nearest(t: Tensor, size: Sequence[int]) -> Tensor:
    """Nearest-neighbour resize of the trailing ``len(size)`` dims of ``t``; any dtype (pure indexing).

    Output position i of a dim of length n -> m reads input position floor((i + 1/2) n / m) (PyTorch's
    "nearest-exact": the centre of each block, so an exact 2x downsampling takes one voxel of each 2x2).
    """
    k = len(size)
    for axis, m in enumerate(size):
        dim = t.ndim - k + axis
        n = t.shape[dim]
        if n == m:
            continue
        idx = (
            ((torch.arange(m, device=t.device, dtype=torch.float64) + 0.5) * (n / m))
            .floor()
            .long()
            .clamp_max(n - 1)
        )
        t = t.index_select(dim, idx)
    return t


def _area(t: Tensor, size: Sequence[int]) -> Tensor:
    """Area (average) resize of the spatial dims of a (B, C, *S) float target: soft labels stay in [0, 1]
    and one-hot rows still sum to 1."""
    if tuple(t.shape[2:]) == tuple(size):
        return t
    if len(size) > 3:
        raise ValueError(
            f"area downsampling supports 1 to 3 spatial dimensions, got {len(size)}; pass a list of "
            "targets, one per output, instead"
        )
    dtype = t.dtype if t.is_floating_point() else torch.float32
    return F.interpolate(t.to(dtype), size=tuple(size), mode="area")


class DeepSupervisionLoss(nn.Module):
    r"""Weighted sum of ``loss`` over a list of outputs at decreasing resolutions::

        L = sum_i w_i * loss(outputs[i], target_i),   w_i = 2^-i / sum_j 2^-j   (default)

    ``outputs[0]`` is the full-resolution output; ``target_i`` is the target brought to the spatial
    size of ``outputs[i]``:

    * class-index targets (integer tensors, or any target without the output's channel layout, such
      as (B, *S) or (B, 1, *S) in multiclass mode) by nearest neighbour ("nearest-exact": the centre of
      each block), so they hold only labels that occur in the target, ``ignore_index`` included;
    * one-hot, soft, binary and multilabel float targets of the output's shape (B, C, *S) by area
      averaging: they become soft labels, one-hot rows still sum to 1 (use ``soft_label=True`` in
      the inner loss for the Dice semimetric on them). When the inner loss has an ``ignore_index``
      such a target is resized by nearest neighbour instead, so the marker value survives;
    * ``mask`` (B, *S) or (B, 1, *S) by nearest neighbour.

    A list of targets, one per output, is used as given. A single tensor instead of a list gives
    ``loss(input, target)`` exactly.

    Args:
        loss: any diceloss loss (or any callable ``loss(input, target[, mask])``).
        weights: one non-negative weight per output, normalised to sum to 1; default ``2^-i``
            normalised (nnU-Net's halving, without zeroing the last level). A zero weight skips its
            output (under DDP a skipped head has parameters without a gradient).
        mode, ignore_index: how the inner loss reads its target, for a loss that does not declare
            them: every diceloss loss has ``mode`` and ``ignore_index`` properties, and they are read
            from it (a callable with such attributes is read the same way). Without a mode every axis
            after the channel axis is spatial; ``mode="binary"`` also takes (B, *S) outputs.

    Attributes:
        components: the detached loss of each output of the last call, ``{"level0": ..., ...}``.

    Shape:
        outputs: list of (B, C, *S_i), S_0 the target's spatial size, in binary mode (B, 1, *S_i);
        target: as the inner loss takes it at full resolution; output: as the inner loss returns it.

    Example:
        >>> import torch, diceloss
        >>> loss = DeepSupervisionLoss(diceloss.DiceCELoss())
        >>> outs = [torch.randn(2, 3, 16, 16, requires_grad=True),
        ...         torch.randn(2, 3, 8, 8, requires_grad=True)]
        >>> t = torch.randint(0, 3, (2, 16, 16))
        >>> loss(outs, t).backward()
        >>> round(sum(loss.weights_for(2)), 6)
        1.0
    """

    def __init__(
        self,
        loss: Callable,
        weights: Sequence[float] | None = None,
        *,
        mode: str | None = None,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__()
        if not callable(loss):
            raise TypeError(
                f"loss must be a callable loss such as diceloss.DiceLoss(), got {type(loss).__name__}"
            )
        self.loss = loss
        if weights is not None:
            w = [float(v) for v in weights]
            if not w or any(not v >= 0 for v in w) or sum(w) <= 0:
                raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
            weights = w
        self.weights = weights
        if mode is not None:
            check_choice("mode", mode, MODES)
        declared_mode = getattr(loss, "mode", None)
        declared_ignore = getattr(loss, "ignore_index", None)
        for name, given, declared in (("mode", mode, declared_mode), ("ignore_index", ignore_index, declared_ignore)):
            if given is not None and declared is not None and given != declared:
                raise ValueError(f"{name}={given!r} was given, but the loss declares {name}={declared!r}")
        self._mode = mode
        self._ignore_index = ignore_index
        self.components: dict[str, Tensor] = {}

    @property
    def mode(self) -> str | None:
        """The inner loss's mode: the one given, else the one it declares (read at each call: it may change)."""
        return self._mode if self._mode is not None else getattr(self.loss, "mode", None)

    @property
    def ignore_index(self) -> int | None:
        """The inner loss's ignore_index: the one given, else the one it declares."""
        return self._ignore_index if self._ignore_index is not None else getattr(self.loss, "ignore_index", None)

    def weights_for(self, n: int) -> list[float]:
        """The normalised weights of ``n`` outputs."""
        if self.weights is None:
            w = [0.5**i for i in range(n)]
        else:
            if len(self.weights) != n:
                raise ValueError(
                    f"got {n} outputs but {len(self.weights)} weights; give one weight per output"
                )
            w = list(self.weights)
        total = sum(w)
        return [v / total for v in w]

    def _spatial(self, out: Tensor, target: Tensor) -> tuple[int, ...]:
        if self.mode == "binary" and out.ndim == target.ndim and (out.ndim < 3 or out.shape[1] != 1):
            return tuple(out.shape[1:])  # binary (B, *S) outputs without a channel dimension
        return tuple(out.shape[2:])

    def resize_target(self, target: Tensor, output: Tensor) -> Tensor:
        """The full-resolution ``target`` brought to ``output``'s spatial size (see the class docstring)."""
        size = self._spatial(output, target)
        k = len(size)
        if tuple(target.shape[target.ndim - k :]) == size:
            return target
        float_like = target.is_floating_point() or target.dtype == torch.bool
        no_channel = target.ndim == k + 1  # (B, *S)
        channels_match = target.ndim == output.ndim == k + 2 and target.shape[1] == output.shape[1]
        binary = self.mode == "binary"
        dense = float_like and (channels_match or (binary and no_channel))
        if dense and self.ignore_index is None:
            t = target.float() if target.dtype == torch.bool else target
            return _area(t[:, None], size)[:, 0] if no_channel else _area(t, size)
        return _nearest(target, size)

    def forward(
        self,
        outputs: Tensor | Sequence[Tensor],
        target: Tensor | Sequence[Tensor],
        mask: Tensor | None = None,
    ) -> Tensor:
        if isinstance(outputs, Tensor):
            if not isinstance(target, Tensor):
                raise TypeError("a single output takes a single target tensor, got a sequence")
            value = self._call(outputs, target, mask)
            self.components = {"level0": value.detach()}
            return value
        outputs = list(outputs)
        if not outputs or not all(isinstance(o, Tensor) for o in outputs):
            raise TypeError(
                f"outputs must be a tensor or a non-empty list of tensors, got {type(outputs).__name__}"
            )
        w = self.weights_for(len(outputs))
        if isinstance(target, Tensor):
            targets = [target] + [self.resize_target(target, o) for o in outputs[1:]]
        else:
            targets = list(target)
            if len(targets) != len(outputs):
                raise ValueError(
                    f"got {len(outputs)} outputs but {len(targets)} targets; give one target per output "
                    "or a single full-resolution target"
                )
        total = None
        self.components = {}
        for i, (out, t, wi) in enumerate(zip(outputs, targets, w)):
            if wi == 0:
                continue
            m = None if mask is None else _nearest(mask, self._spatial(out, t))
            value = self._call(out, t, m)
            self.components[f"level{i}"] = value.detach()
            total = wi * value if total is None else total + wi * value
        return total

    def _call(self, out: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
        return self.loss(out, target) if mask is None else self.loss(out, target, mask)


__all__ = ["DeepSupervisionLoss"]
