"""Per-label overlap and surface-distance metrics of one segmentation against a reference.

Inputs are one case each: two label maps (integer, or integral float) of the same spatial shape
``(*S)``, as NumPy arrays or torch tensors, or two boolean masks (one label, 1). For each evaluated
label c, with the prediction's and the reference's voxel sets Y' = {pred == c} and Y = {target == c}:

    Dice = 2|Y' & Y| / (|Y'| + |Y|)          IoU = |Y' & Y| / |Y' | Y|
    precision = |Y' & Y| / |Y'|              recall = |Y' & Y| / |Y|
    avd = | |Y'| - |Y| | * voxel volume      rvd = (|Y'| - |Y|) / |Y|   (signed)

Surfaces are the boundary voxels of each mask: the voxels of the mask with at least one of their
2 * ndim face neighbours outside it (outside the image counts as outside); this is MONAI's
``get_mask_edges`` (binary erosion with the cross-shaped structure, XOR). With d(x, B) the Euclidean
distance in physical units (``spacing``) from the centre of voxel x to the nearest voxel of the
boundary B, and D' = {d(x, dY) : x in dY'}, D = {d(x, dY') : x in dY}:

    hd    = max(max D', max D)                          (Hausdorff distance)
    hd95  = max(q95(D'), q95(D))                        (q: linear-interpolated quantile, as torch.quantile)
    assd  = (sum D' + sum D) / (|D'| + |D|)             (average symmetric surface distance)
    nsd   = (|{d in D' : d <= tau}| + |{d in D : d <= tau}|) / (|D'| + |D|)   (normalized surface dice;
            d <= tau up to a relative 8 ulps, so a distance of exactly tau counts: 3 * 0.8 <= 2.4)

These are the definitions of MONAI 1.6 ``compute_hausdorff_distance(percentile=...)`` (each direction's
percentile, then the larger), ``compute_average_surface_distance(symmetric=True)`` and
``compute_surface_dice`` (``use_subvoxels=False``); the tests check the numbers against MONAI.

Named definitions (``surface=`` and ``percentile=`` of :func:`segmentation_metrics`; the defaults are
MONAI's, above):

* ``surface="voxel"``: the boundary voxels above, each of weight 1.
* ``surface="surfel"``: DeepMind ``surface-distance``'s surface elements. On the grid of voxel corners
  (shifted by half a voxel), a corner whose 2^ndim neighbouring voxels are neither all in nor all out of the
  mask carries the marching-squares / marching-cubes piece of surface through it, weighted by its length
  (2D) or area (3D) in physical units (DeepMind's 16- and 256-entry tables); distances are between corners.
  hd95 is the nearest rank on the cumulative weight (sorted by distance, the first index where the
  cumulative weight fraction reaches 0.95: ``compute_robust_hausdorff``); assd is the weighted mean over
  both directions, (sum a d + sum b e) / (sum a + sum b), from which DeepMind's two directed means
  (``compute_average_surface_distance``) are its parts; nsd is the weighted fraction within the tolerance
  (``compute_surface_dice_at_tolerance``; with the few-ulp tie slack below, where DeepMind drops a
  distance that rounding puts one step above the tolerance). 2D and 3D only.
* ``percentile="directed"``: hd95 (and hd at any percentile) is the larger of the two directed percentiles
  (MONAI, DeepMind); ``percentile="pooled"``: one percentile of both directions' distances together
  (medpy ``hd95``; with ``surface="surfel"``, the nearest rank over both weighted sets). hd (the maximum),
  assd and nsd are the same under both (medpy 0.5.2's ``assd`` pools both directions too, as MONAI).

Empty masks (a documented, configurable policy; ``empty`` takes the values of
:data:`diceloss.metrics.EMPTY_POLICIES`, and its default here is "one": see :mod:`diceloss.metrics`):

* both empty (label absent from prediction and reference): Dice, IoU, precision, recall and NSD take
  ``empty`` ("one" -> 1, the default; "zero" -> 0; "nan" -> NaN); avd and rvd are 0 (NaN under
  "nan"); hd, hd95 and assd are NaN (there is no surface to measure; NaN is left out of the means).
* one empty: Dice = IoU = NSD = 0; precision (empty prediction) or recall and rvd (empty reference)
  are NaN (0/0, undefined); hd, hd95 and assd follow ``empty_distance``: "inf" (the default),
  "nan" (left out of the means) or "diagonal" (the image diagonal in physical units,
  sqrt(sum(((n_i - 1) * spacing_i)^2)), a finite worst case). MONAI 1.6.1 gives inf for hd and assd
  but NaN for hd95 (NaN whenever a ``percentile`` is set, MONAI #9095).

How: one counting pass (``bincount``) over the volume for the overlap counts and one for the bounding
boxes of every label (``scipy.ndimage.find_objects``); then, per label, only the box around
prediction and reference (plus a one-voxel margin) is touched: boundaries by erosion, and one exact
Euclidean distance transform of the complement of each boundary (``scipy.ndimage.distance_transform_edt``,
or an exact separable min-plus transform in torch when SciPy is missing or ``backend="torch"``), read
at the other boundary's voxels. All metrics of a label come from these two distance sets.
"""

from __future__ import annotations

import functools
import itertools
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .._checks import check_choice
from .._distance import euclidean_distance
from .overlap import EMPTY_POLICIES, empty_fill

