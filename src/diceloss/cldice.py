r"""Soft clDice (Shit, Paetzold et al., CVPR 2021, arXiv 2003.07311): a topology-aware loss for tubular structures.

clDice compares the *skeleton* of one mask with the volume of the other. Per (sample b, class c), over the valid
positions n, with p the probabilities, g the target and ``S(.)`` the soft skeleton (:func:`soft_skeleton`)::

    tprec = (sum_n S(p) g + s_nr) / (sum_n S(p) + s_dr)      topology precision: the predicted skeleton lies in g
    tsens = (sum_n S(g) p + s_nr) / (sum_n S(g) + s_dr)      topology sensitivity: g's skeleton is covered by p
    loss  = 1 - 2 tprec tsens / (tprec + tsens)

averaged over the classes kept and the samples (or, with ``batch_dice=True``, the four sums run over the batch
first: one value per class). The soft skeleton is ``k`` rounds of min-pool erosion and max-pool opening (the
authors' ``soft_skel``); it is not a sum over positions of a fixed map, so clDice is not a head on
:func:`diceloss.compute_stats`: this module brings its inputs to diceloss's layout with
:func:`diceloss._layout.prepare` (every input convention and every tensor error is that of the other losses) and
computes the four sums itself.

The prediction's skeleton is one ``torch.autograd.Function`` that saves only its input: its backward walks the
rounds in reverse, recomputing each round's input from x, so the memory of forward + backward does not grow with
``k`` (plain autograd keeps every round's pooled tensors and their int64 indices, about 20 full-size tensors per
round in 2D: what costs MONAI's ``SoftclDiceLoss`` its memory; see ``benchmarks/bench_cldice.py``).
``soft_skeleton(x, k, recompute=False)`` is the plain-autograd version on the authors' ops, the oracle of the tests.

Example:
    >>> import torch
    >>> from diceloss.cldice import cldice_loss
    >>> x = torch.randn(2, 3, 16, 16, requires_grad=True)   # logits, 3 classes
    >>> t = torch.randint(0, 3, (2, 16, 16))
    >>> loss = cldice_loss(x, t)                             # background (class 0) left out by default
    >>> loss.backward()
    >>> 0 <= float(loss.detach()) <= 1
    True
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import (
    check_backend,
    check_bool,
    check_nonnegative,
    check_option_fields,
    check_smoothing,
    set_field,
    value_checks_enabled,
)
from ._layout import Prepared, _check_tensor, check_index_range, prepare
from ._pipeline import LossOptions, run
from .distributed import all_reduce_sum
from .heads import DiceHead, ratio_or_one
from .losses import _Option, _OptionsModule
from .stats import compute_dtype

__all__ = [
    "soft_skeleton",
    "cldice_loss",
    "dice_cldice_loss",
    "ClDiceLoss",
    "DiceClDiceLoss",
    "ClDiceOptions",
    "DiceClDiceOptions",
]


# ----------------------------------------------------------------------------------------------
# the soft skeleton
#
# One round at image f (the authors' soft_skel, with the erosion of each round computed once: their loop erodes
# the same image twice, once to step and once inside the opening; the values are the same to the bit):
#
#     e = erode(f)          min over the face-connected cross (the authors: 2 or 3 one-dimensional min-pools)
#     o = dilate(e)         max over the 3x3 (3x3x3) box: the opening of f
#     d = relu(f - o)
#     skel = d (first round), else skel + relu(d - skel * d)
#     f = e                 the next round's image
#
# Pooling sees only positions inside the image (the authors pad max_pool with -inf). Min and max are taken over
# shifted slices, in place, instead of max_pool: the values are the same to the bit (min and max are exact), and
# PyTorch's CPU max_pool with these small windows measured 20 to 60 times slower (8 x 4 x 256^2, one thread).


def _neighbours(ndim: int) -> list[tuple[tuple, tuple]]:
    """(dst, src) index pairs of the face neighbours, axis by axis: output position dst reads input position src
    (the previous position along the axis, then the next)."""
    pairs = []
    for axis in range(2, ndim):
        before = [slice(None)] * ndim
        after = [slice(None)] * ndim
        before[axis], after[axis] = slice(None, -1), slice(1, None)
        pairs.append(((tuple(after), tuple(before)), (tuple(before), tuple(after))))
    return pairs


def _erode(f: Tensor, with_codes: bool = False) -> tuple[Tensor, Tensor | None]:
    """Min over the face-connected cross (the centre and its 4 / 6 face neighbours inside the image).

    With ``with_codes``, also which position won, as uint8 (0 the centre, then the neighbours in the order of
    :func:`_neighbours`): the first of equal minima, the centre first, so the gradient goes to one position."""
    out = f.clone()
    code = torch.zeros(f.shape, dtype=torch.uint8, device=f.device) if with_codes else None
    i = 0
    for axis_pairs in _neighbours(f.ndim):
        for dst, src in axis_pairs:
            i += 1
            o, s = out[dst], f[src]
            if code is not None:
                c = code[dst]
                c.add_((s < o) * (i - c))  # c < i: set to i where strictly better
            o.clamp_(max=s)  # min in place (an out= view would break torch.compile)
    return out, code


def _dilate(f: Tensor, with_codes: bool = False) -> tuple[Tensor, list[Tensor]]:
    """Max over the 3x3 (3x3x3) box inside the image, as one 3-wide max per axis (the same value: max is exact).

    With ``with_codes``, per axis the uint8 code of the winner (0 centre, 1 previous, 2 next; the first of equal
    maxima, the centre first)."""
    codes = []
    cur = f
    for axis_pairs in _neighbours(f.ndim):
        out = cur.clone()
        code = torch.zeros(f.shape, dtype=torch.uint8, device=f.device) if with_codes else None
        for i, (dst, src) in enumerate(axis_pairs, 1):
            o, s = out[dst], cur[src]
            if code is not None:
                c = code[dst]
                c.add_((s > o) * (i - c))
            o.clamp_(min=s)
        if code is not None:
            codes.append(code)
        cur = out
    return cur, codes


def _route_back(grad: Tensor, code: Tensor, pairs) -> Tensor:
    """The adjoint of one pooling step: each output's gradient goes to the input position its code names."""
    out = grad * (code == 0)
    for i, (dst, src) in enumerate(pairs, 1):
        out[src] += grad[dst] * (code[dst] == i)
    return out


