r"""Blob loss (Kofler et al., IPMI 2023, arXiv 2205.08209) with the Dice criterion: instance-imbalance aware.

``L = lambda_global * L_global + lambda_blob * mean_b mean_j L_j``: the ordinary (global) Dice loss plus, per
ground-truth instance (blob) j of sample b, the Dice loss of the prediction restricted to blob j and the
background, averaged over the blobs of the sample and over the samples that have blobs. A large blob cannot
hide a missed small one: each counts once.

For blob j of class c, with every other blob of class c masked out of the prediction::

    D_j = (2 S_j + s_nr) / (P0_c + S_j + n_j + s_dr),     L_j = 1 - D_j

S_j the prediction mass (p_c) on blob j, n_j its size and P0_c the prediction mass of class c outside every blob
of class c (field_2026.md §1.3). All of them come from one scatter-add over the instance ids
(:mod:`diceloss.stats.regions`): O(N) whatever the number of blobs, where the authors' code computes the
criterion once per blob over the whole image (O(J N)).

Blobs: ``instances`` from the data loader (instance ids, 0 outside every blob), or the connected components of
the target, computed per call on the CPU with SciPy (``diceloss.transforms``; the ``transforms`` extra).
Multiclass: a blob is a connected set of positions of one class c != 0 (per-class components: two touching
classes are two blobs); with given ids, positions that share an id and a target class. Binary and multilabel:
each channel has its own blobs (components of g > 0.5; given ids have the channel's shape).
"""

from __future__ import annotations

import dataclasses
import numbers

import numpy as np
import torch
from torch import Tensor

from ._checks import (
    check_compound_reduction,
    check_nonnegative,
    check_option_fields,
    value_checks_enabled,
)
from ._layout import Prepared, prepare
from .distributed import all_reduce_sum
from .heads import dice_score, reduce_class_losses
from .losses import _Option, _OptionsModule
from .stats.reference import dense_target
from .stats.regions import blob_classes, region_sums

__all__ = ["blob_loss", "BlobLoss", "BlobOptions", "blob_terms_from_sums"]


@dataclasses.dataclass(frozen=True)
class BlobOptions:
    """The options of :func:`blob_loss`, validated once when made (immutable)."""

    mode: str = "multiclass"
    from_logits: bool = True
    include_background: bool = True
    ignore_index: int | None = None
    batch_dice: bool = False
    lambda_global: float = 1.0
    lambda_blob: float = 1.0
    connectivity: int | None = None
    smooth_nr: float = 1e-5
    smooth_dr: float = 1e-5
    reduction: str = "mean"
    backend: str = "auto"
    distributed: bool = False
    process_group: object = None

    def __post_init__(self) -> None:
        check_compound_reduction(self.reduction, "BlobLoss")
        check_option_fields(
            self, bools=("from_logits", "include_background", "batch_dice", "distributed"), reductions=None,
            smoothing=True,
        )
        for name in ("lambda_global", "lambda_blob"):
            object.__setattr__(self, name, check_nonnegative(name, getattr(self, name)))
        c = self.connectivity
        if c is not None and (isinstance(c, bool) or not isinstance(c, numbers.Integral) or c < 1):
            raise ValueError(f"connectivity must be None (full) or a positive integer (a rank 1..ndim, or a "
                             f"neighbour count such as 4, 8, 6, 18, 26), got {c!r}")
        if self.distributed and not self.batch_dice:
            raise ValueError("distributed=True sums the statistics over the ranks, which only batch Dice needs "
                             "(batch_dice=True)")


# ----------------------------------------------------------------------------------------------
# instance maps