METRICS = ("dice", "iou", "precision", "recall", "avd", "rvd", "hd", "hd95", "assd", "nsd")
DEFAULT_METRICS = ("dice", "iou", "precision", "recall", "avd", "rvd", "hd95", "assd", "nsd")
DISTANCE_METRICS = ("hd", "hd95", "assd", "nsd")
EMPTY_DISTANCES = ("inf", "nan", "diagonal")
BACKENDS = ("auto", "scipy", "torch")
SURFACES = ("voxel", "surfel")  # boundary voxels (MONAI, medpy) or area-weighted surface elements (DeepMind)
PERCENTILES = ("directed", "pooled")  # hd95: larger of the per-direction percentiles (MONAI), or one of both (medpy)

_SCORES = ("dice", "iou", "precision", "recall", "nsd")  # take the `empty` fill when both are empty
_MAX_DIRECT_LABEL = 1 << 16  # labels up to this are counted with bincount / find_objects


def _as_label_array(x: object, name: str) -> np.ndarray:
    """A NumPy integer (or bool) array of the label map ``x``; integral floats are accepted."""
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    elif not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray or torch.Tensor, got {type(x).__name__}")
    if x.dtype == bool or np.issubdtype(x.dtype, np.integer):
        return x
    if np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all():
            raise ValueError(f"{name} must be a label map of integers, got non-finite values")
        r = np.rint(x)
        if not np.array_equal(r, x):
            bad = x[r != x][:4].tolist()
            raise ValueError(f"{name} must be a label map of integers, got non-integer values such as {bad}")
        return r.astype(np.int64)
    raise TypeError(f"{name} must hold integer labels (or bool masks), got dtype {x.dtype}")


