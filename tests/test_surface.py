"""diceloss.metrics.surface: hand-computed cases, the empty policy, MONAI agreement, the torch fallback, errors."""

import math
import warnings

import numpy as np
import pytest
import torch

from diceloss import metrics as dm
from diceloss.metrics import surface
from diceloss.metrics.surface import (
    average_surface_distance,
    empty_metrics,
    hausdorff_distance,
    segmentation_metrics,
    surface_dice,
)

ALL = surface.METRICS


def cube(shape, lo, side):
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(a, a + side) for a in lo)] = True
    return m


def test_reexported_from_metrics():
    assert dm.hausdorff_distance is hausdorff_distance
    assert dm.segmentation_metrics is segmentation_metrics
    assert {"hausdorff_distance", "surface_dice", "average_surface_distance"} <= set(dm.__all__)


# ---- hand-computed cases -------------------------------------------------------------------------------

def test_cube_shifted_by_two():
    # 6^3 cube shifted by k = 2 along axis 0. Boundary: 6^3 - 4^3 = 152 voxels per mask. Distances from
    # the shifted cube's boundary: 80 side voxels shared (0), 20 side voxels of row 8 (1), the bottom
    # face's inner ring (12 voxels, 1 to the side faces) and centre (4 voxels, 2), the top face (36, 2):
    # 80 zeros, 32 ones, 40 twos; the same the other way.
    gt = cube((14, 10, 10), (2, 2, 2), 6)
    pred = np.roll(gt, 2, axis=0)
    m = segmentation_metrics(pred, gt, metrics=ALL, tolerance=1.0)[1]
    assert m["dice"] == pytest.approx(4 / 6)
    assert m["iou"] == pytest.approx(4 / 8)
    assert m["precision"] == pytest.approx(4 / 6) and m["recall"] == pytest.approx(4 / 6)
    assert m["avd"] == 0 and m["rvd"] == 0
    assert m["hd"] == pytest.approx(2.0)
    assert m["hd95"] == pytest.approx(2.0)
    assert m["assd"] == pytest.approx((32 + 80) / 152)
    assert m["nsd"] == pytest.approx(112 / 152)
    assert segmentation_metrics(pred, gt, metrics=["nsd"], tolerance=2.0)[1]["nsd"] == 1.0
    assert segmentation_metrics(pred, gt, metrics=["nsd"], tolerance=0.5)[1]["nsd"] == pytest.approx(80 / 152)


def test_cube_shifted_anisotropic_spacing():
    # the same cubes with spacing 2 along the shift: row 8 edges 2, top face 4, bottom ring 1 (sideways,
    # spacing 1), bottom centre 2: 80 zeros, 12 ones, 24 twos, 36 fours
    gt = cube((14, 10, 10), (2, 2, 2), 6)
    pred = np.roll(gt, 2, axis=0)
    m = segmentation_metrics(pred, gt, metrics=ALL, spacing=(2.0, 1.0, 1.0), tolerance=2.0)[1]
    assert m["hd"] == pytest.approx(4.0) and m["hd95"] == pytest.approx(4.0)
    assert m["assd"] == pytest.approx((12 + 2 * 24 + 4 * 36) / 152)
    assert m["nsd"] == pytest.approx((80 + 12 + 24) / 152)
    assert m["avd"] == 0
    assert m["dice"] == pytest.approx(4 / 6)  # overlap does not depend on spacing
    # avd is in physical units: a voxel is 2 units^3 here
    m2 = segmentation_metrics(cube((14, 10, 10), (2, 2, 2), 5), gt, metrics=["avd"], spacing=(2, 1, 1))
    assert m2[1]["avd"] == pytest.approx((216 - 125) * 2.0)


