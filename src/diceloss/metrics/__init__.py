"""Metrics of hard segmentations: overlap per (sample, class) and per-case surface distances.

Two families, one vocabulary:

* :mod:`diceloss.metrics.overlap`: :func:`dice_score`, :func:`iou_score`, :func:`hard_counts` and the
  accumulating :class:`DiceMetric`, on batches of tensors (B, ...) as a training loop holds them.
* :mod:`diceloss.metrics.surface`: :func:`segmentation_metrics`, :func:`hausdorff_distance`,
  :func:`average_surface_distance`, :func:`surface_dice`, on one case (a label map per file) as an
  evaluation holds it, NumPy or torch.
* per component, lesion-wise and topological, on one case: :func:`component_metrics`, :func:`lesion_metrics`,
  :func:`cldice_score`, :func:`betti_errors`, and :func:`family_metrics` (:mod:`diceloss.metrics.families`),
  all of them per label in one pass, as ``diceloss eval`` gives them; :func:`calibration_error` of
  probabilities.

**Empty classes.** A class (label) absent from both the prediction and the reference has no defined
overlap score. Every metric that scores one takes ``empty``, one of :data:`EMPTY_POLICIES`: "nan"
(undefined, left out of the NaN-ignoring means), "one" (a perfect score: nothing to find, nothing
found) or "zero". The rule is the same everywhere; the defaults differ by family, on purpose:

* ``dice_score`` / ``iou_score`` (and ``DiceMetric``, always): ``empty="nan"``. They score every class
  of every sample, including the classes a batch does not contain; a default of 1 would pull the mean
  towards 1 by how many classes are missing from a batch, not by how good the prediction is.
* ``segmentation_metrics`` and the other per-case functions: ``empty="one"``. They score the labels
  present in the prediction or the reference unless ``labels`` names others, so a both-empty label is
  one asked for on purpose, and "one" is what evaluation tables (nnU-Net, MONAI's ``ignore_empty=False``)
  report for it. Distances of a both-empty label are NaN under every policy (there is no surface).

**Ignored class.** An ``ignore_index`` that names a class is dropped everywhere, as the losses drop it
from K: its positions are skipped, the class is not scored and not in any mean; ``dice_score`` /
``iou_score`` with ``reduction="none"`` and ``DiceMetric.compute(reduction="none")`` leave its column
out, ``segmentation_metrics`` leaves its key out.

Example:
    >>> import torch
    >>> pred, gt = torch.tensor([[0, 1, 1, 2]]), torch.tensor([[0, 1, 2, 2]])
    >>> dice_score(pred, gt, mode="multiclass", num_classes=4)          # class 3: in neither
    tensor([[1.0000, 0.6667, 0.6667,    nan]], dtype=torch.float64)
    >>> dice_score(pred, gt, mode="multiclass", num_classes=4, empty="one")
    tensor([[1.0000, 0.6667, 0.6667, 1.0000]], dtype=torch.float64)
    >>> m = segmentation_metrics(pred[0].numpy(), gt[0].numpy(), labels=[1, 3], metrics=("dice", "hd"))
    >>> m[3]                                                            # both empty: "one"
    {'dice': 1.0, 'hd': nan}
    >>> round(m[1]["dice"], 4)
    0.6667
"""

from __future__ import annotations

from .calibration import CalibrationErrorMetric, calibration_bin_sums, calibration_error
from .components import component_metrics, connected_components, lesion_metrics, voronoi_cells
from .families import family_metrics
from .overlap import EMPTY_POLICIES, DiceMetric, dice_score, hard_counts, iou_score
from .surface import (
    average_surface_distance,
    hausdorff_distance,
    segmentation_metrics,
    surface_dice,
)
from .topology import betti_errors, betti_numbers, cldice_score

__all__ = [
    "EMPTY_POLICIES",
    "dice_score",
    "iou_score",
    "hard_counts",
    "DiceMetric",
    "hausdorff_distance",
    "average_surface_distance",
    "surface_dice",
    "segmentation_metrics",
    "cldice_score",
    "betti_numbers",
    "betti_errors",
    "calibration_error",
    "calibration_bin_sums",
    "CalibrationErrorMetric",
    "DiceTorchMetric",
    "IoUTorchMetric",
    "CalibrationErrorTorchMetric",
    "connected_components",
    "voronoi_cells",
    "component_metrics",
    "lesion_metrics",
    "family_metrics",
]

_TORCHMETRICS_CLASSES = ("DiceTorchMetric", "IoUTorchMetric", "CalibrationErrorTorchMetric")


def __getattr__(name: str):
    # the torchmetrics.Metric classes load torchmetrics (optional, slow to import) only when asked for
    if name in _TORCHMETRICS_CLASSES:
        from . import lightning

        return getattr(lightning, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
