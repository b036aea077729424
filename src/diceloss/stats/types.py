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

# Column group of the map kinds (stats/maps.py: a second label map, gathered, or a dense weighted map w), per
# (sample, class): sum m p w, sum m w, sum m.
MAP_COLUMNS = ("PW", "W", "M")
COL_MAP_PW, COL_MAP_W, COL_MAP_M = range(len(MAP_COLUMNS))
# Column group of the bins kind (stats/bins.py), per (sample, class, bin k) with w_k(p) the share of p in bin k
# (hard: 0 or 1; soft: linear between the two nearest bin centres): sum m w_k p, sum m w_k g, sum m w_k.
BIN_COLUMNS = ("SP", "SG", "N")
COL_BIN_P, COL_BIN_G, COL_BIN_N = range(len(BIN_COLUMNS))
# Column group of the asymmetric focal kind (stats/focal_asym.py), per (sample, class): I, P, G, M and the
# asymmetric focal sum A of the unified focal loss.
FOCAL_ASYM_COLUMNS = ("I", "P", "G", "M", "A")
COL_FA_I, COL_FA_P, COL_FA_G, COL_FA_M, COL_FA_A = range(len(FOCAL_ASYM_COLUMNS))
# Column group of the region-id kind (stats/regions.py): I, P, G, M per (sample, class), and per (sample, blob
# key) the prediction mass S and the size n of the blob.
REGION_COLUMNS = ("I", "P", "G", "M")
REGION_KEY_COLUMNS = ("S", "n")
# Column group of the class-pair kind (stats/pairs.py), per (sample, target class k): the Wasserstein mass
# V = sum_{t = k} sum_c M[k, c] p_c and the count N.
PAIR_COLUMNS = ("V", "N")

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
