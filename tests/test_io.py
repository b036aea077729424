"""diceloss.io: every format round-trips, spacing comes from the file, bad files give one-line ReadErrors."""

import sys

import numpy as np
import pytest

from diceloss.io import ReadError, read_label_map, split_extension

LAB = np.array([[0, 1, 1], [2, 2, 0]], dtype=np.uint8)


def test_split_extension():
    assert split_extension("case_01.nii.gz") == ("case_01", ".nii.gz")
    assert split_extension("a.b.NPY") == ("a.b", ".npy")  # the canonical extension
    assert split_extension("notes.txt") == ("notes.txt", "")
    assert split_extension(".npy") == (".npy", "")


def test_npy_and_npz(tmp_path):
    np.save(tmp_path / "a.npy", LAB)
    img = read_label_map(tmp_path / "a.npy")
    np.testing.assert_array_equal(img.array, LAB)
    assert img.spacing is None
    np.savez_compressed(tmp_path / "b.npz", seg=LAB, spacing=np.array([0.5, 2.0]))
    img = read_label_map(str(tmp_path / "b.npz"))
    np.testing.assert_array_equal(img.array, LAB)
    assert img.spacing == (0.5, 2.0)
    np.savez(tmp_path / "c.npz", seg=LAB, prob=LAB * 0.5)
    with pytest.raises(ReadError, match="expected one array.*got 2: seg, prob"):
        read_label_map(tmp_path / "c.npz")
    np.testing.assert_array_equal(read_label_map(tmp_path / "c.npz", key="seg").array, LAB)
    with pytest.raises(ReadError, match="no array named 'x'"):
        read_label_map(tmp_path / "c.npz", key="x")


def test_pickles_are_refused(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ReadError, match="refused: loaded with allow_pickle=False"):
        read_label_map(tmp_path / "obj.npy")
    np.savez(tmp_path / "obj.npz", seg=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ReadError, match="refused"):
        read_label_map(tmp_path / "obj.npz")


def test_png_and_tif(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    Image.fromarray(LAB).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_label_map(tmp_path / "a.png").array, LAB)
    pal = Image.fromarray(LAB, mode="L").convert("P")  # palette images hold indices
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_label_map(tmp_path / "p.png").array, LAB)
    Image.fromarray(LAB.astype(np.uint16) * 300).save(tmp_path / "w.tif")
    np.testing.assert_array_equal(read_label_map(tmp_path / "w.tif").array, LAB.astype(np.int64) * 300)
    # a multi-page TIFF is a volume
    pages = [Image.fromarray(LAB * k) for k in range(3)]
    pages[0].save(tmp_path / "v.tiff", save_all=True, append_images=pages[1:])
    vol = read_label_map(tmp_path / "v.tiff").array
    assert vol.shape == (3, 2, 3)
    np.testing.assert_array_equal(vol[2], LAB * 2)
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ReadError, match="one channel.*got mode RGB"):
        read_label_map(tmp_path / "rgb.png")


def test_nifti_spacing_from_header(tmp_path):
    nib = pytest.importorskip("nibabel")
    vol = np.zeros((4, 5, 6), dtype=np.int16)
    vol[1:3, 1:4, 2:5] = 3
    nib.save(nib.Nifti1Image(vol, np.diag([0.8, 0.9, 2.5, 1.0])), tmp_path / "v.nii.gz")
    img = read_label_map(tmp_path / "v.nii.gz")
    np.testing.assert_array_equal(img.array, vol)
    assert img.spacing == pytest.approx((0.8, 0.9, 2.5))
    nib.save(nib.Nifti1Image(vol[..., None], np.eye(4)), tmp_path / "w.nii")  # a 4D file with one volume
    assert read_label_map(tmp_path / "w.nii").array.shape == (4, 5, 6)


@pytest.mark.parametrize("name", ["x.npy", "x.npz", "x.png", "x.tif", "x.nii.gz", "x.nii"])
def test_corrupt_files(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\x00garbage\nnot an image" * 3)
    with pytest.raises(ReadError) as info:
        read_label_map(path)
    msg = str(info.value)
    assert msg.startswith(str(path)) and "\n" not in msg


def test_truncated_npy(tmp_path):
    np.save(tmp_path / "t.npy", np.zeros((50, 50), np.int32))
    data = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(ReadError, match="not a readable .npy file"):
        read_label_map(tmp_path / "t.npy")


def test_unknown_missing_and_non_numeric(tmp_path):
    with pytest.raises(ReadError, match="unknown file type"):
        read_label_map(tmp_path / "a.txt")
    with pytest.raises(ReadError, match="no such file"):
        read_label_map(tmp_path / "a.npy")
    np.save(tmp_path / "s.npy", np.array(["a", "b"]))
    with pytest.raises(ReadError, match="numeric label map, got dtype <U1"):
        read_label_map(tmp_path / "s.npy")
    np.save(tmp_path / "z.npy", np.array(3))
    with pytest.raises(ReadError, match="0-d"):
        read_label_map(tmp_path / "z.npy")


def test_missing_optional_package(tmp_path, monkeypatch):
    (tmp_path / "a.nii.gz").write_bytes(b"x")
    (tmp_path / "a.png").write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "nibabel", None)  # makes `import nibabel` fail
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    with pytest.raises(ImportError, match=r"reading .nii.gz files needs nibabel.*diceloss\[io\]"):
        read_label_map(tmp_path / "a.nii.gz")
    with pytest.raises(ImportError, match=r"reading .png files needs pillow"):
        read_label_map(tmp_path / "a.png")
