r"""The Lovász loss (Berman, Rannen Triki and Blaschko, CVPR 2018): Lovász-softmax and the Lovász hinge.

The Jaccard loss of a class is a function of a set (the mispredicted elements); its Lovász extension
is the tight convex surrogate of it on real-valued errors. Per (group, class), with the errors
``e_1 >= e_2 >= ... >= e_M`` of the group's valid elements sorted in decreasing order and ``y_(i)`` the
target of the element at rank i::

    loss_c = sum_i e_(i) * g_i,      g_i = Jac(top i) - Jac(top i-1)
    Jac(top i) = 1 - |gt minus top i| / |gt union top i|         (the Jaccard loss if the i largest
                                                                   errors were the mistakes)

In closed form, with ``F_i`` the number of foreground elements among the i largest errors, ``n`` the
group's foreground count, ``I_i = n - F_i`` (foreground not yet covered) and ``U_i = I_i + i`` (the union):
``g_i = 1 / U_i`` for a foreground element and ``I_i / (U_i (U_i - 1))`` for a background one (``1`` at the top
of a group without foreground). The fast path evaluates this from exact counts; the authors' code (and SMP's
and kornia's copies) takes the difference of consecutive Jaccard values, which cancels in float32 (a single
weight of a 2**19-element segment off by more than 100 %; the loss of an 8x256x256 batch off by 1e-6).

The errors:

* multiclass (**Lovász-softmax**): ``e = |y - p|`` with ``p`` the softmax over C of the logits (the input
  itself with ``from_logits=False``) and ``y`` the one-hot target of the class;
* binary and multilabel (**Lovász hinge**, from logits): ``e = max(0, 1 - z (2 y - 1))`` with ``z`` the
  logit (the margin); the loss is 0 once every logit is on the right side with margin 1, and has no
  upper bound;
* binary and multilabel with ``from_logits=False`` (**Lovász-sigmoid**, the authors' second binary
  variant): ``e = |y - p|`` on the probabilities, which is half the hinge on the margins ``2p - 1``.

A group is one sample with ``per_image=True`` or the whole batch; the loss of a group is the mean of
``loss_c`` over its scored classes (``classes="present"``: the classes of the target present among the
group's valid elements; ``"all"``: every class kept); a group with none scores 0 and still counts in
the mean over groups. Binary mode always scores its one class (the authors' hinge).

The targets are hard (0 or 1): the Lovász extension is defined for a set. Soft targets are refused
with a ValueError while the value checks run (:func:`diceloss.set_value_checks`); without them a dense
target is read as foreground where it exceeds 0.5.

The fast path (:class:`_LovaszFunction`, :func:`_forward`) works on segments, one per scored class (the errors
of the whole batch) or, with ``per_image``, per scored (sample, class) pair. A chunk of segments of at most
``max(segment, _CHUNK_ELEMENTS)`` elements is sorted in one call, with no Python loop over images or classes
inside it: in float32 one 1-D sort of integer keys (the bit pattern of a float >= 0 orders like the float;
int32 keys for one segment, int64 ``segment * 2**32 + key`` for several), which PyTorch sorts with a parallel
radix sort on the CPU and CUDA; in float64 a stable sort along the last dimension. So the temporaries are
O(segment), never O(C N), and no one-hot target is built. The gradient is computed in closed form during the
forward pass (the permuted weights, through the error function and the softmax) and is the only tensor kept
for the backward (the input's size, float32 for half inputs), which scales it. Among equal errors the order of
positions decides (a stable sort), in the fast path and in :func:`_reference` alike.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._checks import (
    REDUCTIONS,
    check_choice,
    check_option_fields,
    is_compiling,
    value_checks_enabled,
)
from ._layout import Prepared, prepare
from .losses import _Option, _OptionsModule

CLASS_CHOICES = ("present", "all")

# elements of one chunk of segments (one segment at least): bounds the temporaries of the sort and of the weights
_CHUNK_ELEMENTS = 1 << 16

# float32 error keys: the bit pattern of a non-negative float orders like the float; _MAX31 - bits reverses it
_MAX31 = 0x7FFFFFFF


@dataclasses.dataclass(frozen=True)
class LovaszOptions:
    """The options of :func:`lovasz_loss` / :class:`LovaszLoss`, checked once (see :class:`LovaszLoss`)."""

    mode: str = "multiclass"
    from_logits: bool = True
    include_background: bool = True
    ignore_index: int | None = None
    per_image: bool = False
    classes: str = "present"
    reduction: str = "mean"

    def __post_init__(self) -> None:
        check_option_fields(self, bools=("from_logits", "include_background", "per_image"), reductions=None)
        check_choice("classes", self.classes, CLASS_CHOICES)
        check_choice("reduction", self.reduction, REDUCTIONS)


@dataclasses.dataclass(frozen=True)
class _Spec:
    """What the autograd Function needs besides the tensors (hashable, for torch.compile)."""

    softmax: bool  # multiclass from logits: the errors are on softmax(x), the gradient goes through it
    hinge: bool  # binary / multilabel from logits
    ignore_index: int | None
    kept: tuple[int, ...]
    per_image: bool
    all_classes: bool
    need_grad: bool


# ----------------------------------------------------------------------------------------------
# the public function and module


def lovasz_loss(
    input: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    *,
    mode: str = "multiclass",
    from_logits: bool = True,
    include_background: bool = True,
    ignore_index: int | None = None,
    per_image: bool = False,
    classes: str = "present",
    reduction: str = "mean",
) -> Tensor:
    r"""Lovász loss: Lovász-softmax (multiclass), Lovász hinge (binary, multilabel; Lovász-sigmoid on
    probabilities with ``from_logits=False``).

    Per (group, class) ``sum_i e_(i) g_i`` over the errors sorted in decreasing order, ``g`` the
    Lovász gradient of the Jaccard loss (module docstring); see :class:`diceloss.LovaszLoss` for every
    argument. Range: [0, 1] for Lovász-softmax and Lovász-sigmoid; [0, inf) for the hinge.

    Example:
        >>> x = torch.tensor([[[3.0, -3.0], [-3.0, 3.0]]])   # (B=1, C=2, N=2) logits, both right
        >>> t = torch.tensor([[0, 1]])
        >>> round(float(lovasz_loss(x, t)), 6)               # |y - p| = 1 - softmax = 0.002473
        0.002473
        >>> float(lovasz_loss(x[:, 1:], t.float(), mode="binary"))   # margins >= 1: hinge 0
        0.0
    """
    options = LovaszOptions(mode, from_logits, include_background, ignore_index, per_image, classes, reduction)
    return _lovasz(input, target, mask, options)


class LovaszLoss(_OptionsModule):
    r"""Lovász loss (Berman et al., CVPR 2018), the convex surrogate of the Jaccard loss of each class::

        loss_c = sum_i e_(i) g_i,   g_i = Jac(top i) - Jac(top i - 1)

    over a group's errors sorted in decreasing order, ``Jac(top i)`` the Jaccard loss of the set of the
    i largest errors (the closed form of ``g`` is in :mod:`diceloss.lovasz`). Errors: ``|y - softmax(x)|``
    in multiclass mode (Lovász-softmax; ``|y - x|`` with ``from_logits=False``); the hinge
    ``max(0, 1 - x (2y - 1))`` on logits in binary and multilabel modes (Lovász hinge), or ``|y - x|`` on
    probabilities with ``from_logits=False`` (Lovász-sigmoid; half the hinge on the margins ``2x - 1``).
    Range: [0, 1], the hinge [0, inf).

    Args:
        mode: "binary" | "multiclass" | "multilabel" (shapes as in :mod:`diceloss.functional`).
        from_logits: ``True``: ``input`` holds logits; ``False``: probabilities in [0, 1] (multiclass: the
            softmax output; binary, multilabel: Lovász-sigmoid instead of the hinge).
        include_background: score class 0 (multiclass, multilabel); ignored in binary mode.
        ignore_index: multiclass: a class index marking positions to skip (any integer; a real class is
            also left unscored); binary, multilabel: a target value marking elements to skip.
        per_image: one loss per sample, then the reduction over the samples; ``False``: one loss for the
            whole batch, the errors of every sample sorted together (the authors' default for
            Lovász-softmax; their hinge defaults to per image).
        classes: "present": average over the classes present in the group's target (the authors'
            default; false positives on an absent class then cost nothing); "all": every class kept, an
            absent one scoring its largest error. Binary mode always scores its one class.
        reduction: "mean" | "sum" over the groups | "none": (B,) with ``per_image``, () without.

    Targets are hard: class indices, or one-hot / multi-hot 0/1 masks; soft targets raise a ValueError
    (the Lovász extension is defined for a set). ``mask`` removes positions from every class.

    The loss is computed with one sort per chunk of classes and a gradient in closed form, kept from the
    forward pass (one tensor of the input's size, float32 for float16 / bfloat16 inputs); the loss is
    float32 for half inputs.

    Shape:
        input (B, C, *S) (binary: (B, 1, *S) or (B, *S)); target (B, *S) / (B, 1, *S) class indices or
        (B, C, *S) one-hot / multi-hot; mask (B, *S) or (B, 1, *S); output () for "mean" / "sum", (B,)
        with ``reduction="none", per_image=True``, () with ``reduction="none", per_image=False``.

    Example:
        >>> loss = LovaszLoss(per_image=True)
        >>> x = torch.randn(2, 3, 8, 8, requires_grad=True)
        >>> t = torch.randint(0, 3, (2, 8, 8))
        >>> loss(x, t).backward()
        >>> LovaszLoss(mode="binary")(torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float()) >= 0
        tensor(True)
    """

    mode = _Option()
    from_logits = _Option()
    include_background = _Option()
    ignore_index = _Option()
    per_image = _Option()
    classes = _Option()
    reduction = _Option()

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        from_logits: bool = True,
        include_background: bool = True,
        ignore_index: int | None = None,
        per_image: bool = False,
        classes: str = "present",
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self._options = LovaszOptions(
            mode, from_logits, include_background, ignore_index, per_image, classes, reduction
        )

    def forward(self, input: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        return _lovasz(input, target, mask, self._options)

    def extra_repr(self) -> str:
        o = self._options
        return f"mode={o.mode!r}, per_image={o.per_image}, classes={o.classes!r}, reduction={o.reduction!r}"


# ----------------------------------------------------------------------------------------------
# checks and dispatch


def _lovasz(input: Tensor, target: Tensor, mask: Tensor | None, options: LovaszOptions) -> Tensor:
    prep = prepare(
        input,
        target,
        mode=options.mode,
        from_logits=options.from_logits,
        ignore_index=options.ignore_index,
        mask=mask,
        include_background=options.include_background,
    )
    if not prep.target_is_index and value_checks_enabled(prep.logits.device):
        _check_hard_target(prep)
    return _compute(prep, options)


def _check_hard_target(prep: Prepared) -> None:
    """A dense target must hold 0 or 1 (or ``ignore_index`` in binary / multilabel mode) where it counts."""
    t = prep.target.detach()
    if t.numel() == 0:
        return
    bad = (t != 0) & (t != 1)
    if prep.ignore_index is not None and prep.mode != "multiclass":
        bad &= t != prep.ignore_index
    if prep.mask is not None:
        bad &= prep.mask.unsqueeze(1)
    if bool(bad.any()):
        values = torch.unique(t[bad])[:4].tolist()
        raise ValueError(
            f"lovasz_loss needs hard targets (0 or 1): the Lovász extension is defined for a set, got values "
            f"such as {[float(f'{v:.4g}') for v in values]}; round the target (target.round()), or use a Dice or "
            "Jaccard loss with soft_label=True for soft labels"
        )


def _compute(prep: Prepared, options: LovaszOptions) -> Tensor:
    """The loss of checked inputs: the fast path, then the reduction over the groups."""
    x = prep.logits
    spec = _Spec(
        softmax=prep.mode == "multiclass" and prep.activation == "softmax",
        hinge=prep.mode != "multiclass" and prep.activation == "sigmoid",
        ignore_index=prep.ignore_index,
        kept=tuple(prep.kept_classes) if prep.kept_classes is not None else tuple(range(prep.num_classes)),
        per_image=options.per_image,
        all_classes=options.classes == "all" or prep.mode == "binary",
        need_grad=torch.is_grad_enabled() and x.requires_grad,
    )
    losses = _LovaszFunction.apply(x, prep.target, prep.mask, spec)  # (B,) per image, (1,) per batch
    if options.reduction == "mean":
        return losses.mean()
    if options.reduction == "sum":
        return losses.sum()
    return losses if options.per_image else losses.reshape(())


# ----------------------------------------------------------------------------------------------
# the fast path


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _valid_positions(target: Tensor, mask: Tensor | None, ignore_index: int | None, C: int) -> Tensor:
    """(B, N) bool for class-index targets: inside [0, C), not ignore_index, inside the mask."""
    valid = (target >= 0) & (target < C)  # out-of-range labels only get here with the value checks off
    if ignore_index is not None:
        valid &= target != ignore_index
    if mask is not None:
        valid &= mask
    return valid


def _valid_elements(tc: Tensor, mask: Tensor | None, ignore_index: int | None) -> Tensor | None:
    """Validity of the elements of a chunk of a dense target (S, M) (``mask`` broadcastable to it), or None when
    every element counts."""
    valid = None
    if ignore_index is not None:
        valid = tc != ignore_index
    if mask is not None:
        valid = mask if valid is None else valid & mask
    return valid


def _presence(target: Tensor, is_index: bool, valid_pos: Tensor | None, mask, ignore_index, C: int) -> Tensor:
    """(B, C) bool: class c has a valid foreground element in sample b."""
    B = target.shape[0]
    if is_index:
        counts = torch.zeros(B, C, dtype=torch.int32, device=target.device)
        counts.scatter_add_(1, target.clamp(0, C - 1), valid_pos.to(torch.int32))
        return counts > 0
    fg = target > 0.5
    if ignore_index is not None:
        fg &= target != ignore_index
    if mask is not None:
        fg &= mask.unsqueeze(1)
    return fg.any(-1)


def _sort_packed(e: Tensor) -> tuple[Tensor, Tensor]:
    """Sort every row (segment) of the float32 errors (S, M), errors >= 0, in decreasing order, equal errors in the
    order of their positions, with one stable 1-D sort of integer keys (a parallel radix sort on the CPU and on
    CUDA): the bit pattern of a float >= 0 orders like the float. One segment: the int32 keys ``~bits(e)``
    (half the radix passes of int64; -0.0 and a NaN with its sign bit sort last), decoded back into the sorted
    errors. Several:
    the int64 keys ``segment * 2**32 + (2**31 - 1 - bits(e))``, in which any int32 pattern (-0.0, a NaN with its
    sign bit) stays inside its segment's 2**32 keys. Returns the sorted errors (S, M) and the permutation as flat
    indices into ``e``; ``e`` itself may be overwritten."""
    S, M = e.shape
    bits = e.view(torch.int32)
    if S == 1:  # the keys are made in e's memory: e is consumed
        key, perm = torch.sort(bits.bitwise_not_().view(-1), stable=True)
        return key.bitwise_not_().view(torch.float32).view(S, M), perm
    base = (torch.arange(S, device=e.device, dtype=torch.int64) << 32).add_(_MAX31).unsqueeze(1)
    perm = torch.sort(torch.sub(base, bits.to(torch.int64)).view(-1), stable=True)[1]
    return e.view(-1).index_select(0, perm).view(S, M), perm


def _sort_generic(e: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`_sort_packed` for any floating dtype (the same order): a stable sort along the last dimension."""
    S, M = e.shape
    e_s, perm = torch.sort(e, dim=-1, descending=True, stable=True)
    perm += (torch.arange(S, device=e.device) * M).unsqueeze(1)
    return e_s, perm.view(-1)


def _lovasz_weights(fg_s: Tensor, dtype: torch.dtype) -> Tensor:
    """The Lovász gradient of the Jaccard loss along each row of sorted foreground flags (S, M), in closed form.

    With ``F`` the number of foreground elements up to and including element i and ``n`` the row's foreground
    count, the foreground not yet covered is ``I = n - F`` and the union ``U = I + i + 1``; the weight is
    ``1 / U = (U - 1) / (U (U - 1))`` at a foreground element and ``I / (U (U - 1))`` at a background one, i.e.
    ``(I + i [foreground]) / (U (U - 1))``. Only column 0 can have ``U = 1`` (a row that starts with its only
    foreground element, or a row without foreground); its weight is ``1 / U`` either way. The counts are exact
    (float below 2**24 elements, int32 above); each weight takes three roundings, where the authors' difference
    of consecutive Jaccard values cancels (test_lovasz.py: a float32 weight off by more than 100 % on a segment
    of 2**19 elements). Two temporaries of the rows' size."""
    M = fg_s.shape[-1]
    exact = dtype == torch.float64 or M < 2**24
    F = torch.cumsum(fg_s, dim=-1, dtype=dtype if exact else torch.int32)
    uncovered = torch.sub(F[:, -1:].clone(), F, out=F) if exact else (F[:, -1:] - F).to(dtype)
    denominator = torch.add(uncovered, torch.arange(M, device=fg_s.device, dtype=dtype))  # U - 1 = I + i
    first = denominator[:, 0] + 1  # U at column 0
    weights = torch.where(fg_s, denominator, uncovered, out=uncovered)  # U - 1 on the foreground, I off it
    weights.div_(denominator.addcmul_(denominator, denominator))  # (U - 1) + (U - 1)^2 = U (U - 1)
    weights[:, 0] = first.reciprocal_()
    return weights


def _forward(x: Tensor, target: Tensor, mask: Tensor | None, spec: _Spec):
    """Per-group losses (G,) and, when asked, the gradient of each group's loss w.r.t. ``x`` (B, C, N).

    The work is a list of segments: one per scored class (the errors of the whole batch) without ``per_image``,
    one per scored (class, sample) pair with it. Chunks of segments of at most ``max(segment, _CHUNK_ELEMENTS)``
    elements are sorted in one call each (:func:`_sort_packed`), so the temporaries stay O(max(segment, chunk)).

    Masked and ignored elements enter the sort as background elements with error 0: everything sorted after
    an error of 0 has error 0, adds nothing to the loss and gets no gradient, and the weights of the elements
    before depend only on those elements and the foreground count, which leaves them out. So the result is
    that of the reference, which removes them."""
    B, C, N = x.shape
    dtype = _compute_dtype(x.dtype)
    device = x.device
    G = B if spec.per_image else 1
    is_index = not target.is_floating_point()
    valid_pos = _valid_positions(target, mask, spec.ignore_index, C) if is_index else None

    present = _presence(target, is_index, valid_pos, mask, spec.ignore_index, C)
    if not spec.per_image:
        present = present.any(0, keepdim=True)
    kept = torch.zeros(C, dtype=torch.bool, device=device)
    kept[list(spec.kept)] = True
    scored = kept.expand(G, C) if spec.all_classes else present & kept
    weights = scored.to(dtype) / scored.sum(1, keepdim=True).clamp_min(1).to(dtype)  # class mean per group
    losses = torch.zeros(G, dtype=dtype, device=device)

    # the segments: (class) or (sample, class) index tensors; the ones no group scores are skipped
    if spec.per_image:
        # nonzero has a data-dependent size: while torch.compile traces, every kept pair (weight 0 if unscored)
        seg_b, seg_c = _all_pairs(G, spec.kept, device) if is_compiling() else scored.nonzero(as_tuple=True)
        M = N
    else:
        run = list(spec.kept)
        if not is_compiling():
            any_scored = scored.any(0).tolist()
            run = [c for c in run if any_scored[c]]
        seg_c = torch.tensor(run, dtype=torch.int64, device=device)
        seg_b = None
        M = B * N
    if is_index and valid_pos is not None and not is_compiling() and bool(valid_pos.all()):
        valid_pos = None  # every position counts: no masking
    if spec.softmax:
        lse = _logsumexp(x, dtype)  # (B, N), before the gradient buffer: its temporaries come and go first
    grad = torch.zeros(B, C, N, dtype=dtype, device=device) if spec.need_grad else None
    n_seg = seg_c.shape[0]
    if N == 0 or n_seg == 0:
        return losses, grad

    r = torch.zeros(B, N, dtype=dtype, device=device) if spec.need_grad and spec.softmax else None
    per_chunk = max(1, _CHUNK_ELEMENTS // M)
    xt = x.transpose(0, 1)  # (C, B, N): a chunk of classes is one index_select
    tt = None if is_index else target.transpose(0, 1)
    for start in range(0, n_seg, per_chunk):
        cs = seg_c[start : start + per_chunk]
        S = cs.shape[0]
        if spec.per_image:
            bs = seg_b[start : start + per_chunk]
            xc = x[bs, cs].to(dtype)  # (S, N), a copy (advanced indexing): the ops below work in place
            if is_index:
                fg = target[bs] == cs.unsqueeze(1)
                valid = None if valid_pos is None else valid_pos[bs]
            else:
                tc = target[bs, cs]
                valid = _valid_elements(tc, None if mask is None else mask[bs], spec.ignore_index)
                fg = tc > 0.5
            lse_c = lse[bs] if spec.softmax else None
            w_seg = weights[bs, cs]
        else:
            xc = xt.index_select(0, cs).to(dtype).view(S, M)  # (S, B N), a copy
            if is_index:
                fg = (target.unsqueeze(0) == cs.view(S, 1, 1)).view(S, M)
                valid = None if valid_pos is None else valid_pos.view(1, M)
            else:
                tc = tt.index_select(0, cs).reshape(S, M)
                valid = _valid_elements(tc, None if mask is None else mask.reshape(1, M), spec.ignore_index)
                fg = tc > 0.5
            lse_c = lse.view(1, M) if spec.softmax else None
            w_seg = weights[0, cs]
        if valid is not None:
            fg &= valid

        # the errors, >= 0
        if spec.softmax:
            p = xc.sub_(lse_c).exp_()
            e = torch.where(fg, 1 - p, p)
        elif spec.hinge:
            e = torch.where(fg, 1 - xc, xc.add_(1)).clamp_min_(0)  # relu before the sort: order among <= 0 is moot
        else:
            e = torch.where(fg, 1 - xc, xc)
        del xc
        if valid is not None:
            e.masked_fill_(~valid, 0)

        e, perm = _sort_packed(e) if dtype == torch.float32 else _sort_generic(e)  # e sorted from here on
        g = _lovasz_weights(fg.view(-1).index_select(0, perm).view(S, M), dtype)
        seg_loss = (e * g).sum(-1).mul_(w_seg)  # torch's pairwise sum: a float32 bmm / dot is off by 2e-4 at 2**18
        if spec.per_image:
            losses.index_add_(0, bs, seg_loss)
        else:
            losses += seg_loss.sum()
        if not spec.need_grad:
            continue

        # d loss / d e: the weight where e > 0 (relu' and |.|' are 0 at 0), back in the elements' order, with the
        # sign of de/dp (softmax, probabilities) or de/dz (hinge): -1 on the foreground, +1 off it
        g.masked_fill_(e == 0, 0).mul_(w_seg.unsqueeze(1))
        del e
        u = torch.empty(S * M, dtype=dtype, device=device).index_put_((perm,), g.view(-1)).view(S, M)
        del g, perm
        u = torch.where(fg, u.neg(), u)
        if spec.softmax:
            u.mul_(p)  # the buffer holds p u; the softmax step below subtracts p sum_c p u
        if spec.per_image:
            grad.index_put_((bs, cs), u)
            if spec.softmax:
                r.index_add_(0, bs, u)
        else:
            u = u.view(S, B, N)
            grad.index_copy_(1, cs, u.transpose(0, 1))
            if spec.softmax:
                r += u.sum(0)
        del u, fg
    if spec.need_grad and spec.softmax:
        # dx_c = p_c u_c - p_c sum_c' p_c' u_c', over every class (unscored ones have u = 0)
        step = max(1, _CHUNK_ELEMENTS // (B * N))
        for start in range(0, C, step):
            p = torch.sub(x[:, start : start + step].to(dtype), lse.unsqueeze(1)).exp_()  # x itself stays as is
            grad[:, start : start + step].addcmul_(p, r.unsqueeze(1), value=-1)
    return losses, grad


def _all_pairs(B: int, classes: tuple[int, ...], device) -> tuple[Tensor, Tensor]:
    """Every (sample, class) pair, sample-major (a static list while torch.compile traces)."""
    b = torch.arange(B, device=device).repeat_interleave(len(classes))
    c = torch.tensor(classes, device=device, dtype=torch.int64).repeat(B)
    return b, c


def _logsumexp(x: Tensor, dtype: torch.dtype) -> Tensor:
    """logsumexp over C of (B, C, N) as (B, N) in ``dtype``, a class at a time (no (B, C, N) temporary)."""
    B, C, N = x.shape
    m = x.amax(1).to(dtype)
    s = torch.zeros(B, N, dtype=dtype, device=x.device)
    for c in range(C):
        s += x[:, c].to(dtype).sub(m).exp_()
    return s.log_().add_(m)


class _LovaszFunction(torch.autograd.Function):
    """Per-group Lovász losses with the gradient computed in the forward pass (it is the closed form: the
    permuted Lovász weights, through the error function), so the backward only scales it."""

    @staticmethod
    def forward(ctx, x: Tensor, target: Tensor, mask: Tensor | None, spec: _Spec) -> Tensor:
        losses, grad = _forward(x, target, mask, spec)
        ctx.input_dtype = x.dtype
        ctx.has_grad = grad is not None
        if grad is not None:
            ctx.save_for_backward(grad)
        return losses

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_losses: Tensor):
        if not ctx.has_grad:
            return None, None, None, None
        (grad,) = ctx.saved_tensors
        # out of place: the graph may be kept (retain_graph, gradcheck, Jacobians) and backpropagated again
        scale = grad_losses.to(grad.dtype).view(-1, 1, 1)  # (B, 1, 1) per image, (1, 1, 1) per batch
        return (grad * scale).to(ctx.input_dtype), None, None, None


# ----------------------------------------------------------------------------------------------
# the reference: plain autograd, one (group, class) at a time, the authors' formula


def _reference(
    input: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    *,
    mode: str = "multiclass",
    from_logits: bool = True,
    include_background: bool = True,
    ignore_index: int | None = None,
    per_image: bool = False,
    classes: str = "present",
    reduction: str = "mean",
) -> Tensor:
    """The oracle of the fast path: a Python loop over groups and classes, the valid elements selected, the
    errors sorted (decreasing, equal errors in the order of their positions, as the fast path), the
    Lovász gradient as the authors write it (Jaccard of cumulative sums, then first differences), a dot
    product, plain autograd for the gradient."""
    o = LovaszOptions(mode, from_logits, include_background, ignore_index, per_image, classes, reduction)
    prep = prepare(
        input, target, mode=mode, from_logits=from_logits, ignore_index=o.ignore_index, mask=mask,
        include_background=include_background,
    )
    if not prep.target_is_index and value_checks_enabled(prep.logits.device):
        _check_hard_target(prep)
    dtype = _compute_dtype(prep.logits.dtype)
    x = prep.logits.to(dtype)
    B, C, N = x.shape
    if mode == "multiclass" and from_logits:
        x = torch.softmax(x, dim=1)
    hinge = mode != "multiclass" and from_logits
    kept = prep.kept_classes if prep.kept_classes is not None else range(C)
    groups = [[b] for b in range(B)] if per_image else [list(range(B))]
    group_losses = []
    for samples in groups:
        class_losses = []
        for c in kept:
            scores, fgs = [], []
            for b in samples:
                if prep.target_is_index:
                    t = prep.target[b]
                    valid = (t >= 0) & (t < C)
                    if prep.ignore_index is not None:
                        valid = valid & (t != prep.ignore_index)
                    fg = t == c
                else:
                    t = prep.target[b, c]
                    valid = torch.ones_like(t, dtype=torch.bool)
                    if prep.ignore_index is not None:
                        valid = t != prep.ignore_index
                    fg = t > 0.5
                if prep.mask is not None:
                    valid = valid & prep.mask[b]
                scores.append(x[b, c][valid])
                fgs.append(fg[valid])
            score, fg = torch.cat(scores), torch.cat(fgs)
            if classes == "present" and mode != "binary" and not bool(fg.any()):
                continue
            y = fg.to(dtype)
            errors = 1 - score * (2 * y - 1) if hinge else (y - score).abs()
            errors_sorted, perm = torch.sort(errors, descending=True, stable=True)
            y_sorted = y[perm]
            if hinge:
                errors_sorted = torch.relu(errors_sorted)
            class_losses.append(torch.dot(errors_sorted, _jaccard_grad(y_sorted)))
        if class_losses:
            group_losses.append(torch.stack(class_losses).mean())
        else:
            group_losses.append(x.sum() * 0)
    losses = torch.stack(group_losses)
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    return losses if per_image else losses[0]


def _jaccard_grad(y_sorted: Tensor) -> Tensor:
    """Alg. 1 of the paper: the Jaccard loss of each prefix of the sorted elements, then first differences."""
    n = y_sorted.sum()
    intersection = n - y_sorted.cumsum(0)
    union = n + (1 - y_sorted).cumsum(0)
    jaccard = 1 - intersection / union
    if len(y_sorted) > 1:
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return jaccard


__all__ = ["lovasz_loss", "LovaszLoss", "LovaszOptions"]
