"""diceloss.metrics.topology: Betti numbers of analytic shapes and against GUDHI / scikit-image, hard clDice by
hand and against the authors' definition, label handling, the empty policy, errors."""

import math

import numpy as np
import pytest
import torch

from diceloss import metrics as dm
from diceloss.metrics.topology import DUAL_CONNECTIVITY, betti_errors, betti_numbers, cldice_score

skimage = pytest.importorskip("skimage")
from skimage.measure import euler_number  # noqa: E402
from skimage.morphology import skeletonize  # noqa: E402

BOTH = {2: (8, 4), 3: (26, 6)}


def test_reexported_from_metrics():
    assert dm.cldice_score is cldice_score
    assert dm.betti_numbers is betti_numbers
    assert dm.betti_errors is betti_errors
    assert DUAL_CONNECTIVITY == {4: 8, 8: 4, 6: 26, 26: 6}


# ---------------------------------------------------------------- analytic shapes


def ball(shape, centre, r):
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= r * r


@pytest.mark.parametrize("conn", [8, 4])
def test_ring_2d(conn):
    ring = np.zeros((9, 9), dtype=bool)
    ring[1:8, 1:8] = True
    ring[3:6, 3:6] = False
    assert betti_numbers(ring, conn) == (1, 1)
    assert betti_numbers(np.pad(ring, 5), conn) == (1, 1)
    # a ring that touches the image border is still a ring (the outside is padded with background)
    assert betti_numbers(np.ones((5, 5), dtype=bool) ^ np.pad(np.ones((3, 3), dtype=bool), 1), conn) == (1, 1)


def test_two_blobs_and_diagonal_touching_2d():
    two = np.zeros((10, 10), dtype=bool)
    two[1:4, 1:4] = two[6:9, 5:9] = True
    assert betti_numbers(two, 8) == betti_numbers(two, 4) == (2, 0)
    corner = np.zeros((8, 8), dtype=bool)
    corner[1:4, 1:4] = corner[4:7, 4:7] = True  # the two squares share one corner
    assert betti_numbers(corner) == betti_numbers(corner, 8) == (1, 0)
    assert betti_numbers(corner, 4) == (2, 0)


def test_diamond_ring_2d():
    # a ring of pixels touching only at corners: closed under 8 (hole by 4-connected background); under 4 it
    # is 4 pieces and the 8-connected background leaks through the diagonal gaps
    d = np.zeros((5, 5), dtype=bool)
    for i, j in [(0, 2), (1, 1), (2, 0), (3, 1), (4, 2), (3, 3), (2, 4), (1, 3)]:
        d[i, j] = True
    assert betti_numbers(d, 8) == (1, 1)
    assert betti_numbers(d, 4) == (8, 0)


@pytest.mark.parametrize("conn", [26, 6])
def test_solid_torus_3d(conn):
    # a square solid torus: a 9x9 square ring, 3 voxels thick, extruded 3 voxels
    t = np.zeros((7, 11, 11), dtype=bool)
    t[2:5, 1:10, 1:10] = True
    t[2:5, 4:7, 4:7] = False
    assert betti_numbers(t, conn) == (1, 1, 0)
    # a round one
    shape = (13, 25, 25)
    z, y, x = np.indices(shape) - np.array([6, 12, 12])[:, None, None, None]
    round_torus = (np.sqrt(y**2 + x**2) - 8) ** 2 + z**2 <= 3.5**2
    assert betti_numbers(round_torus, conn) == (1, 1, 0)
    two_holes = np.zeros((5, 9, 15), dtype=bool)
    two_holes[1:4, 1:8, 1:14] = True
    two_holes[1:4, 3:6, 3:6] = two_holes[1:4, 3:6, 9:12] = False
    assert betti_numbers(two_holes, conn) == (1, 2, 0)


@pytest.mark.parametrize("conn", [26, 6])
def test_hollow_sphere_3d(conn):
    shell = ball((15, 15, 15), (7, 7, 7), 6) & ~ball((15, 15, 15), (7, 7, 7), 3.5)
    assert betti_numbers(shell, conn) == (1, 0, 1)
    cube = np.zeros((7, 7, 7), dtype=bool)
    cube[1:6, 1:6, 1:6] = True
    cube[3, 3, 3] = False  # one-voxel cavity
    assert betti_numbers(cube, conn) == (1, 0, 1)
    assert betti_numbers(ball((11, 11, 11), (5, 5, 5), 4), conn) == (1, 0, 0)