def test_nested_cubes_percentile_interpolates():
    # a 4^3 cube inside a 6^3 cube: every inner boundary voxel is 1 from the outer boundary; an outer
    # boundary voxel with e coordinates on the outer edge is sqrt(e) from the inner one:
    # 96 x 1, 48 x sqrt(2), 8 x sqrt(3). q95 of those 152 sits at 0.95 * 151 = 143.45: linear interpolation.
    gt = cube((10, 10, 10), (2, 2, 2), 6)
    pred = cube((10, 10, 10), (3, 3, 3), 4)
    m = segmentation_metrics(pred, gt, metrics=ALL)[1]
    r2, r3 = math.sqrt(2), math.sqrt(3)
    assert m["dice"] == pytest.approx(2 * 64 / (64 + 216))
    assert m["iou"] == pytest.approx(64 / 216)
    assert m["precision"] == 1.0 and m["recall"] == pytest.approx(64 / 216)
    assert m["avd"] == 152 and m["rvd"] == pytest.approx((64 - 216) / 216)
    assert m["hd"] == pytest.approx(r3)
    assert m["hd95"] == pytest.approx(r2 + 0.45 * (r3 - r2))
    assert m["assd"] == pytest.approx((56 + 96 + 48 * r2 + 8 * r3) / 208)
    assert m["nsd"] == pytest.approx(152 / 208)
    hd50 = hausdorff_distance(pred, gt, percentile=50)
    assert float(hd50) == pytest.approx(1.0)  # both medians are 1
    assert float(hausdorff_distance(pred, gt, percentile=None)) == pytest.approx(r3)
    assert float(hausdorff_distance(pred, gt, percentile=100)) == pytest.approx(r3)


def test_single_voxel():
    gt = np.zeros((9, 9, 12), dtype=np.int64)
    gt[5, 5, 5] = 3
    pred = np.zeros_like(gt)
    pred[5, 5, 8] = 3
    m = segmentation_metrics(pred, gt, metrics=ALL, spacing=(1, 1, 0.5), tolerance=1.0)[3]
    assert m["dice"] == 0 and m["iou"] == 0 and m["precision"] == 0 and m["recall"] == 0
    assert m["hd"] == m["hd95"] == m["assd"] == pytest.approx(1.5)
    assert m["nsd"] == 0
    assert surface_dice(pred, gt, tolerance=1.5, spacing=(1, 1, 0.5))[0] == 1.0
    same = segmentation_metrics(gt, gt, metrics=ALL)[3]
    assert same["dice"] == 1 and same["hd"] == 0 and same["assd"] == 0 and same["nsd"] == 1


def test_2d_and_1d():
    gt = cube((8, 8), (2, 2), 4)
    assert float(average_surface_distance(np.roll(gt, 1, axis=1), gt)) == pytest.approx(0.5)
    line = np.zeros(10, dtype=bool)
    line[2:5] = True
    # 1D: boundaries are the end points {2, 4} and {5, 7}: distances 3, 1 and 1, 3
    assert float(hausdorff_distance(np.roll(line, 3), line, percentile=None)) == 3.0
    assert float(average_surface_distance(np.roll(line, 3), line)) == 2.0


def test_mask_at_the_image_border():
    # outside the image counts as outside the mask: a full image has its boundary on the image's edge
    gt = np.ones((5, 5), dtype=bool)
    pred = gt.copy()
    pred[:, 4] = False
    m = segmentation_metrics(pred, gt, metrics=("hd", "assd"))[1]
    # pred boundary: 14 pixels, the 3 inner ones of column 3 are 1 from gt's; gt's 16: column 4 (5) is 1 away
    assert m["hd"] == 1.0
    assert m["assd"] == pytest.approx((3 + 5) / (14 + 16))


# ---- empty masks ---------------------------------------------------------------------------------------

def test_both_empty_policy():
    a = np.zeros((6, 6), dtype=np.int64)
    a[1:3, 1:3] = 1
    for empty, fill in (("one", 1.0), ("zero", 0.0)):
        m = segmentation_metrics(a, a, labels=[2], metrics=ALL, empty=empty)[2]
        for k in ("dice", "iou", "precision", "recall", "nsd"):
            assert m[k] == fill, k
        assert m["avd"] == 0 and m["rvd"] == 0
        assert all(math.isnan(m[k]) for k in ("hd", "hd95", "assd"))
    m = segmentation_metrics(a, a, labels=[2], metrics=ALL, empty="nan")[2]
    assert all(math.isnan(v) for v in m.values())
    blank = empty_metrics(("dice", "hd95"), empty="one")
    assert blank["dice"] == 1.0 and math.isnan(blank["hd95"])


