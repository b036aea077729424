"""Data for the demo: generated class-imbalanced segmentation sets (2D and 3D), and a folder loader.

Generated sets (:func:`make_synthetic`) imitate a typical medical segmentation task, deterministically
by seed:

====  ==========  ====================================================  ==================
cls   name        what                                                  share of area (2D)
====  ==========  ====================================================  ==================
0     background  smooth bias field, bright "distractor" spots          ~ 79 %
1     organ       one large ellipse / rounded box, varied size and pose ~ 16 %
2     vessel      one or two thin elongated structures, darker          ~ 4 %
3     lesion      0-3 tiny blobs *inside the organ*, brighter           ~ 1 %
====  ==========  ====================================================  ==================

Lesions look like the distractor spots in the background: telling them apart needs the context (inside
the organ or not), as in real lesion segmentation. The image is blurred (partial volume) and noisy.

Folder layout (:func:`load_folder`)::

    DIR/images/<name>.<ext>     the image: .png, .npy, .npz, .nii or .nii.gz
    DIR/labels/<name>.<ext>     its label map (same <name>; any of those formats): integer class
                                indices 0 .. C-1, 0 = background

Every label has the same spatial shape (H, W) or (D, H, W). An image has the label's shape (one
channel), or channels first (K, *S), or channels last (*S, K) (RGB PNG); the layout is recognised by
comparing with the label's shape. ``.npz`` files hold one array (or arrays named ``image`` / ``label``)
and are read with ``allow_pickle=False``. NIfTI needs ``nibabel`` (``pip install nibabel``). Images
are normalised per image and channel to zero mean and unit variance; the spatial shape is padded with
background to a multiple of the network's stride.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .. import io as dio

CLASS_NAMES = ("background", "organ", "vessel", "lesion")
SUFFIXES = (".png", ".npy", ".npz", ".nii.gz", ".nii")


@dataclass
class SegmentationSet:
    """Images (N, K, *S) float32 and labels (N, *S) int64, split into train and validation."""

    train_images: Tensor
    train_labels: Tensor
    val_images: Tensor
    val_labels: Tensor
    class_names: tuple[str, ...]
    source: str = "synthetic"
    notes: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return self.train_images.shape[1]

    @property
    def spatial_dims(self) -> int:
        return self.train_images.ndim - 2

    def class_shares(self) -> list[float]:
        """Fraction of the training positions in each class."""
        counts = torch.bincount(self.train_labels.reshape(-1), minlength=self.num_classes).double()
        return (counts / counts.sum()).tolist()


# ------------------------------------------------------------------------------------------------
# generated data


def _rotation(dims: int, gen: torch.Generator) -> Tensor:
    """A random rotation matrix (dims, dims)."""
    q, r = torch.linalg.qr(torch.randn(dims, dims, generator=gen, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()


def _blob(grid: Tensor, centre: Tensor, axes: Tensor, rot: Tensor, power: float) -> Tensor:
    """Boolean super-ellipsoid sum_k |u_k / a_k|^p <= 1 on ``grid`` (dims, *S); p=2 ellipse, 4 rounded box."""
    d = grid - centre.view(-1, *([1] * (grid.ndim - 1)))
    u = torch.einsum("ij,j...->i...", rot, d)
    return ((u / axes.view(-1, *([1] * (grid.ndim - 1)))).abs().pow(power).sum(0)) <= 1.0


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of x (N, 1, *S) along every spatial axis."""
    if sigma <= 0:
        return x
    radius = max(1, int(math.ceil(2.5 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    dims = x.ndim - 2
    conv = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]
    for axis in range(dims):
        shape = [1, 1] + [1] * dims
        shape[2 + axis] = k.numel()
        pad = [0, 0] * dims
        pad[2 * (dims - 1 - axis)] = pad[2 * (dims - 1 - axis) + 1] = radius
        x = conv(F.pad(x, pad, mode="replicate"), k.view(shape))
    return x


def _smooth_field(shape: tuple[int, ...], gen: torch.Generator, scale: float) -> Tensor:
    """A smooth random field (low-frequency intensity variation, like an MR bias field)."""
    coarse = torch.randn((1, 1) + tuple(max(2, s // 16) for s in shape), generator=gen)
    mode = ("linear", "bilinear", "trilinear")[len(shape) - 1]
    return scale * F.interpolate(coarse, size=shape, mode=mode, align_corners=True)[0, 0]


def _one_sample(size: int, dims: int, gen: torch.Generator, noise: float, blur: float):
    shape = (size,) * dims
    axes_ = [torch.arange(size, dtype=torch.float32) for _ in range(dims)]
    grid = torch.stack(torch.meshgrid(*axes_, indexing="ij"))  # (dims, *S)
    label = torch.zeros(shape, dtype=torch.int64)
    u = lambda lo, hi, n=1: lo + (hi - lo) * torch.rand(n, generator=gen)  # noqa: E731

    # 3D structures of radius 1 would be a handful of voxels, too few to learn from in a short demo
    min_r = 1.0 if dims == 2 else 1.5
    spot_r = 1.0 if dims == 2 else 2.0
    # organ: large, off-centre, varied aspect and pose
    organ_axes = u(0.17, 0.3, dims) * size
    centre = u(0.35, 0.65, dims) * size
    power = 2.0 if float(u(0, 1)) < 0.6 else 4.0
    organ = _blob(grid, centre, organ_axes, _rotation(dims, gen), power)
    label[organ] = 1

    # vessels: thin, elongated, darker; may cross the organ
    for _ in range(1 + int(float(u(0, 1)) < 0.5)):
        v_axes = torch.cat([u(0.22, 0.4) * size, u(0.018, 0.035, dims - 1) * size]).clamp_min(min_r - 0.1)
        v = _blob(grid, u(0.2, 0.8, dims) * size, v_axes, _rotation(dims, gen), 2.0)
        label[v] = 2

    image = torch.zeros(shape)
    image[label == 1] = 1.0
    image[label == 2] = -1.0

    # lesions: tiny, bright, only inside the organ (0 to 3; some images have none)
    n_lesions = int(torch.randint(0, 4, (1,), generator=gen))
    inside = torch.nonzero((label == 1).reshape(-1)).squeeze(1)
    for _ in range(n_lesions if inside.numel() else 0):
        pick = inside[int(torch.randint(0, inside.numel(), (1,), generator=gen))]
        c = torch.tensor(np.unravel_index(int(pick), shape), dtype=torch.float32)
        r = (u(0.035, 0.06, dims) * size).clamp_min(spot_r)
        les = _blob(grid, c, r, _rotation(dims, gen), 2.0)
        label[les] = 3
        image[les] = 2.2

    # distractors: the same bright spots, in the background (label stays 0)
    for _ in range(int(torch.randint(1, 4, (1,), generator=gen))):
        c = u(0.05, 0.95, dims) * size
        r = (u(0.035, 0.06, dims) * size).clamp_min(spot_r)
        spot = _blob(grid, c, r, _rotation(dims, gen), 2.0) & (label == 0)
        image[spot] = 1.2

    image = image + _smooth_field(shape, gen, 0.25)
    image = _gaussian_blur(image[None, None], blur)[0, 0]
    image = image + noise * torch.randn(shape, generator=gen)
    return image, label


def make_synthetic(
    n_train: int = 192,
    n_val: int = 48,
    *,
    size: int = 64,
    dims: int = 2,
    seed: int = 0,
    noise: float = 0.35,
    blur: float = 0.8,
) -> SegmentationSet:
    """A generated, class-imbalanced segmentation set; the same seed gives the same tensors.

    Args:
        n_train, n_val: numbers of training and validation images.
        size: side length of the square (cube) images.
        dims: 2 (images) or 3 (volumes).
        seed: everything (shapes, positions, noise) is drawn from this seed.
        noise, blur: standard deviation of the Gaussian noise and of the blur (pixels).

    Example:
        >>> data = make_synthetic(4, 2, size=32, seed=1)
        >>> tuple(data.train_images.shape), tuple(data.train_labels.shape), data.class_names[3]
        ((4, 1, 32, 32), (4, 32, 32), 'lesion')
    """
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims}")
    if size < 16:
        raise ValueError(f"size must be at least 16, got {size}")
    if n_train < 1 or n_val < 1:
        raise ValueError(f"n_train and n_val must be >= 1, got {n_train} and {n_val}")
    gen = torch.Generator().manual_seed(seed)
    images, labels = [], []
    for _ in range(n_train + n_val):
        x, y = _one_sample(size, dims, gen, noise, blur)
        images.append(x)
        labels.append(y)
    x = torch.stack(images)[:, None].float()
    x = (x - x.mean()) / x.std()
    y = torch.stack(labels)
    return SegmentationSet(
        x[:n_train],
        y[:n_train],
        x[n_train:],
        y[n_train:],
        CLASS_NAMES,
        source=f"synthetic {dims}D {size}^{dims}, seed {seed}",
    )


# ------------------------------------------------------------------------------------------------
# a folder of image / label pairs


def _read_array(path: Path, role: str) -> np.ndarray:
    """An image (``role="image"``, several channels kept) or a label map, through :mod:`diceloss.io`."""
    read = dio.read_image if role == "image" else dio.read_label_map
    try:
        try:
            return read(path).array
        except dio.ReadError:
            if not path.name.lower().endswith(".npz"):
                raise
            return read(path, key=role).array  # an .npz of several arrays: the one named after its role
    except ImportError as err:  # Pillow or nibabel missing: a ValueError, as every other bad folder
        raise ValueError(f"{path}: {err}") from err


def _index(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise ValueError(
            f"expected a folder {folder} (layout: DIR/images/<name>.<ext>, DIR/labels/<name>.<ext>)"
        )
    files, several = dio.index_folder(folder, SUFFIXES)
    if several:
        stem, paths = next(iter(several.items()))
        raise ValueError(f"two files named {stem!r} in {folder}: {Path(paths[0]).name} and {Path(paths[1]).name}")
    return {stem: Path(path) for stem, path in files.items()}


def _channels_first(image: np.ndarray, label_shape: tuple[int, ...], path: Path) -> np.ndarray:
    if image.shape == label_shape:
        return image[None]
    if image.shape[1:] == label_shape:
        return image
    if image.shape[:-1] == label_shape:
        return np.moveaxis(image, -1, 0)
    raise ValueError(
        f"{path}: image of shape {image.shape} does not fit its label of shape {label_shape}; expected "
        f"{label_shape}, (K, {', '.join(map(str, label_shape))}) or ({', '.join(map(str, label_shape))}, K)"
    )


def load_folder(
    root: str | Path, *, val_fraction: float = 0.2, seed: int = 0, multiple: int = 4
) -> SegmentationSet:
    """Read ``root/images`` and ``root/labels`` (layout: the module docstring); split train / val by seed."""
    root = Path(root)
    images, labels = _index(root / "images"), _index(root / "labels")
    names = sorted(set(images) & set(labels))
    missing = sorted(set(images) ^ set(labels))
    if missing:
        raise ValueError(
            f"{root}: every image needs a label of the same name and vice versa; unpaired: {missing[:5]}"
        )
    if len(names) < 2:
        raise ValueError(f"{root}: need at least 2 image/label pairs, found {len(names)}")
    xs, ys = [], []
    for name in names:
        y = _read_array(labels[name], "label")
        if labels[name].name.lower().endswith(".png") and y.ndim != 2:
            raise ValueError(f"{labels[name]}: a label PNG must have one channel (L, P or I), got {y.shape}")
        if y.ndim not in (2, 3):
            raise ValueError(f"{labels[name]}: a label map must be 2D or 3D, got shape {y.shape}")
        if not (np.issubdtype(y.dtype, np.integer) or np.array_equal(y, np.round(y))):
            raise ValueError(f"{labels[name]}: labels must be whole class indices, got dtype {y.dtype}")
        if y.min() < 0:
            raise ValueError(f"{labels[name]}: class indices must be >= 0, got {y.min()}")
        x = _channels_first(_read_array(images[name], "image"), y.shape, images[name]).astype(np.float32)
        xs.append(x)
        ys.append(y.astype(np.int64))
    shapes = {y.shape for y in ys}
    channels = {x.shape[0] for x in xs}
    if len(shapes) != 1 or len(channels) != 1:
        raise ValueError(
            f"{root}: all pairs need one spatial shape and channel count; got shapes {sorted(shapes)} "
            f"and channels {sorted(channels)} (resize or crop them first)"
        )
    x = torch.from_numpy(np.stack(xs))
    y = torch.from_numpy(np.stack(ys))
    dims = tuple(range(2, x.ndim))
    x = (x - x.mean(dim=dims, keepdim=True)) / x.std(dim=dims, keepdim=True).clamp_min(1e-6)
    # pad to a multiple of the network's stride; padding is background
    pad = []
    for s in reversed(y.shape[1:]):
        extra = (-s) % multiple
        pad += [extra // 2, extra - extra // 2]
    if any(pad):
        x = F.pad(x, pad)
        y = F.pad(y, pad)
    C = max(2, int(y.max()) + 1)
    n_val = min(len(names) - 1, max(1, round(val_fraction * len(names))))
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed))
    tr, va = order[n_val:], order[:n_val]
    class_names = tuple(f"class {c}" if c else "background" for c in range(C))
    return SegmentationSet(x[tr], y[tr], x[va], y[va], class_names, source=f"{root} ({len(names)} pairs)")