def test_diagonal_touching_3d():
    two = np.zeros((6, 6, 6), dtype=bool)
    two[0:2, 0:2, 0:2] = two[4:6, 3:5, 1:3] = True
    assert betti_numbers(two, 26) == betti_numbers(two, 6) == (2, 0, 0)
    corner = np.zeros((6, 6, 6), dtype=bool)
    corner[1:3, 1:3, 1:3] = corner[3:5, 3:5, 3:5] = True  # share one corner
    assert betti_numbers(corner) == (1, 0, 0)
    assert betti_numbers(corner, 6) == (2, 0, 0)
    # a cavity that leaks through an edge-adjacent gap: closed for the 6-connected background of 26, open for
    # the 26-connected background of 6
    shell = np.ones((5, 5, 5), dtype=bool)
    shell[2, 2, 2] = False
    shell[1, 1, 2] = False  # a second cavity, edge-adjacent to the first: apart for 6, one for 26
    assert betti_numbers(shell, 26) == (1, 0, 2)
    assert betti_numbers(shell, 6) == (1, 0, 1)
    leak = np.ones((4, 4, 4), dtype=bool)
    leak[1:3, 1:3, 1:3] = False
    leak[0, 0, 0] = False  # corner voxel: the inner cavity touches it only at a corner
    assert betti_numbers(leak, 26) == (1, 0, 1)
    assert betti_numbers(leak, 6)[2] == 0


def test_empty_and_full():
    assert betti_numbers(np.zeros((4, 4), dtype=bool)) == (0, 0)
    assert betti_numbers(np.zeros((3, 4, 5), dtype=bool)) == (0, 0, 0)
    assert betti_numbers(np.ones((4, 4), dtype=bool)) == (1, 0)
    assert betti_numbers(np.ones((3, 4, 5), dtype=bool), 6) == (1, 0, 0)
    assert betti_numbers(torch.ones(3, 3, dtype=torch.int64)) == (1, 0)


# ---------------------------------------------------------------- oracles


def gudhi_betti(mask, conn):
    """Betti numbers of the foreground by GUDHI's cubical complex: voxels as top cells (closed cubes, full
    connectivity) or as vertices (face connectivity), the foreground being the sublevel set at 0."""
    gudhi = pytest.importorskip("gudhi")
    f = np.where(mask, 0.0, 1.0)
    cc = gudhi.CubicalComplex(top_dimensional_cells=f) if conn in (8, 26) else gudhi.CubicalComplex(vertices=f)
    cc.compute_persistence()
    b = list(cc.persistent_betti_numbers(0.0, 0.0))
    return tuple((b + [0] * mask.ndim)[: mask.ndim])


def random_mask(rng, shape, p, smooth):
    m = rng.random(shape)
    if smooth:
        from scipy.ndimage import uniform_filter

        m = uniform_filter(m, size=3)
        return m > np.quantile(m, 1 - p)
    return m < p


@pytest.mark.parametrize("ndim", [2, 3])
def test_random_against_gudhi(ndim):
    rng = np.random.default_rng(18 + ndim)
    shape = (24, 31) if ndim == 2 else (9, 11, 10)
    checked = 0
    for p in (0.2, 0.4, 0.5, 0.6, 0.8):
        for smooth in (False, True):
            for conn in BOTH[ndim]:
                for _ in range(6):
                    m = random_mask(rng, shape, p, smooth)
                    assert betti_numbers(m, conn) == gudhi_betti(m, conn), (p, smooth, conn)
                    checked += 1
    assert checked == 5 * 2 * 2 * 6


@pytest.mark.parametrize("ndim", [2, 3])
def test_random_euler_against_skimage(ndim):
    # an oracle in the test extra: chi = beta0 - beta1 + beta2 against skimage.measure.euler_number
    rng = np.random.default_rng(7 + ndim)
    shape = (20, 23) if ndim == 2 else (8, 9, 10)
    for p in (0.3, 0.5, 0.7):
        for conn in BOTH[ndim]:
            for _ in range(5):
                m = random_mask(rng, shape, p, smooth=False)
                b = betti_numbers(m, conn)
                chi = b[0] - b[1] + (b[2] if ndim == 3 else 0)
                rank = 1 if conn in (4, 6) else ndim
                assert chi == euler_number(m, connectivity=rank), (p, conn, b)


