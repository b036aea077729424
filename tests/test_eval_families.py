"""eval's metric families in one pass per case (``diceloss.metrics.families``) and the fast paths under them.

Every value is compared with exact equality against its oracle: the public functions called label by label
on the whole image (``component_metrics``, ``lesion_metrics``, ``cldice_score``, ``betti_errors``); the
Euler characteristic counted cell by cell on the doubled grid; scikit-image's skeleton of the whole image;
the Voronoi cells by SciPy's distance transform; the surface metrics without shared boxes.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import ndimage

from diceloss import transforms
from diceloss.metrics import betti_errors, cldice_score, component_metrics, lesion_metrics, segmentation_metrics
from diceloss.metrics.families import FAMILY_METRICS, family_definitions, family_metrics
from diceloss.metrics.surface import label_boxes
from diceloss.metrics.topology import _euler_characteristic

skimage_morphology = pytest.importorskip("skimage.morphology")


def euler_doubled(mask: np.ndarray, connectivity: int) -> int:
    """chi = sum over cells of (-1)^dim, each cell of the cubical complex visited on the doubled grid (a cell's
    dimension is its number of odd coordinates). Full connectivity: voxels at the all-odd positions of a grid
    of 2n + 1, a cell is in when a voxel within one step is; face: voxels at the all-even positions of 2n - 1,
    a cell is in when every voxel within one step is (positions between voxels count as in)."""
    if not mask.any():
        return 0
    if connectivity in (8, 26):
        grid = np.zeros(tuple(2 * n + 1 for n in mask.shape), dtype=bool)
        grid[(slice(1, None, 2),) * mask.ndim] = mask
        cells = ndimage.maximum_filter(grid, size=3, mode="constant", cval=False)
    else:
        grid = np.ones(tuple(2 * n - 1 for n in mask.shape), dtype=bool)
        grid[(slice(0, None, 2),) * mask.ndim] = mask
        cells = ndimage.minimum_filter(grid, size=3, mode="constant", cval=True)
    total = 0
    for pos in zip(*np.nonzero(cells)):
        total += (-1) ** sum(int(c) % 2 for c in pos)
    return total


def blobs(rng, shape, labels=3, smooth=True):
    """A label map of smooth random blobs (several components per label, some touching the border)."""
    f = rng.random(shape)
    if smooth:
        f = ndimage.uniform_filter(f, size=3)
    edges = np.quantile(f, np.linspace(0.5, 0.95, labels))
    return np.digitize(f, edges).astype(np.int64)


@pytest.mark.parametrize("ndim", [2, 3])
def test_euler_by_windows_equals_cell_by_cell(ndim):
    rng = np.random.default_rng(ndim)
    conns = (8, 4) if ndim == 2 else (26, 6)
    for k in range(60):
        shape = tuple(int(n) for n in rng.integers(1, 7 if ndim == 3 else 12, size=ndim))
        m = rng.random(shape) < (0.15 + 0.7 * k / 60)
        for conn in conns:
            assert _euler_characteristic(m, conn) == euler_doubled(m, conn), (shape, conn)
    for conn in conns:  # empty, full, one voxel
        assert _euler_characteristic(np.zeros((3,) * ndim, bool), conn) == 0
        assert _euler_characteristic(np.ones((3,) * ndim, bool), conn) == 1
        assert _euler_characteristic(np.ones((1,) * ndim, bool), conn) == 1


@pytest.mark.parametrize("ndim", [2, 3])
def test_skeleton_in_its_box_equals_skimage_on_the_image(ndim):
    rng = np.random.default_rng(10 + ndim)
    shape = (40, 50) if ndim == 2 else (18, 22, 20)
    for k in range(6):
        m = blobs(rng, shape, labels=1, smooth=k % 3 != 2) > 0
        if k == 1:  # a small object far from the origin: a box much smaller than the image
            m = np.zeros(shape, bool)
            m[(slice(7, 14),) * ndim] = rng.random((7,) * ndim) < 0.8
        want = skimage_morphology.skeletonize(m)
        got = transforms._skeletonize(m, "test")
        assert got.dtype == bool and np.array_equal(got, want), (k, int(got.sum()), int(want.sum()))
    assert not transforms._skeletonize(np.zeros(shape, bool), "test").any()


def test_voronoi_of_one_component_is_the_whole_image():
    rng = np.random.default_rng(1)
    g = np.zeros((9, 11, 7), bool)
    g[2:5, 3:6, 1:4] = rng.random((3, 3, 3)) < 0.9
    g[3, 4, 2] = True
    cells, n = transforms.voronoi_cells(g)
    assert n == 1 and cells.dtype == np.int32 and (cells == 1).all()
    ids, _ = ndimage.label(g, structure=np.ones((3, 3, 3)))
    idx = ndimage.distance_transform_edt(ids == 0, return_distances=False, return_indices=True)
    assert np.array_equal(cells, ids[tuple(idx)])  # what the distance transform gives
    two = g.copy()
    two[7:, 9:, 5:] = True
    cells, n = transforms.voronoi_cells(two, spacing=(1.0, 2.0, 0.5))
    ids, _ = ndimage.label(two, structure=np.ones((3, 3, 3)))
    idx = ndimage.distance_transform_edt(ids == 0, sampling=(1.0, 2.0, 0.5), return_distances=False,
                                         return_indices=True)
    assert n == 2 and np.array_equal(cells, ids[tuple(idx)])


def one_by_one(pred, gt, labels, *, connectivity, match, threshold, strict, empty, spacing, ignore_index):
    """The family values from the public functions, label by label, on the whole image."""
    ndim = gt.ndim
    neighbours = {"full": {2: 8, 3: 26}, "face": {2: 4, 3: 6}}[connectivity][ndim]
    keep = np.ones(gt.shape, bool) if ignore_index is None else gt != ignore_index
    out = {}
    for c in labels:
        P, T = (pred == c) & keep, gt == c
        if not P.any() and not T.any():
            out[c] = {m: (math.nan if m == "betti2" and ndim == 2 else 0.0) if m.startswith("betti")
                      else {"one": 1.0, "zero": 0.0, "nan": math.nan}[empty] for m in FAMILY_METRICS}
            continue
        r = lesion_metrics(P, T, match=match, threshold=threshold, strict=strict, connectivity=neighbours,
                           empty=empty)
        e = betti_errors(P, T, connectivity=neighbours)
        out[c] = {
            "cc_dice": component_metrics(P, T, ("dice",), connectivity=neighbours, spacing=spacing)["dice"],
            "lesion_f1": r["f1"], "lesion_precision": r["precision"], "lesion_recall": r["recall"], "pq": r["pq"],
            "cldice": cldice_score(P, T, empty=empty),
            "betti0": float(e[0]), "betti1": float(e[1]), "betti2": float(e[2]) if ndim == 3 else math.nan,
        }
    return out


def same(a, b):
    return a.keys() == b.keys() and all(
        a[c].keys() == b[c].keys() and all(x == y or (math.isnan(x) and math.isnan(y))
                                           for x, y in ((a[c][m], b[c][m]) for m in a[c])) for c in a)


CASES = [  # (ndim, connectivity, match, threshold, strict, empty, options)
    (2, "full", "iou", 0.5, True, "one", {}),
    (2, "face", "iou", 0.25, False, "nan", {"labels": [1, 3, 4], "spacing": (0.5, 2.0)}),
    (3, "full", "overlap", 0.5, True, "zero", {"ignore_index": 9}),
    (3, "face", "iou", 0.1, True, "one", {"include_background": True}),
]


@pytest.mark.parametrize("ndim,connectivity,match,threshold,strict,empty,options", CASES)
def test_family_metrics_equal_the_public_functions_one_by_one(ndim, connectivity, match, threshold, strict,
                                                              empty, options):
    rng = np.random.default_rng(ndim * 7 + len(options))
    shape = (36, 40) if ndim == 2 else (16, 18, 17)
    gt = blobs(rng, shape)
    pred = np.where(rng.random(shape) < 0.1, blobs(rng, shape), gt)  # the reference, with blobs of another
    pred = np.roll(pred, 1, axis=0)
    if "ignore_index" in options:
        gt[:, :3] = options["ignore_index"]
    kw = dict(connectivity=connectivity, match=match, threshold=threshold, strict=strict, empty=empty)
    got = family_metrics(pred, gt, FAMILY_METRICS, **kw, **options)
    labels = options.get("labels") or sorted((set(np.unique(pred)) | set(np.unique(gt)))
                                             - ({0} if not options.get("include_background") else set())
                                             - {options.get("ignore_index")})
    assert list(got) == labels
    want = one_by_one(pred, gt, labels, spacing=options.get("spacing"), ignore_index=options.get("ignore_index"),
                      **kw)
    assert same(got, want), (got, want)
    assert same(family_metrics(pred, gt, FAMILY_METRICS, **kw, **options, boxes=label_boxes(pred, gt)), got)
    sub = family_metrics(pred, gt, ("betti1", "cldice"), **kw, **options)
    assert same(sub, {c: {"betti1": v["betti1"], "cldice": v["cldice"]} for c, v in got.items()})


def test_family_metrics_on_maps_without_boxes_and_bool_masks():
    rng = np.random.default_rng(3)
    gt = blobs(rng, (30, 32))
    pred = np.roll(gt, 2, axis=1)
    big = pred.copy()
    big[0, 0] = 70_000  # above what find_objects boxes: each label's box from its mask
    assert label_boxes(big, gt) is None and label_boxes(gt - 1, gt) is None
    want = one_by_one(big, gt, [1, 2, 3, 70_000], connectivity="full", match="iou", threshold=0.5, strict=True,
                      empty="one", spacing=None, ignore_index=None)
    assert same(family_metrics(big, gt), want)
    shifted = family_metrics(pred - 1, gt - 1, include_background=True)  # labels -1..2: -1 is "background"
    assert same({c + 1: v for c, v in shifted.items() if c >= 0}, family_metrics(pred, gt))
    b = gt > 0
    assert same(family_metrics(np.roll(b, 1, 0), b), family_metrics(np.roll(b, 1, 0).astype(np.uint8),
                                                                    b.astype(np.uint8)))


def test_shared_boxes_give_the_same_surface_metrics():
    rng = np.random.default_rng(4)
    gt = blobs(rng, (14, 15, 16)).astype(np.uint8)
    pred = np.roll(gt, 1, axis=2)
    for kw in ({}, {"include_background": True}, {"labels": [2, 5]}, {"surface": "surfel"},
               {"ignore_index": 3}):
        want = segmentation_metrics(pred, gt, backend="scipy", **kw)
        got = segmentation_metrics(pred, gt, backend="scipy", boxes=label_boxes(pred, gt), **kw)
        assert same(got, want), kw
    with pytest.raises(ValueError, match=r"boxes must be label_boxes of these maps, of shape \(14, 15, 16\); "
                                         r"got boxes of shape \(3, 3, 3\)"):
        segmentation_metrics(pred, gt, boxes=label_boxes(gt[:3, :3, :3], gt[:3, :3, :3]))


def test_label_boxes_union_with_margin_clipped():
    p = np.zeros((6, 7), np.uint8)
    t = np.zeros_like(p)
    p[0:2, 1:3] = 1
    t[3:6, 5:7] = 1
    t[2, 2] = 3
    boxes = label_boxes(p, t)
    assert boxes.union(1) == (slice(0, 6), slice(1, 7))
    assert boxes.union(1, margin=1) == (slice(0, 6), slice(0, 7))
    assert boxes.union(3, margin=1) == (slice(1, 4), slice(1, 4))
    assert boxes.union(2) is None and boxes.union(4) is None and boxes.union(0) is None


def test_definitions_state_the_options():
    d = family_definitions(FAMILY_METRICS)
    assert set(d) == {"cc_dice", "lesion", "cldice", "betti"}
    assert "IoU > 0.5" in d["lesion"] and "full connectivity: 8 in 2D, 26 in 3D" in d["lesion"]
    assert "background the dual 4 / 6" in d["betti"]
    d = family_definitions(("pq", "betti0"), connectivity="face", threshold=0.25, strict=False)
    assert set(d) == {"lesion", "betti"} and "IoU >= 0.25" in d["lesion"] and "face connectivity" in d["lesion"]
    assert "4 in 2D / 6 in 3D, background the dual 8 / 26" in d["betti"]
    assert "when they overlap" in family_definitions(("pq",), match="overlap")["lesion"]


@pytest.mark.parametrize("kwargs,error,message", [
    ({"metrics": ("cc_dice", "dice")}, ValueError, r"metric must be one of .*got 'dice'"),
    ({"metrics": ()}, ValueError, r"metrics must name at least one metric, got none"),
    ({"metrics": "cldice"}, TypeError, r"metrics must be a sequence of metric names, got the string 'cldice'"),
    ({"connectivity": 26}, ValueError, r"connectivity must be one of 'full', 'face'; got 26"),
    ({"match": "dice"}, ValueError, r"match must be one of 'iou', 'overlap'; got 'dice'"),
    ({"threshold": 1.0}, ValueError, r"threshold must be a number in \[0, 1\), got 1.0"),
    ({"threshold": True}, ValueError, r"threshold must be a number in \[0, 1\), got True"),
    ({"strict": "yes"}, TypeError, r"strict must be a bool, got str"),
    ({"empty": "ones"}, ValueError, r"empty must be one of .*got 'ones'"),
    ({"ignore_index": 2.5}, TypeError, r"ignore_index must be an int or None, got float"),
])
def test_bad_options_name_what_was_expected(kwargs, error, message):
    m = np.zeros((4, 4), np.int64)
    with pytest.raises(error, match=message):
        family_metrics(m, m, **kwargs)


def test_bad_inputs_name_what_was_expected():
    m = np.zeros((4, 4), np.int64)
    with pytest.raises(ValueError, match=r"one shape, got \(4, 4\) and \(4, 5\)"):
        family_metrics(m, np.zeros((4, 5), np.int64))
    with pytest.raises(ValueError, match=r"2D or 3D label maps, got shape \(4,\)"):
        family_metrics(m[0], m[0])
    with pytest.raises(ValueError, match=r"boxes must be label_boxes of these maps, of shape \(4, 4\)"):
        family_metrics(m, m, boxes=label_boxes(m[:2], m[:2]))
    with pytest.raises(ValueError, match=r"non-integer values"):
        family_metrics(m + 0.5, m)
    with pytest.raises(ValueError, match=r"one shape, got \(4, 4\) and \(2, 4\)"):
        label_boxes(m, m[:2])


def test_window_table_gives_one_voxel_its_euler_characteristic():
    # a lone voxel lies in 2^ndim windows, one per position in the window; its chi (1) is shared among them
    from diceloss.metrics.topology import _euler_table

    for ndim, full in itertools.product((2, 3), (True, False)):
        table = _euler_table(ndim, full)
        assert table[0] == 0 and table.size == 2 ** 2 ** ndim
        one_voxel = [table[1 << k] for k in range(2 ** ndim)]  # a single voxel in each position: chi = 1 in all
        assert sum(one_voxel) == 2 ** ndim
