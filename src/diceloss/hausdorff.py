r"""Hausdorff distance-transform loss (Karimi & Salcudean, IEEE TMI 39(2), 2020; arXiv 1904.10030).

Per (sample b, kept class k), over the valid positions n of that sample and class::

    L[b, k] = (1 / |valid|) * sum_n (p_n - g_n)^2 * (d_G(n)^alpha + d_P(n)^alpha)

p the probabilities, g the target probabilities, ``alpha`` = 2 by default. d_X is the distance field of a
binary mask X: at a position n, the distance (in the units of ``spacing``) from the centre of n to the
centre of the nearest valid position whose label in X differs from n's. X_G = [g > 0.5] is the target's
class region, X_P = [p > 0.5] the thresholded prediction, recomputed at every call. Both fields are
constants for the gradient, as in the paper: only the squared error is differentiated.

A mask with no boundary among the valid positions (empty, or filling them) has no distance field. With
``empty="diagonal"`` (default) it takes the constant field D = the image diagonal, sqrt(sum_k ((n_k - 1)
s_k)^2), the largest distance two positions of the image can have; only when both masks have no boundary
*and* agree (both empty, or both full) are both fields 0. So a structure missing from the prediction (or
predicted where the target has none) costs ``(p - g)^2 * D^alpha`` on every position: the Hausdorff
distance of a missed structure is unbounded, and D is the cap that diceloss's surface metrics use for it
(``empty_distance="diagonal"``). ``empty="zero"`` sets such a field to 0, as MONAI does: a missed
structure then costs only ``(p - g)^2 * d_G^alpha``, less than finding it (see docs/losses/hausdorff.md).

Distance fields are exact Euclidean distance transforms on the input's device: a separable transform in
PyTorch (a scan along the longest axis, an exact min-plus product along the others), so a CUDA tensor never
goes through NumPy; on the CPU, SciPy's ``distance_transform_edt(..., sampling=spacing)`` where it is installed
and faster (1-D, 2-D and small 3-D images).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ._checks import (
    check_choice,
    check_compound_reduction,
    check_nonnegative,
    check_option_fields,
    check_spacing,
    spacing_per_axis,
    value_checks_enabled,
)
from ._distance import euclidean_distance as _edt_torch
from ._layout import Prepared, prepare
from .losses import DiceCELoss, _Option, _OptionsModule
from .stats import compute_dtype

__all__ = ["hausdorff_dt_loss", "HausdorffDTLoss", "DiceHausdorffDTLoss", "boundary_distance", "EMPTY_FIELDS"]

EMPTY_FIELDS = ("diagonal", "zero")
"""What the distance field of a mask with no boundary (empty or full) is: the image diagonal, or 0 (MONAI)."""

_REDUCTIONS = ("mean", "sum", "none")

# ----------------------------------------------------------------------------------------------
# spacing


def _diagonal(spatial: tuple[int, ...], spacing: tuple[float, ...]) -> float:
    """The largest distance between two position centres of the image (the field of a missing boundary)."""
    return math.sqrt(sum(((n - 1) * s) ** 2 for n, s in zip(spatial, spacing)))


# ----------------------------------------------------------------------------------------------
# exact Euclidean distance transforms of a batch of masks


def _scipy_available() -> bool:
    try:
        import scipy.ndimage  # noqa: F401
    except ImportError:
        return False
    return True


# On one CPU thread (benchmarks/bench_hausdorff.py), per mask, SciPy / PyTorch: 2D 128^2 to 256^2 0.7 / 1.5 to
# 3.2 / 6.7 ms (SciPy twice as fast); 3D 64^3 38 / 22 ms, 96^3 120 / 90 ms, 128^3 412 / 344 ms, 32 x 128^2 72 / 38 ms
# (SciPy's 3-D transform builds a feature map per axis); 48^3 9 / 15 ms. So PyTorch from about 64^3 / 2 voxels in 3D.
_TORCH_FROM = 1 << 17


def _use_scipy(device: torch.device, spatial: tuple[int, ...]) -> bool:
    """SciPy for CPU tensors where it is installed and faster (1-D, 2-D, small 3-D); the PyTorch transform for
    larger volumes and on every other device, so no CUDA tensor goes through NumPy."""
    if device.type != "cpu" or not _scipy_available():
        return False
    return len(spatial) < 3 or math.prod(spatial) < _TORCH_FROM


def _opposite_distance(
    x: Tensor, valid: Tensor | None, spacing: tuple[float, ...], dtype: torch.dtype, use_scipy: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """For masks ``x`` (M, *S) bool: the distance from each position to the nearest valid position of the other
    label, ``(field, no_boundary, count)``; ``no_boundary`` (M,) marks masks whose valid positions all share
    one label (their field is 0 here), ``count`` (M,) is the number of valid True positions."""
    fg = x if valid is None else x & valid
    bg = ~x if valid is None else ~x & valid
    M = x.shape[0]
    n_fg = fg.reshape(M, -1).sum(-1)
    no_boundary = (n_fg == 0) | ~bg.reshape(M, -1).any(-1)
    field = torch.zeros(x.shape, dtype=dtype, device=x.device)
    if field.numel() == 0:  # an image without positions: nothing to measure
        return field, no_boundary, n_fg
    if use_scipy:
        from scipy.ndimage import distance_transform_edt

        fg_np, bg_np, x_np = fg.numpy(), bg.numpy(), x.numpy()
        for m in (~no_boundary).nonzero().flatten().tolist():  # one image at a time: no stack of float64 maps
            to_bg = distance_transform_edt(~bg_np[m], sampling=spacing)
            to_fg = distance_transform_edt(~fg_np[m], sampling=spacing)
            field[m] = torch.from_numpy(np.where(x_np[m], to_bg, to_fg))
        return field, no_boundary, n_fg
    # both site sets in one transform, in chunks of masks that bound the scan's integer temporaries; a mask
    # without a boundary gives inf on one side, and keeps its 0
    size = max(1, x[0].numel())
    step = max(1, ((1 << 24) if x.device.type == "cuda" else (1 << 18)) // (2 * size))
    for i in range(0, M, step):
        j = min(M, i + step)
        both = _edt_torch(torch.cat([bg[i:j], fg[i:j]]), spacing, dtype)
        n = j - i
        part = torch.where(x[i:j], both[:n], both[n:])
        field[i:j] = torch.where(no_boundary[i:j].view(-1, *([1] * (x.ndim - 1))), 0.0, part)
    return field, no_boundary, n_fg


def boundary_distance(
    mask: Tensor,
    spacing: float | Sequence[float] | None = None,
    *,
    spatial_dims: int | None = None,
    valid: Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The distance field d_X of :func:`hausdorff_dt_loss` for binary masks, to precompute ``target_distance``.

    At each position: the Euclidean distance (in the units of ``spacing``) to the nearest position whose label
    differs (inside the mask: to the nearest background position; outside: to the nearest mask position), only
    positions where ``valid`` is True counting as such. A mask with no boundary (empty or full) gives 0; the loss
    applies its ``empty`` rule to those itself. Computed on the mask's device (SciPy on the CPU where installed).

    Args:
        mask: bool (or 0/1) tensor (*batch, *S); its last ``spatial_dims`` axes are spatial.
        spacing: the voxel size, one number or one per spatial axis; default 1.
        spatial_dims: how many trailing axes are spatial; default ``len(spacing)`` for a sequence, else all.
        valid: bool tensor broadcastable to ``mask``: the positions that count (the loss's ``mask`` and
            ``ignore_index``).
        dtype: floating dtype of the result.

    Returns:
        the field, ``mask``'s shape, ``dtype``.

    Example:
        >>> g = torch.tensor([[0, 0, 1, 1, 1, 0, 0]], dtype=torch.bool)
        >>> boundary_distance(g, spacing=2.0, spatial_dims=1).tolist()
        [[4.0, 2.0, 2.0, 4.0, 2.0, 2.0, 4.0]]
    """
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    sp = check_spacing(spacing)
    if spatial_dims is None:
        spatial_dims = len(sp) if isinstance(sp, tuple) else mask.ndim
    if isinstance(spatial_dims, bool) or not isinstance(spatial_dims, numbers.Integral) or not (
        1 <= spatial_dims <= mask.ndim
    ):
        raise ValueError(f"spatial_dims must be an integer in [1, {mask.ndim}] (mask shape {tuple(mask.shape)}), "
                         f"got {spatial_dims!r}")
    if mask.is_complex():
        raise TypeError("mask must be real or bool")
    spatial = tuple(mask.shape[mask.ndim - spatial_dims :])
    steps = spacing_per_axis(sp, spatial)
    x = (mask != 0).reshape(-1, *spatial)
    v = None
    if valid is not None:
        if not isinstance(valid, Tensor):
            raise TypeError(f"valid must be a torch.Tensor or None, got {type(valid).__name__}")
        v = (torch.broadcast_to(valid, mask.shape) != 0).reshape(-1, *spatial)
    if x.shape[0] == 0:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    field, _, _ = _opposite_distance(x, v, steps, torch.float64, _use_scipy(mask.device, spatial))
    return field.to(device=mask.device, dtype=dtype).reshape(mask.shape)


