"""Topology metrics of one segmentation against a reference: the hard clDice and Betti-number errors.

Inputs are one case each, as :func:`diceloss.metrics.segmentation_metrics` takes them: two label maps
(integer, or integral float) of one spatial shape ``(*S)``, NumPy arrays or torch tensors, or two bool masks
(one label, 1); ``labels=``, ``ignore_index=`` and ``include_background=`` choose the labels the same way.
Each label c is scored on its masks P = {pred == c} and T = {target == c}; positions where the target holds
``ignore_index`` are background in both.

**clDice** (Shit et al., "clDice - a Novel Topology-Preserving Loss Function for Tubular Structure
Segmentation", CVPR 2021), hard version, with S(X) the skeleton of the mask X (scikit-image ``skeletonize``:
Zhang's thinning in 2D, Lee's in 3D)::

    Tprec = |S(P) & T| / |S(P)|          (topology precision: the predicted centreline inside the reference)
    Tsens = |S(T) & P| / |S(T)|          (topology sensitivity: the reference centreline inside the prediction)
    clDice = 2 Tprec Tsens / (Tprec + Tsens)

Empty masks (``empty`` takes the values of :data:`diceloss.metrics.EMPTY_POLICIES`; default "one", as the
other per-case functions, see :mod:`diceloss.metrics`):

* both empty: clDice = ``empty`` ("one" -> 1, "zero" -> 0, "nan" -> NaN);
* one empty: clDice = 0 (the Tprec or Tsens of the non-empty side is 0);
* Tprec = Tsens = 0: clDice = 0;
* a non-empty mask whose skeleton is empty (scikit-image's 3D thinning deletes some blobs whole, e.g. a
  2x2x2 cube): the mask is its own skeleton, S(X) = X. The authors' code gives 0/0 = NaN there.

The authors' ``clDice(v_p, v_l)`` names its ratios the other way round (its ``tprec`` is |S(T) & P| / |S(T)|);
the harmonic mean is symmetric, so the value is the same.

**Betti numbers** of a mask X (the set of its voxels, each voxel a unit square or cube) under a connectivity:

* beta0: connected components of X (foreground connectivity);
* 2D, beta1: holes = connected components of the background, under the dual connectivity, that do not touch
  the image border (the image is padded with background; the outside is not a hole);
* 3D, beta2: cavities = the enclosed background components, counted the same way;
* 3D, beta1: tunnels / handles, from the Euler characteristic chi = beta0 - beta1 + beta2, so
  beta1 = beta0 + beta2 - chi, with chi = V - E + F - C counted on the cubical complex of X: the union of the
  closed voxels (a voxel with its faces, edges and corners) under full connectivity, or the complex whose
  vertices are the voxels, with an edge / square / cube wherever 2 / 4 / 8 face-adjacent voxels are all in X,
  under face connectivity.

``connectivity`` names the foreground's neighbours: 8 or 4 in 2D, 26 or 6 in 3D; the background always
takes the dual one (8 -> 4, 4 -> 8, 26 -> 6, 6 -> 26). The pair must be dual: only then are the background
components the holes / cavities of the foreground complex (Alexander duality) and does the Euler formula
above hold; (8, 8) counts a diagonal ring as closed and open at once. The default is full connectivity,
8 in 2D and 26 in 3D: voxels that share only an edge or corner touch, as in scikit-image's ``label`` default
and in GUDHI's cubical complex built from the voxels (``top_dimensional_cells``), which the tests compare
against (``vertices=`` gives the face-connected 4 / 6 convention, also tested).

Betti errors: ``|beta_i(P) - beta_i(T)|`` per label and dimension i. They are defined for every mask (an
empty mask has beta = 0), so no empty policy applies: both empty gives errors 0.

Needs SciPy (labelling); :func:`cldice_score` needs scikit-image (``pip install 'diceloss[transforms]'``).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

import numpy as np
from torch import Tensor

from .._checks import check_choice
from ..transforms import _bounding_box, _require, _skeletonize, _structure
from .overlap import EMPTY_POLICIES, empty_fill
from .surface import _as_label_array, select_labels

DUAL_CONNECTIVITY = {4: 8, 8: 4, 6: 26, 26: 6}
"""The background connectivity that goes with each foreground connectivity (2D: 4 <-> 8; 3D: 6 <-> 26)."""

_CONNECTIVITIES = {2: (8, 4), 3: (26, 6)}  # per ndim: (full = default, face)


def _check_connectivity(connectivity: int | None, ndim: int) -> int:
    if ndim not in _CONNECTIVITIES:
        raise ValueError(f"Betti numbers need a 2D or 3D mask, got {ndim}D")
    allowed = _CONNECTIVITIES[ndim]
    if connectivity is None:
        return allowed[0]
    if isinstance(connectivity, bool) or connectivity not in allowed:
        raise ValueError(f"connectivity must be {allowed[0]} or {allowed[1]} for a {ndim}D mask (the foreground's "
                         f"neighbours; the background takes the dual one), got {connectivity!r}")
    return int(connectivity)


@functools.cache
def _euler_table(ndim: int, full: bool) -> np.ndarray:
    """2^ndim times the share of chi that one window of 2^ndim voxels holds, per window content.

    Bit k of the content is the voxel at offset ``offsets[k]`` (C order of {0, 1}^ndim). On the doubled grid
    (a cell's dimension is its number of odd coordinates) the cells next to the window's centre are
    centre + delta, delta in {-1, 0, 1}^ndim; cell delta depends on the window voxels whose offset is
    (delta_i + 1) / 2 on every axis where delta_i != 0, and is shared by the 2^(number of such axes) windows
    around it. Full connectivity: the centre is a grid vertex, a cell is in the complex when one of its
    voxels is, and its dimension is that number of axes. Face connectivity: the centre is the middle of a
    block of 2^ndim voxels, a cell is in when all its voxels are, and its dimension is ndim minus that number.
    """
    offsets = list(itertools.product((0, 1), repeat=ndim))
    cells = []  # (bits of the voxels the cell depends on, 2^ndim * (-1)^dim / share)
    for delta in itertools.product((-1, 0, 1), repeat=ndim):
        axes = [i for i, d in enumerate(delta) if d]
        bits = sum(1 << k for k, o in enumerate(offsets) if all(o[i] == (delta[i] + 1) // 2 for i in axes))
        dim = len(axes) if full else ndim - len(axes)
        cells.append((bits, (-1) ** dim * 2 ** (ndim - len(axes))))
    table = np.zeros(1 << len(offsets), dtype=np.int64)
    for code in range(table.size):
        table[code] = sum(w for bits, w in cells if ((code & bits) != 0 if full else (code & bits) == bits))
    return table


def _euler_characteristic(mask: np.ndarray, connectivity: int) -> int:
    """chi = sum over cells of (-1)^dim of the cubical complex of ``mask`` (see the module docstring).

    Every cell is shared out among the windows of 2 x 2 (x 2) voxels around it (:func:`_euler_table`), so
    chi is one pass over the windows of the mask padded with background: a code per window, a histogram of
    the codes, a dot product with the table. It equals the direct count on the doubled grid
    (the tests' oracle, ``euler_doubled``) at a 2^ndim-th of its memory.
    """
    ndim = mask.ndim
    m = np.pad(mask, 1).view(np.uint8)
    codes = np.zeros(tuple(n - 1 for n in m.shape), dtype=np.uint8)
    for k, offset in enumerate(itertools.product((0, 1), repeat=ndim)):
        codes |= m[tuple(slice(o, o + n - 1) for o, n in zip(offset, m.shape))] << k
    table = _euler_table(ndim, connectivity in (8, 26))
    total = int(np.bincount(codes.ravel(), minlength=table.size) @ table)
    return total >> ndim  # an exact multiple of 2^ndim: every cell's shares add up to one


def _crop(*masks: np.ndarray) -> tuple[np.ndarray, ...] | None:
    """The masks cut to the bounding box of their union (None when all are empty)."""
    union = masks[0].copy()
    for m in masks[1:]:
        union |= m
    box = _bounding_box(union)
    return None if box is None else tuple(m[box] for m in masks)


def _betti(ndimage, mask: np.ndarray, connectivity: int, b0: int | None = None) -> tuple[int, ...]:
    """Betti numbers of a bool mask; ``b0``: its number of components under ``connectivity`` when known."""
    ndim = mask.ndim
    cropped = _crop(mask)
    if cropped is None:
        return (0,) * ndim
    m = np.pad(cropped[0], 1)  # a frame of background: the outside is one background component
    if b0 is None:
        b0 = ndimage.label(m, structure=_structure(ndim, connectivity))[1]
    _, nb = ndimage.label(~m, structure=_structure(ndim, DUAL_CONNECTIVITY[connectivity]))
    enclosed = int(nb) - 1  # every background component but the outside one
    if ndim == 2:
        return int(b0), enclosed
    chi = _euler_characteristic(m, connectivity)
    return int(b0), int(b0) + enclosed - chi, enclosed


def betti_numbers(mask: np.ndarray | Tensor, connectivity: int | None = None) -> tuple[int, ...]:
    """Betti numbers of a 2D or 3D mask: ``(beta0, beta1)`` in 2D, ``(beta0, beta1, beta2)`` in 3D.

    beta0 = foreground components; 2D beta1 = background components (dual connectivity) not touching the
    border; 3D beta2 = such enclosed background components (cavities), beta1 = beta0 + beta2 - chi with chi the
    Euler characteristic V - E + F - C (see the module docstring).

    Args:
        mask: bool mask, or a map whose non-zero positions are the foreground (NumPy or torch).
        connectivity: foreground neighbours: 8 (default) or 4 in 2D, 26 (default) or 6 in 3D; the background
            takes the dual 4 / 8 / 6 / 26.

    Example:
        >>> ring = np.zeros((5, 5), dtype=bool); ring[1:4, 1:4] = True; ring[2, 2] = False
        >>> betti_numbers(ring)
        (1, 1)
        >>> diagonal = np.eye(3, dtype=bool)              # three voxels touching at corners
        >>> betti_numbers(diagonal), betti_numbers(diagonal, connectivity=4)
        ((1, 0), (3, 0))
    """
    ndimage = _require("scipy.ndimage", "betti_numbers")
    arr = _as_label_array(mask, "mask")
    conn = _check_connectivity(connectivity, arr.ndim)
    return _betti(ndimage, arr != 0, conn)


def _label_masks(pred, target, labels, ignore_index, include_background):
    """(binary, [(label, P, T)]) per evaluated label, chosen as :func:`segmentation_metrics` chooses them."""
    p = _as_label_array(pred, "pred")
    t = _as_label_array(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred and target must have one shape, got {tuple(p.shape)} and {tuple(t.shape)}")
    binary = p.dtype == bool and t.dtype == bool
    keep = None
    if ignore_index is not None:
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
            raise TypeError(f"ignore_index must be an int or None, got {type(ignore_index).__name__}")
        keep = t != ignore_index
    present = () if labels is not None or binary else set(np.unique(p).tolist()) | set(np.unique(t).tolist())
    wanted = select_labels(present, labels, binary=binary, include_background=include_background,
                           ignore_index=ignore_index)
    out = []
    for c in wanted:
        P, T = p == c, t == c
        if keep is not None:
            P &= keep
            T &= keep
        out.append((c, P, T))
    return binary and labels is None, out


def _skeleton(mask: np.ndarray) -> np.ndarray:
    s = _skeletonize(mask, "cldice_score")
    return s if s.any() else mask  # a blob the thinning deletes whole is its own skeleton


def cldice_score(
    pred: np.ndarray | Tensor,
    target: np.ndarray | Tensor,
    *,
    labels: Sequence[int] | None = None,
    ignore_index: int | None = None,
    include_background: bool = False,
    empty: str = "one",
) -> float | dict[int, float]:
    """Hard clDice per label: ``2 Tprec Tsens / (Tprec + Tsens)``, Tprec = |S(P) & T| / |S(P)|,
    Tsens = |S(T) & P| / |S(T)|, S the scikit-image skeleton (2D or 3D; see the module docstring).

    Args:
        pred, target: label maps (*S) of one shape (NumPy or torch; integer or integral float), or bool masks.
        labels: labels to evaluate; default every label present in either, background (0) excluded unless
            ``include_background``; ``ignore_index`` never.
        ignore_index: target value whose positions are background in prediction and reference.
        empty: both-empty policy, one of :data:`EMPTY_POLICIES`: "one" (default) | "zero" | "nan"; one empty
            gives 0.

    Returns:
        ``{label: clDice}`` with Python floats; a float for two bool masks (label 1) without ``labels``.

    Example:
        >>> gt = np.zeros((7, 9), dtype=bool); gt[3, 1:8] = True                # a line of 7 pixels
        >>> cldice_score(gt, gt)
        1.0
        >>> pred = np.zeros_like(gt); pred[3, 1:5] = True                       # its first 4 pixels
        >>> round(cldice_score(pred, gt), 4)                                    # Tprec 1, Tsens 4/7
        0.7273
    """
    check_choice("empty", empty, EMPTY_POLICIES)
    _require("skimage.morphology", "cldice_score")
    single, rows = _label_masks(pred, target, labels, ignore_index, include_background)
    out = {c: _cldice(P, T, empty) for c, P, T in rows}
    return out[1] if single else out


def _cldice(P: np.ndarray, T: np.ndarray, empty: str) -> float:
    """Hard clDice of two bool masks of one shape (the definition and empty cases of :func:`cldice_score`)."""
    cropped = _crop(P, T)
    if cropped is None:
        return float(empty_fill(empty))
    P, T = cropped
    if not P.any() or not T.any():
        return 0.0
    sp, st = _skeleton(P), _skeleton(T)  # each thinned inside its own bounding box
    tprec = np.count_nonzero(sp & T) / np.count_nonzero(sp)
    tsens = np.count_nonzero(st & P) / np.count_nonzero(st)
    return 0.0 if tprec + tsens == 0 else float(2 * tprec * tsens / (tprec + tsens))


def betti_errors(
    pred: np.ndarray | Tensor,
    target: np.ndarray | Tensor,
    *,
    labels: Sequence[int] | None = None,
    connectivity: int | None = None,
    ignore_index: int | None = None,
    include_background: bool = False,
) -> tuple[int, ...] | dict[int, tuple[int, ...]]:
    """Betti-number errors per label: ``|beta_i(P) - beta_i(T)|`` for i = 0, 1 (2D) or 0, 1, 2 (3D).

    Args:
        pred, target: 2D or 3D label maps of one shape (NumPy or torch), or bool masks.
        labels, ignore_index, include_background: as :func:`cldice_score`.
        connectivity: foreground neighbours, 8 (default) or 4 in 2D, 26 (default) or 6 in 3D; the background
            takes the dual one (see :func:`betti_numbers`).

    Returns:
        ``{label: (e0, e1[, e2])}`` with ints; the tuple itself for two bool masks without ``labels``.

    Example:
        >>> gt = np.zeros((6, 6), dtype=np.int64); gt[1:5, 1:5] = 1; gt[2:4, 2:4] = 0   # a ring
        >>> pred = gt.copy(); pred[2:4, 2:4] = 1                                       # filled in
        >>> betti_errors(pred, gt)
        {1: (0, 1)}
    """
    ndimage = _require("scipy.ndimage", "betti_errors")
    conn = _check_connectivity(connectivity, len(pred.shape))
    single, rows = _label_masks(pred, target, labels, ignore_index, include_background)
    out = {}
    for c, P, T in rows:
        bp, bt = _betti(ndimage, P, conn), _betti(ndimage, T, conn)
        out[c] = tuple(abs(a - b) for a, b in zip(bp, bt))
    return out[1] if single else out


__all__ = ["DUAL_CONNECTIVITY", "betti_numbers", "betti_errors", "cldice_score"]
