"""Per-component (CC-Metrics) and lesion-wise (detection, panoptic quality) metrics of one binary case.

A global Dice is dominated by the large structures of a case: missing a small lesion costs little of it.
The two families here score every connected component of the reference on its own.

**Connected components.** ``connectivity`` names which neighbours touch: ``None`` (the default) is full
connectivity (8 in 2D, 26 in 3D: cc3d's, CC-Metrics' and panoptica's 3D default), an integer
1..ndim is SciPy's rank (``generate_binary_structure(ndim, k)``: 1 = faces only, 4 in 2D / 6 in 3D),
and the neighbour counts 4, 8 (2D) and 6, 18, 26 (3D) are accepted too. Components are found with
``scipy.ndimage.label``.

**CC-Metrics** (Jaus et al., "Every Component Counts", AAAI 2025, arXiv 2410.18684;
:func:`component_metrics`). With G_1..G_n the connected components of the reference, every voxel x of
the image is assigned to its nearest component (the Voronoi cell of G_k):

    cell(x) = argmin_k d(x, G_k)          (Euclidean, in the units of ``spacing``; ties: SciPy's EDT)

and each metric m is computed inside each cell: m_k = m(pred & cell_k, gt & cell_k) (for the distance
metrics on the bounding box of the cell, the outside of which counts as outside, which is what cropping
to it gives). ``aggregate="case"`` returns the mean over the n components (CC-Metrics' "patient"
reduction); ``aggregate="components"`` returns every component's values (pool them over cases for
CC-Metrics' "overall" reduction). A prediction component between two reference components is split
between their cells, so each false positive counts against the component it is nearest to.

**Lesion-wise detection** (:func:`lesion_metrics`; panoptica, BraTS 2023+ lesion-wise). The components
P_1..P_m of the prediction and G_1..G_n of the reference are matched one-to-one, greedily: all
intersecting pairs by IoU(P_i, G_j) = |P_i & G_j| / |P_i | G_j| descending (ties: smaller reference
id, then smaller prediction id), a pair is taken when neither is taken yet and it qualifies:
``match="iou"``: IoU > ``threshold`` (>= with ``strict=False``; panoptica's ``NaiveThresholdMatching``
default is IoU >= 0.5, its ``strict_threshold=True`` is >); ``match="overlap"``: any overlap (IoU > 0).
Then, with TP matched pairs, FP unmatched prediction components and FN unmatched reference components:

    precision = TP / (TP + FP)      recall = TP / (TP + FN)      F1 = RQ = 2 TP / (2 TP + FP + FN)
    SQ = mean IoU of the matched pairs (0 when TP = 0)            PQ = SQ * RQ

(Kirillov et al., "Panoptic Segmentation", CVPR 2019; one class). A ratio whose denominator is 0 (no
component on the side it divides by) follows ``empty`` when the case has no component at all, and is
0 otherwise (nothing predicted: precision 0; nothing to find but something predicted: recall 0).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
from torch import Tensor

from .._checks import check_choice
from ..transforms import _components, _mask, _spacing, _structure, voronoi_cells  # voronoi_cells: re-exported
from .overlap import EMPTY_POLICIES
from .surface import METRICS, segmentation_metrics

__all__ = ["connected_components", "voronoi_cells", "component_metrics", "lesion_metrics"]

AGGREGATES = ("case", "components")
MATCHES = ("iou", "overlap")


def connected_components(mask: np.ndarray | Tensor, *, connectivity: int | None = None) -> tuple[np.ndarray, int]:
    """Connected components of a binary mask: ``(ids, n)``, ids 1..n on the mask and 0 elsewhere (int32).

    ``connectivity``: ``None`` (full: 8 in 2D, 26 in 3D), a rank 1..ndim or a neighbour count (see the
    module docstring). The per-class, any-kind version for data loaders is
    :func:`diceloss.transforms.label_components`.
    """
    return _components(_mask(mask, "mask", None), connectivity)


def _bboxes(cells: np.ndarray, n: int) -> list[tuple[slice, ...]]:
    from scipy import ndimage  # SciPy on first use: importing it costs 0.3 s of `import diceloss`

    return list(ndimage.find_objects(cells, max_label=n))


def component_metrics(
    pred: np.ndarray | Tensor,
    gt: np.ndarray | Tensor,
    metrics: Sequence[str] = ("dice",),
    *,
    label: int | None = None,
    connectivity: int | None = None,
    spacing: float | Sequence[float] | None = None,
    aggregate: str = "case",
    tolerance: float = 1.0,
    empty_distance: str = "inf",
    cells: np.ndarray | None = None,
) -> dict[str, float] | list[dict[str, float]]:
    """CC-Metrics: each metric inside the Voronoi cell of each reference component (see the module docstring).

    Args:
        pred, gt: binary masks (bool or 0/1) of one shape, NumPy or torch; or label maps with ``label``.
        metrics: names from :data:`diceloss.metrics.surface.METRICS` ("dice", "iou", "precision",
            "recall", "avd", "rvd", "hd", "hd95", "assd", "nsd"), with the definitions of
            :func:`segmentation_metrics`, evaluated on (pred & cell_k, gt & cell_k).
        label: evaluate ``pred == label`` against ``gt == label``.
        connectivity: of the reference components (None: full).
        spacing: voxel size per axis (or one number); the Voronoi distances and the distance metrics use it.
        aggregate: "case": ``{metric: mean over components}``; "components": one dict per component, in
            component order, each with "component" (its id), "size" (its voxel count) and the metrics.
        tolerance, empty_distance: as in :func:`segmentation_metrics`; a component whose cell holds no
            prediction (a missed component) has distances of ``inf`` by default (CC-Metrics replaces
            them with a worst score it asks the user for).
        cells: precomputed ``voronoi_cells(gt, ...)[0]`` (same connectivity and spacing), to skip the EDT.

    A reference with no component: "case" gives the scores of a both-empty (1 for overlap, 0 for
    distances) when ``pred`` is empty too and 0 / ``inf`` otherwise (CC-Metrics' best and worst scores);
    "components" gives an empty list.

    Example:
        >>> gt = np.zeros((1, 12), dtype=bool); gt[0, 1:3] = True; gt[0, 8:11] = True
        >>> pred = np.zeros_like(gt); pred[0, 1:3] = True                # the large one is missed
        >>> component_metrics(pred, gt)
        {'dice': 0.5}
        >>> [round(r["dice"], 3) for r in component_metrics(pred, gt, aggregate="components")]
        [1.0, 0.0]
    """
    metrics = tuple(metrics)
    if not metrics:
        raise ValueError("metrics must name at least one metric, got none")
    for m in metrics:
        check_choice("metric", m, METRICS)
    check_choice("aggregate", aggregate, AGGREGATES)
    p = _mask(pred, "pred", label)
    g = _mask(gt, "gt", label)
    if p.shape != g.shape:
        raise ValueError(f"pred and gt must have the same shape, got {tuple(p.shape)} and {tuple(g.shape)}")
    if cells is None:
        cells, n = voronoi_cells(g, connectivity=connectivity, spacing=spacing)
    else:
        cells = np.asarray(cells)
        if cells.shape != g.shape:
            raise ValueError(f"cells must have the shape of gt {tuple(g.shape)}, got {tuple(cells.shape)}")
        n = int(cells.max()) if cells.size else 0
    if n == 0:
        if aggregate == "components":
            return []
        hit = bool(p.any())
        best = {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0, "avd": 0.0, "rvd": 0.0}
        return {m: (0.0 if m in best else float("inf")) if hit else best.get(m, 0.0) for m in metrics}
    flat = cells.ravel()
    size = np.bincount(flat[g.ravel()], minlength=n + 1)[1:]
    npred = np.bincount(flat[p.ravel()], minlength=n + 1)[1:]
    inter = np.bincount(flat[(p & g).ravel()], minlength=n + 1)[1:]
    rows: list[dict[str, float]] = [{"component": k + 1, "size": int(size[k])} for k in range(n)]
    for k, r in enumerate(rows):
        if "dice" in metrics:
            r["dice"] = float(2 * inter[k] / (npred[k] + size[k]))
        if "iou" in metrics:
            r["iou"] = float(inter[k] / (npred[k] + size[k] - inter[k]))
    rest = tuple(m for m in metrics if m not in ("dice", "iou"))
    if rest:
        sp = _spacing(spacing, g.ndim)
        for k, box in enumerate(_bboxes(cells, n)):
            inside = cells[box] == k + 1
            vals = segmentation_metrics(p[box] & inside, g[box] & inside, labels=[1], metrics=rest,
                                        spacing=sp, tolerance=tolerance, empty_distance=empty_distance,
                                        backend="scipy")[1]
            rows[k].update(vals)
    rows = [{"component": r["component"], "size": r["size"], **{m: r[m] for m in metrics}} for r in rows]
    if aggregate == "components":
        return rows
    return {m: float(np.mean([r[m] for r in rows])) for m in metrics}


def _ratio(num: float, den: float, none: bool, empty: str) -> float:
    if den > 0:
        return float(num / den)
    if none:
        return {"one": 1.0, "zero": 0.0, "nan": float("nan")}[empty]
    return 0.0


def lesion_metrics(
    pred: np.ndarray | Tensor,
    gt: np.ndarray | Tensor,
    *,
    match: str = "iou",
    threshold: float = 0.5,
    strict: bool = True,
    label: int | None = None,
    connectivity: int | None = None,
    empty: str = "one",
) -> dict[str, object]:
    """Lesion-wise detection scores and panoptic quality of one case (definitions in the module docstring).

    Args:
        pred, gt: binary masks (bool or 0/1) of one shape, NumPy or torch; or label maps with ``label``.
        match: "iou" (a pair matches when IoU > ``threshold``) or "overlap" (any overlap; ``threshold``
            unused). Matching is one-to-one, greedy by IoU descending.
        threshold: the IoU a match must exceed, in [0, 1) (default 0.5, panoptica's).
        strict: ``False`` matches at IoU >= ``threshold`` (panoptica's default comparison).
        label: evaluate ``pred == label`` against ``gt == label``.
        connectivity: of the components of both (None: full, 8 in 2D / 26 in 3D).
        empty: "one" | "zero" | "nan": the scores of a case with no component in either.

    Returns:
        ``{"tp", "fp", "fn"`` (ints), ``"precision", "recall", "f1", "sq", "rq", "pq"`` (floats),
        ``"matches"``: ``[(gt_id, pred_id, iou), ...]`` in matching order, ids those of
        :func:`connected_components` of each``}``.

    Example:
        >>> gt = np.zeros((1, 16), dtype=bool); gt[0, 1:5] = True; gt[0, 8:10] = True
        >>> pred = np.zeros_like(gt); pred[0, 1:4] = True; pred[0, 13:15] = True
        >>> r = lesion_metrics(pred, gt)          # one found (IoU 3/4), one missed, one false positive
        >>> r["tp"], r["fp"], r["fn"], round(r["f1"], 4), round(r["pq"], 4)
        (1, 1, 1, 0.5, 0.375)
    """
    check_choice("match", match, MATCHES)
    check_choice("empty", empty, EMPTY_POLICIES)
    if not (isinstance(threshold, numbers.Real) and 0.0 <= float(threshold) < 1.0):
        raise ValueError(f"threshold must be a number in [0, 1), got {threshold!r}")
    p = _mask(pred, "pred", label)
    g = _mask(gt, "gt", label)
    if p.shape != g.shape:
        raise ValueError(f"pred and gt must have the same shape, got {tuple(p.shape)} and {tuple(g.shape)}")
    from scipy import ndimage

    struct = _structure(g.ndim, connectivity)
    gid, ng = ndimage.label(g, structure=struct)
    pid, npr = ndimage.label(p, structure=struct)
    return _lesion_scores(gid, int(ng), pid, int(npr), match=match, threshold=float(threshold), strict=strict,
                          empty=empty)


def _lesion_scores(gid: np.ndarray, ng: int, pid: np.ndarray, npr: int, *, match: str, threshold: float,
                   strict: bool, empty: str) -> dict[str, object]:
    """:func:`lesion_metrics` from the component ids of reference and prediction (options checked)."""
    gsize = np.bincount(gid.ravel(), minlength=ng + 1)
    psize = np.bincount(pid.ravel(), minlength=npr + 1)
    both = (gid > 0) & (pid > 0)
    pair = gid[both].astype(np.int64) * (npr + 1) + pid[both]
    codes, inter = np.unique(pair, return_counts=True)
    gi, pi = codes // (npr + 1), codes % (npr + 1)
    iou = inter / (gsize[gi] + psize[pi] - inter)
    order = np.lexsort((pi, gi, -iou))
    taken_g: set[int] = set()
    taken_p: set[int] = set()
    matches: list[tuple[int, int, float]] = []
    for j in order:
        a, b, v = int(gi[j]), int(pi[j]), float(iou[j])
        if a in taken_g or b in taken_p:
            continue
        if match == "iou" and not (v > threshold or (not strict and v >= threshold)):
            continue
        taken_g.add(a)
        taken_p.add(b)
        matches.append((a, b, v))
    tp = len(matches)
    fp, fn = npr - tp, ng - tp
    none = ng == 0 and npr == 0
    f1 = _ratio(2 * tp, 2 * tp + fp + fn, none, empty)
    sq = float(np.mean([v for _, _, v in matches])) if tp else _ratio(0, 0, none, empty)
    return {
        "tp": tp, "fp": fp, "fn": fn,
        "precision": _ratio(tp, tp + fp, none, empty),
        "recall": _ratio(tp, tp + fn, none, empty),
        "f1": f1, "sq": sq, "rq": f1, "pq": sq * f1,
        "matches": matches,
    }
