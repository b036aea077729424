r"""Skeleton Recall (Kirchhoff, Rokuss et al., ECCV 2024, arXiv 2404.03010): recall of the target's tubed skeleton.

Per (sample b, class c kept), over the valid positions n, with p the probabilities and s the tubed skeleton of
the target (1 on the tube of class c, 0 elsewhere; a soft skeleton in [0, 1] is taken as it is)::

    R[b, c] = (sum_n p[b,c,n] s[b,c,n] + s_nr) / (sum_n s[b,c,n] + s_dr)        loss[b, c] = 1 - R[b, c]

averaged over the classes kept and the samples (with ``batch_dice=True`` the two sums run over the batch first:
one value per class). The authors' loss is ``-mean R`` (their ``SoftSkeletonRecallLoss``); diceloss keeps the
family in [0, 1] with ``1 - mean R``: the same gradient, a constant 1 apart. A class with no skeleton in a
sample has R = s_nr / s_dr = 1 (loss 0), as in theirs.

The tubed skeleton (:func:`diceloss.transforms.tubed_skeleton`: scikit-image's skeleton of each class,
dilated twice with the face-connected cross) is made once per case, best in the data loader, and passed as
``skeleton``; without one it is computed here from the target, on the CPU, at every call.

It is a sum over positions once s is known: the statistics are :mod:`diceloss.stats.maps`'s "second label
map" kind (PW = sum m p s, W = sum m s), computed without a one-hot tensor and without saving the
probabilities (the backward recomputes them from the logits): they are the overlap engine's I and G with the skeleton
in the place of the target, so its compiled CPU kernel and its Triton kernels compute them.

Example:
    >>> import torch
    >>> from diceloss.skeleton_recall import skeleton_recall_loss
    >>> t = torch.zeros(1, 8, 8, dtype=torch.long); t[0, 2:6, 1:7] = 1           # a 4 x 6 bar of class 1
    >>> p = torch.nn.functional.one_hot(t, 2).movedim(-1, 1).double()           # a perfect prediction
    >>> float(skeleton_recall_loss(p, t, from_logits=False))
    0.0
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ._checks import (
    check_compound_reduction,
    check_nonnegative,
    check_option_fields,
    set_field,
    value_checks_enabled,
)
from ._compile import host_only
from ._layout import Prepared, _check_tensor, check_index_range, prepare
from ._pipeline import LossOptions, run
from .distributed import all_reduce_sum
from .heads import CompoundHead, DiceHead, ratio_or_one, reduce_class_losses
from .losses import _Option, _OptionsModule
from .stats import maps

__all__ = [
    "skeleton_recall_loss",
    "dice_ce_skeleton_recall_loss",
    "SkeletonRecallLoss",
    "DiceCESkeletonRecallLoss",
    "SkeletonRecallOptions",
    "DiceCESkeletonRecallOptions",
    "skeleton_of_target",
]

# the authors' tube: dilation(dilation(skeleton)) with scikit-image's default (face-connected) footprint
TUBE_RADIUS = 2


@dataclass(frozen=True)
class SkeletonRecallOptions:
    """The options of :func:`skeleton_recall_loss` / :class:`SkeletonRecallLoss`, checked when made.

    ``include_background=None`` (default): False in multiclass mode, where channel 0 is the background (the
    authors refuse it: the skeleton of the background is the medial axis of everything else), True in
    multilabel mode; binary mode has one channel and ignores it.
    """

    mode: str = "multiclass"
    from_logits: bool = True
    include_background: bool | None = None
    ignore_index: int | None = None
    batch_dice: bool = False
    smooth_nr: float = 1e-5
    smooth_dr: float = 1e-5
    reduction: str = "mean"
    backend: str = "auto"
    distributed: bool = False
    process_group: object = None

    def __post_init__(self) -> None:
        check_option_fields(
            self, bools=("from_logits", "batch_dice", "distributed"), nullable=("include_background",), smoothing=True
        )
        if self.distributed and not self.batch_dice:
            raise ValueError(
                "distributed=True sums the skeleton sums over the ranks, which only batch_dice=True needs; "
                "per-sample Skeleton Recall (batch_dice=False) needs no synchronisation"
            )

    @property
    def background(self) -> bool:
        """``include_background`` with the default resolved for the mode."""
        if self.include_background is None:
            return self.mode != "multiclass"
        return self.include_background


@dataclass(frozen=True)
class DiceCESkeletonRecallOptions(SkeletonRecallOptions):
    """The options of :func:`dice_ce_skeleton_recall_loss` / :class:`DiceCESkeletonRecallLoss`: those of Skeleton
    Recall, shared by the Dice term, and the three factors. ``reduction``: "mean" or "sum"."""

    lambda_dice: float = 1.0
    lambda_ce: float = 1.0
    lambda_skeleton: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_compound_reduction(self.reduction, "DiceCESkeletonRecallLoss")
        for name in ("lambda_dice", "lambda_ce", "lambda_skeleton"):
            set_field(self, name, check_nonnegative(name, getattr(self, name)))


# ----------------------------------------------------------------------------------------------
# the skeleton: given (checked against the layout) or computed from the target


def _skeleton_layout(skeleton: object, prep: Prepared, background: bool) -> Tensor:
    """A given skeleton as a label map (B, N) int64 or a dense map (B, C, N) floating, checked against ``prep``."""
    s = _check_tensor("skeleton", skeleton)
    device = prep.logits.device
    if s.device != device:
        raise ValueError(f"skeleton must be on the input's device {device}, got {s.device}")
    if s.is_complex():
        raise TypeError("skeleton must be real, got a complex tensor")
    if s.layout != torch.strided:
        raise TypeError(f"skeleton must be a dense (strided) tensor, got layout {s.layout}")
    B, C, N = prep.logits.shape
    spatial = prep.spatial_shape
    s = s.detach()
    if prep.mode == "binary":
        if tuple(s.shape) not in ((B, *spatial), (B, 1, *spatial)):
            raise ValueError(
                f"binary mode expects skeleton of shape {(B, *spatial)} or {(B, 1, *spatial)}, got {tuple(s.shape)}"
            )
        s = s.reshape(B, 1, N)
    elif tuple(s.shape) == (B, C, *spatial):
        s = s.reshape(B, C, N)
    elif prep.mode == "multiclass" and tuple(s.shape) in ((B, *spatial), (B, 1, *spatial)):
        if s.is_floating_point() or s.dtype == torch.bool:
            raise TypeError(
                f"a skeleton of shape {tuple(s.shape)} is read as a label map (c on the tube of class c, 0 elsewhere) "
                f"and must be integer, got dtype {s.dtype}; a dense skeleton has shape {(B, C, *spatial)}"
            )
        if background:
            raise ValueError(
                "a label-map skeleton marks no skeleton with 0, so it cannot hold the skeleton of class 0, which "
                "include_background=True keeps; pass a (B, C, *spatial) skeleton or include_background=False"
            )
        labels = s.reshape(B, N)
        if value_checks_enabled(labels.device):
            check_index_range(labels, C, what="skeleton labels", context=f" for input with C = {C}")
        return labels.long()
    else:
        dense = f"{(B, C, *spatial)}" + (
            f", or a label map {(B, *spatial)} / {(B, 1, *spatial)}" if prep.mode == "multiclass" else ""
        )
        raise ValueError(f"{prep.mode} mode expects skeleton of shape {dense}, got {tuple(s.shape)}")
    if not s.is_floating_point():
        s = s.to(torch.float32)
    if value_checks_enabled(s.device) and s.numel():
        lo, hi = (float(v) for v in torch.aminmax(s))
        if not (0 <= lo and hi <= 1):
            raise ValueError(f"skeleton values must be in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")
    return s


def _check_spatial(prep: Prepared, input: Tensor) -> None:
    n = len(prep.spatial_shape)
    if n > 3:
        raise ValueError(
            "computing the tubed skeleton needs 1, 2 or 3 spatial dimensions (scikit-image skeletonises images and "
            f"volumes); got input of shape {tuple(input.shape)} with {n} in {prep.mode} mode: pass skeleton="
        )


@host_only  # scikit-image on the host: torch.compile breaks the graph here rather than trace it
def skeleton_of_target(prep: Prepared, background: bool) -> Tensor:
    """The tubed skeleton of a prepared target (no gradient), on the CPU with scikit-image: a label map (B, N)
    (multiclass without the background) or a dense map (B, C, N) (float32), on the input's device. A 1-D target is
    skeletonised as a 1 x N image: each run is a 1-pixel-thick line, its own skeleton."""
    from .transforms import tubed_skeleton

    B, C, N = prep.logits.shape
    spatial = prep.spatial_shape if len(prep.spatial_shape) > 1 else (1, N)
    device = prep.logits.device
    target = prep.target.detach().cpu()
    if prep.mode == "multiclass":
        if prep.target_is_index:
            labels = target.reshape(B, *spatial)
            ignore = prep.ignore_index
        else:
            # one-hot / soft targets: the skeleton of the most likely class (an ignored channel is in the mask)
            labels = target.argmax(dim=1).reshape(B, *spatial)
            ignore = None
        out = torch.stack(
            [tubed_skeleton(labels[b], radius=TUBE_RADIUS, ignore_index=ignore) for b in range(B)]
        ).reshape(B, N)
        if not background:
            return out.to(device)
        dense = torch.zeros(B, C, N)
        inside = (out > 0)
        dense.scatter_(1, out[:, None].clamp(0, C - 1), inside[:, None].float())
        for b in range(B):
            dense[b, 0] = tubed_skeleton(labels[b] == 0, radius=TUBE_RADIUS).reshape(N).float()
        return dense.to(device)
    g = target.reshape(B, C, *spatial)
    fg = g >= 0.5
    if prep.ignore_index is not None:
        fg &= g != prep.ignore_index
    dense = torch.stack(
        [torch.stack([tubed_skeleton(fg[b, c], radius=TUBE_RADIUS) for c in range(C)]) for b in range(B)]
    )
    return dense.reshape(B, C, N).to(torch.float32).to(device)


# ----------------------------------------------------------------------------------------------
# the loss


def _checked(input: Tensor, target: Tensor, mask: Tensor | None, skeleton: Tensor | None,
             o: SkeletonRecallOptions) -> tuple[Prepared, Tensor | None]:
    """The layout and the given skeleton, every input checked (nothing computed yet)."""
    prep = prepare(
        input,
        target,
        mode=o.mode,
        from_logits=o.from_logits,
        ignore_index=o.ignore_index,
        mask=mask,
        include_background=o.background,
    )
    if skeleton is not None:
        return prep, _skeleton_layout(skeleton, prep, o.background)
    _check_spatial(prep, input)
    return prep, None


def _sums(prep: Prepared, given: Tensor | None, o: SkeletonRecallOptions) -> Tensor:
    """(PW, W) of the kept classes, stacked (G, K, 2), after the batch and rank sums."""
    backend = maps.select_backend(o.backend, prep)
    s = given if given is not None else skeleton_of_target(prep, o.background)
    sums = maps.compute(prep, s, backend)
    out = torch.stack([sums.weighted, sums.weight], dim=-1)
    if prep.kept_classes is not None:
        out = out[:, list(prep.kept_classes)]
    if o.batch_dice:
        out = out.sum(dim=0, keepdim=True)
        if o.distributed:
            out = all_reduce_sum(out, o.process_group)
    return out


def _class_losses(sums: Tensor, o: SkeletonRecallOptions) -> Tensor:
    hit, tube = sums.unbind(-1)
    return 1 - ratio_or_one(hit + o.smooth_nr, tube + o.smooth_dr)


def _reduced(prep: Prepared, given: Tensor | None, o: SkeletonRecallOptions) -> Tensor:
    return reduce_class_losses(_class_losses(_sums(prep, given, o), o), None, None, o.reduction, o.batch_dice)


def _skeleton_recall(input, target, mask, skeleton, o: SkeletonRecallOptions) -> Tensor:
    return _reduced(*_checked(input, target, mask, skeleton, o), o)


def _dice_ce_skeleton_recall(input, target, mask, skeleton, o: DiceCESkeletonRecallOptions):
    # Dice + CE: diceloss's DiceCELoss pipeline (its own pass, the compiled kernel on the CPU) on the classes Skeleton
    # Recall keeps; the cross-entropy runs over every class, as nnU-Net's and the authors'
    options = LossOptions(
        o.mode, o.from_logits, o.background, o.ignore_index, o.batch_dice, False, False, o.reduction, o.backend,
        o.distributed, o.process_group,
    )
    head = CompoundHead(DiceHead(o.smooth_nr, o.smooth_dr), "ce", o.lambda_dice, o.lambda_ce)
    checked = _checked(input, target, mask, skeleton, o)  # every input of both terms checked before computing
    dice_ce, terms = run(input, target, mask, None, options, head)
    sr = _reduced(*checked, o)
    total = dice_ce + (sr if o.lambda_skeleton == 1 else o.lambda_skeleton * sr)
    return total, {**terms, "skeleton_recall": sr.detach()}


_FORMULA = r"""
    Per (sample, class kept), over the valid positions, with p the probabilities and s the tubed skeleton of the
    target::

        R = (sum p s + s_nr) / (sum s + s_dr),     loss = 1 - R

    (a denominator of 0 reads R = 1). Range: [0, 1]. The authors' ``SoftSkeletonRecallLoss`` returns ``-mean R``:
    the same gradient, 1 lower."""

_ARGS = """
    Args:
        mode: "binary" | "multiclass" | "multilabel", with the input conventions of :mod:`diceloss.functional`
            (class indices, (B, 1, *S), one-hot or soft targets). Multilabel (overlapping labels, nnU-Net's
            regions) takes one skeleton per channel; the authors' code has no such mode.
        from_logits: ``True``: logits (softmax over C in multiclass mode, sigmoid otherwise); ``False``:
            probabilities.
        include_background: keep class 0. ``None`` (default): False in multiclass mode (channel 0 is the
            background; the authors refuse it), True in multilabel mode.
        ignore_index: multiclass: a class index marking positions to skip (a real class is also dropped from the
            class mean); binary, multilabel: a target value marking elements to skip. Ignored positions leave
            both sums and belong to no class when the skeleton is computed here.
        batch_dice: sum the two sums over the batch first (one value per class), as batch Dice does
            (nnU-Net's plans set it for 3D full-resolution configurations).
        skeleton: the target's tubed skeleton, precomputed in the data loader
            (:func:`diceloss.transforms.tubed_skeleton`, one case at a time): in multiclass mode a label map
            (B, *S) or (B, 1, *S) of integers (c on the tube of class c, 0 elsewhere: what the authors' loader
            yields), or (B, C, *S) values in [0, 1]; the target's shape in binary and multilabel modes. Default:
            computed here from the target on the CPU (scikit-image; 2 or 3 spatial dimensions), every call.
        smooth_nr, smooth_dr: added to the numerator and the denominator; ``smooth_nr <= smooth_dr``. The default
            1e-5 is the authors' (nnU-Net's trainer).
        reduction: "mean" | "sum" | "none" ((B, K), or (K,) with ``batch_dice``).
        backend: "auto" | "reference" | "fused" | "triton", for the two sums.
        distributed: with ``batch_dice``, sum the two sums over the ranks of ``process_group`` first,
            differentiably.

    ``mask`` ((B, *S) or (B, 1, *S)) removes positions from the sums, not from the skeleton: a given or computed
    skeleton is that of the whole target."""


def skeleton_recall_loss(
    input: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    *,
    skeleton: Tensor | None = None,
    mode: str = "multiclass",
    from_logits: bool = True,
    include_background: bool | None = None,
    ignore_index: int | None = None,
    batch_dice: bool = False,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    reduction: str = "mean",
    backend: str = "auto",
    distributed: bool = False,
    process_group=None,
) -> Tensor:
    r"""Skeleton Recall loss (Kirchhoff et al., ECCV 2024), ``1 - mean R``. See :class:`diceloss.SkeletonRecallLoss`.

    Example:
        >>> t = torch.zeros(2, 16, 16, dtype=torch.long); t[:, 6:9, 2:14] = 1        # a 3-pixel-thick bar
        >>> from diceloss.transforms import tubed_skeleton
        >>> s = torch.stack([tubed_skeleton(t[b]) for b in range(2)])                  # in the data loader
        >>> x = torch.randn(2, 2, 16, 16, requires_grad=True)
        >>> loss = skeleton_recall_loss(x, t, skeleton=s)
        >>> loss.backward()
        >>> 0 <= float(loss.detach()) <= 1
        True
    """
    options = SkeletonRecallOptions(
        mode, from_logits, include_background, ignore_index, batch_dice, smooth_nr, smooth_dr, reduction, backend,
        distributed, process_group,
    )
    return _skeleton_recall(input, target, mask, skeleton, options)


def dice_ce_skeleton_recall_loss(
    input: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    *,
    skeleton: Tensor | None = None,
    mode: str = "multiclass",
    from_logits: bool = True,
    include_background: bool | None = None,
    ignore_index: int | None = None,
    batch_dice: bool = False,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    lambda_dice: float = 1.0,
    lambda_ce: float = 1.0,
    lambda_skeleton: float = 1.0,
    reduction: str = "mean",
    backend: str = "auto",
    distributed: bool = False,
    process_group=None,
) -> Tensor:
    r"""``lambda_dice * Dice + lambda_ce * CE + lambda_skeleton * Skeleton Recall``: the authors' training loss.
    See :class:`diceloss.DiceCESkeletonRecallLoss`.

    Example:
        >>> x = torch.randn(2, 3, 16, 16)
        >>> t = torch.randint(0, 3, (2, 16, 16))
        >>> float(dice_ce_skeleton_recall_loss(x, t)) > 0
        True
    """
    options = DiceCESkeletonRecallOptions(
        mode, from_logits, include_background, ignore_index, batch_dice, smooth_nr, smooth_dr, reduction, backend,
        distributed, process_group, lambda_dice, lambda_ce, lambda_skeleton,
    )
    return _dice_ce_skeleton_recall(input, target, mask, skeleton, options)[0]


# ----------------------------------------------------------------------------------------------
# modules


class _Base(_OptionsModule):
    """A frozen options object ``_options`` whose fields are the module's attributes (set one: a new options object,
    checked again, or the module unchanged)."""

    mode = _Option()
    from_logits = _Option()
    include_background = _Option()
    ignore_index = _Option()
    batch_dice = _Option()
    smooth_nr = _Option()
    smooth_dr = _Option()
    reduction = _Option()
    backend = _Option()
    distributed = _Option()
    process_group = _Option()

    _options: SkeletonRecallOptions

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, batch_dice={self.batch_dice}, reduction={self.reduction!r}"


class SkeletonRecallLoss(_Base):
    __doc__ = (
        r"""Skeleton Recall loss (Kirchhoff, Rokuss et al., ECCV 2024) for thin, tubular structures (vessels, nerves,
    cracks, roads): the soft recall of the target's tubed skeleton, which keeps thin branches connected where a
    volume loss barely notices them. Cheap: one more sum per class against a map made in the data loader.
    """
        + _FORMULA
        + """

    Meant to be added to Dice + cross-entropy (:class:`DiceCESkeletonRecallLoss`, the authors' nnU-Net trainer);
    alone it rewards covering the skeleton and nothing else (predicting the class everywhere scores 0).
    """
        + _ARGS
        + """

    Shape:
        input (B, C, *S) (binary: (B, 1, *S) or (B, *S)); target as in :mod:`diceloss.functional`; mask (B, *S)
        or (B, 1, *S); ``forward(input, target, mask=None, skeleton=None)``. Output () for "mean" / "sum",
        (B, K) or (K,) for "none".

    Example:
        >>> loss = SkeletonRecallLoss()
        >>> x = torch.randn(2, 3, 32, 32, requires_grad=True)
        >>> t = torch.randint(0, 3, (2, 32, 32))
        >>> s = torch.zeros_like(t); s[:, 10, 4:28] = 2                     # a given skeleton of class 2
        >>> loss(x, t, skeleton=s).backward()
        >>> loss.smooth_nr = 1.0                                            # checked again when set
        Traceback (most recent call last):
        ...
        ValueError: smooth_nr (1.0) must not exceed smooth_dr (1e-05): an empty class would then score a Dice above 1
    """
    )

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        from_logits: bool = True,
        include_background: bool | None = None,
        ignore_index: int | None = None,
        batch_dice: bool = False,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        reduction: str = "mean",
        backend: str = "auto",
        distributed: bool = False,
        process_group=None,
    ) -> None:
        super().__init__()
        self._options = SkeletonRecallOptions(
            mode, from_logits, include_background, ignore_index, batch_dice, smooth_nr, smooth_dr, reduction,
            backend, distributed, process_group,
        )

    def forward(
        self, input: Tensor, target: Tensor, mask: Tensor | None = None, skeleton: Tensor | None = None
    ) -> Tensor:
        return _skeleton_recall(input, target, mask, skeleton, self._options)


class DiceCESkeletonRecallLoss(_Base):
    __doc__ = (
        r"""``lambda_dice * Dice + lambda_ce * cross-entropy + lambda_skeleton * Skeleton Recall``: the loss of the
    authors' nnU-Net trainer (``DC_SkelREC_and_CE_loss``: weights 1, 1, 1; Dice and Skeleton Recall without the
    background, the cross-entropy over every class).

    The Dice and cross-entropy terms are :class:`diceloss.DiceCELoss`'s (the same pipeline; ``include_background``
    applies to the Dice term, the cross-entropy takes every class), computed in their own pass over the logits
    (the compiled kernel on the CPU); the Skeleton Recall sums take a second pass. ``reduction``: "mean" or
    "sum". ``components`` holds the detached ``dice``, ``ce`` and ``skeleton_recall`` terms of the last call.
    """
        + _FORMULA
        + _ARGS
        + """
        lambda_dice, lambda_ce, lambda_skeleton: non-negative factors of the three terms (default 1 each, the
            authors').

    Shape:
        as :class:`SkeletonRecallLoss`; output ().

    Example:
        >>> loss = DiceCESkeletonRecallLoss(lambda_skeleton=0.5)
        >>> x = torch.randn(2, 3, 32, 32, requires_grad=True)
        >>> t = torch.randint(0, 3, (2, 32, 32))
        >>> loss(x, t).backward()
        >>> sorted(loss.components)
        ['ce', 'dice', 'skeleton_recall']
    """
    )

    lambda_dice = _Option()
    lambda_ce = _Option()
    lambda_skeleton = _Option()

    _options: DiceCESkeletonRecallOptions

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        from_logits: bool = True,
        include_background: bool | None = None,
        ignore_index: int | None = None,
        batch_dice: bool = False,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        lambda_skeleton: float = 1.0,
        reduction: str = "mean",
        backend: str = "auto",
        distributed: bool = False,
        process_group=None,
    ) -> None:
        super().__init__()
        self._options = DiceCESkeletonRecallOptions(
            mode, from_logits, include_background, ignore_index, batch_dice, smooth_nr, smooth_dr, reduction,
            backend, distributed, process_group, lambda_dice, lambda_ce, lambda_skeleton,
        )
        self.components: dict[str, Tensor] = {}

    def forward(
        self, input: Tensor, target: Tensor, mask: Tensor | None = None, skeleton: Tensor | None = None
    ) -> Tensor:
        total, self.components = _dice_ce_skeleton_recall(input, target, mask, skeleton, self._options)
        return total