def _check_instances(instances: object, prep: Prepared, input: Tensor) -> Tensor:
    """The given instance map as (B, N) (multiclass) or (B, C, N) (binary: C = 1; multilabel)."""
    if not isinstance(instances, Tensor):
        raise TypeError(f"instances must be a torch.Tensor of instance ids or None, got {type(instances).__name__}")
    if instances.device != input.device:
        raise ValueError(f"instances must be on the input's device ({input.device}), got {instances.device}")
    if instances.is_floating_point() or instances.is_complex() or instances.dtype == torch.bool:
        raise TypeError(f"instances must be an integer tensor of instance ids (0: no instance), got dtype "
                        f"{instances.dtype}")
    B, C = prep.logits.shape[:2]
    S = prep.spatial_shape
    shape = tuple(instances.shape)
    if prep.mode == "multiclass":
        if shape not in ((B, *S), (B, 1, *S)):
            raise ValueError(f"instances must have shape (B, *S) = {(B, *S)} or (B, 1, *S) in multiclass mode (one "
                             f"id per position, the class read from the target), got {shape}")
        flat = instances.reshape(B, -1)
    elif prep.mode == "binary":
        if shape not in ((B, *S), (B, 1, *S)):
            raise ValueError(f"instances must have shape (B, *S) = {(B, *S)} or (B, 1, *S) in binary mode, got {shape}")
        flat = instances.reshape(B, 1, -1)
    else:
        if shape != (B, C, *S):
            raise ValueError(f"instances must have the input's shape {(B, C, *S)} in multilabel mode (the blobs of "
                             f"each channel), got {shape}")
        flat = instances.reshape(B, C, -1)
    if value_checks_enabled(flat.device) and flat.numel() and int(flat.min()) < 0:
        raise ValueError(f"instances must hold ids >= 0 (0: no instance), got a minimum of {int(flat.min())}")
    return flat


def _components_of(mask: np.ndarray, spatial: tuple[int, ...], connectivity: int | None) -> tuple[np.ndarray, int]:
    from .transforms import _components

    return _components(mask.reshape(spatial), connectivity)


def _computed_instances(prep: Prepared, connectivity: int | None) -> Tensor:
    """Connected components of the target (the valid positions only), per sample and class, on the CPU."""
    B, C, N = prep.logits.shape
    spatial = prep.spatial_shape if len(prep.spatial_shape) else (N,)
    with torch.no_grad():
        g, m = dense_target(prep, torch.float32)
        valid = (m > 0).cpu().numpy()
        if prep.mode == "multiclass":
            labels = blob_classes(prep.target, prep.target_is_index).cpu().numpy()
            valid = valid[:, 0]
            ids = np.zeros((B, N), dtype=np.int64)
            for b in range(B):
                offset = 0
                for c in np.unique(labels[b][valid[b]]):
                    if c == 0:
                        continue  # the background has no blobs
                    cid, n = _components_of((labels[b] == c) & valid[b], spatial, connectivity)
                    flat = cid.reshape(-1)
                    ids[b][flat > 0] = flat[flat > 0] + offset
                    offset += n
        else:
            fg = (g.cpu().numpy() > 0.5) & np.broadcast_to(valid, g.shape)
            ids = np.zeros((B, C, N), dtype=np.int64)
            for b in range(B):
                for c in range(C):
                    if fg[b, c].any():
                        ids[b, c] = _components_of(fg[b, c], spatial, connectivity)[0].reshape(-1)
    return torch.from_numpy(ids).to(prep.logits.device)


def _compact(inst: Tensor) -> tuple[Tensor, int]:
    """(ids, number of ids R): ids renumbered to 0..R-1 (0 kept for "no instance") when they are sparse."""
    R = int(inst.max()) + 1 if inst.numel() else 1
    if R <= inst.shape[-1] + 1:
        return inst, R
    values, inverse = torch.unique(torch.cat([inst.new_zeros(1), inst.reshape(-1)]), return_inverse=True)
    return inverse[1:].reshape(inst.shape), int(values.numel())


# ----------------------------------------------------------------------------------------------
# the loss