def _check_spacing(spacing: object, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    if isinstance(spacing, Tensor):
        spacing = spacing.tolist()
    if isinstance(spacing, (int, float, np.integer, np.floating)) and not isinstance(spacing, bool):
        values = [float(spacing)] * ndim
    else:
        values = [float(s) for s in np.asarray(spacing, dtype=np.float64).ravel()]
        if len(values) != ndim:
            raise ValueError(
                f"spacing must be one number or {ndim} numbers (one per spatial axis), got {len(values)}"
            )
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing must be finite and positive, got {values}")
    return tuple(values)


def _counts(arr: np.ndarray, direct: bool) -> dict[int, int]:
    """Voxels per label value."""
    if arr.size == 0:
        return {}
    if direct:
        bins = np.bincount(arr.ravel())
        nz = np.flatnonzero(bins)
        return dict(zip(nz.tolist(), bins[nz].tolist()))
    values, counts = np.unique(arr, return_counts=True)
    return dict(zip(values.tolist(), counts.tolist()))


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels of ``mask``, which has a one-voxel margin of False on every side; the result drops it.

    A voxel is on the boundary when it is in the mask and one of its face neighbours is not (scipy's
    ``binary_erosion`` with the default cross structure, XOR the mask).
    """
    core = (slice(1, -1),) * mask.ndim
    centre = mask[core]
    inner = centre.copy()
    for ax in range(mask.ndim):
        for side in (slice(None, -2), slice(2, None)):
            idx = list(core)
            idx[ax] = side
            inner &= mask[tuple(idx)]
    return centre & ~inner


# DeepMind surface-distance's lookup_tables._NEIGHBOUR_CODE_TO_NORMALS (Apache-2.0), compactly: per 2x2x2
# neighbour code (bit 7 - (4a + 2b + c) for the voxel at offset (a, b, c)), its marching-cubes triangles'
# normals, three letters each, a..i for -4/8..4/8; a normal's length (scaled by the spacing) is the area.
_NORMALS_3D = """\
eee fff ddf ccegge fdf cecgeg fdfddf ieegggfff dff fffdff cegceg ieeccgddf gcegce ieegcgdfd
aeecggdff ieeiee fdd eccegg ddffdd eaegggfff fdffdd eeagggddd ddffdffdd dddcccgggfff dfffdd
ecceggdff cegcegfdd fffhhhecgceg fddgcegce hhhegcdddcge aeedddcccfff aeedddccc fdf ffffdf ecgegc
eaeffdggc fdffdf fdfcecgeg ecgegcfdf bbheggffdcec dfffdf ffffdfdff eeiccgddf ggcggcffdddf fdfgcegce
ieegcgdfdfdf egchbbdffgge aeeccgddf gcecge eiecggfdd eiefdfcgc eieeae gcecgefdf bbbcegdddcge
fffeaecccddd eaecccddd dffgcecge eieggcddfddf bhbccedfdceg eieggcddf gcecgegcegce ccecceddf
fffccecce ccecce ddf fffddf ddfddf ddfccegge ecgecg eeigcgfdf ecgecgddf hbheccdfdgge ddfdff
fffddfdff ddfcegceg ieeccgddfddf eiecgcfdf cgccgcdfddfd cechbbegcdff ieecgcfdf ceggec eeicggdff
ddfceggec cecbhhccedff eeaggcddf eeieei ffffffgggeei fffgggeei ceggecdff eeigcgfdffdf cegcegceggec
fdfgeggeg gegbbhcgeddf eeigcgfdf fffgeggeg geggeg ddffdf fffddffdf ddfecgegc eaeffdggcddf ecgecgfdf
eeigcgfdffdf ecgecgecgegc eggeggfdd dfffdfddf dfffdfddffff eeiccgddfddf ffffdffdd eiecgcfdffdf
fffddffdd ecceggfff ffffdd ieegccfdd cggdffcggfdd hbheggdfdceg eaecggdff bbhgceeggddf dffcggeei
fffeggegg eggegg ieegggffffff fdfddffff cecgegfff ffffdf cceggefff fffddf ffffff fff fff ffffff
fffddf cceggefff ffffdf cecgegfff fdfddffff ieegggffffff eggegg fffeggegg dffcggeei bbhgceeggddf
eaecggdff hbheggdfdceg cggdffcggfdd ieegccfdd ffffdd ecceggfff fffddffdd eiecgcfdffdf ffffdffdd
eeiccgddfddf dfffdfddffff dfffdfddf eggeggfdd ecceggeggegg eeigcgfdffdf ecgecgfdf eaeffdggcddf
ddfecgegc fffddffdf ddffdf geggeg fffgeggeg eeigcgfdf gegbbhcgeddf fdfgeggeg cecgeggeggeg
eeigcgfdffdf ceggecdff fffgggeei ffffffgggeei eeieei eeaggcddf cecbhhccedff ddfceggec eeicggdff
ceggec ieecgcfdf cechbbegcdff cgccgcdfddfd eiecgcfdf ieeccgddfddf ddfcegceg fffddfdff ddfdff
hbheccdfdgge ecgecgddf eeigcgfdf ecgecg ddfccegge ddfddf fffddf ddf ccecce fffccecce ccecceddf
ccecceccegge eieggcddf bhbccedfdceg eieggcddfddf dffgcecge eaecccddd fffeaecccddd bbbcegdddcge
gcecgefdf eieeae eiefdfcgc eiecggfdd gcecge aeeccgddf egchbbdffgge ieegcgdfdfdf fdfgcegce
ggcggcffdddf eeiccgddf ffffdfdff dfffdf bbheggffdcec ecgegcfdf fdfcecgeg fdffdf eaeffdggc ecgegc
ffffdf fdf aeedddccc aeedddcccfff hhhegcdddcge fddgcegce fffhhhecgceg cegcegfdd ecceggdff dfffdd
dddcccgggfff ddffdffdd eeagggddd fdffdd eaegggfff ddffdd eccegg fdd ieeiee aeecggdff ieegcgdfd
gcegce ieeccgddf cegceg fffdff dff ieegggfff fdfddf cecgeg fdf ccegge ddf fff eee"""


@functools.lru_cache(maxsize=64)
def _surfel_table(spacing: tuple[float, ...]) -> np.ndarray:
    """Length (2D, 16 codes) or area (3D, 256 codes) of the surface piece of each neighbour code, as
    DeepMind's ``create_table_neighbour_code_to_contour_length`` / ``..._surface_area`` (same arithmetic)."""
    if len(spacing) == 2:
        v, h = spacing
        diag = 0.5 * math.sqrt(v**2 + h**2)
        # bits: top left 8, top right 4, bottom left 2, bottom right 1 (axis 0 down, axis 1 right)
        lengths = {0b0001: diag, 0b0010: diag, 0b0011: h, 0b0100: diag, 0b0101: v, 0b0110: 2 * diag,
                   0b0111: diag, 0b1000: diag, 0b1001: 2 * diag, 0b1010: v, 0b1011: diag, 0b1100: h,
                   0b1101: diag, 0b1110: diag}
        table = np.zeros(16)
        for code, length in lengths.items():
            table[code] = length
        return table
    s0, s1, s2 = spacing
    table = np.zeros(256)
    for code, normals in enumerate(_NORMALS_3D.split()):
        area = 0
        for i in range(0, len(normals), 3):
            n = [(ord(ch) - ord("e")) / 8 for ch in normals[i : i + 3]]
            area += np.linalg.norm(np.array([n[0] * s1 * s2, n[1] * s0 * s2, n[2] * s0 * s1]))
        table[code] = area
    return table


def _surfels(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(neighbour code, surface-element mask) on the corner grid of ``mask`` (one more point per axis).

    Corner i along an axis lies between voxels i - 1 and i (outside the array counts as outside), as
    DeepMind's ``correlate`` of the zero-padded crop with the 2^ndim kernel.
    """
    nd = mask.ndim
    padded = np.pad(mask, 1).astype(np.uint8)
    corners = tuple(n + 1 for n in mask.shape)
    code = np.zeros(corners, np.uint8)
    for k, offs in enumerate(itertools.product((0, 1), repeat=nd)):
        code |= padded[tuple(slice(o, o + n) for o, n in zip(offs, corners))] << np.uint8(2**nd - 1 - k)
    full = 2 ** (2**nd) - 1
    return code, (code != 0) & (code != full)


def _edt_scipy(sites: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    from scipy.ndimage import distance_transform_edt

    return distance_transform_edt(~sites, sampling=spacing)


def _edt_torch(sites: np.ndarray, spacing: tuple[float, ...], device: str = "cpu") -> np.ndarray:
    """Exact Euclidean distance to the nearest True voxel of ``sites`` (which has one at least), by
    :func:`diceloss._distance.euclidean_distance`."""
    if torch.device(device).type != "cpu":
        return _edt_torch_impl(sites, spacing, device)
    # Each op here is small (~256K elements): intra-op threads gain little, and on a busy machine
    # waiting for the slowest thread made it 5x slower than one thread; so one thread, restored after.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _edt_torch_impl(sites, spacing, device)
    finally:
        torch.set_num_threads(threads)


def _edt_torch_impl(sites: np.ndarray, spacing: tuple[float, ...], device: str) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(sites)).to(device)[None]
    return euclidean_distance(t, spacing, torch.float64)[0].cpu().numpy()


def _resolve_backend(backend: str) -> str:
    check_choice("backend", backend, BACKENDS)
    if backend == "torch":
        return "torch"
    try:
        import scipy.ndimage  # noqa: F401
    except ImportError as err:
        if backend == "scipy":
            raise ImportError("backend='scipy' needs SciPy: pip install 'diceloss[io]' (or scipy)") from err
        return "torch"
    return "scipy"


def _bbox_numpy(arr: np.ndarray, label: int) -> tuple[slice, ...] | None:
    mask = arr == label
    if not mask.any():
        return None
    box = []
    for ax in range(arr.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(arr.ndim) if a != ax)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


@dataclass(frozen=True)
class LabelBoxes:
    """The bounding box of every label of a prediction and a reference label map, one pass per map.

    ``pred`` and ``target`` are ``scipy.ndimage.find_objects`` of each map: entry c - 1 is the box of label
    c (None where the map has no c). Made by :func:`label_boxes`; every metric of a case that works label by
    label inside boxes (:func:`segmentation_metrics`, :func:`diceloss.metrics.families.family_metrics`) can
    take the one made for the case instead of two passes of its own (``diceloss eval`` shares it).
    """

    shape: tuple[int, ...]
    pred: list
    target: list

    def union(self, label: int, margin: int = 0) -> tuple[slice, ...] | None:
        """The box of ``label`` in either map, ``margin`` voxels wider on each side (clipped to the image);
        None when neither map holds it (label 0 is not boxed: None)."""
        boxes = [b[label - 1] for b in (self.pred, self.target) if 0 < label <= len(b) and b[label - 1] is not None]
        if not boxes:
            return None
        return tuple(slice(max(min(b[i].start for b in boxes) - margin, 0),
                           min(max(b[i].stop for b in boxes) + margin, n)) for i, n in enumerate(self.shape))


def label_boxes(pred: np.ndarray | Tensor, target: np.ndarray | Tensor) -> LabelBoxes | None:
    """:class:`LabelBoxes` of two label maps of one shape (one ``find_objects`` pass each), or None when they
    are not maps of non-negative integers up to 65536 (a bool mask counts as labels 0 and 1), or SciPy is
    missing: the metrics then find each label's box on their own."""
    p = _as_label_array(pred, "pred")
    t = _as_label_array(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred and target must have one shape, got {tuple(p.shape)} and {tuple(t.shape)}")
    p, t = (a.view(np.uint8) if a.dtype == bool else a for a in (p, t))
    if not _direct(p, t):
        return None
    try:
        from scipy.ndimage import find_objects
    except ImportError:
        return None
    return LabelBoxes(tuple(p.shape), find_objects(p), find_objects(t))


def _direct(p: np.ndarray, t: np.ndarray) -> bool:
    """Both maps hold non-negative integers up to ``_MAX_DIRECT_LABEL``: counted with bincount, boxed with
    find_objects."""
    return p.size > 0 and all(
        np.issubdtype(a.dtype, np.integer) and int(a.min()) >= 0 and int(a.max()) <= _MAX_DIRECT_LABEL
        for a in (p, t)
    )


@dataclass
class LabelSurface:
    """What every metric of one label is computed from: voxel counts and the two surface-distance sets.

    ``d_pred`` holds, for each boundary voxel of the prediction, the distance to the reference's
    boundary; ``d_target`` the other way. Both are None when distances were not asked for, and empty
    when a mask is empty. Under ``surface="surfel"`` they are per surface element, and ``w_pred`` /
    ``w_target`` hold the elements' areas (lengths in 2D).
    """

    label: int
    intersection: int
    pred: int
    target: int
    d_pred: np.ndarray | None = None
    d_target: np.ndarray | None = None
    w_pred: np.ndarray | None = None  # surface-element areas ("surfel"); None: boundary voxels of weight 1
    w_target: np.ndarray | None = None


def select_labels(present, labels, *, binary: bool, include_background: bool, ignore_index: int | None) -> list[int]:
    """The labels a per-label metric evaluates: ``labels`` as given (checked), else every label present in either
    map (1 for two bool masks), less background unless ``include_background``, less ``ignore_index``."""
    if labels is None:
        if binary:
            return [1]
        return sorted(c for c in present if (include_background or c != 0) and c != ignore_index)
    wanted = [int(c) for c in labels]
    if len(set(wanted)) != len(wanted):
        raise ValueError(f"labels must not repeat, got {wanted}")
    if ignore_index is not None and ignore_index in wanted:
        raise ValueError(f"labels must not contain ignore_index={ignore_index}, got {wanted}")
    return wanted


def label_surfaces(
    pred: np.ndarray | Tensor,
    target: np.ndarray | Tensor,
    labels: Sequence[int] | None = None,
    *,
    spacing: float | Sequence[float] | None = None,
    ignore_index: int | None = None,
    include_background: bool = False,
    distances: bool = True,
    backend: str = "auto",
    surface: str = "voxel",
    boxes: LabelBoxes | None = None,
) -> list[LabelSurface]:
    """Counts and surface distances per label, in one pass over the volume plus one box per label.

    Args:
        pred, target: label maps of one shape (*S), or bool masks (then the label is 1).
        labels: labels to evaluate; default every label present in either, without 0 unless
            ``include_background``, never ``ignore_index``.
        spacing: voxel size per axis (or one number), physical units; default 1.
        ignore_index: target value whose positions are left out of both prediction and reference.
        distances: compute the surface-distance sets (else only the counts).
        backend: "auto" (SciPy when installed, else torch), "scipy" or "torch".
        surface: "voxel" (boundary voxels, MONAI) or "surfel" (area-weighted surface elements, DeepMind).
        boxes: :func:`label_boxes` of ``pred`` and ``target``, made once for a case that several metric
            functions score (else this pass makes its own).
    """
    check_choice("surface", surface, SURFACES)
    p = _as_label_array(pred, "pred")
    t = _as_label_array(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred and target must have one shape, got {tuple(p.shape)} and {tuple(t.shape)}")
    if p.ndim == 0:
        raise ValueError("pred and target must have at least one spatial axis, got 0-d arrays")
    spacing_t = _check_spacing(spacing, p.ndim)
    if surface == "surfel" and distances and p.ndim not in (2, 3):
        raise ValueError(f"surface='surfel' needs 2D or 3D maps (DeepMind's surface elements), got {p.ndim}D "
                         f"of shape {tuple(p.shape)}; use surface='voxel'")
    binary = p.dtype == bool and t.dtype == bool
    if p.dtype == bool:
        p = p.view(np.uint8)
    if t.dtype == bool:
        t = t.view(np.uint8)
    if boxes is not None and tuple(boxes.shape) != tuple(p.shape):
        raise ValueError(f"boxes must be label_boxes of these maps, of shape {tuple(p.shape)}; "
                         f"got boxes of shape {tuple(boxes.shape)}")
    if ignore_index is not None:
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
            raise TypeError(f"ignore_index must be an int or None, got {type(ignore_index).__name__}")
        invalid = t == ignore_index
        if invalid.any():
            # ignored positions get the ignore value in the prediction too: no evaluated label is there
            dtype = np.result_type(p.dtype, np.min_scalar_type(ignore_index))
            p = np.where(invalid, dtype.type(ignore_index), p.astype(dtype, copy=False))
            boxes = None  # those of the map as given: this one has fewer voxels per label
    direct = _direct(p, t)
    kind = _resolve_backend(backend) if distances else None
    boxes_p = boxes_t = None
    if kind == "scipy" and direct:
        # the bounding box of every label in one pass per map (find_objects: entry i is label i + 1);
        # every voxel of a label lies in its box, so the counts come from the boxes too
        if boxes is None:
            boxes = label_boxes(p, t)
        boxes_p, boxes_t = boxes.pred, boxes.target
        present = {i + 1 for boxes in (boxes_p, boxes_t) for i, b in enumerate(boxes) if b is not None}
        if (labels is None and include_background) and (not (p != 0).all() or not (t != 0).all()):
            present.add(0)
        P = G = inter = None
    else:
        P = _counts(p, direct)
        G = _counts(t, direct)
        inter = _counts(t[p == t], direct)
        present = set(P) | set(G)
    wanted = select_labels(present, labels, binary=binary, include_background=include_background,
                           ignore_index=ignore_index)
    if not distances:
        return [LabelSurface(c, inter.get(c, 0), P.get(c, 0), G.get(c, 0)) for c in wanted]

    def box_of(arr, boxes, counts, c):
        if boxes is not None and c > 0:
            return boxes[c - 1] if c <= len(boxes) else None
        if counts is not None and counts.get(c, 0) == 0:
            return None
        return _bbox_numpy(arr, c)

    edt = _edt_scipy if kind == "scipy" else _edt_torch
    results = []
    for c in wanted:
        bp, bt = box_of(p, boxes_p, P, c), box_of(t, boxes_t, G, c)
        if bp is None and bt is None:
            results.append(LabelSurface(c, 0, 0, 0, np.zeros(0), np.zeros(0)))
            continue
        box = tuple(
            slice(min(a.start, b.start), max(a.stop, b.stop)) if a is not None and b is not None else (a or b)
            for a, b in zip(bp or bt, bt or bp)
        )
        mask_p, mask_t = p[box] == c, t[box] == c
        r = LabelSurface(c, int(np.count_nonzero(mask_p & mask_t)), int(np.count_nonzero(mask_p)),
                         int(np.count_nonzero(mask_t)))
        results.append(r)
        if surface == "surfel":
            table = _surfel_table(spacing_t)
            code_p, edge_p = _surfels(mask_p)
            code_t, edge_t = _surfels(mask_t)
            r.w_pred, r.w_target = table[code_p[edge_p]], table[code_t[edge_t]]
        else:
            edge_p = _boundary(np.pad(mask_p, 1))
            edge_t = _boundary(np.pad(mask_t, 1))
        if r.pred == 0 or r.target == 0:
            # one empty: no distances to measure, the policy decides (see the module docstring)
            r.d_pred = np.full(int(edge_p.sum()), math.inf)
            r.d_target = np.full(int(edge_t.sum()), math.inf)
            continue
        r.d_pred = edt(edge_t, spacing_t)[edge_p]
        r.d_target = edt(edge_p, spacing_t)[edge_t]
    return results


_TIE_SLACK = 8 * float(np.finfo(np.float64).eps)  # relative; distances and tolerances are sums of a few products


def _metric(
    name: str,
    r: LabelSurface,
    *,
    voxel_volume: float,
    diagonal: float,
    tolerance: float,
    percentile: float | None,
    empty: str,
    empty_distance: str,
    pooled: bool = False,
) -> float:
    I, P, G = r.intersection, r.pred, r.target
    if P == 0 and G == 0:
        if name in _SCORES:
            return empty_fill(empty)
        if name in ("avd", "rvd"):
            return math.nan if empty == "nan" else 0.0
        return math.nan
    if name == "dice":
        return 2 * I / (P + G)
    if name == "iou":
        return I / (P + G - I)
    if name == "precision":
        return I / P if P else math.nan
    if name == "recall":
        return I / G if G else math.nan
    if name == "avd":
        return abs(P - G) * voxel_volume
    if name == "rvd":
        return (P - G) / G if G else math.nan
    if r.d_pred is None or r.d_target is None:
        raise RuntimeError("surface distances were not computed")
    if P == 0 or G == 0:
        if name == "nsd":
            return 0.0
        return {"inf": math.inf, "nan": math.nan, "diagonal": diagonal}[empty_distance]
    dp, dt = r.d_pred, r.d_target
    wp, wt = r.w_pred, r.w_target
    if name == "nsd":
        # a distance equal to the tolerance counts, also when it is a rounding step above it (3 * 0.8 is
        # 2.4000000000000004, not the 2.4 a user types): a relative slack of a few ulps
        tol = tolerance * (1.0 + _TIE_SLACK)
        if wp is not None:
            return float((wp[dp <= tol].sum() + wt[dt <= tol].sum()) / (wp.sum() + wt.sum()))
        within = np.count_nonzero(dp <= tol) + np.count_nonzero(dt <= tol)
        return float(within / (dp.size + dt.size))
    if name == "assd":
        if wp is not None:
            return float((np.sum(dp * wp) + np.sum(dt * wt)) / (np.sum(wp) + np.sum(wt)))
        return float((dp.sum() + dt.sum()) / (dp.size + dt.size))
    if name == "hd":
        percentile = None
    elif name == "hd95":
        percentile = 95.0
    # "_hdp": the Hausdorff distance at the caller's ``percentile``
    if percentile is None or percentile == 100:
        return float(max(dp.max(), dt.max()))
    q = percentile / 100.0
    if wp is not None:
        if pooled:
            return _nearest_rank(np.concatenate([dp, dt]), np.concatenate([wp, wt]), q)
        return max(_nearest_rank(dp, wp, q), _nearest_rank(dt, wt, q))
    if pooled:
        return float(np.quantile(np.concatenate([dp, dt]), q, method="linear"))
    return float(max(np.quantile(dp, q, method="linear"), np.quantile(dt, q, method="linear")))


def _nearest_rank(d: np.ndarray, w: np.ndarray, q: float) -> float:
    """DeepMind's ``compute_robust_hausdorff`` rule: sort by (distance, weight), the first distance whose
    cumulative weight fraction reaches ``q`` (the last one when rounding keeps it below)."""
    order = np.lexsort((w, d))
    d, w = d[order], w[order]
    cum = np.cumsum(w) / np.sum(w)
    return float(d[min(int(np.searchsorted(cum, q)), d.size - 1)])


def _check_definition(surface: str, percentile: object, name: str = "percentile") -> bool:
    """Validate a named surface-distance definition; True for a pooled percentile."""
    check_choice("surface", surface, SURFACES)
    if not isinstance(percentile, str) or percentile not in PERCENTILES:
        hint = (" (the percentile's value is hausdorff_distance(percentile=...); hd95 is 95)"
                if isinstance(percentile, numbers.Number) else "")
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in PERCENTILES)}; got {percentile!r}{hint}")
    return percentile == "pooled"


def definition_name(surface: str = "voxel", percentile: str = "directed") -> str:
    """A short label of a definition, e.g. "surface=voxel percentile=directed (MONAI)"."""
    _check_definition(surface, percentile)
    peer = {("voxel", "directed"): "MONAI", ("voxel", "pooled"): "medpy", ("surfel", "directed"): "DeepMind",
            ("surfel", "pooled"): "surfels, pooled percentile"}[surface, percentile]
    return f"surface={surface} percentile={percentile} ({peer})"


def _check_policies(empty: str, empty_distance: str) -> None:
    check_choice("empty", empty, EMPTY_POLICIES)
    check_choice("empty_distance", empty_distance, EMPTY_DISTANCES)


def _check_tolerance(tolerance: object) -> float:
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float, np.integer, np.floating)):
        raise TypeError(f"tolerance must be a number (physical units), got {type(tolerance).__name__}")
    if not math.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"tolerance must be finite and >= 0, got {tolerance}")
    return float(tolerance)