def _erode_backward(grad: Tensor, code: Tensor) -> Tensor:
    return _route_back(grad, code, [pair for axis_pairs in _neighbours(grad.ndim) for pair in axis_pairs])


def _dilate_backward(grad: Tensor, codes: list[Tensor]) -> Tensor:
    for axis_pairs, code in reversed(list(zip(_neighbours(grad.ndim), codes))):
        grad = _route_back(grad, code, axis_pairs)
    return grad


def _round_values(f: Tensor, skel: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """One round without a graph: (the next image e, the skeleton after this round)."""
    e, _ = _erode(f)
    d = torch.relu(f - _dilate(e)[0])
    return e, (d if skel is None else skel + torch.relu(d - skel * d))


def _skeleton_values(x: Tensor, iterations: int) -> Tensor:
    """The soft skeleton's values, no graph (the forward of the Function, and the target's skeleton)."""
    f, skel = x, None
    for _ in range(iterations + 1):
        f, skel = _round_values(f, skel)
    return skel


def _skeleton_autograd(x: Tensor, iterations: int) -> Tensor:
    """The authors' soft_skel by plain autograd, op for op (max-pool stencils, their erosion twice per round): the
    oracle of the tests."""
    pool = F.max_pool2d if x.ndim == 4 else F.max_pool3d
    if x.ndim == 4:
        lines = [((3, 1), (1, 0)), ((1, 3), (0, 1))]
    else:
        lines = [((3, 1, 1), (1, 0, 0)), ((1, 3, 1), (0, 1, 0)), ((1, 1, 3), (0, 0, 1))]

    def erode(f):
        parts = [-pool(-f, kernel, 1, padding) for kernel, padding in lines]
        out = torch.min(parts[0], parts[1])
        return out if len(parts) == 2 else torch.min(out, parts[2])

    def opening(f):
        return pool(erode(f), 3, 1, 1)

    f = x
    skel = F.relu(f - opening(f))
    for _ in range(iterations):
        f = erode(f)
        delta = F.relu(f - opening(f))
        skel = skel + F.relu(delta - skel * delta)
    return skel


class _SoftSkeleton(torch.autograd.Function):
    """The soft skeleton with a backward that recomputes the rounds instead of storing them.

    Round j (f_0 = x): e_j = erode(f_j), o_j = dilate(e_j), d_j = relu(f_j - o_j), skel_j = d_0 (j = 0) or
    skel_{j-1} + relu(z_j) with z_j = d_j - skel_{j-1} d_j; f_{j+1} = e_j. The backward walks j = k..0 carrying
    lam = dL/dskel_j and nu = dL/df_{j+1}; at step j it recomputes f_j and skel_{j-1} from x (j rounds without
    a graph), then round j with the positions the pooling took, and applies the chain rule of that one round::

        gz = lam [z_j > 0];  dL/dd_j = gz - gz skel_{j-1} (lam for j = 0);  lam <- lam - gz d_j
        eta = dL/dd_j [f_j > o_j];  nu <- eta + erode^T(nu - dilate^T(eta))

    Memory: x, the upstream gradient and about ten full-size tensors, whatever k; time: (k + 1)(k + 2) / 2 rounds
    of pooling without a graph, which is cheap next to autograd's pooling. The routes are those of plain
    autograd wherever the pooled values have no ties (a measure-zero set for continuous inputs; at ties the
    gradient goes to one of the equal positions, another valid subgradient, where autograd may split it).
    """

    @staticmethod
    def forward(ctx, x: Tensor, iterations: int) -> Tensor:
        ctx.save_for_backward(x)
        ctx.iterations = iterations
        return _skeleton_values(x, iterations)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        lam = grad.to(x.dtype)
        nu = None
        for j in range(ctx.iterations, -1, -1):
            f, skel = x, None
            for _ in range(j):
                f, skel = _round_values(f, skel)
            e, erode_code = _erode(f, with_codes=True)
            o, dilate_codes = _dilate(e, with_codes=True)
            del e
            diff = f - o
            del f, o
            d = torch.relu(diff)
            if skel is None:
                dd = lam
            else:
                gz = lam * (d - skel * d > 0)
                dd = gz - gz * skel
                lam = lam - gz * d
                del gz
            eta = dd * (diff > 0)
            del d, dd, diff, skel
            into_e = _dilate_backward(eta, dilate_codes)
            into_e.neg_()
            if nu is not None:
                into_e += nu
            nu = _erode_backward(into_e, erode_code)
            nu += eta
            del eta, into_e, erode_code, dilate_codes
        return nu, None


def _check_skeleton_input(x: object, iterations: object) -> int:
    x = _check_tensor("input", x)
    if not x.is_floating_point():
        raise TypeError(f"soft_skeleton expects a floating tensor, got dtype {x.dtype}")
    if x.ndim not in (4, 5):
        raise ValueError(
            "soft_skeleton expects (B, C, H, W) or (B, C, D, H, W): its stencils (a cross and a box) are defined "
            f"for images and volumes; got shape {tuple(x.shape)}"
        )
    return _check_iterations(iterations)


def _check_iterations(iterations: object) -> int:
    if isinstance(iterations, bool) or not isinstance(iterations, numbers.Integral):
        raise TypeError(f"iterations must be a non-negative int, got {iterations!r} ({type(iterations).__name__})")
    if iterations < 0:
        raise ValueError(f"iterations must be a non-negative int, got {iterations}")
    return int(iterations)


def soft_skeleton(input: Tensor, iterations: int = 3, *, recompute: bool = True) -> Tensor:
    r"""The soft skeleton of Shit et al. (the authors' ``soft_skel``), differentiable.

    ``iterations`` (k) rounds after the first: per round, ``e = erode(f)`` (min over the face-connected cross:
    4 neighbours in 2D, 6 in 3D), ``o = dilate(e)`` (max over the 3x3 / 3x3x3 box), ``d = relu(f - o)``,
    ``skel = skel + relu(d - skel d)``, ``f = e``. Only positions inside the image take part in the pooling.
    A structure thinner than about ``2k + 1`` pixels is skeletonised; choose k at least its largest radius.

    ``recompute=True`` (default) saves only ``input`` for the backward, which recomputes the rounds: the memory
    does not grow with k. ``recompute=False`` is plain autograd on the authors' ops (about 20 full-size
    tensors kept per round), the reference the fast path is tested against.

    Shape:
        input (B, C, H, W) or (B, C, D, H, W), any floating dtype; output: the same.

    Example:
        >>> x = torch.zeros(1, 1, 7, 7); x[0, 0, 2:5, 1:6] = 1     # a 3-pixel-thick bar
        >>> soft_skeleton(x)[0, 0, 3].tolist()                        # its middle row, shortened at the ends
        [0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    """
    iterations = _check_skeleton_input(input, iterations)
    check_bool("recompute", recompute)
    if not recompute:
        return _skeleton_autograd(input, iterations)
    if not input.requires_grad or not torch.is_grad_enabled():
        return _skeleton_values(input, iterations)
    return _SoftSkeleton.apply(input.contiguous(), iterations)


# ----------------------------------------------------------------------------------------------
# options


@dataclass(frozen=True)
class ClDiceOptions:
    """The options of :func:`cldice_loss` / :class:`ClDiceLoss`, checked when made (and again when a module's
    option is set: the module makes a new one).

    ``include_background=None`` (the default) means False in multiclass mode, where channel 0 is the background
    (the skeleton of the background is the medial axis of everything that is not a structure: meaningless for
    tubular structures, and so large that it would swamp the other classes), and True in multilabel mode, where
    channel 0 is a label like the others; binary mode has one channel and ignores it.
    """

    mode: str = "multiclass"
    from_logits: bool = True
    include_background: bool | None = None
    ignore_index: int | None = None
    batch_dice: bool = False
    iterations: int = 3
    smooth_nr: float = 1.0
    smooth_dr: float = 1.0
    reduction: str = "mean"
    distributed: bool = False
    process_group: object = None

    def __post_init__(self) -> None:
        check_option_fields(self, bools=("from_logits", "batch_dice", "distributed"), nullable=("include_background",))
        set_field(self, "iterations", _check_iterations(self.iterations))
        check_smoothing(self.smooth_nr, self.smooth_dr)
        set_field(self, "smooth_nr", float(self.smooth_nr))
        set_field(self, "smooth_dr", float(self.smooth_dr))
        if self.distributed and not self.batch_dice:
            raise ValueError(
                "distributed=True sums the four clDice sums over the ranks, which only batch Dice needs "
                "(batch_dice=True); per-sample clDice (batch_dice=False) needs no synchronisation"
            )

    @property
    def background(self) -> bool:
        """``include_background`` with the default resolved for the mode."""
        if self.include_background is None:
            return self.mode != "multiclass"
        return self.include_background


@dataclass(frozen=True)
class DiceClDiceOptions(ClDiceOptions):
    """The options of :func:`dice_cldice_loss` / :class:`DiceClDiceLoss`: those of clDice, shared by the Dice
    term, plus the two factors and the Dice term's ``backend``."""

    lambda_dice: float = 0.5
    lambda_cldice: float = 0.5
    backend: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        set_field(self, "lambda_dice", check_nonnegative("lambda_dice", self.lambda_dice))
        set_field(self, "lambda_cldice", check_nonnegative("lambda_cldice", self.lambda_cldice))
        check_backend(self.backend)


# ----------------------------------------------------------------------------------------------
# the loss


def _dense_target(prep: Prepared, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
    """The target as (B, C, N) probabilities, 0 at ignored positions / elements, and the validity mask (B, 1, N)
    or (B, C, N) as bool, or None when every element counts."""
    B, C, N = prep.logits.shape
    valid = None
    if prep.target_is_index:
        t = prep.target
        if prep.ignore_index is not None:
            valid = t != prep.ignore_index
            t = torch.where(valid, t, torch.zeros_like(t))
        g = torch.zeros(B, C, N, dtype=dtype, device=t.device).scatter_(1, t[:, None], 1.0)
        if valid is not None:
            valid = valid[:, None]
            g *= valid
    else:
        g = prep.target.detach().to(dtype)
        if prep.ignore_index is not None:
            valid = g != prep.ignore_index
            g = torch.where(valid, g, torch.zeros_like(g))
    if prep.mask is not None:
        valid = prep.mask[:, None] if valid is None else valid & prep.mask[:, None]
    return g, valid


def _skeleton_layout(skeleton: object, prep: Prepared, device: torch.device) -> Tensor:
    """A given target skeleton as (B, C, N) floating (no grad), checked against the prepared input."""
    s = _check_tensor("target_skeleton", skeleton)
    if s.device != device:
        raise ValueError(f"target_skeleton must be on the input's device {device}, got {s.device}")
    if s.is_complex():
        raise TypeError("target_skeleton must be real, got a complex tensor")
    B, C, N = prep.logits.shape
    spatial = prep.spatial_shape
    s = s.detach()
    if prep.mode == "binary":
        if tuple(s.shape) not in ((B, *spatial), (B, 1, *spatial)):
            raise ValueError(
                f"binary mode expects target_skeleton of shape {(B, *spatial)} or {(B, 1, *spatial)}, got "
                f"{tuple(s.shape)}"
            )
        s = s.reshape(B, 1, N)
    elif tuple(s.shape) == (B, C, *spatial):
        s = s.reshape(B, C, N)
    elif prep.mode == "multiclass" and tuple(s.shape) in ((B, *spatial), (B, 1, *spatial)):
        if s.is_floating_point() or s.dtype == torch.bool:
            raise TypeError(
                f"a target_skeleton of shape {tuple(s.shape)} is read as a label map (c on the skeleton of class c, "
                f"0 elsewhere) and must be integer, got dtype {s.dtype}; a probability skeleton has shape "
                f"{(B, C, *spatial)}"
            )
        kept = prep.kept_classes if prep.kept_classes is not None else tuple(range(C))
        if 0 in kept:
            raise ValueError(
                "a label-map target_skeleton marks no skeleton with 0, so it cannot hold the skeleton of class 0, "
                "which include_background=True keeps; pass a (B, C, *spatial) skeleton or include_background=False"
            )
        labels = s.reshape(B, N)
        if value_checks_enabled(labels.device):
            check_index_range(labels, C, what="target_skeleton labels", context=f" for input with C = {C}")
        return torch.zeros(B, C, N, device=device).scatter_(1, labels[:, None].long(), 1.0)
    else:
        dense = f"{(B, C, *spatial)}" + (
            f", or a label map {(B, *spatial)} / {(B, 1, *spatial)}" if prep.mode == "multiclass" else ""
        )
        raise ValueError(f"{prep.mode} mode expects target_skeleton of shape {dense}, got {tuple(s.shape)}")
    if not s.is_floating_point():
        s = s.float()
    if value_checks_enabled(s.device) and s.numel():
        lo, hi = (float(v) for v in torch.aminmax(s))
        if not (0 <= lo and hi <= 1):
            raise ValueError(f"target_skeleton values must be in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")
    return s


def _check_spatial(prep: Prepared, input: Tensor) -> None:
    n = len(prep.spatial_shape)
    if n not in (2, 3):
        raise ValueError(
            "clDice needs 2 or 3 spatial dimensions: its soft skeleton pools over a cross and a box, which mean "
            f"nothing along a line{'' if n < 2 else ' and are not defined beyond volumes'}; got input of shape "
            f"{tuple(input.shape)} with {n} spatial dimension{'s' if n != 1 else ''} in {prep.mode} mode"
        )


def _checked(
    input: Tensor, target: Tensor, mask: Tensor | None, target_skeleton: Tensor | None, o: ClDiceOptions
) -> tuple[Prepared, Tensor | None]:
    """Every check of the inputs, before any computation: the layout and the given target skeleton, if any."""
    prep = prepare(
        input,
        target,
        mode=o.mode,
        from_logits=o.from_logits,
        ignore_index=o.ignore_index,
        mask=mask,
        include_background=o.background,
    )
    _check_spatial(prep, input)
    given = None if target_skeleton is None else _skeleton_layout(target_skeleton, prep, input.device)
    return prep, given


def _class_losses(input: Tensor, prep: Prepared, given: Tensor | None, o: ClDiceOptions) -> Tensor:
    """clDice per (group, class kept): (B, K), or (1, K) with batch_dice."""
    dtype = compute_dtype(input.dtype)
    x = prep.logits.to(dtype)
    if prep.activation == "softmax":
        p = torch.softmax(x, dim=1)
    elif prep.activation == "sigmoid":
        p = torch.sigmoid(x)
    else:
        p = x
    g, valid = _dense_target(prep, dtype)
    if prep.kept_classes is not None:
        kept = torch.tensor(prep.kept_classes, device=input.device)
        p, g = p.index_select(1, kept), g.index_select(1, kept)
        given = None if given is None else given.index_select(1, kept)
        if valid is not None and valid.shape[1] > 1:
            valid = valid.index_select(1, kept)
    B, K, N = p.shape
    shape = (B, K, *prep.spatial_shape)

    # the activation comes before the skeleton: a skeleton of logits is meaningless
    skel_p = soft_skeleton(p.reshape(shape), o.iterations).reshape(B, K, N)
    with torch.no_grad():
        skel_g = _skeleton_values(g.reshape(shape), o.iterations).reshape(B, K, N) if given is None else given.to(dtype)
        if valid is not None:
            # masked positions leave the sums, not the pooling: the skeletons above saw every position
            m = valid.to(dtype)
            g, skel_g = g * m, skel_g * m
    sums = torch.stack(
        [
            (skel_p * g).sum(-1),
            skel_p.sum(-1) if valid is None else (skel_p * m).sum(-1),
            (p * skel_g).sum(-1),
            skel_g.sum(-1),
        ],
        dim=-1,
    )
    if o.batch_dice:
        sums = sums.sum(dim=0, keepdim=True)
        if o.distributed:
            sums = all_reduce_sum(sums, o.process_group)
    hit_p, skel_p_sum, hit_g, skel_g_sum = sums.unbind(-1)
    tprec = ratio_or_one(hit_p + o.smooth_nr, skel_p_sum + o.smooth_dr)
    tsens = ratio_or_one(hit_g + o.smooth_nr, skel_g_sum + o.smooth_dr)
    both = tprec + tsens
    positive = both > 0  # only with smooth_nr = 0: both ratios 0, the harmonic mean 0
    f1 = torch.where(positive, 2 * tprec * tsens / torch.where(positive, both, torch.ones_like(both)), 0.0)
    return 1 - f1


def _reduce(losses: Tensor, reduction: str, batch: bool) -> Tensor:
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    return losses[0] if batch else losses


def _cldice(input, target, mask, target_skeleton, o: ClDiceOptions) -> Tensor:
    prep, given = _checked(input, target, mask, target_skeleton, o)
    return _reduce(_class_losses(input, prep, given, o), o.reduction, o.batch_dice)


def _dice_cldice(input, target, mask, target_skeleton, o: DiceClDiceOptions) -> tuple[Tensor, dict[str, Tensor]]:
    prep, given = _checked(input, target, mask, target_skeleton, o)  # clDice's own checks before the Dice term runs
    # the Dice term is diceloss's own Dice loss (the same pipeline and head as dice_loss), with the same classes
    dice_options = LossOptions(
        o.mode, o.from_logits, o.background, o.ignore_index, o.batch_dice, False, False, o.reduction, o.backend,
        o.distributed, o.process_group,
    )
    dice = run(input, target, mask, None, dice_options, DiceHead(o.smooth_nr, o.smooth_dr))[0]
    cl = _reduce(_class_losses(input, prep, given, o), o.reduction, o.batch_dice)
    total = o.lambda_dice * dice + o.lambda_cldice * cl
    return total, {"dice": dice.detach(), "cldice": cl.detach()}


_FORMULA = r"""
    Per (sample, class kept), over the valid positions, with p the probabilities, g the target and S the soft
    skeleton of :func:`soft_skeleton` (``iterations`` rounds)::

        tprec = (sum S(p) g + s_nr) / (sum S(p) + s_dr),   tsens = (sum S(g) p + s_nr) / (sum S(g) + s_dr)
        clDice loss = 1 - 2 tprec tsens / (tprec + tsens)

    (a ratio whose denominator is 0 reads 1; both ratios 0 give the loss 1). Range: [0, 1]."""

_ARGS = """
    Args:
        mode: "binary" | "multiclass" | "multilabel", with the input conventions of :mod:`diceloss.functional`
            (class indices, (B, 1, *S), one-hot or soft targets); 2 or 3 spatial dimensions.
        from_logits: ``True``: the input holds logits; softmax (multiclass) or sigmoid (binary, multilabel) is
            applied *before* skeletonising (a skeleton of logits means nothing). ``False``: probabilities.
        include_background: keep class 0. ``None`` (default): False in multiclass mode, where channel 0 is the
            background (its skeleton is the medial axis of everything else: no topology to preserve, and a sum
            large enough to swamp the structures), True in multilabel mode, where channel 0 is a label.
        ignore_index: multiclass: a class index marking positions to skip (a real class is also dropped from the
            class mean); binary, multilabel: a target value marking elements to skip. An ignored position belongs
            to no class when the target's skeleton is computed, and it leaves the four sums.
        batch_dice: sum the four sums over the batch first (one clDice per class), as batch Dice does.
        iterations: k, the rounds of the soft skeleton; structures up to about 2k + 1 pixels thick are
            skeletonised (k should exceed the largest radius). The memory does not depend on it.
        target_skeleton: the target's skeleton, precomputed (for instance in the data loader): (B, C, *S) values
            in [0, 1] (binary: the target's shape), or in multiclass mode a label map (B, *S) with c on the
            skeleton of class c and 0 elsewhere, such as ``diceloss.transforms.tubed_skeleton(labels, radius=0)``
            (scikit-image's exact skeleton). Default: the soft skeleton of the target, without a gradient.
        smooth_nr, smooth_dr: added to the numerators and denominators of tprec and tsens; ``smooth_nr <=
            smooth_dr``. The default 1 is the authors' (and MONAI's).
        reduction: "mean" | "sum" | "none" ((B, K), or (K,) with ``batch_dice``).
        distributed: with ``batch_dice``, sum the four sums over the ranks of ``process_group``
            (torch.distributed) first, differentiably.

    ``mask`` ((B, *S) or (B, 1, *S)) and ignored positions leave the sums, not the pooling: the skeletons are
    computed on the whole image, so a structure cut by the mask keeps its skeleton where it is valid."""


def cldice_loss(
    input: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    *,
    mode: str = "multiclass",
    from_logits: bool = True,
    include_background: bool | None = None,
    ignore_index: int | None = None,
    batch_dice: bool = False,
    iterations: int = 3,
    target_skeleton: Tensor | None = None,
    smooth_nr: float = 1.0,
    smooth_dr: float = 1.0,
    reduction: str = "mean",
    distributed: bool = False,
    process_group=None,
) -> Tensor:
    r"""Soft clDice loss (Shit et al., CVPR 2021). See :class:`diceloss.ClDiceLoss` for every argument.

    Example:
        >>> t = torch.zeros(1, 9, 9, dtype=torch.long); t[0, 4, 1:8] = 1    # a line of class 1, 7 pixels
        >>> p = torch.nn.functional.one_hot(t, 2).movedim(-1, 1).float()    # a perfect prediction
        >>> float(cldice_loss(p, t, from_logits=False))
        0.0
        >>> p[0, :, 4, 4] = torch.tensor([1.0, 0.0])                        # a gap: tprec = 7/7, tsens = 7/8
        >>> round(float(cldice_loss(p, t, from_logits=False)), 6)           # 1 - 2 (7/8) / (15/8) = 1/15
        0.066667
    """
    options = ClDiceOptions(
        mode, from_logits, include_background, ignore_index, batch_dice, iterations, smooth_nr, smooth_dr, reduction,
        distributed, process_group,
    )
    return _cldice(input, target, mask, target_skeleton, options)


def dice_cldice_loss(
    input: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    *,
    mode: str = "multiclass",
    from_logits: bool = True,
    include_background: bool | None = None,
    ignore_index: int | None = None,
    batch_dice: bool = False,
    iterations: int = 3,
    target_skeleton: Tensor | None = None,
    smooth_nr: float = 1.0,
    smooth_dr: float = 1.0,
    lambda_dice: float = 0.5,
    lambda_cldice: float = 0.5,
    reduction: str = "mean",
    backend: str = "auto",
    distributed: bool = False,
    process_group=None,
) -> Tensor:
    r"""``lambda_dice * Dice loss + lambda_cldice * clDice loss``. See :class:`diceloss.DiceClDiceLoss`.

    Example:
        >>> x = torch.randn(2, 3, 16, 16)
        >>> t = torch.randint(0, 3, (2, 16, 16))
        >>> float(dice_cldice_loss(x, t)) > 0
        True
    """
    options = DiceClDiceOptions(
        mode, from_logits, include_background, ignore_index, batch_dice, iterations, smooth_nr, smooth_dr, reduction,
        distributed, process_group, lambda_dice, lambda_cldice, backend,
    )
    return _dice_cldice(input, target, mask, target_skeleton, options)[0]


# ----------------------------------------------------------------------------------------------
# modules


class _ClDiceBase(_OptionsModule):
    """What the two clDice modules share: a frozen options object ``_options`` (checked when made) whose fields are
    the module's attributes; setting one makes a new options object, checked again, or leaves the module as it was.
    """

    mode = _Option()
    from_logits = _Option()
    include_background = _Option()
    ignore_index = _Option()
    batch_dice = _Option()
    iterations = _Option()
    smooth_nr = _Option()
    smooth_dr = _Option()
    reduction = _Option()
    distributed = _Option()
    process_group = _Option()

    _options: ClDiceOptions

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, iterations={self.iterations}, reduction={self.reduction!r}"


class ClDiceLoss(_ClDiceBase):
    __doc__ = (
        r"""Soft clDice loss (Shit, Paetzold et al., CVPR 2021), for tubular structures (vessels, roads, neurons,
    cracks): it rewards predictions whose skeleton lies inside the target and that cover the target's skeleton,
    which keeps thin branches connected where a volume loss barely notices them.
    """
        + _FORMULA
        + """

    Meant to be added to a volume loss (:class:`DiceClDiceLoss`, or with cross-entropy): alone it ignores
    everything off the skeletons (the thickness of a vessel, blobs), and the authors train with Dice + clDice.
    Options are checked when set, like the constructor's.
    """
        + _ARGS
        + """

    Shape:
        input (B, C, *S) (binary: (B, 1, *S) or (B, *S)) with 2 or 3 spatial dimensions; target as in
        :mod:`diceloss.functional`; mask (B, *S) or (B, 1, *S); ``forward(input, target, mask=None,
        target_skeleton=None)``. Output () for "mean" / "sum", (B, K) or (K,) for "none".

    Example:
        >>> loss = ClDiceLoss(iterations=5)
        >>> x = torch.randn(2, 3, 32, 32, requires_grad=True)
        >>> t = torch.randint(0, 3, (2, 32, 32))
        >>> loss(x, t).backward()
        >>> loss.iterations = -1
        Traceback (most recent call last):
        ...
        ValueError: iterations must be a non-negative int, got -1
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
        iterations: int = 3,
        smooth_nr: float = 1.0,
        smooth_dr: float = 1.0,
        reduction: str = "mean",
        distributed: bool = False,
        process_group=None,
    ) -> None:
        super().__init__()
        self._options = ClDiceOptions(
            mode, from_logits, include_background, ignore_index, batch_dice, iterations, smooth_nr, smooth_dr,
            reduction, distributed, process_group,
        )

    def forward(
        self, input: Tensor, target: Tensor, mask: Tensor | None = None, target_skeleton: Tensor | None = None
    ) -> Tensor:
        return _cldice(input, target, mask, target_skeleton, self._options)


class DiceClDiceLoss(_ClDiceBase):
    __doc__ = (
        r"""``lambda_dice * Dice loss + lambda_cldice * clDice loss``: the authors' training loss
    ``(1 - alpha) soft Dice + alpha clDice`` (MONAI's ``SoftDiceclDiceLoss``, alpha = 0.5) with
    ``lambda_dice = 1 - alpha``, ``lambda_cldice = alpha``.

    The Dice term is :func:`diceloss.functional.dice_loss` on the same classes, with the same ``smooth_nr``,
    ``smooth_dr``, ``batch_dice`` and ``reduction`` (both terms are per (sample, class), so ``reduction="none"``
    gives their weighted sum per (sample, class)); ``backend`` chooses its statistics' backend.
    ``components`` holds the detached ``dice`` and ``cldice`` terms of the last call.
    """
        + _FORMULA
        + _ARGS
        + """
        lambda_dice, lambda_cldice: non-negative factors of the two terms (default 0.5 each, as the authors).
        backend: "auto" | "reference" | "fused" | "triton", for the Dice term.

    Shape:
        as :class:`ClDiceLoss`.

    Example:
        >>> loss = DiceClDiceLoss(lambda_cldice=0.3, lambda_dice=0.7)
        >>> x = torch.randn(2, 3, 32, 32, requires_grad=True)
        >>> t = torch.randint(0, 3, (2, 32, 32))
        >>> loss(x, t).backward()
        >>> sorted(loss.components)
        ['cldice', 'dice']
    """
    )

    lambda_dice = _Option()
    lambda_cldice = _Option()
    backend = _Option()

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        from_logits: bool = True,
        include_background: bool | None = None,
        ignore_index: int | None = None,
        batch_dice: bool = False,
        iterations: int = 3,
        smooth_nr: float = 1.0,
        smooth_dr: float = 1.0,
        lambda_dice: float = 0.5,
        lambda_cldice: float = 0.5,
        reduction: str = "mean",
        backend: str = "auto",
        distributed: bool = False,
        process_group=None,
    ) -> None:
        super().__init__()
        self._options = DiceClDiceOptions(
            mode, from_logits, include_background, ignore_index, batch_dice, iterations, smooth_nr, smooth_dr,
            reduction, distributed, process_group, lambda_dice, lambda_cldice, backend,
        )
        self.components: dict[str, Tensor] = {}

    def forward(
        self, input: Tensor, target: Tensor, mask: Tensor | None = None, target_skeleton: Tensor | None = None
    ) -> Tensor:
        total, self.components = _dice_cldice(input, target, mask, target_skeleton, self._options)
        return total