def test_betti_errors():
    gt = np.zeros((3, 12, 12), dtype=np.int64)
    gt[:, 1:6, 1:6] = 1
    gt[:, 2:4, 2:4] = 0  # label 1: a tube with a hole through it
    gt[1, 7:11, 7:11] = 2
    pred = gt.copy()
    pred[:, 2:4, 2:4] = 1  # hole filled
    pred[1, 8, 7:11] = 0  # label 2 split in two
    e = betti_errors(pred, gt)
    assert e == {1: (0, 1, 0), 2: (1, 0, 0)}
    assert betti_errors(torch.from_numpy(pred), torch.from_numpy(gt), labels=[2, 5]) == {2: (1, 0, 0), 5: (0, 0, 0)}
    for conn in (26, 6):
        for c in (1, 2):
            want = tuple(abs(a - b) for a, b in zip(betti_numbers(pred == c, conn), betti_numbers(gt == c, conn)))
            assert betti_errors(pred, gt, connectivity=conn)[c] == want
    assert betti_errors(pred == 2, gt == 2) == (1, 0, 0)
    assert betti_errors(pred, gt, include_background=True)[0] == tuple(
        abs(a - b) for a, b in zip(betti_numbers(pred == 0), betti_numbers(gt == 0))
    )


def test_betti_errors_ignore_index():
    gt = np.zeros((8, 8), dtype=np.int64)
    gt[1:7, 1:7] = 1
    gt[3:5, 3:5] = 255  # unknown centre
    pred = np.zeros_like(gt)
    pred[1:7, 1:7] = 1  # a filled square
    assert betti_errors(pred, gt, labels=[1]) == {1: (0, 1)}  # 255 is a label here: label 1 of gt is a ring
    assert betti_errors(pred, gt, ignore_index=255) == {1: (0, 0)}  # both become the same ring


# ---------------------------------------------------------------- clDice


def authors_cldice(v_p, v_l):
    """jocpae/clDice ``cldice.py``: cl_score(v, s) = sum(v s) / sum(s); tprec = cl_score(v_p, skel(v_l)),
    tsens = cl_score(v_l, skel(v_p)); 2 tprec tsens / (tprec + tsens)."""

    def cl_score(v, s):
        return np.sum(v * s) / np.sum(s)

    tprec = cl_score(v_p, skeletonize(v_l))
    tsens = cl_score(v_l, skeletonize(v_p))
    return 2 * tprec * tsens / (tprec + tsens)


def test_cldice_lines_by_hand():
    gt = np.zeros((7, 12), dtype=bool)
    gt[3, 1:8] = True
    assert cldice_score(gt, gt) == 1.0
    along = np.zeros_like(gt)
    along[3, 2:9] = True  # shifted by one along the line: 6 of 7 skeleton pixels inside the other
    assert cldice_score(along, gt) == pytest.approx(6 / 7)
    across = np.roll(gt, 1, axis=0)  # shifted by one across it: no overlap at all
    assert cldice_score(across, gt) == 0.0
    thick = np.zeros_like(gt)
    thick[2:5, 1:8] = True  # a 3-wide bar around the line: gt is inside it, so Tsens = 1
    # Zhang's thinning leaves row 3, columns 1..5, and pixel (2, 6): 5 of its 6 pixels lie in gt, Tprec = 5/6
    assert np.array_equal(np.argwhere(skeletonize(thick)), [[2, 6], [3, 1], [3, 2], [3, 3], [3, 4], [3, 5]])
    assert cldice_score(thick, gt) == pytest.approx(10 / 11)  # 2 * 5/6 / (1 + 5/6)
    half = np.zeros_like(gt)
    half[3, 1:5] = True  # Tprec = 1, Tsens = 4/7 -> 2 * 4/7 / (1 + 4/7) = 8/11
    assert cldice_score(half, gt) == pytest.approx(8 / 11)


def test_cldice_identical_masks_give_one():
    rng = np.random.default_rng(3)
    for shape in ((32, 32), (12, 14, 13)):
        lab = np.zeros(shape, dtype=np.int64)
        lab[random_mask(rng, shape, 0.3, smooth=True)] = 1
        lab[random_mask(rng, shape, 0.2, smooth=True) & (lab == 0)] = 2
        assert cldice_score(lab, lab) == {1: 1.0, 2: 1.0}