def _geometry(shape: tuple[int, ...], spacing: tuple[float, ...]) -> tuple[float, float]:
    voxel_volume = float(np.prod(spacing))
    diagonal = math.sqrt(sum(((n - 1) * s) ** 2 for n, s in zip(shape, spacing)))
    return voxel_volume, diagonal


def segmentation_metrics(
    pred: np.ndarray | Tensor,
    target: np.ndarray | Tensor,
    *,
    labels: Sequence[int] | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    spacing: float | Sequence[float] | None = None,
    tolerance: float = 1.0,
    ignore_index: int | None = None,
    include_background: bool = False,
    empty: str = "one",
    empty_distance: str = "inf",
    backend: str = "auto",
    surface: str = "voxel",
    percentile: str = "directed",
    boxes: LabelBoxes | None = None,
) -> dict[int, dict[str, float]]:
    """All asked metrics of one case, per label, from one pass (see the module docstring for formulas).

    Args:
        pred, target: label maps (*S) of one shape (NumPy or torch; integer or integral float), or bool masks.
        labels: labels to evaluate; default every label present in either, background (0) excluded
            unless ``include_background``; ``ignore_index`` never.
        metrics: names from ``METRICS``: "dice", "iou", "precision", "recall", "avd" (absolute volume
            difference, physical units^ndim), "rvd" (signed relative volume difference), "hd" (max
            Hausdorff), "hd95", "assd", "nsd" (at ``tolerance``).
        spacing: voxel size per axis or one number (e.g. mm); distances and avd are in these units.
        tolerance: NSD tolerance tau in the units of ``spacing``.
        ignore_index: target value whose positions are left out of prediction and reference.
        empty: both-empty policy: "one" | "zero" | "nan" (see the module docstring).
        empty_distance: one-empty distances: "inf" | "nan" | "diagonal".
        backend: distance transform: "auto" | "scipy" | "torch".
        surface: "voxel" (boundary voxels, MONAI's; the default) or "surfel" (surface elements weighted by
            their area, DeepMind surface-distance's; 2D and 3D).
        percentile: how hd95 treats the two directions: "directed" (each direction's percentile, then the
            larger: MONAI, DeepMind; the default) or "pooled" (one percentile of both together: medpy).
        boxes: :func:`label_boxes` of ``pred`` and ``target`` when other per-label metrics of the case take
            them too (one pass over each map for all); the values do not depend on it.

    Returns:
        ``{label: {metric: value}}`` with Python floats.

    Example:
        >>> gt = np.zeros((8, 8), dtype=np.int64); gt[2:6, 2:6] = 1
        >>> pred = np.roll(gt, 1, axis=0)
        >>> m = segmentation_metrics(pred, gt, metrics=("dice", "hd95", "nsd"))
        >>> {k: round(v, 4) for k, v in m[1].items()}
        {'dice': 0.75, 'hd95': 1.0, 'nsd': 1.0}
    """
    metrics = tuple(metrics)
    if not metrics:
        raise ValueError("metrics must name at least one metric, got none")
    for m in metrics:
        check_choice("metric", m, METRICS)
    _check_policies(empty, empty_distance)
    pooled = _check_definition(surface, percentile)
    tol = _check_tolerance(tolerance)
    need = any(m in DISTANCE_METRICS for m in metrics)
    rows = label_surfaces(pred, target, labels, spacing=spacing, ignore_index=ignore_index,
                          include_background=include_background, distances=need, backend=backend,
                          surface=surface, boxes=boxes)
    shape = tuple(pred.shape)
    vv, diag = _geometry(shape, _check_spacing(spacing, len(shape)))
    opts = dict(voxel_volume=vv, diagonal=diag, tolerance=tol, percentile=None, empty=empty,
                empty_distance=empty_distance, pooled=pooled)
    return {r.label: {m: _metric(m, r, **opts) for m in metrics} for r in rows}


