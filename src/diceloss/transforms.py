"""Target-side transforms for the data loader: instance ids, tubed skeletons, signed distances, Voronoi cells.

The losses of the field that need a map computed from the target (Skeleton Recall's tubed skeleton, blob
loss's instances, boundary loss's signed distance) and the per-component metrics take it from here. Each
runs once per case on the CPU, in a data loader worker, with scikit-image and SciPy doing the work (no
hand-written morphology). Install them with ``pip install 'diceloss[transforms]'``; a missing one raises an
ImportError naming that extra.

Inputs are one case: a label map or a bool mask of spatial shape ``(*S)``, 2D or 3D, as a NumPy array or a
CPU torch tensor; the output is of the same kind (a tensor for a tensor, an array for an array). A label
map holds non-negative integers (or integral floats); a bool mask is one class, label 1.

``connectivity`` (as in :mod:`diceloss.metrics.components`): ``None`` is full connectivity (8 in 2D, 26 in
3D), an integer 1..ndim is SciPy's rank (``generate_binary_structure(ndim, k)``; 1 = faces only), and the
neighbour counts 4, 8 (2D) and 6, 18, 26 (3D) are accepted too.
"""

from __future__ import annotations

import importlib
import numbers
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["label_components", "tubed_skeleton", "signed_distance", "voronoi_cells", "CONVENTIONS"]

CONVENTIONS = ("boundary", "kervadec")
"""The conventions of :func:`signed_distance`."""

_COUNTS = {2: {4: 1, 8: 2}, 3: {6: 1, 18: 2, 26: 3}}


def _require(module: str, what: str):
    """Import ``module`` (scipy / skimage), or raise an ImportError naming the package and the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        package = "scikit-image" if module.startswith("skimage") else "scipy"
        raise ImportError(f"{what} needs {package} (pip install {package}, or pip install 'diceloss[transforms]')"
                          ) from err


def _structure(ndim: int, connectivity: int | None) -> np.ndarray:
    """SciPy's structuring element of a connectivity (None: full; a rank 1..ndim; or a neighbour count)."""
    if connectivity is None:
        rank = ndim
    elif isinstance(connectivity, numbers.Integral) and 1 <= int(connectivity) <= ndim:
        rank = int(connectivity)
    elif isinstance(connectivity, numbers.Integral) and int(connectivity) in _COUNTS.get(ndim, {}):
        rank = _COUNTS[ndim][int(connectivity)]
    else:
        counts = sorted(_COUNTS.get(ndim, {}))
        raise ValueError(f"connectivity must be None, a rank 1..{ndim} or a neighbour count in {counts} "
                         f"for {ndim}-D masks, got {connectivity!r}")
    return _require("scipy.ndimage", "connected components").generate_binary_structure(ndim, rank)


def _spacing(spacing: float | Sequence[float] | None, ndim: int) -> tuple[float, ...] | None:
    if spacing is None:
        return None
    s = (float(spacing),) * ndim if isinstance(spacing, numbers.Real) else tuple(float(v) for v in spacing)
    if len(s) != ndim or not all(v > 0 for v in s):
        raise ValueError(f"spacing must be one positive number or {ndim} positive numbers, got {spacing!r}")
    return s


def _mask(x: object, name: str, label: int | None) -> np.ndarray:
    """A binary mask (bool or 0/1) of any dimension, or ``x == label``, as a bool NumPy array."""
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array or a torch tensor, got {type(x).__name__}")
    if x.ndim < 1:
        raise ValueError(f"{name} must have at least one spatial axis, got a 0-d array")
    if label is not None:
        return x == label
    if x.dtype == np.bool_:
        return x
    values = np.unique(x)
    if not np.isin(values, (0, 1)).all():
        raise ValueError(f"{name} must be a binary mask (bool or 0/1) unless label= names one label; "
                         f"got values {values[:8].tolist()}{' ...' if values.size > 8 else ''}")
    return x.astype(bool)