@pytest.mark.parametrize("ndim", [2, 3])
def test_cldice_against_authors_definition(ndim):
    rng = np.random.default_rng(40 + ndim)
    shape = (40, 37) if ndim == 2 else (14, 15, 16)
    compared = 0
    for _ in range(12):
        p = random_mask(rng, shape, rng.uniform(0.15, 0.5), smooth=True)
        t = random_mask(rng, shape, rng.uniform(0.15, 0.5), smooth=True)
        want = authors_cldice(p, t)
        if not math.isfinite(want):  # a skeleton the thinning deleted: our S(X) = X rule applies instead
            continue
        assert cldice_score(p, t) == pytest.approx(want, abs=1e-12)
        assert cldice_score(torch.from_numpy(p).long(), torch.from_numpy(t).long()) == {1: pytest.approx(want)}
        compared += 1
    assert compared >= 8


def test_cldice_multilabel_is_per_label():
    rng = np.random.default_rng(5)
    shape = (30, 30)
    pred = rng.integers(0, 3, shape) * random_mask(rng, shape, 0.7, smooth=True)
    gt = rng.integers(0, 3, shape) * random_mask(rng, shape, 0.7, smooth=True)
    got = cldice_score(pred, gt)
    assert set(got) == {1, 2}
    for c in (1, 2):
        assert got[c] == pytest.approx(cldice_score(pred == c, gt == c))
    assert set(cldice_score(pred, gt, include_background=True)) == {0, 1, 2}
    assert set(cldice_score(pred, gt, labels=[2])) == {2}


def test_cldice_empty_policy():
    gt = np.zeros((6, 6), dtype=np.int64)
    gt[2, 1:5] = 1
    assert cldice_score(gt, gt, labels=[1, 3]) == {1: 1.0, 3: 1.0}  # both empty: "one"
    assert cldice_score(gt, gt, labels=[3], empty="zero") == {3: 0.0}
    assert math.isnan(cldice_score(gt, gt, labels=[3], empty="nan")[3])
    assert cldice_score(np.zeros_like(gt), gt) == {1: 0.0}  # one empty
    assert cldice_score(gt, np.zeros_like(gt)) == {1: 0.0}
    assert cldice_score(np.zeros((4, 4), dtype=bool), np.zeros((4, 4), dtype=bool)) == 1.0


def test_cldice_skeleton_deleted_whole():
    cube = np.zeros((6, 6, 6), dtype=bool)
    cube[2:4, 2:4, 2:4] = True
    assert not skeletonize(cube).any()  # scikit-image's 3D thinning removes it: the mask is its own skeleton
    assert cldice_score(cube, cube) == 1.0
    other = np.zeros_like(cube)
    other[2:4, 2:4, 3:5] = True  # half of each inside the other
    assert cldice_score(other, cube) == pytest.approx(0.5)


def test_cldice_ignore_index():
    gt = np.zeros((5, 10), dtype=np.int64)
    gt[2, 1:9] = 1
    gt[2, 5:9] = 255
    pred = np.zeros_like(gt)
    pred[2, 1:9] = 1
    assert cldice_score(pred, gt)[1] < 1.0
    assert cldice_score(pred, gt, ignore_index=255) == {1: 1.0}


# ---------------------------------------------------------------- errors


def test_errors_name_expected_and_got():
    m2, m3 = np.zeros((4, 4), dtype=bool), np.zeros((3, 3, 3), dtype=bool)
    with pytest.raises(ValueError, match=r"connectivity must be 8 or 4 for a 2D mask .*got 6"):
        betti_numbers(m2, connectivity=6)
    with pytest.raises(ValueError, match=r"connectivity must be 26 or 6 for a 3D mask .*got 18"):
        betti_numbers(m3, connectivity=18)
    with pytest.raises(ValueError, match=r"2D or 3D mask, got 1D"):
        betti_numbers(np.zeros(5, dtype=bool))
    with pytest.raises(ValueError, match=r"one shape, got \(4, 4\) and \(3, 3, 3\)"):
        cldice_score(m2, m3)
    with pytest.raises(ValueError, match=r"connectivity must be 8 or 4 .*got 26"):
        betti_errors(m2, m2, connectivity=26)
    with pytest.raises(ValueError, match=r"empty must be one of .*got 'ones'"):
        cldice_score(m2, m2, empty="ones")
    with pytest.raises(ValueError, match=r"labels must not contain ignore_index=3, got \[1, 3\]"):
        cldice_score(m2, m2, labels=[1, 3], ignore_index=3)
    with pytest.raises(ValueError, match=r"non-integer values"):
        betti_errors(np.full((3, 3), 0.5), m2.astype(float)[:3, :3])