# ----------------------------------------------------------------------------------------------
# the loss


@dataclasses.dataclass(frozen=True)
class HausdorffDTOptions:
    """The options of :func:`hausdorff_dt_loss`, validated once when made (immutable)."""

    mode: str = "multiclass"
    from_logits: bool = True
    include_background: bool = True
    ignore_index: int | None = None
    alpha: float = 2.0
    spacing: float | tuple[float, ...] | None = None
    empty: str = "diagonal"
    reduction: str = "mean"

    def __post_init__(self) -> None:
        check_option_fields(self, bools=("from_logits", "include_background"), reductions=_REDUCTIONS)
        check_choice("empty", self.empty, EMPTY_FIELDS)
        object.__setattr__(self, "alpha", check_nonnegative("alpha", self.alpha, positive=True))
        object.__setattr__(self, "spacing", check_spacing(self.spacing))


def _activate(x: Tensor, activation: str) -> Tensor:
    if activation == "softmax":
        return torch.softmax(x, dim=1)
    if activation == "sigmoid":
        return torch.sigmoid(x)
    return x


def _probabilities(logits: Tensor, dtype: torch.dtype, activation: str) -> Tensor:
    """p (B, C, N) in ``dtype``, always a fresh tensor (the callers work in place on it)."""
    x = logits.to(dtype)
    p = _activate(x, activation)
    return p.clone() if p is logits else p