def blob_terms_from_sums(
    base: Tensor, S: Tensor, count: Tensor, o: BlobOptions, kept: tuple[int, ...] | None
) -> tuple[Tensor, Tensor]:
    """(global Dice term, blob term) from the sums of :mod:`diceloss.stats.regions`, reduced by ``o.reduction``."""
    I, P, G = base[..., 0], base[..., 1], base[..., 2]
    B, C = P.shape
    s_nr, s_dr = o.smooth_nr, o.smooth_dr
    Ig, Pg, Gg = (t.sum(dim=0, keepdim=True) for t in (I, P, G)) if o.batch_dice else (I, P, G)
    if o.batch_dice and o.distributed:
        Ig, Pg, Gg = all_reduce_sum(torch.stack([Ig, Pg, Gg], dim=-1), o.process_group).unbind(-1)
    global_loss = 1 - dice_score(Ig, Pg, Gg, s_nr, s_dr)
    if kept is not None:
        global_loss = global_loss[:, list(kept)]
    global_term = reduce_class_losses(global_loss, None, None, o.reduction, o.batch_dice)

    S3, n3 = S.view(B, -1, C), count.view(B, -1, C)
    outside = P[:, None, :] - S3.sum(dim=1, keepdim=True)  # p of class c outside every blob of class c
    present = n3 > 0
    if kept is not None and len(kept) < C:
        keep = torch.zeros(C, dtype=torch.bool, device=S.device)
        keep[list(kept)] = True
        present = present & keep
    den = outside + S3 + n3 + s_dr
    den = torch.where(present, den, torch.ones_like(den))  # only blobs that exist are scored
    blob_losses = torch.where(present, 1 - (2 * S3 + s_nr) / den, torch.zeros_like(den))
    blobs = present.sum(dim=(1, 2))
    per_sample = blob_losses.sum(dim=(1, 2)) / blobs.clamp_min(1).to(S.dtype)
    has = blobs > 0
    total, samples = per_sample.sum(), has.sum().to(S.dtype)
    if o.batch_dice and o.distributed:
        # the blob term of the union of the ranks' batches: its sum and its number of samples summed over the
        # ranks, so that DDP's averaging gives the single-process gradient (as for the global statistics)
        total, samples = all_reduce_sum(torch.stack([total, samples]), o.process_group).unbind(0)
    if o.reduction == "sum":
        return global_term, total
    # the mean over the samples that have blobs (the authors' rule); 0 when none has
    return global_term, total / samples.clamp_min(1)


def _terms(input: Tensor, target: Tensor, mask: Tensor | None, instances: Tensor | None,
           o: BlobOptions) -> tuple[Tensor, Tensor]:
    prep = prepare(input, target, mode=o.mode, from_logits=o.from_logits, ignore_index=o.ignore_index, mask=mask,
                   include_background=o.include_background)
    if instances is None:
        inst = _computed_instances(prep, o.connectivity)
    else:
        inst = _check_instances(instances, prep, input)
    inst, R = _compact(inst)
    C = prep.num_classes
    base, S, count = region_sums(prep, inst, R * C, o.backend)
    return blob_terms_from_sums(base, S, count, o, prep.kept_classes)


def _combine(global_term: Tensor, blob_term: Tensor, o: BlobOptions) -> Tensor:
    return o.lambda_global * global_term + o.lambda_blob * blob_term


def blob_loss(
    input: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    *,
    instances: Tensor | None = None,
    mode: str = "multiclass",
    from_logits: bool = True,
    include_background: bool = True,
    ignore_index: int | None = None,
    batch_dice: bool = False,
    lambda_global: float = 1.0,
    lambda_blob: float = 1.0,
    connectivity: int | None = None,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    reduction: str = "mean",
    backend: str = "auto",
    distributed: bool = False,
    process_group=None,
) -> Tensor:
    r"""Blob loss (Kofler et al., 2023) with the Dice criterion::

        L = lambda_global * (1 - Dice) + lambda_blob * mean_b mean_j (1 - D_j),
        D_j = (2 S_j + s_nr) / (P0_c + S_j + n_j + s_dr)

    per blob j (class c) of sample b: S_j the predicted mass on the blob, n_j its size, P0_c the predicted mass of
    class c outside every blob of class c. See :class:`diceloss.BlobLoss` for every argument. Range:
    [0, lambda_global + lambda_blob].

    Example:
        >>> x = torch.tensor([[[-6.0, 6.0, -6.0, 6.0, -6.0]]])     # binary logits: two blobs predicted
        >>> t = torch.tensor([[[0.0, 1.0, 0.0, 1.0, 0.0]]])
        >>> ids = torch.tensor([[[0, 1, 0, 2, 0]]])
        >>> float(blob_loss(x, t, mode="binary", instances=ids)) < 0.01
        True
    """
    o = BlobOptions(mode, from_logits, include_background, ignore_index, batch_dice, lambda_global, lambda_blob,
                    connectivity, smooth_nr, smooth_dr, reduction, backend, distributed, process_group)
    return _combine(*_terms(input, target, mask, instances, o), o)


