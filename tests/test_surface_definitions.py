"""Named surface-distance definitions (surface="voxel" | "surfel", percentile="directed" | "pooled"): each
against its peer (MONAI, DeepMind surface-distance, medpy) on random 2D/3D shapes with anisotropic spacing,
and against analytic values on voxelised spheres."""

import itertools
import math
import warnings

import numpy as np
import pytest
import torch

from diceloss.metrics import surface
from diceloss.metrics.surface import (
    average_surface_distance,
    hausdorff_distance,
    label_surfaces,
    segmentation_metrics,
    surface_dice,
)

DIST = ("hd", "hd95", "assd", "nsd")
CASES = [((30, 26, 22), (1.0, 0.7, 2.5)), ((26, 30, 24), (2.0, 1.0, 0.6)), ((64, 52), (0.6, 1.3)),
         ((50, 70), (1.5, 1.0))]
TOL = 1.3  # NSD tolerance: off the lattice of these spacings' distances, so no ties decide a peer's `<=`


def _random_case(shape, seed, C=4):
    """Smooth random blobs of C - 1 labels (some far apart, some touching) and a perturbed copy."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal((C, *shape)), 2.0, axes=tuple(range(1, len(shape) + 1)))
    gt = np.where(field.max(0) > 0.15, field.argmax(0), 0)
    noise = ndimage.gaussian_filter(rng.standard_normal((C, *shape)), 1.5, axes=tuple(range(1, len(shape) + 1)))
    pred = np.where((field + 0.6 * noise).max(0) > 0.15, (field + 0.6 * noise).argmax(0), 0)
    return pred.astype(np.int64), gt.astype(np.int64)


def _peer_cases():
    for (shape, spacing), seed in itertools.product(CASES, (0, 1)):
        pred, gt = _random_case(shape, seed + 7 * len(shape))
        for c in range(1, 4):
            if (pred == c).any() and (gt == c).any():
                yield pred == c, gt == c, spacing


# ---- peers ---------------------------------------------------------------------------------------------

def test_surfel_tables_are_deepminds():
    lt = pytest.importorskip("surface_distance.lookup_tables")
    for spacing in [(1.0, 1.0, 1.0), (0.7, 1.9, 2.5)]:
        assert np.array_equal(surface._surfel_table(spacing), lt.create_table_neighbour_code_to_surface_area(spacing))
    for spacing in [(1.0, 1.0), (0.6, 1.3)]:
        assert np.array_equal(surface._surfel_table(spacing),
                              lt.create_table_neighbour_code_to_contour_length(spacing))


def test_surfel_equals_deepmind():
    sd = pytest.importorskip("surface_distance")
    n = 0
    for a, b, sp in _peer_cases():
        ref = sd.compute_surface_distances(b, a, sp)  # DeepMind: (gt, pred)
        (r,) = label_surfaces(a, b, spacing=sp, surface="surfel")
        # the same elements: sorted (distance, area) pairs of each direction
        for d, w, rd, rw in ((r.d_pred, r.w_pred, "distances_pred_to_gt", "surfel_areas_pred"),
                             (r.d_target, r.w_target, "distances_gt_to_pred", "surfel_areas_gt")):
            order = np.lexsort((w, d))
            np.testing.assert_array_equal(d[order], ref[rd])
            np.testing.assert_array_equal(w[order], ref[rw])
        m = segmentation_metrics(a, b, metrics=DIST, spacing=sp, tolerance=TOL, surface="surfel")[1]
        a_gt, a_pred = ref["surfel_areas_gt"].sum(), ref["surfel_areas_pred"].sum()
        to_pred, to_gt = sd.compute_average_surface_distance(ref)
        assert m["hd95"] == sd.compute_robust_hausdorff(ref, 95), (sp, m["hd95"])
        assert m["hd"] == sd.compute_robust_hausdorff(ref, 100)
        assert m["assd"] == pytest.approx((to_pred * a_gt + to_gt * a_pred) / (a_gt + a_pred), rel=1e-13, abs=0)
        assert m["nsd"] == pytest.approx(sd.compute_surface_dice_at_tolerance(ref, TOL), rel=1e-13, abs=0)
        # the per-metric functions take the same keyword
        assert hausdorff_distance(a, b, spacing=sp, surface="surfel") == m["hd95"]
        assert average_surface_distance(a, b, spacing=sp, surface="surfel") == m["assd"]
        assert surface_dice(a, b, spacing=sp, tolerance=TOL, surface="surfel") == m["nsd"]
        n += 1
    assert n >= 12


def test_voxel_directed_equals_monai():
    mm = pytest.importorskip("monai.metrics")
    n = 0
    for a, b, sp in _peer_cases():
        m = segmentation_metrics(a, b, metrics=DIST, spacing=sp, tolerance=TOL)[1]
        assert m == segmentation_metrics(a, b, metrics=DIST, spacing=sp, tolerance=TOL, surface="voxel",
                                         percentile="directed")[1]
        P = torch.from_numpy(np.stack([~a, a]))[None].float()
        G = torch.from_numpy(np.stack([~b, b]))[None].float()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = {"hd": mm.compute_hausdorff_distance(P, G, spacing=sp),
                   "hd95": mm.compute_hausdorff_distance(P, G, percentile=95, spacing=sp),
                   "assd": mm.compute_average_surface_distance(P, G, symmetric=True, spacing=sp),
                   "nsd": mm.compute_surface_dice(P, G, [TOL], spacing=sp)}
        for k, v in ref.items():
            # MONAI computes in float32 (torch.quantile on float32 distances)
            assert m[k] == pytest.approx(float(v[0, 0]), rel=2e-6, abs=1e-6), (k, m[k], float(v[0, 0]))
        n += 1
    assert n >= 12


def test_voxel_pooled_equals_medpy():
    mb = pytest.importorskip("medpy.metric.binary")
    n = 0
    for a, b, sp in _peer_cases():
        m = segmentation_metrics(a, b, metrics=DIST, spacing=sp, tolerance=TOL, percentile="pooled")[1]
        assert m["hd95"] == pytest.approx(mb.hd95(a, b, voxelspacing=sp), rel=1e-15, abs=0)
        assert m["hd"] == pytest.approx(mb.hd(a, b, voxelspacing=sp), rel=1e-15, abs=0)
        assert hausdorff_distance(a, b, spacing=sp, percentile_mode="pooled") == m["hd95"]
        # medpy 0.5.2's assd pools both directions' distances, as ours; asd is one direction
        assert m["assd"] == pytest.approx(mb.assd(a, b, voxelspacing=sp), rel=1e-13, abs=0)
        (r,) = label_surfaces(a, b, spacing=sp)
        assert r.d_pred.mean() == pytest.approx(mb.asd(a, b, voxelspacing=sp), rel=1e-13, abs=0)
        assert r.d_target.mean() == pytest.approx(mb.asd(b, a, voxelspacing=sp), rel=1e-13, abs=0)
        # hd, assd and nsd do not depend on the percentile rule
        directed = segmentation_metrics(a, b, metrics=DIST, spacing=sp, tolerance=TOL)[1]
        assert {k: m[k] for k in ("hd", "assd", "nsd")} == {k: directed[k] for k in ("hd", "assd", "nsd")}
        n += 1
    assert n >= 12


def test_surfel_pooled_is_nearest_rank_of_both_directions():
    for a, b, sp in itertools.islice(_peer_cases(), 6):
        (r,) = label_surfaces(a, b, spacing=sp, surface="surfel")
        d, w = np.concatenate([r.d_pred, r.d_target]), np.concatenate([r.w_pred, r.w_target])
        order = np.lexsort((w, d))
        cum = np.cumsum(w[order]) / w.sum()
        want = d[order][np.searchsorted(cum, 0.95)]
        got = segmentation_metrics(a, b, metrics=["hd95"], spacing=sp, surface="surfel", percentile="pooled")[1]
        assert got["hd95"] == want
        assert hausdorff_distance(a, b, spacing=sp, surface="surfel", percentile_mode="pooled") == want


def test_pooled_differs_from_directed_on_an_outlier():
    # a 40x40 square (156 boundary voxels) and the same square plus a far 4x4 speck (12 boundary voxels):
    # the speck is 12 of the prediction's 168 distances (7% > 5%), so MONAI's directed hd95 is the speck's
    # distance; pooled with the reference's 156 zeros it is 12 of 324 (3.7% < 5%), and medpy's rule gives 0
    gt = np.zeros((80, 80), bool)
    gt[5:45, 5:45] = True
    pred = gt.copy()
    pred[70:74, 70:74] = True
    directed = segmentation_metrics(pred, gt, metrics=["hd95"])[1]["hd95"]
    assert directed > 30
    assert segmentation_metrics(pred, gt, metrics=["hd95"], percentile="pooled")[1]["hd95"] == 0
    mb = pytest.importorskip("medpy.metric.binary")
    assert mb.hd95(pred, gt) == 0


def test_surfel_torch_backend_matches_scipy():
    pred, gt = _random_case((20, 18, 16), 3)
    sp = (1.0, 0.7, 2.5)
    for perc in surface.PERCENTILES:
        a = segmentation_metrics(pred, gt, metrics=DIST, spacing=sp, surface="surfel", percentile=perc)
        b = segmentation_metrics(pred, gt, metrics=DIST, spacing=sp, surface="surfel", percentile=perc,
                                 backend="torch")
        for c in a:
            for k in DIST:
                assert a[c][k] == pytest.approx(b[c][k], rel=1e-12), (c, k)


def test_surfel_empty_masks_follow_the_policy():
    a = np.zeros((8, 8, 8), bool)
    b = a.copy()
    b[2:4, 2:4, 2:4] = True
    m = segmentation_metrics(a, b, metrics=DIST, surface="surfel")[1]
    assert m["hd"] == m["hd95"] == m["assd"] == math.inf and m["nsd"] == 0
    m = segmentation_metrics(a, b, metrics=DIST, surface="surfel", empty_distance="nan", labels=[1, 2])
    assert math.isnan(m[1]["hd95"]) and math.isnan(m[2]["hd95"]) and m[2]["nsd"] == 1.0


def test_definition_errors():
    a = np.zeros((6, 6), bool)
    a[1:3, 1:3] = True
    with pytest.raises(ValueError, match=r"surface must be one of 'voxel', 'surfel'; got 'mesh'"):
        segmentation_metrics(a, a, surface="mesh")
    with pytest.raises(ValueError, match=r"percentile must be one of 'directed', 'pooled'; got 95.*hd95 is 95"):
        segmentation_metrics(a, a, percentile=95)
    with pytest.raises(ValueError, match=r"percentile_mode must be one of 'directed', 'pooled'; got 'medpy'"):
        hausdorff_distance(a, a, percentile_mode="medpy")
    with pytest.raises(ValueError, match=r"surface='surfel' needs 2D or 3D maps .* got 1D"):
        segmentation_metrics(a[0], a[0], surface="surfel")
    with pytest.raises(ValueError, match=r"surface='surfel' needs 2D or 3D maps .* got 4D"):
        average_surface_distance(a[None, None], a[None, None], surface="surfel")
    # overlap-only metrics need no surface, so the dimension does not matter there
    assert segmentation_metrics(a[0], a[0], metrics=["dice"], surface="surfel")[1]["dice"] == 1.0
    assert surface.definition_name() == "surface=voxel percentile=directed (MONAI)"
    assert surface.definition_name("surfel", "directed").endswith("(DeepMind)")


# ---- voxelised spheres ------------------------------------------------------------------------------------

def _ball(shape, centre, r, spacing):
    g = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((x - c) * s) ** 2 for x, c, s in zip(g, centre, spacing)) <= r * r


def _shifted_truth(r, s, tol):
    """Continuous spheres of radius r, centres s apart: a point at polar angle theta (u = cos theta, uniform on
    [-1, 1] by area) is |sqrt(r^2 + s^2 - 2 r s u) - r| from the other sphere, in both directions."""
    u = np.linspace(-1, 1, 400_001)
    d = np.abs(np.sqrt(r * r + s * s - 2 * r * s * u) - r)
    return {"hd": float(s), "hd95": float(np.quantile(d, 0.95)), "assd": float(d.mean()),
            "nsd": float((d <= tol).mean())}


SPHERES = [((1.0, 1.0, 1.0), 2), ((1.0, 1.0, 1.0), 5), ((2.0, 1.0, 1.0), 2), ((2.0, 1.0, 1.0), 5)]
# max |error| on the spheres below (docs/metrics.md), per definition; measured + a small margin
SPHERE_BOUND = {"voxel": {"hd95": 0.3, "assd": 0.4, "nsd": 0.18}, "surfel": {"hd95": 0.55, "assd": 0.52, "nsd": 0.33}}


@pytest.mark.parametrize("spacing,shift", SPHERES)
def test_shifted_sphere(spacing, shift):
    # radius 20 (physical units), shifted by `shift` voxels along axis 1 (spacing 1): a translate, so hd is
    # the shift exactly under every definition (the poles); hd95, assd, nsd within the stated errors
    shape = (int(64 / spacing[0]), 64, 64)
    centre = tuple((n - 1) / 2 + 0.3 for n in shape)
    gt = _ball(shape, centre, 20.0, spacing)
    pred = np.roll(gt, shift, axis=1)
    truth = _shifted_truth(20.0, shift, 1.0)
    for surf, perc in itertools.product(surface.SURFACES, surface.PERCENTILES):
        m = segmentation_metrics(pred, gt, metrics=DIST, spacing=spacing, tolerance=1.0, surface=surf,
                                 percentile=perc)[1]
        assert m["hd"] == shift, (surf, perc, m["hd"])
        for k in ("hd95", "assd", "nsd"):
            assert abs(m[k] - truth[k]) <= SPHERE_BOUND[surf][k], (surf, perc, k, m[k], truth[k])


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.0, 1.0, 1.0)])
def test_concentric_spheres(spacing):
    # radii 20 and 22: every continuous distance is 2; voxelised, hd overshoots by under a voxel diagonal,
    # hd95 by 0.24, assd undershoots (surfels more: corners sit half a voxel off the voxel centres)
    shape = (int(64 / spacing[0]), 64, 64)
    centre = tuple((n - 1) / 2 + 0.3 for n in shape)
    gt, pred = _ball(shape, centre, 20.0, spacing), _ball(shape, centre, 22.0, spacing)
    for surf, perc in itertools.product(surface.SURFACES, surface.PERCENTILES):
        m = segmentation_metrics(pred, gt, metrics=DIST, spacing=spacing, tolerance=2.5, surface=surf,
                                 percentile=perc)[1]
        assert 0 <= m["hd"] - 2 <= math.sqrt(sum(s * s for s in spacing)) / 2, (surf, m["hd"])
        assert abs(m["hd95"] - 2) <= 0.3, (surf, perc, m["hd95"])
        assert abs(m["assd"] - 2) <= (0.1 if surf == "voxel" else 0.5), (surf, m["assd"])
        assert m["nsd"] >= 0.99


def test_identical_spheres_are_zero():
    gt = _ball((30, 30, 20), (14.6, 14.2, 9.7), 8.0, (1.0, 1.0, 1.5))
    for surf, perc in itertools.product(surface.SURFACES, surface.PERCENTILES):
        m = segmentation_metrics(gt, gt, metrics=DIST, spacing=(1.0, 1.0, 1.5), surface=surf, percentile=perc)[1]
        assert m == {"hd": 0.0, "hd95": 0.0, "assd": 0.0, "nsd": 1.0}