def _error_(p: Tensor, target: Tensor, is_index: bool, kept: Tensor | None) -> Tensor:
    """``p - g`` in place in p (B, C, N); returns the kept classes' rows (p itself when every class is kept).
    Class indices subtract 1 at the target class (an out-of-range index, an ignored position, nothing): no
    one-hot tensor."""
    if is_index:
        C = p.shape[1]
        hit = ((target >= 0) & (target < C)).to(p.dtype)
        p.scatter_add_(1, target.clamp(0, C - 1)[:, None], hit.neg_()[:, None])
    else:
        p.sub_(target.to(p.dtype))
    return p if kept is None else p.index_select(1, kept)


class _WeightedSquaredError(torch.autograd.Function):
    """``sum_n w (p - g)^2`` per (sample, kept class) from the logits, with a fused backward that recomputes p:
    only the logits, the target and the weight map (the distance fields, the mask and 1/|valid| folded in)
    are kept for the backward pass, and each pass works in place on one or two full-size tensors."""

    @staticmethod
    def forward(ctx, logits, target, weight, kept, activation, is_index):
        e = _error_(_probabilities(logits, weight.dtype, activation), target, is_index, kept)
        ctx.save_for_backward(logits, target, weight, kept)
        ctx.activation, ctx.is_index = activation, is_index
        return e.square_().mul_(weight).sum(-1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        logits, target, weight, kept = ctx.saved_tensors
        p = _probabilities(logits, weight.dtype, ctx.activation)
        du = _error_(p.clone(), target, ctx.is_index, None)  # dL/dp = 2 (p - g) w dL/dL[b, k], 0 off the kept rows
        scale = 2 * grad[..., None].to(weight.dtype)
        if kept is None:
            du.mul_(weight).mul_(scale)
        else:
            rows = du.index_select(1, kept).mul_(weight).mul_(scale)
            du.zero_().index_copy_(1, kept, rows)
            del rows
        grad_t = None
        if ctx.needs_input_grad[1]:  # a soft target that requires grad (never class indices)
            grad_t = (-du).to(target.dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            if ctx.activation == "softmax":  # p (du - sum_c p du)
                grad_x = du.sub_((p * du).sum(1, keepdim=True)).mul_(p)
            elif ctx.activation == "sigmoid":  # du p (1 - p)
                grad_x = du.mul_(p).mul_(p.neg_().add_(1))
            else:
                grad_x = du
            grad_x = grad_x.to(logits.dtype)
        return grad_x, grad_t, None, None, None, None


def _check_target_distance(td: Tensor, input: Tensor, prep: Prepared) -> Tensor:
    """``target_distance`` as (B, C, N) (C = 1 in binary mode), checked against the input."""
    if not isinstance(td, Tensor):
        raise TypeError(f"target_distance must be a torch.Tensor or None, got {type(td).__name__}")
    if td.device != input.device:
        raise ValueError(f"target_distance must be on the input's device ({input.device}), got {td.device}")
    if not td.is_floating_point():
        raise TypeError(f"target_distance must be a floating tensor of distances, got dtype {td.dtype}")
    B, C = prep.logits.shape[:2]
    want = (B, C, *prep.spatial_shape)
    if tuple(td.shape) != want and not (prep.mode == "binary" and tuple(td.shape) == (B, *prep.spatial_shape)):
        alt = f" or {(B, *prep.spatial_shape)}" if prep.mode == "binary" else ""
        raise ValueError(f"target_distance must have shape {want}{alt} (one field per class of the input), "
                         f"got {tuple(td.shape)}")
    td = td.reshape(B, C, -1)
    if value_checks_enabled(td.device) and td.numel():
        lo = float(td.detach().min())
        if not (lo >= 0) or not bool(torch.isfinite(td.detach()).all()):
            raise ValueError(f"target_distance must hold finite distances >= 0, got a minimum of {lo:.4g} "
                             "or non-finite values")
    return td


def _fields_and_loss(
    prep: Prepared,
    alpha: float,
    spacing: float | tuple[float, ...] | None,
    empty: str,
    target_distance: Tensor | None,
    field_dtype: torch.dtype | None = None,
) -> Tensor:
    """The loss per (sample, kept class), (B, K), from a prepared layout. ``field_dtype``: round the fields and
    their powers to this dtype first (MONAI keeps them in float32; for :mod:`diceloss.compat.monai`)."""
    logits = prep.logits
    B, C, N = logits.shape
    device = logits.device
    dtype = compute_dtype(logits.dtype)
    steps = spacing_per_axis(spacing, prep.spatial_shape)
    kept_list = list(prep.kept_classes) if prep.kept_classes is not None else list(range(C))
    K = len(kept_list)
    kept = None if prep.kept_classes is None else torch.tensor(kept_list, dtype=torch.long, device=device)
    classes = torch.tensor(kept_list, dtype=torch.long, device=device) if prep.target_is_index else None

    with torch.no_grad():
        p = _activate(logits.detach().to(dtype), prep.activation)
        pk = p if kept is None else p.index_select(1, kept)
        pred = pk > 0.5
        del p, pk
        if prep.target_is_index:
            t = prep.target
            gold = t[:, None, :] == classes[None, :, None]
            valid = None if prep.ignore_index is None else (t != prep.ignore_index)[:, None, :]
        else:
            g = prep.target if kept is None else prep.target.index_select(1, kept)
            gold = g > 0.5
            valid = None if prep.ignore_index is None else g != prep.ignore_index
        if prep.mask is not None:
            m = prep.mask[:, None, :]
            valid = m if valid is None else valid & m
        valid_full = None if valid is None else valid.expand(B, K, N)

        shape = (B * K, *prep.spatial_shape)
        use_scipy = _use_scipy(device, prep.spatial_shape)
        v = None if valid_full is None else valid_full.reshape(shape)
        d_p, flat_p, n_p = _opposite_distance(pred.reshape(shape), v, steps, dtype, use_scipy)
        del pred
        if target_distance is None:
            d_g, flat_g, n_g = _opposite_distance(gold.reshape(shape), v, steps, dtype, use_scipy)
        else:
            # a copy in any case: the field is raised to alpha in place below
            td = target_distance if kept is None else target_distance.index_select(1, kept)
            d_g = td.detach().to(dtype=dtype, copy=True).reshape(shape)
            gv = gold if valid is None else gold & valid
            n_g = gv.reshape(B * K, -1).sum(-1)
            rest = ~gold if valid is None else ~gold & valid
            flat_g = (n_g == 0) | ~rest.reshape(B * K, -1).any(-1)
            d_g.view(B * K, N).masked_fill_(flat_g[:, None], 0.0)
        d_p, d_g = d_p.view(B, K, N), d_g.view(B, K, N)

        # a mask with no boundary has the field 0 so far; it becomes the diagonal, unless both masks agree (both
        # empty or both full) or empty="zero"
        agree = flat_p & flat_g & ((n_p == 0) == (n_g == 0))
        cap = 0.0 if empty == "zero" else _diagonal(prep.spatial_shape, steps)
        fill = ((~agree).to(dtype) * cap).view(B, K, 1)  # in dtype: a float32 cap would round D
        d_p.add_(flat_p.view(B, K, 1) * fill)
        d_g.add_(flat_g.view(B, K, 1) * fill)
        # in place: the weight map is the one full-size tensor kept for the backward pass
        if field_dtype is None:
            w = d_g.pow_(alpha).add_(d_p.pow_(alpha))
        else:
            w = d_g.to(field_dtype).pow_(alpha).add_(d_p.to(field_dtype).pow_(alpha)).to(dtype)
        del d_p, d_g
        if valid_full is None:
            w.div_(N)
        else:
            count = valid_full.sum(-1, keepdim=True).clamp(min=1)
            w.masked_fill_(~valid_full, 0.0).div_(count.to(dtype))
    return _WeightedSquaredError.apply(logits, prep.target, w, kept, prep.activation, prep.target_is_index)


def _reduce(per_class: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return per_class.mean()
    if reduction == "sum":
        return per_class.sum()
    return per_class


def _loss(input: Tensor, target: Tensor, mask: Tensor | None, target_distance: Tensor | None, o) -> Tensor:
    prep = prepare(
        input,
        target,
        mode=o.mode,
        from_logits=o.from_logits,
        ignore_index=o.ignore_index,
        mask=mask,
        include_background=o.include_background,
    )
    spacing_per_axis(o.spacing, prep.spatial_shape)  # a spacing of the wrong length fails before any work
    if target_distance is not None:
        target_distance = _check_target_distance(target_distance, input, prep)
    per_class = _fields_and_loss(prep, o.alpha, o.spacing, o.empty, target_distance)
    return _reduce(per_class, o.reduction)


def hausdorff_dt_loss(
    input: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    *,
    mode: str = "multiclass",
    from_logits: bool = True,
    include_background: bool = True,
    ignore_index: int | None = None,
    alpha: float = 2.0,
    spacing: float | Sequence[float] | None = None,
    empty: str = "diagonal",
    target_distance: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Hausdorff distance-transform loss (Karimi & Salcudean, 2019), per (sample b, kept class k)::

        L[b, k] = (1 / |V|) sum_{n in V} (p_n - g_n)^2 (d_G(n)^alpha + d_P(n)^alpha)

    V the valid positions of (b, k) (``mask`` and ``ignore_index``; excluded positions add nothing, count
    nothing and are not boundary sites), d_G / d_P the distance fields of [g > 0.5] and [p > 0.5]: at n, the
    distance in ``spacing`` units to the nearest valid position of the other label; constants for the
    gradient. See :class:`diceloss.HausdorffDTLoss` for every argument and the ``empty`` rule. Range:
    [0, inf); 0 for a perfect hard prediction. Use it with a Dice (+ CE) loss, not alone.

    Example:
        >>> x = torch.tensor([[[-4.0, 4.0, 4.0, -4.0]]])       # binary logits, one sample, 4 positions
        >>> t = torch.tensor([[[0.0, 1.0, 1.0, 0.0]]])
        >>> float(hausdorff_dt_loss(x, t, mode="binary")) < 1e-3
        True
    """
    o = HausdorffDTOptions(mode, from_logits, include_background, ignore_index, alpha, spacing, empty, reduction)
    return _loss(input, target, mask, target_distance, o)


class HausdorffDTLoss(_OptionsModule):
    r"""Hausdorff distance-transform loss (Karimi & Salcudean, IEEE TMI 2020), per (sample b, kept class k)::

        L[b, k] = (1 / |V|) sum_{n in V} (p_n - g_n)^2 (d_G(n)^alpha + d_P(n)^alpha)

    d_G(n): the distance from n to the boundary of the target's class region [g > 0.5], measured as the
    distance to the nearest valid position of the other label (inside the region: the nearest outside
    position; outside: the nearest inside one), in the units of ``spacing``. d_P: the same for the thresholded
    prediction [p > 0.5], recomputed (an exact Euclidean distance transform) at every call. Both are constants
    for the gradient. An error far from both boundaries weighs like its contribution to the Hausdorff distance.

    A mask with no boundary among the valid positions (empty, or everything) gets, with ``empty="diagonal"``,
    the constant field D = sqrt(sum_k ((n_k - 1) s_k)^2), the image diagonal, unless the other mask is the
    same (both empty or both full: both fields 0). So a structure the prediction misses costs
    ``(p - g)^2 (d_G^alpha + D^alpha)`` per position, and a structure predicted in a class the target lacks
    ``p^2 (D^alpha + d_P^alpha)``. ``empty="zero"`` is MONAI's rule (field 0), under which a structure missed
    entirely costs less than one found. Range: [0, inf); the scale grows with the object sizes (as D^alpha):
    combine it with Dice (+ CE) with a small factor, or use :class:`diceloss.hausdorff.DiceHausdorffDTLoss`.

    Args:
        mode: "binary" | "multiclass" | "multilabel" (shapes as in :mod:`diceloss.functional`).
        from_logits: ``True``: logits (softmax over C in multiclass mode, sigmoid otherwise); ``False``:
            probabilities.
        include_background: keep class 0 (multiclass, multilabel); ignored in binary mode.
        ignore_index: multiclass: a class index marking positions to skip (a real class is also dropped);
            binary, multilabel: a target value marking elements to skip.
        alpha: the exponent of the distances, > 0 (2 in the paper).
        spacing: the voxel size, one number or one per spatial axis (anisotropic volumes); default 1.
        empty: "diagonal" | "zero": the field of a mask with no boundary (see above).
        reduction: "mean" (over samples and kept classes) | "sum" | "none" ((B, K)).

    ``forward(input, target, mask=None, target_distance=None)``: ``target_distance`` (B, C, *S) may hold d_G
    precomputed in the data loader (:func:`diceloss.hausdorff.boundary_distance` of the one-hot target, with
    the same spacing and valid positions); its entries for a class whose target has no boundary are unused.

    Shape:
        input (B, C, *S), target (B, *S) / (B, 1, *S) / (B, C, *S), mask (B, *S) or (B, 1, *S), any number of
        spatial dimensions; output () for "mean" / "sum", (B, K) for "none".

    Example:
        >>> loss = HausdorffDTLoss(spacing=(1.0, 0.5))
        >>> x = torch.randn(2, 3, 16, 16, requires_grad=True)
        >>> t = torch.randint(0, 3, (2, 16, 16))
        >>> loss(x, t).backward()
        >>> x.grad.shape
        torch.Size([2, 3, 16, 16])
    """

    mode = _Option()
    from_logits = _Option()
    include_background = _Option()
    ignore_index = _Option()
    alpha = _Option()
    spacing = _Option()
    empty = _Option()
    reduction = _Option()

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        from_logits: bool = True,
        include_background: bool = True,
        ignore_index: int | None = None,
        alpha: float = 2.0,
        spacing: float | Sequence[float] | None = None,
        empty: str = "diagonal",
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self._options = HausdorffDTOptions(
            mode, from_logits, include_background, ignore_index, alpha, spacing, empty, reduction
        )

    def forward(
        self, input: Tensor, target: Tensor, mask: Tensor | None = None, target_distance: Tensor | None = None
    ) -> Tensor:
        return _loss(input, target, mask, target_distance, self._options)

    def extra_repr(self) -> str:
        o = self._options
        return f"mode={o.mode!r}, alpha={o.alpha}, spacing={o.spacing}, empty={o.empty!r}, reduction={o.reduction!r}"


@dataclasses.dataclass(frozen=True)
class _CompoundOptions:
    lambda_hd: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "lambda_hd", check_nonnegative("lambda_hd", self.lambda_hd))


class _Part:
    """An option of one part of :class:`DiceHausdorffDTLoss` (``"dice_ce"``, ``"hausdorff"``), or of both (the input
    convention: read from the Hausdorff part, set on both or, if either refuses the value, on neither)."""

    def __init__(self, *parts: str) -> None:
        self.parts = parts

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj, objtype=None):
        return self if obj is None else getattr(getattr(obj, self.parts[-1]), self.name)

    def __set__(self, obj, value) -> None:
        modules = [getattr(obj, part) for part in self.parts]
        saved = [(m._options, getattr(m, "_head", None)) for m in modules]
        try:
            for m in modules:
                setattr(m, self.name, value)
        except Exception:
            for m, (options, head) in zip(modules, saved):
                m._options = options
                if head is not None:
                    m._head = head
            raise


class DiceHausdorffDTLoss(nn.Module):
    r"""``lambda_dice * Dice + lambda_ce * CE + lambda_hd * HD-DT``: the Hausdorff loss as it is trained.

    The Dice and cross-entropy terms are :class:`diceloss.DiceCELoss` (every option of it: ``batch_dice``,
    ``weight``, ``squared`` ...; ``lambda_ce=0`` gives Dice + HD-DT, the combination of Karimi & Salcudean);
    the Hausdorff term is :class:`HausdorffDTLoss` with ``alpha``, ``spacing`` and ``empty``. ``mode``,
    ``from_logits``, ``include_background`` and ``ignore_index`` go to both. ``components`` holds the
    detached ``dice``, ``ce`` and ``hausdorff`` terms of the last call (the last unweighted). The two parts are
    the modules ``dice_ce`` and ``hausdorff``; every option reads and writes through this module too (checked
    again when set, like the parts' own).

    The HD-DT term is on a scale of distance^alpha (pixels^2 at unit spacing, larger for a missed structure), so
    ``lambda_hd`` is small: the default 0.01 keeps it below the Dice term once the prediction is close. The
    authors weight the two terms to similar size; raise ``lambda_hd`` during training to sharpen boundaries.
    ``reduction``: "mean" or "sum".

    Example:
        >>> loss = DiceHausdorffDTLoss(include_background=False, lambda_hd=0.05)
        >>> x = torch.randn(2, 3, 16, 16, requires_grad=True)
        >>> t = torch.randint(0, 3, (2, 16, 16))
        >>> loss(x, t).backward()
        >>> sorted(loss.components)
        ['ce', 'dice', 'hausdorff']
    """

    lambda_hd = _Option()
    mode = _Part("dice_ce", "hausdorff")
    from_logits = _Part("dice_ce", "hausdorff")
    include_background = _Part("dice_ce", "hausdorff")
    ignore_index = _Part("dice_ce", "hausdorff")
    reduction = _Part("dice_ce", "hausdorff")
    alpha = _Part("hausdorff")
    spacing = _Part("hausdorff")
    empty = _Part("hausdorff")
    lambda_dice = _Part("dice_ce")
    lambda_ce = _Part("dice_ce")
    label_smoothing = _Part("dice_ce")
    batch_dice = _Part("dice_ce")
    squared = _Part("dice_ce")
    log = _Part("dice_ce")
    smooth_nr = _Part("dice_ce")
    smooth_dr = _Part("dice_ce")
    absent = _Part("dice_ce")
    soft_label = _Part("dice_ce")
    backend = _Part("dice_ce")
    distributed = _Part("dice_ce")
    process_group = _Part("dice_ce")

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        from_logits: bool = True,
        include_background: bool = True,
        ignore_index: int | None = None,
        alpha: float = 2.0,
        spacing: float | Sequence[float] | None = None,
        empty: str = "diagonal",
        reduction: str = "mean",
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        lambda_hd: float = 0.01,
        **dice_options,
    ) -> None:
        super().__init__()
        check_compound_reduction(reduction, type(self).__name__)
        common = dict(mode=mode, from_logits=from_logits, include_background=include_background,
                      ignore_index=ignore_index, reduction=reduction)
        self._options = _CompoundOptions(lambda_hd)
        self.dice_ce = DiceCELoss(lambda_dice=lambda_dice, lambda_ce=lambda_ce, **common, **dice_options)
        self.hausdorff = HausdorffDTLoss(alpha=alpha, spacing=spacing, empty=empty, **common)
        self.components: dict[str, Tensor] = {}

    def forward(
        self, input: Tensor, target: Tensor, mask: Tensor | None = None, target_distance: Tensor | None = None
    ) -> Tensor:
        base = self.dice_ce(input, target, mask)
        hd = self.hausdorff(input, target, mask, target_distance)
        self.components = {**self.dice_ce.components, "hausdorff": hd.detach()}
        return base + self._options.lambda_hd * hd
