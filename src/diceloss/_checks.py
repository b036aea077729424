"""Option checks, the value-check switch and the one reader of environment switches.

Every option error of diceloss is raised here, at construction time (modules) or at the start of a
call (functions), as a ``ValueError`` or ``TypeError`` whose message names what was expected and
what came. Tensor errors are raised by :mod:`diceloss._layout`.

Environment switches (``DICELOSS_*``) are read by :func:`env_flag` only, with one truthiness rule:
unset or empty is the default; ``0``, ``false``, ``off``, ``no`` (any case) are false; anything else
is true.

Value checks (class indices in range, targets in [0, 1], one-hot rows summing to 1) read the data.
On the CPU in eager mode they run by default; on CUDA they would force a host-device
synchronisation, so they are off by default there, and they are skipped while ``torch.compile``
traces. :func:`set_value_checks` turns them on or off everywhere; the environment variable
``DICELOSS_VALUE_CHECKS`` (``0``/``1``) sets the initial state.
"""

from __future__ import annotations

import math
import numbers
import os
import sys
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

MODES = ("binary", "multiclass", "multilabel")
REDUCTIONS = ("mean", "sum", "none")
ABSENT_POLICIES = ("include", "exclude")
WEIGHTINGS = ("square", "simple", "uniform")
BACKENDS = ("auto", "reference", "fused", "triton")


# ----------------------------------------------------------------------------------------------
# the value-check switch


_FALSE_WORDS = ("0", "false", "off", "no")


