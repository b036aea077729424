"""Calibration errors (ECE / ACE / MCE) against MONAI 1.6.1 and against definitions written out here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diceloss.metrics import CalibrationErrorMetric, calibration_bin_sums, calibration_error

monai_metrics = pytest.importorskip("monai.metrics")

SHAPES = [(3, 4, 17, 19), (2, 3, 7, 8, 9)]  # 2D and 3D, (B, C, *S)
MONAI_KIND = {"ece": ("ece", "width", "expected"), "mce": ("mce", "width", "maximum"),
              "average": ("ace", "width", "average")}


def _case(shape, seed=0, sharp=3.0):
    g = torch.Generator().manual_seed(seed)
    probs = (sharp * torch.randn(shape, generator=g)).softmax(1)
    labels = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
    return probs, labels, F.one_hot(labels, shape[1]).movedim(-1, 1).float()


def _monai(probs, onehot, reduction, bins, metric_reduction="none", include_background=True):
    m = monai_metrics.CalibrationErrorMetric(num_bins=bins, calibration_reduction=reduction,
                                             metric_reduction=metric_reduction, include_background=include_background)
    m(y_pred=probs, y=onehot)
    return m.aggregate().double()


@pytest.mark.parametrize("shape", SHAPES, ids=["2d", "3d"])
@pytest.mark.parametrize("name", list(MONAI_KIND))
@pytest.mark.parametrize("bins", [5, 20])
def test_multiclass_matches_monai(shape, name, bins):
    kind, binning, reduction = MONAI_KIND[name]
    for seed in range(3):
        probs, labels, onehot = _case(shape, seed)
        ours = calibration_error(probs, labels, bins=bins, kind=kind, binning=binning)
        ref = _monai(probs, onehot, reduction, bins)
        torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0, equal_nan=True)
        # one-hot targets give the same numbers as class indices
        torch.testing.assert_close(calibration_error(probs, onehot, bins=bins, kind=kind, binning=binning), ours)
        # MONAI's "mean" (NaN-ignoring over every (sample, class)) and "mean_batch" (per class over samples)
        mean = calibration_error(probs, labels, bins=bins, kind=kind, binning=binning, reduction="mean")
        torch.testing.assert_close(mean, _monai(probs, onehot, reduction, bins, "mean").reshape(()), atol=1e-6,
                                   rtol=0)
        torch.testing.assert_close(torch.nanmean(ours, 0), _monai(probs, onehot, reduction, bins, "mean_batch"),
                                   atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape", SHAPES, ids=["2d", "3d"])
def test_without_background_matches_monai(shape):
    probs, labels, onehot = _case(shape, 5)
    ours = calibration_error(probs, labels, bins=15, include_background=False)
    torch.testing.assert_close(ours, _monai(probs, onehot, "expected", 15, include_background=False), atol=1e-6,
                               rtol=0)
    assert ours.shape == (shape[0], shape[1] - 1)


@pytest.mark.parametrize("shape", SHAPES, ids=["2d", "3d"])
@pytest.mark.parametrize("name", list(MONAI_KIND))
def test_binary_and_multilabel_match_monai(shape, name):
    kind, binning, reduction = MONAI_KIND[name]
    g = torch.Generator().manual_seed(1)
    probs = torch.rand(shape, generator=g)
    target = (torch.rand(shape, generator=g) < probs).float()
    ref = _monai(probs, target, reduction, 10)
    ours = calibration_error(probs, target, mode="multilabel", kind=kind, binning=binning)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0, equal_nan=True)
    binary = calibration_error(probs[:, :1], target[:, :1], mode="binary", kind=kind, binning=binning)
    torch.testing.assert_close(binary, ref[:, :1], atol=1e-6, rtol=0, equal_nan=True)
    # (B, *S) binary layout too
    torch.testing.assert_close(calibration_error(probs[:, 0], target[:, 0], mode="binary", kind=kind,
                                                 binning=binning), binary)


def _naive(p, y, bins, kind, binning):
    """Definitions written out in NumPy, one (sample, class) at a time."""
    p, y = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if binning == "width":
        idx = np.clip(np.ceil(p * bins).astype(int) - 1, 0, bins - 1)
        groups = [np.flatnonzero(idx == r) for r in range(bins)]
    else:
        order = np.argsort(p, kind="stable")
        groups = [order[(np.arange(len(p)) * bins) // len(p) == r] for r in range(bins)]
    groups = [g for g in groups if len(g)]
    gaps = np.array([abs(p[g].mean() - y[g].mean()) for g in groups])
    sizes = np.array([len(g) for g in groups])
    if kind == "ece":
        return float((gaps * sizes).sum() / sizes.sum())
    if kind == "ace":
        return float(gaps.mean())
    return float(gaps.max())


@pytest.mark.parametrize("kind", ["ece", "ace", "mce"])
@pytest.mark.parametrize("binning", ["width", "mass"])
@pytest.mark.parametrize("aggregation", ["sample", "global"])
def test_matches_written_out_definition(kind, binning, aggregation):
    probs, labels, _ = _case((2, 3, 11, 13), 7, sharp=1.0)
    ours = calibration_error(probs, labels, bins=7, kind=kind, binning=binning, aggregation=aggregation)
    p = probs.double().reshape(2, 3, -1)
    y = F.one_hot(labels.reshape(2, -1), 3).movedim(-1, 1).double()
    if aggregation == "global":
        want = [_naive(p[:, c].reshape(-1), y[:, c].reshape(-1), 7, kind, binning) for c in range(3)]
    else:
        want = [[_naive(p[b, c], y[b, c], 7, kind, binning) for c in range(3)] for b in range(2)]
    torch.testing.assert_close(ours, torch.tensor(want, dtype=torch.float64), atol=1e-12, rtol=0)


def test_ace_defaults_to_equal_mass_bins():
    probs, labels, _ = _case((2, 3, 16, 16), 3)
    assert torch.equal(calibration_error(probs, labels, kind="ace"),
                       calibration_error(probs, labels, kind="ace", binning="mass"))
    counts = calibration_bin_sums(probs, labels, binning="mass")[..., 0]
    assert counts.min() == 25 and counts.max() == 26  # 256 positions in 10 bins


def test_empty_bins_are_skipped():
    probs = torch.tensor([[[0.95, 0.95, 0.05, 0.05]]])
    target = torch.tensor([[[1, 0, 0, 0]]])
    # 10 bins, two filled: |0.95 - 0.5| and |0.05 - 0|; the eight empty bins count nowhere
    assert calibration_error(probs, target, mode="binary", kind="ace", binning="width").item() == pytest.approx(0.25)
    assert calibration_error(probs, target, mode="binary", kind="ece").item() == pytest.approx(0.25)
    assert calibration_error(probs, target, mode="binary", kind="mce").item() == pytest.approx(0.45)


def test_ignore_index_and_mask_drop_positions():
    probs, labels, _ = _case((2, 3, 9, 10), 11)
    keep = torch.zeros(9, 10, dtype=torch.bool)
    keep[:, :6] = True
    marked = torch.where(keep, labels, torch.full_like(labels, 255))
    sub = calibration_error(probs[..., :6], labels[..., :6], kind="mce")
    torch.testing.assert_close(calibration_error(probs, marked, kind="mce", ignore_index=255), sub)
    torch.testing.assert_close(calibration_error(probs, labels, kind="mce", mask=keep.expand(2, 9, 10)), sub)
    # an ignore_index that names a class drops its column
    assert calibration_error(probs, labels, ignore_index=1).shape == (2, 2)


def test_from_logits_and_absent_class():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 8, 8, generator=g)
    labels = torch.randint(0, 3, (2, 8, 8), generator=g)
    torch.testing.assert_close(calibration_error(logits, labels, from_logits=True),
                               calibration_error(logits.softmax(1), labels))
    # every position masked out in sample 1: its errors are NaN and the mean leaves them out
    mask = torch.ones(2, 8, 8)
    mask[1] = 0
    out = calibration_error(logits.softmax(1), labels, mask=mask)
    assert torch.isnan(out[1]).all() and not torch.isnan(out[0]).any()
    assert calibration_error(logits.softmax(1), labels, mask=mask, reduction="mean") == out[0].mean()


def test_errors_name_what_was_expected():
    probs, labels, _ = _case((1, 3, 4, 4))
    with pytest.raises(ValueError, match="bins must be a positive integer, got 0"):
        calibration_error(probs, labels, bins=0)
    with pytest.raises(ValueError, match="kind"):
        calibration_error(probs, labels, kind="brier")
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        calibration_error(probs * 3, labels)
    with pytest.raises(ValueError, match="needs binning='width'"):
        CalibrationErrorMetric(kind="ace", aggregation="global")
    with pytest.raises(RuntimeError, match="num_classes"):
        CalibrationErrorMetric().compute()


@pytest.mark.parametrize("kind", ["ece", "ace", "mce"])
def test_accumulating_metric(kind):
    batches = [_case((2, 3, 8, 9), s) for s in range(3)]
    probs = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    binning = "width"
    glob = CalibrationErrorMetric(num_classes=3, kind=kind, binning=binning, aggregation="global")
    samp = CalibrationErrorMetric(num_classes=3, kind=kind, aggregation="sample")
    assert torch.isnan(glob.compute()) and glob.compute(reduction="none").shape == (3,)  # no data yet: NaN
    for p, y, _ in batches:
        glob.update(p, y)
        samp.update(p, y)
    want = calibration_error(probs, labels, kind=kind, binning=binning, aggregation="global")
    torch.testing.assert_close(glob.compute(reduction="none"), want, atol=1e-12, rtol=0)
    torch.testing.assert_close(glob.compute(), want.mean(), atol=1e-12, rtol=0)
    per_sample = calibration_error(probs, labels, kind=kind)
    torch.testing.assert_close(samp.compute(reduction="none"), torch.nanmean(per_sample, 0), atol=1e-12, rtol=0)
    if kind != "ace":  # MONAI's "mean_batch" over the same batches
        monai = monai_metrics.CalibrationErrorMetric(num_bins=10, calibration_reduction=MONAI_KIND[kind][2],
                                                     metric_reduction="mean_batch")
        for p, _, oh in batches:
            monai(y_pred=p, y=oh)
        torch.testing.assert_close(samp.compute(reduction="none"), monai.aggregate().double(), atol=1e-6, rtol=0)
    samp.reset()
    samp.update(*batches[0][:2])
    torch.testing.assert_close(samp.compute(reduction="none"),
                               torch.nanmean(calibration_error(*batches[0][:2], kind=kind), 0))