def empty_metrics(metrics: Sequence[str] = DEFAULT_METRICS, *, empty: str = "one") -> dict[str, float]:
    """The values a label absent from both prediction and reference gets under ``empty``."""
    check_choice("empty", empty, EMPTY_POLICIES)
    r = LabelSurface(0, 0, 0, 0, np.zeros(0), np.zeros(0))
    return {m: _metric(m, r, voxel_volume=1.0, diagonal=0.0, tolerance=0.0, percentile=None, empty=empty,
                       empty_distance="nan") for m in metrics}


def _is_bool(x: object) -> bool:
    if isinstance(x, Tensor):
        return x.dtype == torch.bool
    return isinstance(x, np.ndarray) and x.dtype == np.bool_


def _per_label(
    name: str,
    pred,
    target,
    *,
    labels,
    spacing,
    tolerance: float = 1.0,
    percentile: float | None = None,
    ignore_index,
    include_background,
    empty,
    empty_distance,
    backend,
    surface: str = "voxel",
    pooled: bool = False,
):
    _check_policies(empty, empty_distance)
    check_choice("surface", surface, SURFACES)
    tol = _check_tolerance(tolerance)
    rows = label_surfaces(pred, target, labels, spacing=spacing, ignore_index=ignore_index,
                          include_background=include_background, distances=True, backend=backend,
                          surface=surface)
    shape = tuple(pred.shape)
    vv, diag = _geometry(shape, _check_spacing(spacing, len(shape)))
    opts = dict(voxel_volume=vv, diagonal=diag, tolerance=tol, percentile=percentile, empty=empty,
                empty_distance=empty_distance, pooled=pooled)
    values = [_metric(name, r, **opts) for r in rows]
    binary = labels is None and all(_is_bool(x) for x in (pred, target))
    out = np.asarray(values, dtype=np.float64)
    if binary:
        out = out.reshape(())
    if isinstance(pred, Tensor) or isinstance(target, Tensor):
        device = pred.device if isinstance(pred, Tensor) else target.device
        return torch.from_numpy(out).to(device)
    return out


