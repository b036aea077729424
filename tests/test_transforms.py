"""diceloss.transforms: hand-made cases with known answers, torch and NumPy in, bad inputs, the missing extra."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.morphology import dilation, skeletonize

from diceloss import transforms
from diceloss.metrics import components
from diceloss.transforms import label_components, signed_distance, tubed_skeleton, voronoi_cells

# ---- label_components ----------------------------------------------------------------------------------


def test_two_blobs_two_components_numpy_and_torch():
    m = np.zeros((8, 10), dtype=bool)
    m[1:3, 1:4] = True
    m[5:7, 6:9] = True
    ids, classes = label_components(m)
    assert isinstance(ids, np.ndarray) and ids.dtype == np.int32 and ids.shape == m.shape
    assert classes.tolist() == [0, 1, 1]
    assert set(np.unique(ids[1:3, 1:4])) == {1} and set(np.unique(ids[5:7, 6:9])) == {2}
    assert not ids[~m].any()
    tids, tclasses = label_components(torch.from_numpy(m))
    assert isinstance(tids, torch.Tensor) and tids.dtype == torch.int64 and isinstance(tclasses, torch.Tensor)
    assert np.array_equal(tids.numpy(), ids) and tclasses.tolist() == [0, 1, 1]


def test_diagonal_touching_under_4_and_8():
    diag = np.eye(4, dtype=bool)
    assert len(label_components(diag)[1]) - 1 == 1  # None = full = 8
    assert len(label_components(diag, connectivity=8)[1]) - 1 == 1
    assert len(label_components(diag, connectivity=2)[1]) - 1 == 1
    ids, classes = label_components(diag, connectivity=4)
    assert classes.tolist() == [0, 1, 1, 1, 1] and sorted(ids[diag].tolist()) == [1, 2, 3, 4]
    assert len(label_components(diag, connectivity=1)[1]) - 1 == 4
    cube = np.zeros((3, 3, 3), dtype=bool)
    cube[0, 0, 0] = cube[1, 1, 1] = True  # corner-touching in 3D
    assert len(label_components(cube)[1]) - 1 == 1
    assert len(label_components(cube, connectivity=18)[1]) - 1 == 2
    assert len(label_components(cube, connectivity=6)[1]) - 1 == 2


def test_label_map_ids_unique_across_classes_with_class_mapping():
    lab = np.array([[1, 1, 2, 2, 0],
                    [0, 0, 0, 0, 0],
                    [2, 0, 5, 0, 1]], dtype=np.int16)
    ids, classes = label_components(lab)
    # class 1: (0,0..1) then (2,4); class 2: (0,2..3) then (2,0); class 5: (2,2)
    assert ids.tolist() == [[1, 1, 3, 3, 0], [0, 0, 0, 0, 0], [4, 0, 5, 0, 2]]
    assert classes.tolist() == [0, 1, 1, 2, 2, 5]
    assert np.array_equal(classes[ids], lab)  # touching classes 1 | 2 are two components, not one
    ids, classes = label_components(lab, ignore_index=5)
    assert classes.tolist() == [0, 1, 1, 2, 2] and ids[2, 2] == 0
    ids, classes = label_components(lab.astype(np.float32), background=2)  # integral floats are labels
    assert classes.tolist() == [0, 0, 1, 1, 5]  # class 0: one component (8-connected), 1: two, 5: one


def test_label_components_empty_and_3d_torch():
    ids, classes = label_components(np.zeros((4, 4, 4), dtype=np.uint8))
    assert not ids.any() and classes.tolist() == [0]
    vol = torch.zeros(6, 6, 6, dtype=torch.int64)
    vol[0:2, 0:2, 0:2] = 3
    vol[4:6, 4:6, 4:6] = 3
    vol[0, 5, 5] = 1
    ids, classes = label_components(vol)
    assert classes.tolist() == [0, 1, 3, 3] and ids.shape == vol.shape
    assert torch.equal(classes[ids], vol)


# ---- tubed_skeleton ------------------------------------------------------------------------------------


def test_one_pixel_line_is_its_own_skeleton():
    line = np.zeros((7, 12), dtype=np.uint8)
    line[3, 1:11] = 2
    assert np.array_equal(tubed_skeleton(line, radius=0), line)
    # the tube is cut to the class: a 1-pixel line stays itself at any radius
    assert np.array_equal(tubed_skeleton(line), line)
    t = tubed_skeleton(torch.from_numpy(line))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and torch.equal(t, torch.from_numpy(line))


def test_tube_contains_skeleton_inside_mask_keeps_labels():
    lab = np.zeros((30, 40), dtype=np.int64)
    lab[3:12, 2:35] = 1  # a thick bar
    lab[16:28, 5:17] = 4  # a square
    lab[18:26, 24:38] = 2  # a rectangle
    tube = tubed_skeleton(lab)
    assert tube.shape == lab.shape and tube.dtype == lab.dtype
    for c in (1, 2, 4):
        m = lab == c
        skel = skeletonize(m)
        assert skel.any() and np.all(tube[skel] == c)  # contains the skeleton, with its class
        t = tube == c
        assert np.all(m[t])  # inside the class
        grown = ndimage.binary_dilation(skel, structure=ndimage.generate_binary_structure(2, 1), iterations=2)
        assert np.array_equal(t, grown & m)  # the skeleton dilated twice, cut to the class
        assert t.sum() > skel.sum()  # it is a tube, not the bare skeleton
    assert set(np.unique(tube)) == {0, 1, 2, 4}
    # = the authors' SkeletonTransform (skeletonise the foreground, dilation(dilation(.)), times the labels)
    # where classes do not touch
    skel = dilation(dilation(skeletonize(lab > 0).astype(np.int16)))
    assert np.array_equal(tube, skel * lab)


def test_tubed_skeleton_3d_and_bool():
    vol = np.zeros((12, 12, 20), dtype=bool)
    vol[3:8, 3:8, 2:18] = True  # a rod along the last axis (odd width: Lee's thinning keeps a centreline)
    tube = tubed_skeleton(vol)
    assert tube.dtype == np.bool_ and tube.shape == vol.shape
    skel = skeletonize(vol)
    assert skel.any() and np.all(tube[skel]) and np.all(vol[tube]) and tube.sum() > skel.sum()
    assert not tubed_skeleton(np.zeros((5, 5), dtype=bool)).any()


# ---- signed_distance -----------------------------------------------------------------------------------


def _box_closed_form(shape, r, c, spacing):
    """The boundary convention on an axis-aligned rectangle rows r[0]..r[1], columns c[0]..c[1] (inclusive)."""
    sy, sx = spacing
    out = np.zeros(shape)
    for i in range(shape[0]):
        for j in range(shape[1]):
            if r[0] <= i <= r[1] and c[0] <= j <= c[1]:
                out[i, j] = -min(sy * (i - r[0]), sy * (r[1] - i), sx * (j - c[0]), sx * (c[1] - j))
            else:
                dy = max(r[0] - i, 0, i - r[1])
                dx = max(c[0] - j, 0, j - c[1])
                out[i, j] = np.hypot(sy * dy, sx * dx)
    return out


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (2.0, 0.5), (0.7, 3.0)])
def test_signed_distance_square_anisotropic_closed_form(spacing):
    g = np.zeros((14, 16), dtype=bool)
    g[3:11, 4:12] = True
    phi = signed_distance(g, spacing=spacing)
    assert phi.dtype == np.float32 and phi.shape == g.shape
    want = _box_closed_form(g.shape, (3, 10), (4, 11), spacing)
    np.testing.assert_allclose(phi, want, rtol=1e-6, atol=1e-6)
    edge = g & ~ndimage.binary_erosion(g)
    assert np.all(phi[edge] == 0) and np.all(phi[g & ~edge] < 0) and np.all(phi[~g] > 0)
    # at unit spacing the authors' one_hot2dist gives the same map on a box
    if spacing == (1.0, 1.0):
        np.testing.assert_array_equal(signed_distance(g, convention="kervadec"), phi)
    else:  # theirs leaves a non-zero boundary (boundary-loss#45)
        assert np.any(signed_distance(g, spacing=spacing, convention="kervadec")[edge] != 0)


def test_signed_distance_label_map_classes_torch_3d():
    lab = torch.zeros(6, 7, 8, dtype=torch.int64)
    lab[1:5, 2:5, 2:6] = 2
    phi = signed_distance(lab, spacing=(1.0, 2.0, 0.5), num_classes=4)
    assert isinstance(phi, torch.Tensor) and phi.dtype == torch.float32 and phi.shape == (4, 6, 7, 8)
    assert torch.all(phi[1] == 0) and torch.all(phi[3] == 0)  # absent classes
    assert torch.all(phi[2][lab == 2] <= 0) and torch.all(phi[2][lab != 2] > 0)
    assert torch.all((phi[0] <= 0) == (lab == 0))
    # the voxel (2, 3, 3) is 1 step from the box's face along axis 0 (1.0), 1 along axis 1 (2.0), 1 along 2 (0.5)
    assert phi[2, 2, 3, 3].item() == pytest.approx(-0.5)
    assert phi[2, 0, 3, 3].item() == pytest.approx(1.0)  # one row above the box
    assert signed_distance(lab).shape == (3, 6, 7, 8)  # default C = largest label + 1
    full = np.ones((4, 4), dtype=bool)
    assert not signed_distance(full).any()


# ---- voronoi_cells -------------------------------------------------------------------------------------


def test_voronoi_moved_and_reexported():
    assert components.voronoi_cells is voronoi_cells
    gt = np.array([1, 0, 0, 0, 0, 1, 1], dtype=bool)
    cells, n = voronoi_cells(gt)
    assert n == 2 and cells.tolist() == [1, 1, 1, 2, 2, 2, 2]
    g = np.zeros((9, 9), dtype=bool)
    g[0, 0] = g[8, 8] = True
    tcells, tn = voronoi_cells(torch.from_numpy(g), spacing=(1, 3))
    assert isinstance(tcells, torch.Tensor) and tn == 2
    assert np.array_equal(tcells.numpy(), voronoi_cells(g, spacing=(1, 3))[0])
    assert voronoi_cells(np.zeros((3, 3), dtype=bool))[1] == 0


# ---- errors --------------------------------------------------------------------------------------------


def test_bad_inputs_name_expected_and_got():
    with pytest.raises(TypeError, match="NumPy array or a CPU torch tensor, got list"):
        label_components([[0, 1]])
    with pytest.raises(ValueError, match=r"2D or 3D case of shape \(\*S\), got shape \(4,\)"):
        tubed_skeleton(np.zeros(4, dtype=bool))
    with pytest.raises(ValueError, match=r"got shape \(1, 2, 3, 4\)"):
        signed_distance(np.zeros((1, 2, 3, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="integer labels, got non-integral values"):
        label_components(np.full((3, 3), 0.5))
    with pytest.raises(TypeError, match="integer labels .or bool., got dtype complex"):
        label_components(np.zeros((3, 3), dtype=np.complex64))
    with pytest.raises(ValueError, match=r"non-negative labels .*got \[-1\]"):
        label_components(np.array([[-1, 0], [1, 1]]))
    with pytest.raises(ValueError, match="connectivity must be None, a rank 1..2 .* got 6"):
        label_components(np.eye(3, dtype=bool), connectivity=6)
    with pytest.raises(ValueError, match="radius must be a non-negative integer .*got -1"):
        tubed_skeleton(np.eye(3, dtype=bool), radius=-1)
    with pytest.raises(ValueError, match=r"spacing must be one positive number or 2 positive numbers, got \(1, 0\)"):
        signed_distance(np.eye(3, dtype=bool), spacing=(1, 0))
    with pytest.raises(ValueError, match=r"num_classes must be an integer >= the largest label \+ 1 \(3\), got 2"):
        signed_distance(np.array([[0, 2], [1, 1]]), num_classes=2)
    with pytest.raises(ValueError, match="convention must be one of .* got 'x'"):
        signed_distance(np.eye(3, dtype=bool), convention="x")
    with pytest.raises(ValueError, match="binary mask"):
        voronoi_cells(np.array([[0, 2]]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA tensor")
def test_cuda_tensor_refused():  # pragma: no cover - CPU machines
    with pytest.raises(ValueError, match="CPU tensor or a NumPy array .* got a tensor on cuda"):
        label_components(torch.zeros(3, 3, device="cuda"))


def test_missing_scikit_image_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)
    monkeypatch.setitem(sys.modules, "skimage.morphology", None)
    with pytest.raises(ImportError, match=r"tubed_skeleton needs scikit-image .*pip install 'diceloss\[transforms\]'"):
        tubed_skeleton(np.eye(4, dtype=bool))
    from diceloss.metrics import cldice_score

    with pytest.raises(ImportError, match=r"cldice_score needs scikit-image .*diceloss\[transforms\]"):
        cldice_score(np.eye(4, dtype=bool), np.eye(4, dtype=bool))


def test_missing_scipy_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy.ndimage", None)
    with pytest.raises(ImportError, match=r"signed_distance needs scipy .*diceloss\[transforms\]"):
        signed_distance(np.eye(4, dtype=bool))
    with pytest.raises(ImportError, match=r"needs scipy .*diceloss\[transforms\]"):
        transforms.label_components(np.eye(4, dtype=bool))
