r"""Boundary loss (Kervadec, Bouchtiba et al., MIDL 2019 / MedIA 2021, arXiv 1812.07032): probabilities weighted by
the target's signed distance map.

Per (sample b, class c kept), over the valid positions n, with p the probabilities and phi_c the signed distance
map of the target's class c (negative inside, positive outside, 0 on the boundary, in the units of ``spacing``)::

    L[b, c] = sum_n m p[b,c,n] phi[b,c,n] / sum_n m

averaged over the classes kept and the samples (with ``batch_dice=True`` both sums run over the batch first). With
every position valid this is the authors' ``SurfaceLoss`` (``einsum("bkwh,bkwh->bkwh", p, dist).mean()``) and
MONAI's ``BoundaryLoss``. The loss is lowest when p puts all its mass where phi < 0 (inside the target) and none
outside: it is negative at the optimum, and its minimum depends on the shapes.

phi comes from :func:`diceloss.transforms.signed_distance` (SciPy's exact Euclidean distance transform at the true
voxel spacing): pass it as ``distance_map``, computed once per case in the data loader, or leave it out and it is
computed here from the target (CPU, every call). Its zero sits on the boundary voxels for any spacing; the authors'
``one_hot2dist`` subtracts 1 inside, which assumes unit spacing (LIVIAETS/boundary-loss#45).

**Use it with a region loss.** Alone it collapses to the empty prediction on binary tasks (the authors' issue #57,
and the paper's section 3.6): train with the Generalized Dice loss and move weight onto the boundary term over the
epochs, as the authors do (see docs/losses/boundary.md)::

    w_gdl = max(0.1, 1 - 0.01 * epoch);   w_boundary = 0.01 * (1 + epoch)
    loss = w_gdl * GeneralizedDiceLoss()(x, t) + w_boundary * BoundaryLoss()(x, t, distance_map=phi)

It is a sum over positions once phi is known: the statistics are :mod:`diceloss.stats.maps`'s "weighted map" kind
(sum m p phi), computed without saving the probabilities (the backward recomputes them from the logits): it is the
overlap engine's I with phi in the place of the target, so its compiled CPU kernel and its Triton kernels compute it.

Example:
    >>> import torch
    >>> from diceloss.boundary import boundary_loss
    >>> t = torch.zeros(1, 1, 7, dtype=torch.long); t[0, 0, 2:5] = 1     # one row: class 1 on columns 2..4
    >>> p = torch.nn.functional.one_hot(t, 2).movedim(-1, 1).double()    # a perfect prediction
    >>> # phi_1 = [2, 1, 0, -1, 0, 1, 2]: sum p phi = 0 - 1 + 0 = -1, over 7 positions
    >>> round(float(boundary_loss(p, t, from_logits=False)), 6)
    -0.142857
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ._checks import (
    check_option_fields,
    check_spacing,
    set_field,
    spacing_per_axis,
    value_checks_enabled,
)
from ._layout import Prepared, _check_tensor, prepare
from .distributed import all_reduce_sum
from .heads import reduce_class_losses
from .losses import _Option, _OptionsModule
from .stats import maps

__all__ = ["boundary_loss", "BoundaryLoss", "BoundaryOptions", "distance_map_of_target"]


@dataclass(frozen=True)
class BoundaryOptions:
    """The options of :func:`boundary_loss` / :class:`BoundaryLoss`, checked when made.

    ``include_background=None`` (default): False in multiclass mode (the authors score the foreground classes:
    ``idc=[1]``), True in multilabel mode; binary mode has one channel.
    """

    mode: str = "multiclass"
    from_logits: bool = True
    include_background: bool | None = None
    ignore_index: int | None = None
    batch_dice: bool = False
    spacing: float | tuple[float, ...] | None = None
    reduction: str = "mean"
    backend: str = "auto"
    distributed: bool = False
    process_group: object = None

    def __post_init__(self) -> None:
        check_option_fields(self, bools=("from_logits", "batch_dice", "distributed"), nullable=("include_background",))
        set_field(self, "spacing", check_spacing(self.spacing))
        if self.distributed and not self.batch_dice:
            raise ValueError(
                "distributed=True sums the boundary sums over the ranks, which only batch_dice=True needs; "
                "the per-sample loss (batch_dice=False) needs no synchronisation"
            )

    @property
    def background(self) -> bool:
        """``include_background`` with the default resolved for the mode."""
        if self.include_background is None:
            return self.mode != "multiclass"
        return self.include_background


# ----------------------------------------------------------------------------------------------
# the distance map: given (checked against the layout) or computed from the target


def _map_layout(distance_map: object, prep: Prepared) -> Tensor:
    d = _check_tensor("distance_map", distance_map)
    device = prep.logits.device
    if d.device != device:
        raise ValueError(f"distance_map must be on the input's device {device}, got {d.device}")
    if not d.is_floating_point():
        raise TypeError(f"distance_map must be a floating tensor (signed distances), got dtype {d.dtype}")
    if d.layout != torch.strided:
        raise TypeError(f"distance_map must be a dense (strided) tensor, got layout {d.layout}")
    B, C, N = prep.logits.shape
    spatial = prep.spatial_shape
    shapes = ((B, *spatial), (B, 1, *spatial)) if prep.mode == "binary" else ((B, C, *spatial),)
    if tuple(d.shape) not in shapes:
        want = " or ".join(str(s) for s in shapes)
        raise ValueError(
            f"{prep.mode} mode expects distance_map of shape {want} (one map per class of the input), got "
            f"{tuple(d.shape)}"
        )
    d = d.detach().reshape(B, C, N)
    if value_checks_enabled(device) and d.numel():
        # one min/max pass (NaN propagates to both): isfinite would allocate map-sized temporaries
        lo, hi = (float(v) for v in torch.aminmax(d))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError("distance_map must be finite (a class with no boundary has phi = 0), got inf or NaN")
    return d


def distance_map_of_target(prep: Prepared, spacing, kept: tuple[int, ...]) -> Tensor:
    """The signed distance maps (B, C, N) float32 of the classes ``kept`` of a prepared target (0 for the others),
    by :func:`diceloss.transforms.signed_distance` on the CPU, on the input's device. Ignored positions belong to no
    class. A 1-D target is a 1 x N image."""
    from .transforms import signed_distance

    B, C, N = prep.logits.shape
    spatial = prep.spatial_shape
    sp = spacing_per_axis(spacing, spatial)
    if len(spatial) == 1:
        spatial, sp = (1, N), (1.0, sp[0])
    target = prep.target.detach().cpu()
    if prep.mode == "multiclass":
        if prep.target_is_index:
            labels = target
            if prep.ignore_index is not None:
                labels = torch.where(target == prep.ignore_index, torch.full_like(target, -1), target)
        else:
            # one-hot / soft targets: the most likely class; an ignored channel is in the mask, not a class kept
            labels = target.argmax(dim=1)
        masks = [[labels[b] == c for c in range(C)] for b in range(B)]
    else:
        fg = target >= 0.5
        if prep.ignore_index is not None:
            fg &= target != prep.ignore_index
        masks = [[fg[b, c] for c in range(C)] for b in range(B)]
    out = torch.zeros(B, C, N)
    for b in range(B):
        for c in kept:
            out[b, c] = signed_distance(masks[b][c].reshape(spatial), spacing=sp).reshape(N)
    return out.to(prep.logits.device)


# ----------------------------------------------------------------------------------------------
# the loss


def _class_losses(input: Tensor, target: Tensor, mask: Tensor | None, distance_map: Tensor | None,
                  o: BoundaryOptions) -> Tensor:
    """The loss per (group, class kept): (B, K), or (1, K) with batch_dice."""
    prep = prepare(
        input,
        target,
        mode=o.mode,
        from_logits=o.from_logits,
        ignore_index=o.ignore_index,
        mask=mask,
        include_background=o.background,
    )
    kept = prep.kept_classes if prep.kept_classes is not None else tuple(range(prep.num_classes))
    if distance_map is not None:
        if o.spacing is not None:
            raise ValueError(
                "spacing is used when the distance map is computed here; a given distance_map already holds the "
                "distances (compute it with diceloss.transforms.signed_distance(labels, spacing=...))"
            )
        phi = _map_layout(distance_map, prep)
    else:
        if len(prep.spatial_shape) > 3:
            raise ValueError(
                "computing the signed distance map needs 1, 2 or 3 spatial dimensions; got input of shape "
                f"{tuple(input.shape)}: pass distance_map="
            )
        spacing_per_axis(o.spacing, prep.spatial_shape)
    backend = maps.select_backend(o.backend, prep)
    if distance_map is None:
        phi = distance_map_of_target(prep, o.spacing, kept)
    sums = maps.compute(prep, phi, backend)
    out = torch.stack([sums.weighted, sums.count], dim=-1)
    if prep.kept_classes is not None:
        out = out[:, list(prep.kept_classes)]
    if o.batch_dice:
        out = out.sum(dim=0, keepdim=True)
        if o.distributed:
            out = all_reduce_sum(out, o.process_group)
    weighted, count = out.unbind(-1)
    counted = count > 0
    return torch.where(counted, weighted / torch.where(counted, count, torch.ones_like(count)), 0.0)


def _boundary(input, target, mask, distance_map, o: BoundaryOptions) -> Tensor:
    return reduce_class_losses(_class_losses(input, target, mask, distance_map, o), None, None, o.reduction,
                               o.batch_dice)


_ARGS = """
    Args:
        mode: "binary" | "multiclass" | "multilabel", with the input conventions of :mod:`diceloss.functional`
            (class indices, (B, 1, *S), one-hot or soft targets).
        from_logits: ``True``: logits (softmax over C in multiclass mode, sigmoid otherwise); ``False``:
            probabilities.
        include_background: keep class 0. ``None`` (default): False in multiclass mode (the authors score the
            foreground: ``idc=[1]``; MONAI's default keeps it), True in multilabel mode.
        ignore_index: multiclass: a class index marking positions to skip (a real class is also dropped from the
            class mean); binary, multilabel: a target value marking elements to skip. Ignored positions leave the
            sums and the count, and belong to no class when the map is computed here.
        batch_dice: sum over the batch first (one value per class), as MONAI's ``batch=True``.
        distance_map: phi, (B, C, *S) (binary: the input's shape), one map per class of the input, e.g. stacked
            :func:`diceloss.transforms.signed_distance` of each case, made in the data loader. Its entries for
            classes not kept are not read. Default: computed here from the target, on the CPU, every call
            (2 or 3 spatial dimensions; 1-D as a 1 x N image).
        spacing: the voxel size, one number or one per spatial axis, for the map computed here (default 1).
            With a given ``distance_map`` it must be left out (the map holds the distances already).
        reduction: "mean" | "sum" | "none" ((B, K), or (K,) with ``batch_dice``).
        backend: "auto" | "reference" | "fused" | "triton", for the sum.
        distributed: with ``batch_dice``, sum over the ranks of ``process_group`` first, differentiably.

    ``mask`` ((B, *S) or (B, 1, *S)) removes positions from the sum and the count, not from the map: a given or
    computed map measures distances in the whole target."""


def boundary_loss(
    input: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    *,
    distance_map: Tensor | None = None,
    spacing: float | Sequence[float] | None = None,
    mode: str = "multiclass",
    from_logits: bool = True,
    include_background: bool | None = None,
    ignore_index: int | None = None,
    batch_dice: bool = False,
    reduction: str = "mean",
    backend: str = "auto",
    distributed: bool = False,
    process_group=None,
) -> Tensor:
    r"""Boundary loss (Kervadec et al., MIDL 2019), ``mean p phi``. See :class:`diceloss.BoundaryLoss`.

    Example:
        >>> from diceloss.transforms import signed_distance
        >>> t = torch.zeros(2, 16, 16, dtype=torch.long); t[:, 4:12, 5:9] = 1
        >>> phi = torch.stack([signed_distance(t[b], spacing=(0.8, 1.5), num_classes=2) for b in range(2)])
        >>> x = torch.randn(2, 2, 16, 16, requires_grad=True)
        >>> boundary_loss(x, t, distance_map=phi).backward()
    """
    options = BoundaryOptions(
        mode, from_logits, include_background, ignore_index, batch_dice, spacing, reduction, backend, distributed,
        process_group,
    )
    return _boundary(input, target, mask, distance_map, options)


class BoundaryLoss(_OptionsModule):
    __doc__ = (
        r"""Boundary loss (Kervadec et al., MIDL 2019): the probabilities weighted by the signed distance to the
    target's boundary, a loss on the contour rather than the region, for highly unbalanced segmentation (small
    lesions) where a region loss gives tiny gradients.

    Per (sample, class kept), over the valid positions (m: ``ignore_index``, ``mask``)::

        L = sum m p phi / sum m,      phi < 0 inside the target, > 0 outside, 0 on its boundary

    averaged over the classes kept and the samples. Not bounded below by 0: its minimum (all of p inside the
    target) is the mean of phi over the target, negative. Use it with a region loss (Generalized Dice) and a
    weight that grows over the epochs: alone it collapses to the empty prediction (see the module docstring of
    :mod:`diceloss.boundary` and docs/losses/boundary.md).
    """
        + _ARGS
        + """

    Shape:
        input (B, C, *S) (binary: (B, 1, *S) or (B, *S)); target as in :mod:`diceloss.functional`; mask (B, *S)
        or (B, 1, *S); ``forward(input, target, mask=None, distance_map=None)``. Output () for "mean" / "sum",
        (B, K) or (K,) for "none".

    Example:
        >>> import diceloss
        >>> gdl, boundary = diceloss.GeneralizedDiceLoss(), BoundaryLoss()
        >>> x = torch.randn(2, 3, 32, 32, requires_grad=True)
        >>> t = torch.randint(0, 3, (2, 32, 32))
        >>> epoch = 10
        >>> w_gdl, w_boundary = max(0.1, 1 - 0.01 * epoch), 0.01 * (1 + epoch)    # the authors' schedule
        >>> (w_gdl * gdl(x, t) + w_boundary * boundary(x, t)).backward()
    """
    )

    mode = _Option()
    from_logits = _Option()
    include_background = _Option()
    ignore_index = _Option()
    batch_dice = _Option()
    spacing = _Option()
    reduction = _Option()
    backend = _Option()
    distributed = _Option()
    process_group = _Option()

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        from_logits: bool = True,
        include_background: bool | None = None,
        ignore_index: int | None = None,
        batch_dice: bool = False,
        spacing: float | Sequence[float] | None = None,
        reduction: str = "mean",
        backend: str = "auto",
        distributed: bool = False,
        process_group=None,
    ) -> None:
        super().__init__()
        self._options = BoundaryOptions(
            mode, from_logits, include_background, ignore_index, batch_dice, spacing, reduction, backend,
            distributed, process_group,
        )

    def forward(
        self, input: Tensor, target: Tensor, mask: Tensor | None = None, distance_map: Tensor | None = None
    ) -> Tensor:
        return _boundary(input, target, mask, distance_map, self._options)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, spacing={self.spacing}, reduction={self.reduction!r}"