def _components(mask: np.ndarray, connectivity: int | None) -> tuple[np.ndarray, int]:
    """``scipy.ndimage.label`` of a bool mask: ids 1..n (int32), 0 elsewhere."""
    ndimage = _require("scipy.ndimage", "connected components")
    ids, n = ndimage.label(mask, structure=_structure(mask.ndim, connectivity))
    return ids.astype(np.int32, copy=False), int(n)


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest box holding every True voxel of ``mask`` (None when it has none)."""
    box = []
    for ax in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != ax)))
        if hit.size == 0:
            return None
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def _skeletonize(mask: np.ndarray, what: str) -> np.ndarray:
    """scikit-image's skeleton of a 2D or 3D bool mask (Zhang's thinning in 2D, Lee's in 3D).

    Thinned inside the bounding box of the mask only: both thinnings pad their input with background, look
    at 3 x 3 (x 3) neighbourhoods and visit voxels in raster order, which a crop keeps, so the skeleton is
    the same voxel for voxel (tested) at the cost of the box instead of the image (Lee's sweeps the whole
    array six times per layer it peels)."""
    skeletonize = _require("skimage.morphology", what).skeletonize
    box = _bounding_box(mask)
    out = np.zeros(mask.shape, dtype=bool)
    if box is not None:
        out[box] = skeletonize(np.ascontiguousarray(mask[box])).astype(bool, copy=False)
    return out


def _labels(x: object, name: str) -> tuple[np.ndarray, bool]:
    """A 2D or 3D label map or bool mask as a NumPy array; True when the input was a torch tensor."""
    torch_in = isinstance(x, Tensor)
    if torch_in:
        if x.device.type != "cpu":
            raise ValueError(f"{name} must be a CPU tensor or a NumPy array (a data-loader transform), "
                             f"got a tensor on {x.device}")
        x = x.detach().numpy()
    elif not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array or a CPU torch tensor, got {type(x).__name__}")
    if x.ndim not in (2, 3):
        raise ValueError(f"{name} must be one 2D or 3D case of shape (*S), got shape {tuple(x.shape)}")
    if x.dtype == np.bool_:
        return x, torch_in
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise TypeError(f"{name} must hold integer labels (or bool), got dtype {x.dtype}")
    if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x) & (x == np.round(x))):
        raise ValueError(f"{name} must hold integer labels, got non-integral values of dtype {x.dtype}")
    return x, torch_in


def _classes(x: np.ndarray, background: int | None, ignore_index: int | None, name: str) -> list[int]:
    if x.dtype == np.bool_:
        return [1] if x.any() else []
    values = np.unique(x)
    keep = [int(v) for v in values if v != background and (ignore_index is None or v != ignore_index)]
    bad = [v for v in keep if v < 0]
    if bad:
        raise ValueError(f"{name} must hold non-negative labels (or ignore_index), got {bad[:8]}")
    return keep


def _out(a: np.ndarray, torch_in: bool) -> np.ndarray | Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)) if torch_in else a


def label_components(
    labels: np.ndarray | Tensor,
    connectivity: int | None = None,
    *,
    background: int = 0,
    ignore_index: int | None = None,
) -> tuple[np.ndarray | Tensor, np.ndarray | Tensor]:
    """Connected components (instance ids) of a bool mask, or of each class of a label map: ``(ids, classes)``.

    Each class c (every label present but ``background`` and ``ignore_index``, ascending) is labelled on its
    own (``scipy.ndimage.label`` of ``labels == c``), so two touching classes are never one component, and
    its ids follow those of the classes before it: ids run 1..n over the image, unique across classes, 0 on
    the background and on ignored positions. ``classes[k]`` is the class of component k (``classes[0]`` = 0
    for the background), so ``classes[ids]`` is the label map again outside the ignored positions.

    Returns:
        ``ids``: shape ``(*S)``, int32 for NumPy, int64 for torch; ``classes``: shape ``(n + 1,)``, int64.

    Example:
        >>> m = np.array([[1, 1, 0, 2], [0, 0, 0, 2], [1, 0, 0, 0]])
        >>> ids, classes = label_components(m)
        >>> ids.tolist(), classes.tolist()
        ([[1, 1, 0, 3], [0, 0, 0, 3], [2, 0, 0, 0]], [0, 1, 1, 2])
    """
    x, torch_in = _labels(labels, "labels")
    ids = np.zeros(x.shape, dtype=np.int32)
    classes = [0]
    for c in _classes(x, background, ignore_index, "labels"):
        cid, n = _components(x if x.dtype == np.bool_ else x == c, connectivity)
        if n:
            inside = cid > 0
            ids[inside] = cid[inside] + (len(classes) - 1)
            classes.extend([c] * n)
    cls = np.asarray(classes, dtype=np.int64)
    if torch_in:
        return torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(cls)
    return ids, cls


def tubed_skeleton(
    labels: np.ndarray | Tensor,
    *,
    radius: int = 2,
    background: int = 0,
    ignore_index: int | None = None,
) -> np.ndarray | Tensor:
    """Skeleton Recall's target (Kirchhoff et al., ECCV 2024): each class's skeleton, tubed, labelled by class.

    Per class c: S_c = scikit-image ``skeletonize(labels == c)`` (2D or 3D), dilated ``radius`` times with
    the face-connected cross (``scipy.ndimage.generate_binary_structure(ndim, 1)``, scikit-image's default
    footprint), so a diamond (2D) / octahedron (3D) of L1 radius ``radius``, then cut to ``labels == c``
    and given the value c. The default ``radius=2`` is the authors' ``dilation(dilation(skel))``
    (MIC-DKFZ/Skeleton-Recall ``SkeletonTransform``, "a 2 px tube"); ``radius=0`` is the bare skeleton.

    The authors skeletonise the union of the foreground and multiply the tube by the label map; here each
    class is skeletonised on its own (the loss is per class), which is the same wherever classes do not
    touch. As in theirs, a blob that the 3D thinning deletes whole has no skeleton and adds nothing to the
    target (scikit-image 0.26 deletes e.g. a rod of 4 x 4 voxels' section; one of 5 x 5 keeps its centreline).

    Returns:
        A label map of the input's shape and dtype (bool for a bool mask): c on the tube of class c, 0 (or
        ``background``'s zero) elsewhere, ``ignore_index`` positions included.

    Example:
        >>> line = np.zeros((5, 9), dtype=np.int64); line[2, 1:8] = 3     # a 1-pixel line is its own skeleton
        >>> bool((tubed_skeleton(line, radius=0) == line).all())
        True
    """
    if isinstance(radius, bool) or not isinstance(radius, numbers.Integral) or radius < 0:
        raise ValueError(f"radius must be a non-negative integer (number of cross dilations), got {radius!r}")
    x, torch_in = _labels(labels, "labels")
    ndimage = _require("scipy.ndimage", "tubed_skeleton")
    cross = ndimage.generate_binary_structure(x.ndim, 1)
    out = np.zeros(x.shape, dtype=x.dtype)
    for c in _classes(x, background, ignore_index, "labels"):
        m = x if x.dtype == np.bool_ else x == c
        tube = _skeletonize(m, "tubed_skeleton")
        if radius and tube.any():
            tube = ndimage.binary_dilation(tube, structure=cross, iterations=int(radius)) & m
        out[tube] = c
    return _out(out, torch_in)


def signed_distance(
    labels: np.ndarray | Tensor,
    spacing: float | Sequence[float] | None = None,
    *,
    num_classes: int | None = None,
    convention: str = "boundary",
) -> np.ndarray | Tensor:
    """Per class the signed distance map of the boundary loss (Kervadec et al., MIDL 2019), in spacing units.

    For the mask G of a class, with d(x, A) the Euclidean distance (``spacing`` per axis; SciPy's
    ``distance_transform_edt(..., sampling=spacing)``) from the centre of voxel x to the nearest voxel
    centre of A:

    * ``convention="boundary"`` (default): with the inner boundary dG = the voxels of G that have a
      face-neighbour outside G (the image border is not outside), phi(x) = -d(x, dG) in G and
      phi(x) = +d(x, G) outside G. So phi is negative inside, positive outside and exactly 0 on dG for
      any spacing (d(x, G) from outside always ends on dG). At unit spacing it is the authors' map outside G
      and on dG, and inside it wherever the nearest outside voxel is straight along an axis (boxes, balls'
      cores), i.e. their ``-(EDT(G) - 1)``; it corrects the "-1" of their code, which assumes unit spacing
      (an anisotropic spacing leaves a non-zero boundary: LIVIAETS/boundary-loss#45).
    * ``convention="kervadec"``: their ``one_hot2dist`` verbatim, with the spacing as their ``resolution``:
      phi = EDT(not G)·[not G] - (EDT(G) - 1)·[G].

    A class absent from the image, or filling it, has phi = 0 everywhere (theirs: absent gives 0).

    Args:
        labels: a bool mask (one map returned) or a label map (classes 0..C-1, background included).
        spacing: voxel size per axis (or one number); default 1.
        num_classes: C for a label map (default: its largest label + 1).

    Returns:
        float32, ``(C, *S)`` for a label map, ``(*S)`` for a bool mask.

    Example:
        >>> g = np.zeros((1, 7), dtype=bool); g[0, 2:5] = True
        >>> signed_distance(g, spacing=2.0).tolist()
        [[4.0, 2.0, 0.0, -2.0, 0.0, 2.0, 4.0]]
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    x, torch_in = _labels(labels, "labels")
    sp = _spacing(spacing, x.ndim)
    ndimage = _require("scipy.ndimage", "signed_distance")
    if x.dtype == np.bool_:
        masks = [x]
    else:
        if x.size and x.min() < 0:
            raise ValueError(f"labels must hold non-negative labels 0..C-1, got {int(x.min())}")
        top = int(x.max()) + 1 if x.size else 0
        if num_classes is None:
            num_classes = top
        elif isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < top:
            raise ValueError(f"num_classes must be an integer >= the largest label + 1 ({top}), got {num_classes!r}")
        masks = [x == c for c in range(int(num_classes))]
    cross = ndimage.generate_binary_structure(x.ndim, 1)
    out = np.zeros((len(masks), *x.shape), dtype=np.float32)
    for k, g in enumerate(masks):
        if not g.any() or g.all():
            continue
        outside = ndimage.distance_transform_edt(~g, sampling=sp)
        if convention == "kervadec":
            phi = outside * ~g - (ndimage.distance_transform_edt(g, sampling=sp) - 1) * g
        else:
            edge = g & ~ndimage.binary_erosion(g, structure=cross, border_value=1)
            phi = np.where(g, -ndimage.distance_transform_edt(~edge, sampling=sp), outside) + 0.0  # -0 -> 0
        out[k] = phi
    return _out(out[0] if x.dtype == np.bool_ else out, torch_in)


def voronoi_cells(
    gt: np.ndarray | Tensor,
    *,
    connectivity: int | None = None,
    spacing: float | Sequence[float] | None = None,
) -> tuple[np.ndarray | Tensor, int]:
    """The Voronoi cells of the connected components of ``gt``: ``(cells, n)``.

    ``gt`` is a binary mask (bool or 0/1) of any dimension. ``cells[x]`` = the id (1..n) of the component
    nearest to voxel x (Euclidean distance in the units of ``spacing``; SciPy's ``distance_transform_edt``
    with ``return_indices``), all 0 when ``gt`` is empty; int32 (int64 for a torch tensor, returned as a
    tensor). Computed once per reference, it can be cached beside the case (it depends on the reference
    only); :func:`diceloss.metrics.component_metrics` takes it as ``cells=``.

    Example:
        >>> gt = np.array([1, 0, 0, 0, 0, 1, 1], dtype=bool)
        >>> voronoi_cells(gt)[0].tolist()
        [1, 1, 1, 2, 2, 2, 2]
    """
    torch_in = isinstance(gt, Tensor)
    ids, n = _components(_mask(gt, "mask", None), connectivity)
    cells = _voronoi(ids, n, _spacing(spacing, ids.ndim))
    return (torch.from_numpy(cells.astype(np.int64)) if torch_in else cells), n


def _voronoi(ids: np.ndarray, n: int, spacing: tuple[float, ...] | None) -> np.ndarray:
    """The Voronoi cells of components ``ids`` (1..n; 0 elsewhere), int32, as :func:`voronoi_cells`."""
    if n <= 1:  # none: all 0; one: every voxel is nearest to it, no distance transform needed
        return np.full(ids.shape, n, dtype=np.int32)
    ndimage = _require("scipy.ndimage", "voronoi_cells")
    idx = ndimage.distance_transform_edt(ids == 0, sampling=spacing, return_distances=False, return_indices=True)
    return ids[tuple(idx)].astype(np.int32, copy=False)