def test_one_empty_policy():
    gt = np.zeros((7, 9), dtype=np.int64)
    gt[2:4, 2:4] = 1
    empty = np.zeros_like(gt)
    m = segmentation_metrics(empty, gt, metrics=ALL)[1]  # prediction misses the label
    assert m["dice"] == 0 and m["iou"] == 0 and m["recall"] == 0 and m["nsd"] == 0
    assert math.isnan(m["precision"])
    assert m["avd"] == 4 and m["rvd"] == -1
    assert m["hd"] == math.inf and m["hd95"] == math.inf and m["assd"] == math.inf
    m = segmentation_metrics(gt, empty, metrics=ALL, empty_distance="nan")[1]  # false positive label
    assert m["precision"] == 0 and math.isnan(m["recall"]) and math.isnan(m["rvd"])
    assert all(math.isnan(m[k]) for k in ("hd", "hd95", "assd"))
    m = segmentation_metrics(gt, empty, metrics=["hd95"], spacing=(2.0, 0.5), empty_distance="diagonal")[1]
    assert m["hd95"] == pytest.approx(math.hypot(6 * 2.0, 8 * 0.5))


# ---- MONAI -----------------------------------------------------------------------------------------------

def _blobs(rng, shape, n_labels, n_blobs=6):
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    out = np.zeros(shape, dtype=np.int64)
    for _ in range(n_blobs):
        c = [rng.uniform(0, s) for s in shape]
        r = [rng.uniform(2, s / 3) for s in shape]
        inside = sum(((g - ci) / ri) ** 2 for g, ci, ri in zip(grids, c, r)) <= 1
        out[inside] = rng.integers(1, n_labels)
    return out


def _perturb(rng, lab, n_labels):
    out = lab.copy()
    shift = tuple(int(s) for s in rng.integers(-2, 3, size=lab.ndim))
    out = np.roll(out, shift, axis=tuple(range(lab.ndim)))
    noise = rng.random(lab.shape) < 0.02
    out[noise] = rng.integers(0, n_labels, size=int(noise.sum()))
    return out