def hausdorff_distance(
    pred: np.ndarray | Tensor,
    target: np.ndarray | Tensor,
    *,
    percentile: float | None = 95.0,
    labels: Sequence[int] | None = None,
    spacing: float | Sequence[float] | None = None,
    ignore_index: int | None = None,
    include_background: bool = False,
    empty: str = "one",
    empty_distance: str = "inf",
    backend: str = "auto",
    surface: str = "voxel",
    percentile_mode: str = "directed",
):
    """Symmetric Hausdorff distance per label: max over both directions of the ``percentile``-th
    percentile of the boundary-to-boundary distances (linear interpolation, as MONAI / torch.quantile);
    ``percentile=None`` (or 100) gives the maximum. Physical units from ``spacing``.

    ``surface="surfel"`` measures between DeepMind's area-weighted surface elements, with its nearest-rank
    percentile; ``percentile_mode="pooled"`` takes one percentile of both directions together (medpy's
    ``hd95``) instead of the larger of the two (see the module docstring).

    Returns (K,) float64 for K labels (NumPy for NumPy inputs, a tensor on the input's device for
    tensors), or a 0-d value for two bool masks. Empty masks: see the module docstring.

    Example:
        >>> gt = np.zeros((10, 10, 10), dtype=bool); gt[2:6, 2:6, 2:6] = True
        >>> hausdorff_distance(np.roll(gt, 2, axis=0), gt, spacing=(2.0, 1.0, 1.0))
        array(4.)
    """
    if percentile is not None:
        if isinstance(percentile, (bool, np.bool_)) or not isinstance(percentile, numbers.Real):
            raise TypeError(f"percentile must be a number or None, got {type(percentile).__name__}")
        percentile = float(percentile)  # NumPy scalars (np.float32(95)) too
        if not 0 <= percentile <= 100:
            raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    pooled = _check_definition(surface, percentile_mode, "percentile_mode")
    return _per_label("_hdp", pred, target, labels=labels, spacing=spacing, percentile=percentile,
                      ignore_index=ignore_index, include_background=include_background, empty=empty,
                      empty_distance=empty_distance, backend=backend, surface=surface, pooled=pooled)


