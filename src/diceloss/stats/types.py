"""The vocabulary of the statistics layer: what is asked, what comes back, and how the kernels encode it.

A leaf module (it imports only torch and typing): every backend, the op registration and the device
kernels take their names from here.

* :class:`StatsRequest`: which statistics a head needs.
* :class:`OverlapStats`: the per-(sample, class) sums that come back.
* :class:`OpOptions`: the scalar arguments of the ``torch.ops.diceloss`` statistics ops, in their one
  order (:func:`op_options` makes them from a layout and a request).
* :data:`STAT_COLUMNS`: the columns of the stacked (B, C, NUM_STATS) statistics, I, P, G, M, E, F.
* :data:`ACTIVATIONS`: the activation codes of the kernels.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

# Columns of the stacked statistics (B, C, NUM_STATS): intersection, prediction volume, target volume,
# count of valid positions, cross-entropy, focal term.
STAT_COLUMNS = ("I", "P", "G", "M", "E", "F")
NUM_STATS = len(STAT_COLUMNS)
COL_I, COL_P, COL_G, COL_M, COL_E, COL_F = range(NUM_STATS)

# Activation codes of the kernels.
ACT_SOFTMAX, ACT_SIGMOID, ACT_NONE = 0, 1, 2
ACTIVATIONS = {"softmax": ACT_SOFTMAX, "sigmoid": ACT_SIGMOID, "none": ACT_NONE}

# log(p) of probabilities is clamped here, as torch.nn.functional.binary_cross_entropy does.
LOG_CLAMP = -100.0


class StatsRequest(NamedTuple):
    """Which statistics a head needs.

    squared: P and G sum p**2 and g**2 (V-Net) instead of p and g.
    soft_label: the intersection is sum(min(p, g)) (Dice semimetric) instead of sum(p * g); only when not squared
        (with squares the product form already is the semimetric).
    cross_entropy: also E, the cross-entropy (softmax) or binary cross-entropy (sigmoid) summed per
        (sample, class), with targets smoothed by ``label_smoothing``.
    focal_gamma: also F, the focal term with this gamma (None: not computed).
    """

    squared: bool = False
    soft_label: bool = False
    cross_entropy: bool = False
    label_smoothing: float = 0.0
    focal_gamma: float | None = None


class OverlapStats(NamedTuple):
    """Per-(sample, class) sums, each of shape (B, C), over the valid (unmasked) positions n.

    intersection:  I = sum_n m p g   (sum_n m min(p, g) for the semimetric)
    pred_volume:   P = sum_n m p^q
    target_volume: G = sum_n m g^q
    count:         M = sum_n m, the number of valid positions (per class, equal across classes in
                   multiclass mode)
    cross_entropy: E = sum_n m g~ (-log p) (multiclass, g~ the smoothed target) or sum_n m BCE(x, g~)
                   (binary, multilabel); None unless asked
    focal:         F = the focal analogue of E; None unless asked
    """

    intersection: Tensor
    pred_volume: Tensor
    target_volume: Tensor
    count: Tensor
    cross_entropy: Tensor | None = None
    focal: Tensor | None = None


class OpOptions(NamedTuple):
    """The scalar arguments of the statistics ops, after ``(x, target, mask)``, in the ops' order.

    The schema of every ``torch.ops.diceloss`` statistics op is made from these fields (see
    :mod:`diceloss.stats.op`), and :func:`op_options` fills them: the one place the order is written.
    """

    mode: str
    activation: str
    ignore_index: int | None
    squared: bool
    soft_label: bool
    cross_entropy: bool
    label_smoothing: float
    focal_gamma: float | None


def op_options(prep, request: StatsRequest) -> OpOptions:
    """The op arguments of a layout (:class:`diceloss._layout.Prepared`) and a request."""
    return OpOptions(
        prep.mode,
        prep.activation,
        prep.ignore_index,
        bool(request.squared),
        bool(request.soft_label),
        bool(request.cross_entropy),
        float(request.label_smoothing),
        None if request.focal_gamma is None else float(request.focal_gamma),
    )


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype for an input dtype: float64 stays, everything else sums in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32
