"""Read label maps (and images) from files: ``.npy`` / ``.npz`` (NumPy), ``.png`` / ``.tif`` / ``.tiff``
(Pillow), ``.nii`` / ``.nii.gz`` (nibabel, with the voxel spacing from the header); index a folder of them
by case name.

Pillow and nibabel are optional (``pip install 'diceloss[io]'``); a missing one gives an ImportError
that names the package. NumPy files are read with ``allow_pickle=False``: an object array is refused,
never unpickled. Every failure to read a file is a :class:`ReadError` (a ValueError) whose message is
one line naming the file.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

EXTENSIONS = (".nii.gz", ".nii", ".npy", ".npz", ".png", ".tif", ".tiff")


class ReadError(ValueError):
    """A file could not be read as a label map; the message is one line."""


@dataclass
class LabelImage:
    """A label map, its voxel spacing and, for NIfTI, its voxel-to-world affine (None when the format
    does not carry one)."""

    array: np.ndarray
    spacing: tuple[float, ...] | None = None
    affine: np.ndarray | None = None


def split_extension(name: str, extensions: Sequence[str] = EXTENSIONS) -> tuple[str, str]:
    """``("case_01", ".nii.gz")`` for ``"case_01.nii.gz"``; ``(name, "")`` for an extension not in
    ``extensions`` (lower case, longest first where one ends another)."""
    lower = name.lower()
    for ext in extensions:
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], ext
    return name, ""


def index_folder(
    folder: str | os.PathLike, extensions: Sequence[str] = EXTENSIONS
) -> tuple[dict[str, str], dict[str, list[str]]]:
    """The files of ``folder`` by case name: ``({name: path}, {name: [paths]})``, the second for the names
    with more than one file (``case.npy`` beside ``case.nii.gz``). Files with an extension outside
    ``extensions``, hidden files and sub-folders are left out; names and paths come in sorted order.

    Example:
        >>> import tempfile, os
        >>> d = tempfile.mkdtemp()
        >>> for f in ("a.npy", "b.nii.gz", "b.png", "notes.txt"):
        ...     open(os.path.join(d, f), "w").close()
        >>> files, several = index_folder(d)
        >>> sorted(files), {k: [os.path.basename(p) for p in v] for k, v in several.items()}
        (['a'], {'b': ['b.nii.gz', 'b.png']})
    """
    folder = os.fspath(folder)
    found: dict[str, list[str]] = {}
    for entry in sorted(os.listdir(folder)):
        path = os.path.join(folder, entry)
        stem, ext = split_extension(entry, extensions)
        if ext and not entry.startswith(".") and os.path.isfile(path):
            found.setdefault(stem, []).append(path)
    return {k: v[0] for k, v in found.items() if len(v) == 1}, {k: v for k, v in found.items() if len(v) > 1}


def unreadable_entries(folder: str | os.PathLike, extensions: Sequence[str] = EXTENSIONS) -> dict[str, str]:
    """The entries of ``folder`` named like a label map (an extension in ``extensions``, not hidden) that
    :func:`index_folder` leaves out because they are not readable files: ``{name: reason}`` for a broken
    symlink, a symlink loop, a folder or another non-file.

    Example:
        >>> import tempfile, os
        >>> d = tempfile.mkdtemp(); os.mkdir(os.path.join(d, "case.nii.gz"))
        >>> unreadable_entries(d)
        {'case': 'case.nii.gz is a folder, not a file'}
    """
    folder = os.fspath(folder)
    out: dict[str, str] = {}
    for entry in sorted(os.listdir(folder)):
        stem, ext = split_extension(entry, extensions)
        path = os.path.join(folder, entry)
        if not ext or entry.startswith(".") or os.path.isfile(path):
            continue
        if os.path.islink(path):
            try:
                os.stat(path)
                why = "a symlink to something that is not a file"
            except OSError as err:
                loop = err.errno == errno.ELOOP
                why = "a symlink loop" if loop else f"a broken symlink (to {os.readlink(path)!r})"
            if os.path.isdir(path):
                why = "a symlink to a folder, not a file"
        elif os.path.isdir(path):
            why = "a folder, not a file"
        else:
            why = "not a regular file"
        out[stem] = f"{entry} is {why}"
    return out


def _reason(err: BaseException) -> str:
    text = " ".join(str(err).split())
    if "allow_pickle" in text:
        return "object (pickled) data, refused: loaded with allow_pickle=False"
    return f"{type(err).__name__}: {text}"


def _require(module: str, package: str, ext: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"reading {ext} files needs {package}: pip install {package} (or pip install 'diceloss[io]')"
        ) from err


def _magic(path: str, n: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _read_npy(path: str) -> LabelImage:
    if _magic(path, 6) != b"\x93NUMPY":
        raise ReadError(f"{path}: not a .npy file (no NumPy header)")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as err:  # ValueError for pickled / object data (refused), EOFError, OSError, ...
        raise ReadError(f"{path}: not a readable .npy file ({_reason(err)})") from err
    if not isinstance(arr, np.ndarray):
        raise ReadError(f"{path}: expected a .npy array, got {type(arr).__name__}")
    return LabelImage(arr)


def _read_npz(path: str, key: str | None) -> LabelImage:
    if _magic(path, 4) not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise ReadError(f"{path}: not a .npz file (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as data:
            names = list(data.files)
            spacing = None
            if "spacing" in names:
                spacing = tuple(float(s) for s in np.asarray(data["spacing"], dtype=np.float64).ravel())
                names.remove("spacing")
            if key is not None:
                if key not in data.files:
                    raise ReadError(f"{path}: no array named {key!r}; arrays: {', '.join(data.files)}")
                arr = data[key]
            elif len(names) == 1:
                arr = data[names[0]]
            else:
                raise ReadError(
                    f"{path}: expected one array (plus an optional 'spacing'), got {len(names)}: "
                    f"{', '.join(names) or 'none'}; name one with key="
                )
    except ReadError:
        raise
    except Exception as err:  # BadZipFile, EOFError, OSError, ValueError for pickled / object data (refused)
        raise ReadError(f"{path}: not a readable .npz file ({_reason(err)})") from err
    if not isinstance(arr, np.ndarray):
        raise ReadError(f"{path}: expected a .npz of arrays, got {type(arr).__name__}")
    return LabelImage(arr, spacing)


def _read_pillow(path: str, ext: str, colour: bool) -> LabelImage:
    Image = _require("PIL.Image", "pillow", ext)
    try:
        with Image.open(path) as img:
            frames = []
            for i in range(getattr(img, "n_frames", 1)):
                img.seek(i)
                if not colour and img.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "LA", "PA"):
                    raise ReadError(
                        f"{path}: a label map must have one channel (mode L, P, I, I;16 or F), "
                        f"got mode {img.mode}"
                    )
                frames.append(np.array(img))
    except ReadError:
        raise
    except Exception as err:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise ReadError(f"{path}: not a readable {ext} image ({_reason(err)})") from err
    if len(frames) > 1 and any(f.shape != frames[0].shape for f in frames):
        raise ReadError(f"{path}: the pages of a multi-page TIFF must have one shape")
    arr = frames[0] if len(frames) == 1 else np.stack(frames)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    return LabelImage(arr)


def _read_nifti(path: str, ext: str) -> LabelImage:
    nib = _require("nibabel", "nibabel", ext)
    try:
        img = nib.load(path)
        arr = np.asanyarray(img.dataobj)
        zooms = tuple(float(z) for z in img.header.get_zooms())
    except Exception as err:  # nibabel raises ImageFileError, OSError, EOFError, zlib errors, ...
        raise ReadError(f"{path}: not a readable NIfTI file ({_reason(err)})") from err
    # trailing singleton axes (a 4D file with one volume) carry no labels
    shape = tuple(int(n) for n in arr.shape)
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim > 3:  # a time series or several volumes: its 4th "spacing" is a time step, not a distance
        raise ReadError(f"{path}: expected a 2D or 3D label map, got {len(shape)}D {shape} "
                        "(several volumes; split them into one file each)")
    affine = np.asarray(img.affine, dtype=np.float64) if getattr(img, "affine", None) is not None else None
    return LabelImage(np.asarray(arr), zooms[: arr.ndim], affine)


def read_label_map(path: str | os.PathLike, *, key: str | None = None) -> LabelImage:
    """Read the label map in ``path`` (by extension); ``key`` names the array of a several-array ``.npz``.

    A ``.npz`` may hold an array named ``spacing`` beside the labels; NIfTI files give their voxel
    size (``header.get_zooms()``); other formats have no spacing (None).

    Example:
        >>> import tempfile, os
        >>> d = tempfile.mkdtemp(); f = os.path.join(d, "case.npz")
        >>> np.savez(f, seg=np.eye(3, dtype=np.uint8), spacing=np.array([0.5, 2.0]))
        >>> img = read_label_map(f); img.array.shape, img.spacing
        ((3, 3), (0.5, 2.0))
    """
    return _read(path, key, colour=False)


def read_image(path: str | os.PathLike, *, key: str | None = None) -> LabelImage:
    """Read an image (a network input) in ``path``: as :func:`read_label_map`, but colour and other
    several-channel images are kept, channels last ((H, W, 3) for an RGB PNG).

    Example:
        >>> import tempfile, os
        >>> f = os.path.join(tempfile.mkdtemp(), "x.npy"); np.save(f, np.zeros((2, 4, 4), np.float32))
        >>> read_image(f).array.shape
        (2, 4, 4)
    """
    return _read(path, key, colour=True)


def _read(path: str | os.PathLike, key: str | None, *, colour: bool) -> LabelImage:
    path = os.fspath(path)
    _, ext = split_extension(os.path.basename(path))
    if not ext:
        raise ReadError(f"{path}: unknown file type; expected one of {', '.join(EXTENSIONS)}")
    if not os.path.isfile(path):
        raise ReadError(f"{path}: no such file")
    if ext == ".npy":
        img = _read_npy(path)
    elif ext == ".npz":
        img = _read_npz(path, key)
    elif ext in (".png", ".tif", ".tiff"):
        img = _read_pillow(path, ext, colour)
    else:
        img = _read_nifti(path, ext)
    arr = img.array
    if arr.dtype == object or not (arr.dtype == bool or np.issubdtype(arr.dtype, np.number)):
        raise ReadError(f"{path}: expected a numeric label map, got dtype {arr.dtype}")
    if arr.ndim == 0:
        raise ReadError(f"{path}: expected an image, got a 0-d array")
    return img


__all__ = ["EXTENSIONS", "LabelImage", "ReadError", "index_folder", "read_image", "read_label_map", "split_extension",
           "unreadable_entries"]