def env_flag(name: str, default: bool | None = False) -> bool | None:
    """The boolean environment switch ``name``: ``default`` when unset or empty, False for 0/false/off/no
    (any case), True for anything else. The only place diceloss reads its ``DICELOSS_*`` switches."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    return value not in _FALSE_WORDS


_value_checks: bool | None = env_flag("DICELOSS_VALUE_CHECKS", None)


def set_value_checks(enabled: bool | None) -> bool | None:
    """Turn the checks that read tensor values on (``True``), off (``False``) or back to automatic (``None``).

    Automatic: on for CPU tensors in eager mode, off for CUDA tensors (they would synchronise the
    host with the device) and while ``torch.compile`` traces. Shape, dtype and device checks always
    run. Returns the previous setting.

    Example:
        >>> import diceloss
        >>> previous = diceloss.set_value_checks(False)
        >>> _ = diceloss.set_value_checks(previous)
    """
    global _value_checks
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"set_value_checks expects True, False or None, got {enabled!r}")
    previous = _value_checks
    _value_checks = enabled
    return previous


def is_compiling() -> bool:
    # Nothing is being traced if dynamo was never imported; asking torch.compiler would import it (and
    # Triton with it), a second of start-up for every process.
    if "torch._dynamo" not in sys.modules:
        return False
    try:
        return bool(torch.compiler.is_compiling())
    except AttributeError:  # torch < 2.3
        return False


def is_vmapped(t: Tensor | None) -> bool:
    """Whether ``t`` is a tensor batched by ``torch.func.vmap`` (whose values cannot be read, and which no compiled
    kernel can take)."""
    return t is not None and _is_batched(t)


try:
    _is_batched = torch._C._functorch.is_batchedtensor
except AttributeError:  # a torch without functorch

    def _is_batched(t: Tensor) -> bool:
        return False


def value_checks_enabled(device: torch.device) -> bool:
    """Whether the value checks run for tensors on ``device`` now."""
    if is_compiling():
        return False
    if _value_checks is not None:
        return _value_checks
    return device.type == "cpu"


# ----------------------------------------------------------------------------------------------
# options


def check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")


def _is_bool(value: object) -> bool:
    return isinstance(value, (bool, np.bool_))


def check_bool(name: str, value: object) -> bool:
    """``value`` as a bool; a bool or a NumPy bool only: configs read from YAML or argparse hand over strings
    such as "False", which are truthy."""
    if not _is_bool(value):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return bool(value)


def check_nonnegative(name: str, value: object, *, positive: bool = False, at_most: float | None = None) -> float:
    """``value`` as a float after checking it: any real number (NumPy scalars too), finite, >= 0 (> 0 with
    ``positive``), at most ``at_most``."""
    if _is_bool(value) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    bad = not math.isfinite(value) or (value <= 0 if positive else value < 0)
    if at_most is not None and value > at_most:
        bad = True
    if bad:
        lo = "> 0" if positive else ">= 0"
        hi = f" and <= {at_most}" if at_most is not None else ""
        raise ValueError(f"{name} must be finite, {lo}{hi}; got {value}")
    return value


def check_ignore_index(value: object) -> int | None:
    """``ignore_index`` as an int (NumPy integers too) or None."""
    if value is None:
        return None
    if _is_bool(value) or not isinstance(value, numbers.Integral):
        raise TypeError(f"ignore_index must be an int or None, got {value!r}")
    return int(value)


def check_smoothing(smooth_nr: float, smooth_dr: float) -> None:
    check_nonnegative("smooth_nr", smooth_nr)
    check_nonnegative("smooth_dr", smooth_dr)
    if smooth_nr > smooth_dr:
        raise ValueError(
            f"smooth_nr ({smooth_nr}) must not exceed smooth_dr ({smooth_dr}): an empty class would then "
            "score a Dice above 1"
        )


def check_weight(weight: Sequence[float] | Tensor | None) -> Tensor | None:
    """Validate a per-class weight (constructor time) and return it as a 1-D float tensor."""
    if weight is None:
        return None
    if isinstance(weight, Tensor):
        w = weight.detach()
        if not (w.is_floating_point() or w.dtype in (torch.int32, torch.int64, torch.int16, torch.int8, torch.uint8)):
            raise TypeError(f"weight must be a real tensor, got dtype {w.dtype}")
        w = w.to(torch.float64 if w.dtype == torch.float64 else torch.float32)
    else:
        try:
            # float64, so a float64 input keeps every digit; it is cast to the accumulation dtype per call
            w = torch.as_tensor([float(v) for v in weight], dtype=torch.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(f"weight must be a sequence of numbers or a 1-D tensor, got {weight!r}") from err
    if w.ndim != 1 or w.numel() == 0:
        raise ValueError(f"weight must be 1-D with one entry per class, got shape {tuple(w.shape)}")
    if value_checks_enabled(w.device):
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
            raise ValueError(f"weight must be finite and non-negative, got {w.tolist()}")
        if not bool((w > 0).any()):
            raise ValueError(f"weight must have a positive entry (all zero would make the loss 0), got {w.tolist()}")
        # float32 is the accumulation dtype of every input but float64: check the weights as they will be used
        w32 = w.to(torch.float32)
        if not bool(torch.isfinite(w32).all()):
            raise ValueError(f"weight must be finite in float32, got {w.tolist()}; only the ratios matter: scale down")
        if bool(((w32 == 0) & (w > 0)).any()):
            raise ValueError(f"weight entries become 0 in float32, got {w.tolist()}; only the ratios matter: scale up")
    return w


def check_backend(backend: str) -> None:
    check_choice("backend", backend, BACKENDS)


def check_compound_reduction(reduction: str, loss_name: str) -> None:
    if reduction == "none":
        raise ValueError(
            f"{loss_name} adds terms of different shapes, so it takes reduction='mean' or 'sum', not 'none'; "
            "use the Dice loss and the cross-entropy separately for per-element values"
        )
    check_choice("reduction", reduction, ("mean", "sum"))


def set_field(obj: object, name: str, value: object) -> None:
    """Store a checked, normalised value (a float, a bool) on a frozen dataclass (options, heads)."""
    object.__setattr__(obj, name, value)


def check_option_fields(
    opts: object,
    *,
    bools: Sequence[str] = (),
    nullable: Sequence[str] = (),
    reductions: Sequence[str] | None = REDUCTIONS,
    smoothing: bool = False,
) -> None:
    """Check, and store normalised, the options a loss's frozen options dataclass shares with the others.

    ``mode``; ``reduction`` among ``reductions`` (None: the loss checks it itself); ``backend`` when the
    dataclass has one; ``ignore_index``; each field of ``bools`` as a bool, each of ``nullable`` as a bool or
    None (a mode-dependent default); ``smooth_nr`` / ``smooth_dr`` when ``smoothing``.
    """
    check_choice("mode", opts.mode, MODES)
    if reductions is not None:
        check_choice("reduction", opts.reduction, reductions)
    if hasattr(opts, "backend"):
        check_backend(opts.backend)
    set_field(opts, "ignore_index", check_ignore_index(opts.ignore_index))
    for name in bools:
        set_field(opts, name, check_bool(name, getattr(opts, name)))
    for name in nullable:
        if getattr(opts, name) is not None:
            set_field(opts, name, check_bool(name, getattr(opts, name)))
    if smoothing:
        check_smoothing(opts.smooth_nr, opts.smooth_dr)
        set_field(opts, "smooth_nr", float(opts.smooth_nr))
        set_field(opts, "smooth_dr", float(opts.smooth_dr))


def check_spacing(spacing: object) -> float | tuple[float, ...] | None:
    """``spacing`` as None, one float, or a tuple of floats, each finite and > 0 (the number of axes is only
    known at the call)."""
    if spacing is None:
        return None
    if isinstance(spacing, Tensor):
        if spacing.ndim > 1 or spacing.is_complex():
            raise ValueError(f"spacing must be a number or a 1-D sequence of numbers, got shape {tuple(spacing.shape)}")
        spacing = spacing.tolist()
    if isinstance(spacing, (numbers.Real, np.floating, np.integer)) and not isinstance(spacing, (bool, np.bool_)):
        return check_nonnegative("spacing", spacing, positive=True)
    if isinstance(spacing, (str, bytes)) or not isinstance(spacing, Sequence | np.ndarray):
        raise TypeError(f"spacing must be None, a number or a sequence of numbers, got {type(spacing).__name__}")
    values = tuple(check_nonnegative(f"spacing[{k}]", v, positive=True) for k, v in enumerate(spacing))
    if not values:
        raise ValueError("spacing must hold one number per spatial axis, got an empty sequence")
    return values


def spacing_per_axis(spacing: float | tuple[float, ...] | None, spatial: tuple[int, ...]) -> tuple[float, ...]:
    """``spacing`` (checked by :func:`check_spacing`) as one value per axis of ``spatial``."""
    ndim = len(spatial)
    if spacing is None:
        return (1.0,) * ndim
    if isinstance(spacing, float):
        return (spacing,) * ndim
    if len(spacing) != ndim:
        raise ValueError(
            f"spacing has {len(spacing)} values but the input has {ndim} spatial dimension{'s' * (ndim != 1)} "
            f"{spatial}: pass one number, or one per spatial axis"
        )
    return spacing
