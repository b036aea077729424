"""The component, lesion-wise and topology metrics of one case, label by label, as ``diceloss eval`` gives them.

:func:`family_metrics` scores every label c of two label maps on its masks P = {pred == c} and T = {gt == c}
with the definitions of :func:`~diceloss.metrics.component_metrics` (``cc_dice``),
:func:`~diceloss.metrics.lesion_metrics` (``lesion_f1``, ``lesion_precision``, ``lesion_recall``, ``pq``),
:func:`~diceloss.metrics.cldice_score` (``cldice``) and :func:`~diceloss.metrics.betti_errors` (``betti0``,
``betti1``, ``betti2``); :func:`family_definitions` words them with the options used, for the JSON file, the
terminal and the report.

**Connectivity.** ``connectivity="full"`` (the default: voxels that share a face, an edge or a corner touch;
8 in 2D, 26 in 3D) or ``"face"`` (4 in 2D, 6 in 3D) is the one of every component: the reference components
whose Voronoi cells cc_dice scores, the components the lesion-wise metrics match, and the foreground of the
Betti numbers (whose background takes the dual one, 4 / 6 for full and 8 / 26 for face).

**How.** One bounding box per label (:func:`~diceloss.metrics.surface.label_boxes`: one ``find_objects``
pass per map, which ``segmentation_metrics`` of the same case can share); per label, everything inside
that box plus one voxel (outside it both masks are empty, so each value is that of the whole image): each
mask is labelled once, and its components serve cc_dice's Voronoi cells, the lesion matching and beta0; a
reference of one component is its own Voronoi cell (no distance transform); the skeletons are thinned
inside each mask's own box; the Euler characteristic of beta1 is one pass of 2 x 2 x 2 windows. The values
are those of the public functions called one by one, bit for bit (tested).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
from torch import Tensor

from .._checks import check_choice
from ..transforms import _bounding_box, _require, _spacing, _structure, _voronoi
from .components import MATCHES, _lesion_scores, component_metrics
from .overlap import EMPTY_POLICIES, empty_fill
from .surface import LabelBoxes, _as_label_array, label_boxes, select_labels
from .topology import _betti, _cldice

__all__ = ["COMPONENT_METRICS", "LESION_METRICS", "TOPOLOGY_METRICS", "FAMILY_METRICS", "CONNECTIVITIES", "MATCHES",
           "family_metrics", "blank_family", "family_definitions"]

COMPONENT_METRICS = ("cc_dice",)
LESION_METRICS = ("lesion_f1", "lesion_precision", "lesion_recall", "pq")
TOPOLOGY_METRICS = ("cldice", "betti0", "betti1", "betti2")
FAMILY_METRICS = COMPONENT_METRICS + LESION_METRICS + TOPOLOGY_METRICS
CONNECTIVITIES = ("full", "face")
"""Component connectivity: full (8 in 2D, 26 in 3D) or face (4 in 2D, 6 in 3D)."""

_NEIGHBOURS = {"full": {2: 8, 3: 26}, "face": {2: 4, 3: 6}}


def _check_options(metrics, connectivity, match, threshold, strict, empty) -> tuple[str, ...]:
    if isinstance(metrics, str):
        raise TypeError(f"metrics must be a sequence of metric names, got the string {metrics!r}")
    metrics = tuple(metrics)
    if not metrics:
        raise ValueError("metrics must name at least one metric, got none")
    for m in metrics:
        check_choice("metric", m, FAMILY_METRICS)
    check_choice("connectivity", connectivity, CONNECTIVITIES)
    check_choice("match", match, MATCHES)
    check_choice("empty", empty, EMPTY_POLICIES)
    if isinstance(threshold, bool) or not (isinstance(threshold, numbers.Real) and 0.0 <= float(threshold) < 1.0):
        raise ValueError(f"threshold must be a number in [0, 1), got {threshold!r}")
    if not isinstance(strict, (bool, np.bool_)):
        raise TypeError(f"strict must be a bool, got {type(strict).__name__}")
    return metrics


def family_metrics(
    pred: np.ndarray | Tensor,
    gt: np.ndarray | Tensor,
    metrics: Sequence[str] = FAMILY_METRICS,
    *,
    labels: Sequence[int] | None = None,
    spacing: float | Sequence[float] | None = None,
    ignore_index: int | None = None,
    include_background: bool = False,
    empty: str = "one",
    connectivity: str = "full",
    match: str = "iou",
    threshold: float = 0.5,
    strict: bool = True,
    boxes: LabelBoxes | None = None,
) -> dict[int, dict[str, float]]:
    """The component, lesion-wise and topology metrics of one case, per label: ``{label: {metric: value}}``.

    Args:
        pred, gt: 2D or 3D label maps of one shape (NumPy or torch; integer or integral float), or bool masks.
        metrics: names from :data:`FAMILY_METRICS`: "cc_dice" (CC-Metrics Dice, mean over the reference
            components), "lesion_f1", "lesion_precision", "lesion_recall", "pq" (lesion-wise detection and
            panoptic quality), "cldice" (hard clDice), "betti0", "betti1", "betti2" (Betti-number errors;
            betti2 is NaN in 2D).
        labels: labels to score; default every label present in either map, background (0) excluded unless
            ``include_background``, ``ignore_index`` never (as :func:`segmentation_metrics` chooses them).
        spacing: voxel size per axis (or one number): the distances of cc_dice's Voronoi cells.
        ignore_index: ground-truth value whose voxels are background in both maps.
        empty: "one" | "zero" | "nan": the scores of a label with no voxel in either map (Betti errors: 0),
            and of a lesion-wise case with no component in either.
        connectivity: "full" (8 / 26, the default) or "face" (4 / 6): of every component (module docstring).
        match, threshold, strict: the lesion matching of :func:`~diceloss.metrics.lesion_metrics`: "iou"
            matches a pair when IoU > ``threshold`` (>= with ``strict=False``), "overlap" when they overlap.
        boxes: :func:`~diceloss.metrics.surface.label_boxes` of ``pred`` and ``gt`` when
            :func:`segmentation_metrics` of the case takes them too; the values do not depend on it.

    Example:
        >>> gt = np.zeros((8, 12), dtype=np.int64); gt[2:6, 1:4] = 1; gt[2:6, 7:10] = 1
        >>> pred = gt.copy(); pred[2:6, 7:10] = 0                       # the second component missed
        >>> r = family_metrics(pred, gt, ("cc_dice", "lesion_f1", "betti0"))
        >>> {k: round(v, 4) for k, v in r[1].items()}
        {'cc_dice': 0.5, 'lesion_f1': 0.6667, 'betti0': 1.0}
    """
    metrics = _check_options(metrics, connectivity, match, threshold, strict, empty)
    ndimage = _require("scipy.ndimage", "family_metrics")
    p, t = _as_label_array(pred, "pred"), _as_label_array(gt, "gt")
    if p.shape != t.shape:
        raise ValueError(f"pred and gt must have one shape, got {tuple(p.shape)} and {tuple(t.shape)}")
    if p.ndim not in (2, 3):
        raise ValueError(f"pred and gt must be 2D or 3D label maps, got shape {tuple(p.shape)}")
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral)):
        raise TypeError(f"ignore_index must be an int or None, got {type(ignore_index).__name__}")
    sp = _spacing(spacing, p.ndim)
    if boxes is not None and tuple(boxes.shape) != tuple(p.shape):
        raise ValueError(f"boxes must be label_boxes of these maps, of shape {tuple(p.shape)}; "
                         f"got boxes of shape {tuple(boxes.shape)}")
    if p.dtype == bool:
        p = p.view(np.uint8)
    if t.dtype == bool:
        t = t.view(np.uint8)
    keep = None
    if ignore_index is not None and (t == ignore_index).any():
        keep = t != ignore_index
    if boxes is None:
        boxes = label_boxes(p, t)
    present: set[int] = set()
    if labels is None and boxes is not None:  # the labels with a box, and 0 when a map has a zero
        present = {i + 1 for found in (boxes.pred, boxes.target) for i, b in enumerate(found) if b is not None}
        if include_background and not (p.all() and t.all()):
            present.add(0)
    elif labels is None:
        present = set(np.unique(p).tolist()) | set(np.unique(t).tolist())
    wanted = select_labels(present, labels, binary=False, include_background=include_background,
                           ignore_index=ignore_index)
    neighbours = _NEIGHBOURS[connectivity][p.ndim]
    struct = _structure(p.ndim, neighbours)
    cc = "cc_dice" in metrics
    lesion = any(m in LESION_METRICS for m in metrics)
    betti = any(m.startswith("betti") for m in metrics)
    out: dict[int, dict[str, float]] = {}
    for c in wanted:
        box = _box(boxes, p, t, c)
        if box is None:
            out[c] = blank_family(metrics, empty=empty, ndim=p.ndim)
            continue
        P, T = p[box] == c, t[box] == c
        if keep is not None:
            P &= keep[box]
        if not P.any() and not T.any():  # only ignored voxels held the label
            out[c] = blank_family(metrics, empty=empty, ndim=p.ndim)
            continue
        # each mask labelled once: the Voronoi sites of cc_dice, the lesions, and beta0 of the Betti numbers
        gid, ng = ndimage.label(T, structure=struct) if cc or lesion or betti else (None, 0)
        pid, npr = ndimage.label(P, structure=struct) if lesion or betti else (None, 0)
        row: dict[str, float] = {}
        if cc:
            cells = _voronoi(gid, int(ng), sp)
            row["cc_dice"] = float(component_metrics(P, T, ("dice",), cells=cells)["dice"])
        if lesion:
            r = _lesion_scores(gid, int(ng), pid, int(npr), match=match, threshold=float(threshold),
                               strict=bool(strict), empty=empty)
            row.update(lesion_f1=float(r["f1"]), lesion_precision=float(r["precision"]),
                       lesion_recall=float(r["recall"]), pq=float(r["pq"]))
        if "cldice" in metrics:
            row["cldice"] = _cldice(P, T, empty)
        if betti:
            bp = _betti(ndimage, P, neighbours, b0=int(npr))
            bt = _betti(ndimage, T, neighbours, b0=int(ng))
            e = [float(abs(a - b)) for a, b in zip(bp, bt)]
            row.update(betti0=e[0], betti1=e[1], betti2=e[2] if len(e) > 2 else math.nan)
        out[c] = {m: row[m] for m in metrics}
    return out


def _box(boxes: LabelBoxes | None, p: np.ndarray, t: np.ndarray, c: int) -> tuple[slice, ...] | None:
    """The box of label c in either map plus one voxel (clipped); None when absent from both."""
    if boxes is not None and c > 0:
        return boxes.union(c, margin=1)
    found = [b for b in (_bounding_box(p == c), _bounding_box(t == c)) if b is not None]
    if not found:
        return None
    return tuple(slice(max(min(b[i].start for b in found) - 1, 0), min(max(b[i].stop for b in found) + 1, n))
                 for i, n in enumerate(p.shape))


def blank_family(metrics: Sequence[str], *, empty: str = "one", ndim: int = 3) -> dict[str, float]:
    """The values of a label absent from both maps: the ``empty`` value for the scores, 0 for the Betti errors
    (NaN for betti2 in 2D)."""
    out = {}
    for m in metrics:
        if m.startswith("betti"):
            out[m] = math.nan if m == "betti2" and ndim < 3 else 0.0
        else:
            out[m] = float(empty_fill(empty))
    return out


def family_definitions(
    metrics: Sequence[str],
    *,
    connectivity: str = "full",
    match: str = "iou",
    threshold: float = 0.5,
    strict: bool = True,
    empty_name: str = "the empty value",
) -> dict[str, str]:
    """The definition of each family among ``metrics`` (keys cc_dice, lesion, cldice, betti), worded with the
    options :func:`family_metrics` was given; ``empty_name`` names the both-empty value (eval: "the --empty
    value")."""
    _check_options(FAMILY_METRICS, connectivity, match, threshold, strict, "one")
    full = connectivity == "full"
    conn = "full connectivity: 8 in 2D, 26 in 3D" if full else "face connectivity: 4 in 2D, 6 in 3D"
    dual = "8 in 2D / 26 in 3D, background the dual 4 / 6" if full else "4 in 2D / 6 in 3D, background the dual 8 / 26"
    if match == "iou":
        rule = f"a pair matching when IoU {'>' if strict else '>='} {float(threshold):g}"
    else:
        rule = "a pair matching when they overlap (IoU > 0)"
    text = {
        "cc_dice": "CC-Metrics Dice (Jaus et al., AAAI 2025): the image split into the Voronoi cells of the "
                   f"ground-truth connected components ({conn}; Euclidean distance in the spacing's units), Dice "
                   "of prediction and ground truth inside each cell, mean over the components of the case; no "
                   f"ground-truth component: 0 when the prediction has one, {empty_name} when neither has",
        "lesion": "lesion-wise detection (panoptica, BraTS lesion-wise): connected components of prediction and "
                  f"ground truth ({conn}) matched one-to-one, greedily by IoU descending, {rule}; "
                  "lesion_precision = TP/(TP+FP), lesion_recall = TP/(TP+FN), lesion_f1 = 2TP/(2TP+FP+FN) (= RQ), "
                  "pq = SQ * RQ with SQ the mean IoU of the matched pairs; no component in either: "
                  f"{empty_name}, a zero denominator otherwise: 0",
        "cldice": "hard clDice (Shit et al., CVPR 2021): 2 Tprec Tsens / (Tprec + Tsens), Tprec = |S(P) & T| / "
                  "|S(P)|, Tsens = |S(T) & P| / |S(T)|, S the scikit-image skeletonize (Zhang's thinning in 2D, "
                  f"Lee's in 3D; a mask thinned away whole is its own skeleton); both empty: {empty_name}, one "
                  "empty: 0",
        "betti": "Betti-number errors |beta_i(pred) - beta_i(gt)|: betti0 components, betti1 holes (2D) / "
                 "tunnels (3D), betti2 cavities (3D only; NaN in 2D); foreground connectivity "
                 f"{dual}; defined for empty masks too (both empty: 0)",
    }
    keys = {"cc_dice": "cc_dice", "cldice": "cldice", **dict.fromkeys(LESION_METRICS, "lesion"),
            **dict.fromkeys(("betti0", "betti1", "betti2"), "betti")}
    return {keys[m]: text[keys[m]] for m in metrics if m in keys}