def average_surface_distance(
    pred: np.ndarray | Tensor,
    target: np.ndarray | Tensor,
    *,
    labels: Sequence[int] | None = None,
    spacing: float | Sequence[float] | None = None,
    ignore_index: int | None = None,
    include_background: bool = False,
    empty: str = "one",
    empty_distance: str = "inf",
    backend: str = "auto",
    surface: str = "voxel",
):
    """Average symmetric surface distance (ASSD) per label: the mean of all boundary-to-boundary
    distances of both directions, (sum D' + sum D) / (|D'| + |D|). Shapes and types as
    :func:`hausdorff_distance`. ``surface="surfel"``: the area-weighted mean over DeepMind's surface elements.

    Example:
        >>> gt = np.zeros((8, 8), dtype=bool); gt[2:6, 2:6] = True
        >>> average_surface_distance(np.roll(gt, 1, axis=1), gt)
        array(0.5)
    """
    return _per_label("assd", pred, target, labels=labels, spacing=spacing, ignore_index=ignore_index,
                      include_background=include_background, empty=empty, empty_distance=empty_distance,
                      backend=backend, surface=surface)


def surface_dice(
    pred: np.ndarray | Tensor,
    target: np.ndarray | Tensor,
    *,
    tolerance: float = 1.0,
    labels: Sequence[int] | None = None,
    spacing: float | Sequence[float] | None = None,
    ignore_index: int | None = None,
    include_background: bool = False,
    empty: str = "one",
    backend: str = "auto",
    surface: str = "voxel",
):
    """Normalized surface Dice (NSD) per label at ``tolerance`` (physical units): the fraction of
    boundary voxels of both masks within ``tolerance`` of the other's boundary. Shapes and types as
    :func:`hausdorff_distance`; both empty -> ``empty``, one empty -> 0. ``surface="surfel"``: the
    area-weighted fraction of DeepMind's surface elements (``compute_surface_dice_at_tolerance``).

    Example:
        >>> gt = np.zeros((8, 8), dtype=bool); gt[2:6, 2:6] = True
        >>> surface_dice(np.roll(gt, 2, axis=1), gt, tolerance=1.0)  # 16 of the 24 boundary voxels
        array(0.66666667)
    """
    return _per_label("nsd", pred, target, labels=labels, spacing=spacing, tolerance=tolerance,
                      ignore_index=ignore_index, include_background=include_background, empty=empty,
                      empty_distance="inf", backend=backend, surface=surface)


__all__ = [
    "METRICS",
    "DEFAULT_METRICS",
    "SURFACES",
    "PERCENTILES",
    "definition_name",
    "LabelSurface",
    "label_surfaces",
    "segmentation_metrics",
    "empty_metrics",
    "hausdorff_distance",
    "average_surface_distance",
    "surface_dice",
]
