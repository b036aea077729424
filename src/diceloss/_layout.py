"""Every input convention of diceloss brought to one canonical layout, once.

:func:`prepare` checks ``input``, ``target``, ``mask`` and ``weight`` against ``mode`` and returns a
:class:`Prepared` whose tensors every backend can read as they are: logits (B, C, N), class indices
(B, N) or dense targets (B, C, N), a position mask (B, N). Every tensor error of diceloss is raised
here, before any computation, as a ``ValueError`` or ``TypeError`` whose message names what was
expected and what came. The value checks (class indices in range, targets in [0, 1], one-hot rows
summing to 1) follow the switch of :func:`diceloss.set_value_checks`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ._checks import MODES, check_choice, is_vmapped, value_checks_enabled

# the floating dtypes every backend reads (float8 and the like would fail inside a kernel)
INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class Prepared(NamedTuple):
    """Inputs in the canonical layout that every backend receives.

    logits: (B, C, N) view or copy of the input (``C = 1`` in binary mode).
    target: (B, N) int64 class indices when ``target_is_index``, else (B, C, N) floating.
    mask: (B, N) bool, or None; applies to every class.
    ignore_index: a target value that marks ignored positions (index targets) or elements (binary and
        multilabel dense targets); None where it is already folded into ``mask``.
    activation: "softmax" | "sigmoid" | "none".
    kept_classes: the classes the per-class heads keep (background and an ignored class dropped), or
        None for all.
    """

    logits: Tensor
    target: Tensor
    target_is_index: bool
    mask: Tensor | None
    ignore_index: int | None
    activation: str
    num_classes: int
    mode: str
    kept_classes: tuple[int, ...] | None
    spatial_shape: tuple[int, ...]


def _check_tensor(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _check_devices(**tensors: Tensor | None) -> None:
    named = [(n, t) for n, t in tensors.items() if t is not None]
    devices = {t.device for _, t in named}
    if len(devices) > 1:
        where = ", ".join(f"{n} on {t.device}" for n, t in named)
        raise ValueError(f"all tensors must be on one device, got {where}")


def _kept_classes(mode: str, num_classes: int, include_background: bool, ignore_index: int | None):
    if mode == "binary":
        return None
    drop = set()
    if not include_background:
        drop.add(0)
    if mode == "multiclass" and ignore_index is not None and 0 <= ignore_index < num_classes:
        drop.add(ignore_index)
    if not drop:
        return None
    kept = tuple(c for c in range(num_classes) if c not in drop)
    if not kept:
        raise ValueError(
            f"no class is left to score: num_classes={num_classes}, include_background={include_background}, "
            f"ignore_index={ignore_index}"
        )
    return kept


def prepare(
    input: Tensor,
    target: Tensor,
    *,
    mode: str,
    from_logits: bool,
    ignore_index: int | None = None,
    mask: Tensor | None = None,
    include_background: bool = True,
    weight: Tensor | None = None,
) -> Prepared:
    """Check ``input``, ``target``, ``mask`` and ``weight`` against ``mode`` and bring them to the canonical layout."""
    check_choice("mode", mode, MODES)
    input = _check_tensor("input", input)
    target = _check_tensor("target", target)
    if mask is not None:
        mask = _check_tensor("mask", mask)
    _check_devices(input=input, target=target, mask=mask, weight=weight)
    for name, t in (("input", input), ("target", target), ("mask", mask)):
        if t is not None and t.layout != torch.strided:
            raise TypeError(f"{name} must be a dense (strided) tensor, got layout {t.layout}; call .to_dense() first")
    if not input.is_floating_point():
        raise TypeError(
            f"input must be a floating tensor of {'logits' if from_logits else 'probabilities'}, got dtype "
            f"{input.dtype}; for hard label maps use diceloss.metrics.dice_score"
        )
    if input.dtype not in INPUT_DTYPES:
        raise TypeError(
            f"input dtype {input.dtype} is not supported: pass float16, bfloat16, float32 or float64 "
            "(for example input.float())"
        )
    if input.ndim < 2:
        raise ValueError(f"input must have a batch dimension and at least one more, got shape {tuple(input.shape)}")
    if target.is_complex() or input.is_complex():
        raise TypeError("complex tensors are not supported")

    B = input.shape[0]
    if B == 0 or (mode != "binary" and input.shape[1] == 0):
        # an empty batch would average nothing into NaN; torch's reshape would fail with an unclear message
        raise ValueError(
            f"input must hold at least one sample{'' if mode == 'binary' else ' and one class'}, got shape "
            f"{tuple(input.shape)}"
        )
    if mode == "binary":
        logits, target_bcn, spatial = _binary_layout(input, target)
        num_classes = 1
        target_is_index = False
    else:
        if input.ndim < 3:
            raise ValueError(
                f"{mode} mode expects input of shape (B, C, *spatial) with at least one spatial dimension, "
                f"got shape {tuple(input.shape)}"
            )
        num_classes = input.shape[1]
        spatial = tuple(input.shape[2:])
        logits = input.reshape(B, num_classes, -1)
        if mode == "multiclass":
            if num_classes < 2:
                raise ValueError(
                    "multiclass mode needs at least 2 classes (C >= 2) in input of shape (B, C, *spatial), got "
                    f"C = {num_classes}; for a single foreground channel use mode='binary'"
                )
            target_bcn, target_is_index = _multiclass_target(input, target, ignore_index)
        else:
            if tuple(target.shape) != tuple(input.shape):
                raise ValueError(
                    f"multilabel mode expects a target of the input's shape {tuple(input.shape)}, got "
                    f"{tuple(target.shape)}"
                )
            target_bcn, target_is_index = target.reshape(B, num_classes, -1), False

    if not target_is_index:
        if target_bcn.dtype == torch.bool:
            target_bcn = target_bcn.to(logits.dtype if logits.dtype.is_floating_point else torch.float32)
        elif not target_bcn.is_floating_point():
            target_bcn = target_bcn.to(torch.float32)

    mask_bn = None
    if mask is not None:
        mask_bn = _mask_layout(mask, B, spatial)

    if weight is not None:
        if weight.ndim != 1 or weight.numel() != num_classes:
            raise ValueError(
                f"weight must have one entry per class: expected length {num_classes} (C of the input"
                f"{'; 1 in binary mode' if mode == 'binary' else ''}), got shape {tuple(weight.shape)}"
            )

    folded_ignore = ignore_index
    if mode == "multiclass" and not target_is_index and ignore_index is not None:
        if not 0 <= ignore_index < num_classes:
            raise ValueError(
                f"with one-hot or soft targets, ignore_index must name a channel in [0, {num_classes}), got "
                f"{ignore_index}; with class-index targets any integer works"
            )
        # positions labelled with the ignored channel drop out, like ignored class indices
        keep = target_bcn[:, ignore_index] < 0.5
        mask_bn = keep if mask_bn is None else mask_bn & keep
        folded_ignore = None

    if value_checks_enabled(input.device):
        if is_vmapped(target) or is_vmapped(mask) or (not from_logits and is_vmapped(input)):
            raise RuntimeError(
                "diceloss's value checks read tensor values, which torch.func.vmap does not allow: turn them off "
                "around the vmapped call (diceloss.set_value_checks(False)); backend='auto' then takes the reference "
                "backend under vmap"
            )
        _check_values(logits, target_bcn, target_is_index, mode, from_logits, ignore_index, num_classes, mask_bn)

    return Prepared(
        logits=logits,
        target=target_bcn,
        target_is_index=target_is_index,
        mask=mask_bn,
        ignore_index=folded_ignore,
        activation=("softmax" if mode == "multiclass" else "sigmoid") if from_logits else "none",
        num_classes=num_classes,
        mode=mode,
        kept_classes=_kept_classes(mode, num_classes, include_background, ignore_index),
        spatial_shape=spatial,
    )


def _binary_layout(input: Tensor, target: Tensor):
    B = input.shape[0]
    if tuple(target.shape) == tuple(input.shape):
        pass
    elif (
        input.ndim == target.ndim + 1
        and input.shape[1] == 1
        and (target.shape[0],) + tuple(target.shape[1:])
        == (
            input.shape[0],
            *input.shape[2:],
        )
    ):
        pass
    elif target.ndim == input.ndim + 1 and target.shape[1] == 1 and tuple(target.shape[2:]) == tuple(input.shape[1:]):
        pass
    else:
        raise ValueError(
            "binary mode expects input (B, 1, *spatial) or (B, *spatial) and a target of the same shape, got "
            f"input {tuple(input.shape)} and target {tuple(target.shape)}"
        )
    if target.shape[0] != B:
        raise ValueError(f"batch size of target ({target.shape[0]}) differs from input's ({B})")
    if input.ndim >= 3 and input.shape[1] == 1:
        spatial = tuple(input.shape[2:])
    else:
        spatial = tuple(input.shape[1:])
    return input.reshape(B, 1, -1), target.reshape(B, 1, -1), spatial


def _multiclass_target(input: Tensor, target: Tensor, ignore_index: int | None = None):
    B, C = input.shape[:2]
    spatial = tuple(input.shape[2:])
    if target.ndim == input.ndim and target.shape[1] == C and C != 1:
        if tuple(target.shape) != tuple(input.shape):
            raise ValueError(
                f"a one-hot or soft target must have the input's shape {tuple(input.shape)}, got {tuple(target.shape)}"
            )
        return target.reshape(B, C, -1), False
    if target.ndim == input.ndim and target.shape[1] == 1:
        index = target[:, 0]
    elif target.ndim == input.ndim - 1:
        index = target
    else:
        raise ValueError(
            f"multiclass mode expects a target of class indices (B, *spatial) = {(B, *spatial)} or (B, 1, *spatial), "
            f"or one-hot / soft probabilities (B, C, *spatial) = {tuple(input.shape)}; got {tuple(target.shape)}"
        )
    if index.shape[0] != B:
        raise ValueError(f"batch size of target ({index.shape[0]}) differs from input's ({B})")
    if tuple(index.shape[1:]) != spatial:
        raise ValueError(
            f"spatial shape of target {tuple(index.shape[1:])} differs from the input's {spatial} "
            f"(input {tuple(input.shape)}, target {tuple(target.shape)})"
        )
    if index.dtype == torch.bool:
        raise TypeError("class-index targets must be integer (or float holding whole numbers), got dtype torch.bool")
    if index.is_floating_point():
        if value_checks_enabled(index.device) and index.numel():
            if not bool((index == index.round()).all()):
                raise ValueError(
                    "a floating target of shape (B, *spatial) is read as class indices and must hold whole numbers; "
                    "got fractional values (for soft labels pass probabilities of shape (B, C, *spatial))"
                )
            # in the floating dtype: inf or 1e20 would become an arbitrary int64 in the cast below
            check_index_range(
                index,
                C,
                ignore_index=ignore_index,
                context=f" for input with C = {C}",
                hint="; pass ignore_index for a label that marks positions to skip",
            )
    index = index.reshape(B, -1)
    if index.dtype != torch.int64:
        index = index.to(torch.int64)
    return index, True


def _mask_layout(mask: Tensor, B: int, spatial: tuple[int, ...]) -> Tensor:
    if tuple(mask.shape) == (B, *spatial):
        m = mask
    elif tuple(mask.shape) == (B, 1, *spatial):
        m = mask[:, 0]
    else:
        raise ValueError(
            f"mask must have shape (B, *spatial) = {(B, *spatial)} or (B, 1, *spatial), got {tuple(mask.shape)}"
        )
    if m.is_complex():
        raise TypeError("mask must be real or bool")
    return (m != 0).reshape(B, -1)


# The bit pattern of 1.0 in each floating dtype, and the integer dtype of its size. Non-negative floats
# order like their bit patterns read as integers; negative floats (sign bit) read as negative integers;
# NaN reads above 1.0 (or negative). So integers in [0, bits(1.0)] are exactly the floats in [+0, 1].
_ONE_BITS = {
    torch.float32: (torch.int32, 0x3F800000),
    torch.float64: (torch.int64, 0x3FF0000000000000),
    torch.float16: (torch.int16, 0x3C00),
    torch.bfloat16: (torch.int16, 0x3F80),
}


def _surely_in_unit_interval(t: Tensor) -> bool:
    """True when every value is in [+0, 1], from an integer min/max of the bit patterns (about twice as fast
    as a floating aminmax, which handles NaN). False means "look closer" (-0.0 also lands here)."""
    if t.dtype not in _ONE_BITS:
        return False
    int_dtype, one = _ONE_BITS[t.dtype]
    lo, hi = (int(v) for v in torch.aminmax(t.view(int_dtype)))
    return lo >= 0 and hi <= one


def _show(value: float) -> str:
    """A value for a range message: 4 significant digits, or every digit where those would round an offending
    value onto the bound it crosses (1.0000001 is not "1")."""
    short = f"{value:.4g}"
    if short in ("0", "-0", "1") and value not in (0.0, 1.0):
        return repr(value)
    return short


def _check_values(logits, target, target_is_index, mode, from_logits, ignore_index, num_classes, mask_bn) -> None:
    target = target.detach()  # a soft target may require grad; reading its values needs no graph
    if not from_logits and logits.numel():
        lo, hi = (float(v) for v in torch.aminmax(logits.detach()))
        if lo < 0 or hi > 1 or math.isnan(lo) or math.isnan(hi):
            raise ValueError(
                f"from_logits=False expects probabilities in [0, 1], got values in [{_show(lo)}, {_show(hi)}]; "
                "pass from_logits=True for raw network outputs"
            )
    if target.numel() == 0:
        return
    if target_is_index:
        check_index_range(
            target,
            num_classes,
            ignore_index=ignore_index,
            context=f" for input with C = {num_classes}",
            hint="; pass ignore_index for a label that marks positions to skip",
        )
        return
    valid = None
    if ignore_index is not None and mode != "multiclass":
        valid = target != ignore_index
    vals = target if valid is None else target[valid]
    if vals.numel() and not (valid is None and _surely_in_unit_interval(vals)):
        lo, hi = (float(v) for v in torch.aminmax(vals))  # one pass; NaN propagates to both
        if lo < 0 or hi > 1 or math.isnan(lo) or math.isnan(hi):
            named = mode != "multiclass" and ignore_index is not None
            extra = f" (or ignore_index, {ignore_index})" if named else ""
            raise ValueError(f"target values must be in [0, 1]{extra}, got values in [{_show(lo)}, {_show(hi)}]")
    if mode == "multiclass":
        sums = target.sum(dim=1, dtype=torch.float32)
        if mask_bn is not None:
            sums = sums[mask_bn]
        tol = 1e-2 if target.dtype in (torch.float16, torch.bfloat16) else 1e-4
        if sums.numel() and not bool(((sums - 1).abs() <= tol).all()):
            lo, hi = float(sums.min()), float(sums.max())
            hint = (
                "; a target with several classes on at a position is multi-label: use mode='multilabel'"
                if hi > 1 + tol
                else ""
            )
            raise ValueError(
                "a one-hot or soft target in multiclass mode must sum to 1 over the classes at every position, got "
                f"sums in [{lo:.4g}, {hi:.4g}]{hint}"
            )


def check_index_range(
    index: Tensor,
    num_classes: int,
    *,
    ignore_index: int | None = None,
    valid: Tensor | None = None,
    what: str = "class indices",
    context: str = "",
    hint: str = "",
) -> None:
    """Raise the ValueError for class indices of ``index`` outside [0, num_classes - 1].

    Positions equal to ``ignore_index``, or where ``valid`` (a bool tensor of ``index``'s shape) is
    False, are skipped. The message, shared by the losses, the metrics and the compat losses, reads
    ``"{what} must be in [0, C - 1]{context}, got [up to 8 bad values]{ (ignore_index is i)}{hint}"``;
    ``ignore_index`` is named only when it is passed. One min/max pass decides the common case; the
    masks only run to name the bad values. The caller decides whether value checks run
    (:func:`diceloss._checks.value_checks_enabled`).

    Example:
        >>> check_index_range(torch.tensor([0, 2, 255]), 3, ignore_index=255)
        >>> check_index_range(torch.tensor([0, 3]), 3)
        Traceback (most recent call last):
        ...
        ValueError: class indices must be in [0, 2], got [3]
    """
    if index.numel() == 0:
        return
    lo, hi = (v.item() for v in torch.aminmax(index))  # int or float: inf must not go through int()
    if lo >= 0 and hi < num_classes:
        return
    bad = (index < 0) | (index >= num_classes)
    if ignore_index is not None:
        bad &= index != ignore_index
    if valid is not None:
        bad &= valid
    if bool(bad.any()):
        values = torch.unique(index[bad])[:8].tolist()
        if index.is_floating_point():  # float32 1e20 reads 1.0000000200408773e+20 in full
            values = [float(f"{v:.7g}") for v in values]
        extra = f" (ignore_index is {ignore_index})" if ignore_index is not None else ""
        raise ValueError(f"{what} must be in [0, {num_classes - 1}]{context}, got {values}{extra}{hint}")