class BlobLoss(_OptionsModule):
    r"""Blob loss (Kofler et al., IPMI 2023) with the Dice criterion: the Dice loss plus a Dice loss per instance.

    ``L = lambda_global * L_global + lambda_blob * mean_b mean_j L_j``: L_global the Dice loss (per class
    ``1 - (2I + s_nr) / (P + G + s_dr)``, averaged like :class:`diceloss.DiceLoss`), L_j the Dice loss of
    ground-truth instance (blob) j of sample b against the prediction with every other blob of its class masked
    out::

        L_j = 1 - (2 S_j + s_nr) / (P0_c + S_j + n_j + s_dr)

    S_j = sum of p_c over blob j, n_j its number of positions, P0_c = sum of p_c outside every blob of its class
    c. The mean runs over the blobs of a sample (every class together), then over the samples that have at
    least one blob (0 when none has). Each blob counts once, whatever its size: a missed small lesion costs as
    much as a missed large one. Computed from one scatter-add over the instance ids, O(N) whatever the number
    of blobs (:mod:`diceloss.stats.regions`). Range: [0, lambda_global + lambda_blob].

    Args:
        mode: "binary" | "multiclass" | "multilabel" (shapes as in :mod:`diceloss.functional`).
        from_logits: ``True``: logits (softmax over C in multiclass mode, sigmoid otherwise); ``False``:
            probabilities.
        include_background: keep class 0 (multiclass) or channel 0 (multilabel) in the global Dice and its blobs
            (the multiclass background never has computed blobs).
        ignore_index: multiclass: a class index marking positions to skip; binary, multilabel: a target value.
            Skipped positions are in no blob and in no sum.
        batch_dice: the global Dice over the whole batch; the blob term stays per sample.
        lambda_global, lambda_blob: the weights of the two terms, >= 0.
        connectivity: of the computed components: None (full: 8 in 2D, 26 in 3D), a rank 1..ndim, or a neighbour
            count (4, 8; 6, 18, 26).
        smooth_nr, smooth_dr: added to the numerators and denominators of every Dice.
        reduction: "mean" | "sum" (the global Dice summed over groups and classes, the blob term over samples).
        backend: "auto" | "reference" | "fused" | "triton".
        distributed: with ``batch_dice``, sum the global statistics, and the blob term's sum and number of samples,
            over the ranks of ``process_group``: every rank computes the loss of the union of the batches.

    ``forward(input, target, mask=None, instances=None)``: ``instances`` holds instance ids (0: no instance) from
    the data loader: (B, *S) or (B, 1, *S) in binary and multiclass modes (multiclass: positions sharing an id and
    a target class form a blob), (B, C, *S) in multilabel mode. Without it, the blobs are the connected
    components of the target, computed on the CPU with SciPy at every call (``pip install
    'diceloss[transforms]'``): precompute them in the data loader (:func:`diceloss.transforms.label_components`)
    for speed. ``components`` holds the detached ``global`` and ``blob`` terms of the last call.

    Shape:
        input (B, C, *S) (binary: (B, 1, *S) or (B, *S)); target (B, *S) / (B, 1, *S) / (B, C, *S); mask (B, *S)
        or (B, 1, *S); instances as above; output ().

    Example:
        >>> loss = BlobLoss(mode="binary", lambda_blob=2.0)
        >>> x = torch.randn(2, 1, 16, 16, requires_grad=True)
        >>> t = (torch.rand(2, 1, 16, 16) > 0.8).float()
        >>> loss(x, t).backward()
        >>> sorted(loss.components)
        ['blob', 'global']
    """

    mode = _Option()
    from_logits = _Option()
    include_background = _Option()
    ignore_index = _Option()
    batch_dice = _Option()
    lambda_global = _Option()
    lambda_blob = _Option()
    connectivity = _Option()
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
        lambda_global: float = 1.0,
        lambda_blob: float = 1.0,
        connectivity: int | None = None,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        reduction: str = "mean",
        backend: str = "auto",
        distributed: bool = False,
        process_group=None,
    ) -> None:
        super().__init__()
        self._options = BlobOptions(mode, from_logits, include_background, ignore_index, batch_dice, lambda_global,
                                    lambda_blob, connectivity, smooth_nr, smooth_dr, reduction, backend, distributed,
                                    process_group)
        self.components: dict[str, Tensor] = {}

    def forward(self, input: Tensor, target: Tensor, mask: Tensor | None = None,
                instances: Tensor | None = None) -> Tensor:
        global_term, blob_term = _terms(input, target, mask, instances, self._options)
        self.components = {"global": global_term.detach(), "blob": blob_term.detach()}
        return _combine(global_term, blob_term, self._options)

    def extra_repr(self) -> str:
        o = self._options
        return (f"mode={o.mode!r}, lambda_global={o.lambda_global}, lambda_blob={o.lambda_blob}, "
                f"reduction={o.reduction!r}")