@pytest.mark.parametrize("shape,spacing", [((28, 26, 20), (1.0, 0.8, 2.5)), ((48, 40), (0.5, 1.0))])
def test_against_monai(shape, spacing):
    mm = pytest.importorskip("monai.metrics")
    import torch.nn.functional as F

    rng = np.random.default_rng(sum(shape))
    C = 5
    gt = _blobs(rng, shape, C)
    pred = _perturb(rng, gt, C)
    labels = list(range(1, C))
    tol = 1.5
    ours = segmentation_metrics(pred, gt, labels=labels, metrics=ALL, spacing=spacing, tolerance=tol,
                                empty="nan", empty_distance="inf")

    def onehot(a):
        return F.one_hot(torch.from_numpy(a), C).movedim(-1, 0)[None].float()

    P, G = onehot(pred), onehot(gt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = {
            "dice": mm.compute_dice(P, G, include_background=False, ignore_empty=True),
            "iou": mm.compute_iou(P, G, include_background=False, ignore_empty=True),
            "hd": mm.compute_hausdorff_distance(P, G, spacing=spacing),
            "hd95": mm.compute_hausdorff_distance(P, G, percentile=95, spacing=spacing),
            "assd": mm.compute_average_surface_distance(P, G, symmetric=True, spacing=spacing),
            "nsd": mm.compute_surface_dice(P, G, [tol] * (C - 1), spacing=spacing),
        }
        cm = mm.get_confusion_matrix(P, G, include_background=False)
        ref["precision"] = mm.compute_confusion_matrix_metric("precision", cm)
        ref["recall"] = mm.compute_confusion_matrix_metric("sensitivity", cm)
    checked = 0
    for i, c in enumerate(labels):
        present = (pred == c).any() and (gt == c).any()
        for k, v in ref.items():
            r, o = float(v[0, i]), ours[c][k]
            if not present and k in ("precision", "recall"):
                continue  # MONAI returns NaN for 0/0 with a warning; we follow the documented policy
            if math.isnan(r) or math.isinf(r):
                assert (math.isnan(o) and math.isnan(r)) or o == r, (c, k, o, r)
                continue
            # distances to MONAI's float32 rounding; well inside the one-voxel-diagonal budget
            tol_k = 1e-6 if k in ("dice", "iou", "precision", "recall", "nsd") else 1e-5 * max(1.0, abs(r))
            assert abs(o - r) <= tol_k, (c, k, o, r)
            checked += 1
    assert checked >= 20


# ---- torch fallback, types, generic labels ---------------------------------------------------------------

def test_torch_backend_matches_scipy():
    rng = np.random.default_rng(3)
    for shape, spacing in (((20, 18, 14), (0.7, 1.0, 2.0)), ((30, 25), (1.0, 3.0))):
        gt = _blobs(rng, shape, 4)
        pred = _perturb(rng, gt, 4)
        a = segmentation_metrics(pred, gt, metrics=ALL, spacing=spacing, backend="scipy")
        b = segmentation_metrics(pred, gt, metrics=ALL, spacing=spacing, backend="torch")
        assert a.keys() == b.keys() and len(a) >= 2
        for c in a:
            for k in ALL:
                assert a[c][k] == pytest.approx(b[c][k], rel=1e-12, abs=1e-12, nan_ok=True), (c, k)


def test_edt_torch_exact():
    rng = np.random.default_rng(0)
    sites = rng.random((13, 11, 7)) < 0.03
    sites[0, 0, 0] = True
    from scipy.ndimage import distance_transform_edt

    ref = distance_transform_edt(~sites, sampling=(1.5, 1.0, 0.3))
    threads = torch.get_num_threads()
    np.testing.assert_allclose(surface._edt_torch(sites, (1.5, 1.0, 0.3)), ref, rtol=0, atol=1e-12)
    assert torch.get_num_threads() == threads  # runs on one thread, then gives the setting back


def test_types_and_shapes():
    gt = np.zeros((10, 10), dtype=np.uint8)
    gt[2:6, 2:6] = 1
    gt[6:9, 6:9] = 4
    pred = np.roll(gt, 1, axis=0)
    out = hausdorff_distance(pred, gt)
    assert isinstance(out, np.ndarray) and out.shape == (2,) and out.dtype == np.float64
    t = hausdorff_distance(torch.from_numpy(pred), torch.from_numpy(gt))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float64
    np.testing.assert_allclose(t.numpy(), out)
    assert hausdorff_distance(pred == 1, gt == 1).shape == ()
    assert surface_dice(pred, gt, labels=[4]).shape == (1,)
    # float maps with integral values are label maps too
    as_float = segmentation_metrics(pred.astype(np.float32), gt.astype(np.float64))
    assert as_float == segmentation_metrics(pred, gt)
    # background only when asked
    assert list(segmentation_metrics(pred, gt)) == [1, 4]
    assert list(segmentation_metrics(pred, gt, include_background=True)) == [0, 1, 4]


def test_large_and_negative_labels_take_the_generic_path():
    gt = np.zeros((12, 12), dtype=np.int64)
    gt[2:6, 2:6] = 1
    gt[7:11, 6:10] = 2
    pred = np.roll(gt, 1, axis=1)
    ref = segmentation_metrics(pred, gt, metrics=ALL)
    remap = {0: 0, 1: 100_000, 2: -7}
    f = np.vectorize(remap.get)
    got = segmentation_metrics(f(pred), f(gt), metrics=ALL)
    assert got == {remap[c]: v for c, v in ref.items()}
    assert segmentation_metrics(f(pred), f(gt), metrics=ALL, backend="torch") == got


def test_ignore_index():
    gt = np.zeros((10, 10), dtype=np.int64)
    gt[2:6, 2:6] = 1
    pred = gt.copy()
    pred[2:6, 6:8] = 1  # a false positive strip ...
    gt[:, 6:] = 255  # ... where the reference is unknown
    m = segmentation_metrics(pred, gt, metrics=ALL, ignore_index=255)
    assert list(m) == [1]
    assert m[1]["dice"] == 1 and m[1]["hd"] == 0 and m[1]["nsd"] == 1
    with pytest.raises(ValueError, match="ignore_index"):
        segmentation_metrics(pred, gt, labels=[1, 255], ignore_index=255)


def test_bad_input():
    a = np.zeros((4, 4), dtype=np.int64)
    with pytest.raises(ValueError, match=r"\(4, 4\) and \(4, 5\)"):
        segmentation_metrics(a, np.zeros((4, 5), dtype=np.int64))
    with pytest.raises(ValueError, match="non-integer"):
        segmentation_metrics(a + 0.5, a)
    with pytest.raises(TypeError, match="list"):
        segmentation_metrics([[0]], a)
    with pytest.raises(ValueError, match="spacing must be one number or 2 numbers"):
        segmentation_metrics(a, a, spacing=(1, 2, 3))
    with pytest.raises(ValueError, match="positive"):
        segmentation_metrics(a, a, spacing=(1, 0))
    with pytest.raises(ValueError, match="percentile must be in"):
        hausdorff_distance(a, a, percentile=101)
    with pytest.raises(ValueError, match="tolerance"):
        surface_dice(a, a, tolerance=-1)
    with pytest.raises(ValueError, match="metric must be one of"):
        segmentation_metrics(a, a, metrics=["hd99"])
    with pytest.raises(ValueError, match="empty must be one of"):
        segmentation_metrics(a, a, empty="ones")
    with pytest.raises(ValueError, match="backend must be one of"):
        segmentation_metrics(a, a, backend="cuda")
    with pytest.raises(ValueError, match="repeat"):
        segmentation_metrics(a, a, labels=[1, 1])


# ---- NSD at a tolerance equal to a distance (issue 15) ---------------------------------------------------

TIES = [  # (shift, axis, spacing, tolerance): every boundary distance is 0 or exactly the tolerance
    (2, 1, (1.0, 0.6), 1.2),  # torch: 5*0.6 - 3*0.6 = 1.2000000000000002 > 1.2
    (2, 0, (0.6, 1.0), 1.2),
    (3, 1, (1.0, 0.8), 2.4),  # SciPy: 3*0.8 = 2.4000000000000004 > 2.4
    (3, 0, (0.8, 1.0), 2.4),
    (1, 1, (1.0, 0.1), 0.1),
    (7, 1, (1.0, 0.1), 0.7),
]


def _shifted_box(shift, axis):
    gt = np.zeros((20, 24), dtype=np.uint8)
    gt[4:10, 4:11] = 1
    return np.roll(gt, shift, axis=axis), gt


@pytest.mark.parametrize("backend", ["scipy", "torch"])
@pytest.mark.parametrize("shift,axis,spacing,tol", TIES)
def test_nsd_counts_a_distance_equal_to_the_tolerance(backend, shift, axis, spacing, tol):
    pred, gt = _shifted_box(shift, axis)
    got = surface_dice(pred, gt, tolerance=tol, spacing=spacing, backend=backend)
    assert got.tolist() == [1.0], f"expected NSD 1.0 (every distance <= {tol}), got {got.tolist()}"
    # one rounding step smaller still leaves out the voxels at the tolerance
    below = surface_dice(pred, gt, tolerance=tol * 0.999, spacing=spacing, backend=backend)
    assert below[0] < 1.0
    d3 = np.repeat(pred[..., None], 3, axis=-1), np.repeat(gt[..., None], 3, axis=-1)
    got3 = surface_dice(*d3, tolerance=tol, spacing=(*spacing, 2.5), backend=backend)
    assert got3.tolist() == [1.0]


@pytest.mark.parametrize("shift,axis,spacing,tol", TIES)
def test_nsd_ties_agree_with_monai(shift, axis, spacing, tol):
    mm = pytest.importorskip("monai.metrics")
    import torch.nn.functional as F

    pred, gt = _shifted_box(shift, axis)

    def onehot(a):
        return F.one_hot(torch.from_numpy(a).long(), 2).movedim(-1, 0)[None].float()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = float(mm.compute_surface_dice(onehot(pred), onehot(gt), [tol], spacing=spacing)[0, 0])
    for backend in ("scipy", "torch"):
        ours = float(surface_dice(pred, gt, tolerance=tol, spacing=spacing, backend=backend)[0])
        assert ours == pytest.approx(ref, abs=1e-6), (backend, ours, ref)


def test_one_empty_hd95_vs_monai_as_the_readme_says():
    # MONAI 1.6.1: a label in one map only gives hd = assd = inf but hd95 = NaN (any percentile; MONAI #9095)
    mm = pytest.importorskip("monai.metrics")
    empty, box = torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)
    box[..., 2:5, 2:5] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert math.isinf(float(mm.compute_hausdorff_distance(empty, box)))
        assert math.isnan(float(mm.compute_hausdorff_distance(empty, box, percentile=95)))
        assert math.isinf(float(mm.compute_average_surface_distance(empty, box, symmetric=True)))
    ours = segmentation_metrics(np.zeros((8, 8), np.uint8), box[0, 0].numpy().astype(np.uint8), metrics=ALL)
    assert ours[1]["hd95"] == math.inf and ours[1]["hd"] == math.inf
    nan = segmentation_metrics(np.zeros((8, 8), np.uint8), box[0, 0].numpy().astype(np.uint8), metrics=ALL,
                               empty_distance="nan")
    assert math.isnan(nan[1]["hd95"])
    import pathlib

    page = (pathlib.Path(__file__).parents[1] / "docs" / "metrics.md").read_text()
    assert "(default, as MONAI)" not in page  # MONAI gives NaN there, not inf
    assert "MONAI #9095" in page
