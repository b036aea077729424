"""The L1 average calibration error loss (diceloss.calibration_loss) on the bin statistics (diceloss.stats.bins).

* the bin sums: fused and Triton (interpreted) against the reference backend (plain autograd over one-hot bins and
  hat-function shares written from the definitions), values and gradients in float64 (1e-10), hard and soft;
  the hard bin sums equal the calibration metric's (diceloss.metrics.calibration) bin for bin;
* the loss: hand-worked values; equal to ``calibration_error(kind="ace", binning="width")``; gradcheck (soft bins
  are piecewise smooth; hard bins piecewise linear in p);
* bad input before any computation.

The authors' code (cai4cai/Average-Calibration-Losses, on MONAI) is compared in
``tests/peers/authors_calibration_loss.py`` (``make peer-tests ACE_LOSS_SRC=...``).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import seeded

import diceloss
from diceloss import _layout
from diceloss import functional as DF
from diceloss.calibration_loss import l1_ace_of_bin_sums
from diceloss.metrics.calibration import calibration_bin_sums, calibration_error
from diceloss.stats import bins

pytestmark = pytest.mark.usefixtures("one_thread")

HAS_TRITON = importlib.util.find_spec("triton") is not None
TOL = dict(rtol=1e-10, atol=1e-12)


def _case(mode: str, seed: int = 0, B: int = 2, C: int = 3, S=(41,)):
    g = seeded(seed)
    C = 1 if mode == "binary" else C
    x = 2 * torch.randn(B, C, *S, generator=g, dtype=torch.float64)
    if mode == "multiclass":
        t = torch.randint(0, C, (B, *S), generator=g)
        t[0, :5] = 255
    else:
        t = (torch.rand(B, C, *S, generator=g) < 0.4).double()
        t[0, 0, :3] = 255
    mask = torch.rand(B, *S, generator=g) > 0.2
    return x, t, mask


def _sums_and_grad(prep, x, K, soft, backend, coef):
    s = bins.compute(prep, K, soft, backend)
    (grad,) = torch.autograd.grad((s * coef).sum(), x)
    return s.detach(), grad


@pytest.mark.parametrize("mode", ["multiclass", "binary", "multilabel"])
@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
def test_bin_sums_fused_equal_reference(mode, soft):
    x, t, mask = _case(mode)
    x.requires_grad_(True)
    prep = _layout.prepare(x, t, mode=mode, from_logits=True, ignore_index=255, mask=mask)
    coef = torch.randn(*x.shape[:2], 7, 3, generator=seeded(1), dtype=torch.float64)
    ref = _sums_and_grad(prep, x, 7, soft, "reference", coef)
    fused = _sums_and_grad(prep, x, 7, soft, "fused", coef)
    for a, b in zip(ref, fused):
        torch.testing.assert_close(a, b, **TOL)


def test_soft_shares_sum_to_one_and_interpolate():
    p = torch.tensor([0.0, 0.02, 0.05, 0.1, 0.33, 0.5, 0.97, 1.0], dtype=torch.float64)
    lo, hi, f, _ = bins.soft_bins(p, 10)
    # 0.33 sits between centres 0.25 (bin 2) and 0.35 (bin 3), 8/10 of the way: shares 0.2 and 0.8
    assert (lo[4].item(), hi[4].item()) == (2, 3)
    assert float(f[4]) == pytest.approx(0.8, abs=1e-12)
    # below the first centre and above the last: everything in the end bin
    assert lo[:3].tolist() == [0, 0, 0] and f[:3].tolist() == [0.0, 0.0, 0.0]
    assert lo[-2:].tolist() == [9, 9] and f[-2:].tolist() == [0.0, 0.0]
    w = bins._shares_reference(p, 10, True)
    torch.testing.assert_close(w.sum(-1), torch.ones_like(p), rtol=0, atol=1e-15)
    assert float(w[4, 2]) == pytest.approx(0.2, abs=1e-12) and float(w[4, 3]) == pytest.approx(0.8, abs=1e-12)
    # hard bins: (k/K, (k+1)/K], 0 in bin 0
    assert bins.hard_bin(torch.tensor([0.0, 0.05, 0.1, 0.1000001, 1.0], dtype=torch.float64), 10).tolist() == [
        0, 0, 0, 1, 9
    ]


@pytest.mark.parametrize("mode", ["multiclass", "multilabel"])
def test_hard_bin_sums_are_the_metric_bin_sums(mode):
    x, t, mask = _case(mode, seed=2)
    prep = _layout.prepare(x, t, mode=mode, from_logits=True, ignore_index=255, mask=mask)
    ours = bins.compute(prep, 20, False, "fused")
    theirs = calibration_bin_sums(x, t, mode=mode, bins=20, from_logits=True, ignore_index=255, mask=mask)
    torch.testing.assert_close(ours, theirs[..., [1, 2, 0]], rtol=0, atol=1e-12)  # (count, p, y) -> (p, g, count)


def test_hand_values():
    p = torch.tensor([[[0.9, 0.8, 0.3, 0.1]]], dtype=torch.float64)
    g = torch.tensor([[[1.0, 0.0, 0.0, 0.0]]], dtype=torch.float64)
    # hard, 2 bins: [0, .5] holds .3, .1 (conf .2, acc 0); (.5, 1] holds .9, .8 (conf .85, acc .5)
    got = DF.calibration_loss(p, g, mode="binary", bins=2, from_logits=False)
    assert float(got) == pytest.approx((0.2 + 0.35) / 2, abs=1e-15)
    # soft, 2 bins (centres .25, .75): .9 and .8 go to bin 1; .1 to bin 0; .3 splits 0.9 / 0.1
    #   bin 0: n = 1.9, sum p = .1 + .27 = .37, sum g = 0        bin 1: n = 2.1, sum p = .9 + .8 + .03, sum g = 1
    got = DF.calibration_loss(p, g, mode="binary", bins=2, soft=True, from_logits=False)
    want = (0.37 / 1.9 + abs(1.73 - 1.0) / 2.1) / 2
    assert float(got) == pytest.approx(want, abs=1e-14)
    # empty bins are not counted: 4 bins, bin (.25, .5] holds .3 only, (.5, .75] nothing
    got = DF.calibration_loss(p, g, mode="binary", bins=4, from_logits=False)
    assert float(got) == pytest.approx((0.1 + 0.3 + abs(0.85 - 0.5)) / 3, abs=1e-15)


def test_equals_the_metric_ace_with_width_bins():
    x, t, _ = _case("multiclass", seed=3, S=(12, 13))
    t[t == 255] = 0
    got = DF.calibration_loss(x, t, reduction="none", absent="include")
    want = calibration_error(x, t, bins=20, kind="ace", binning="width", from_logits=True)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_absent_classes():
    x, t, _ = _case("multiclass", seed=4, S=(6, 7))
    t = t.clamp_max(1)  # class 2 absent everywhere
    per = DF.calibration_loss(x, t, reduction="none", absent="include")
    excl = DF.calibration_loss(x, t, reduction="none")
    torch.testing.assert_close(excl[:, :2], per[:, :2], **TOL)
    assert excl[:, 2].tolist() == [0.0, 0.0]
    torch.testing.assert_close(DF.calibration_loss(x, t), per[:, :2].mean(), **TOL)
    torch.testing.assert_close(DF.calibration_loss(x, t, absent="include"), per.mean(), **TOL)


def test_batch_sums_before_the_error():
    x, t, mask = _case("multiclass", seed=5)
    prep = _layout.prepare(x, t, mode="multiclass", from_logits=True, ignore_index=255, mask=mask)
    s = bins.compute(prep, 20, True, "reference").sum(0)
    got = DF.calibration_loss(x, t, mask, soft=True, ignore_index=255, batch_dice=True, reduction="none",
                              absent="include")
    torch.testing.assert_close(got, l1_ace_of_bin_sums(s), **TOL)


@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
def test_loss_fused_equals_reference_and_gradcheck(soft):
    x, t, mask = _case("multiclass", seed=6, S=(5, 6))
    x = x.requires_grad_(True)
    kw = dict(soft=soft, bins=5, ignore_index=255, absent="include")
    out = {}
    for backend in ("reference", "fused"):
        loss = DF.calibration_loss(x, t, mask, backend=backend, **kw)
        out[backend] = (loss.detach(), *torch.autograd.grad(loss, x))
    for a, b in zip(out["reference"], out["fused"]):
        torch.testing.assert_close(a, b, **TOL)
    assert torch.autograd.gradcheck(lambda z: DF.calibration_loss(z, t, mask, backend="fused", **kw), (x,), eps=1e-6,
                                    atol=1e-7, rtol=1e-5)


def test_half_input_sums_in_float32():
    x, t, _ = _case("multiclass", seed=7, S=(64,))
    t[t == 255] = 0
    xh = x.half()
    prep = _layout.prepare(xh, t, mode="multiclass", from_logits=True)
    got = bins.compute(prep, 20, True, "fused")
    assert got.dtype == torch.float32
    want = bins.compute(_layout.prepare(xh.double(), t, mode="multiclass", from_logits=True), 20, True, "reference")
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton (pip install diceloss[triton])")
@pytest.mark.parametrize("mode,soft", [("multiclass", False), ("multiclass", True), ("multilabel", True)])
def test_triton_equals_reference(monkeypatch, mode, soft):
    import _triton_interpreter

    from diceloss.stats import maps

    module = _triton_interpreter.interpreted_copy("diceloss.stats.triton.bins")
    monkeypatch.setattr(module, "TILE_ELEMS", 256)
    monkeypatch.setattr(module, "MIN_BLOCK_N", 4)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(bins, "_triton_module", lambda: module)
    monkeypatch.setattr(maps, "_launch_context", lambda device: _triton_interpreter.interpreted_language())
    x, t, mask = _case(mode, seed=8, S=(23,))
    x.requires_grad_(True)
    prep = _layout.prepare(x, t, mode=mode, from_logits=True, ignore_index=255, mask=mask)
    coef = torch.randn(*x.shape[:2], 5, 3, generator=seeded(9), dtype=torch.float64)
    ref = _sums_and_grad(prep, x, 5, soft, "reference", coef)
    tri = _sums_and_grad(prep, x, 5, soft, "triton", coef)
    for a, b in zip(ref, tri):
        torch.testing.assert_close(a, b, **TOL)


def test_module_options():
    loss = diceloss.CalibrationLoss(bins=10, soft=True)
    with pytest.raises(ValueError, match=r"bins must be in \[1, 10000\], got 0"):
        loss.bins = 0
    with pytest.raises(TypeError, match="bins must be an int, got 2.5"):
        loss.bins = 2.5
    with pytest.raises(ValueError, match="empty_weight must be finite, > 0"):
        loss.empty_weight = 0
    with pytest.raises(ValueError, match="absent must be one of"):
        loss.absent = "zero"
    assert (loss.bins, loss.soft, loss.empty_weight) == (10, True, 0.01)


@pytest.mark.usefixtures("auto_value_checks")
def test_bad_input_before_computing(monkeypatch):
    from diceloss import stats

    class Started(Exception):
        pass

    def refuse(*a, **k):
        raise Started

    monkeypatch.setattr(stats, "resolve", refuse)
    x, t, _ = _case("multiclass")
    with pytest.raises(Started):
        DF.calibration_loss(x, t, ignore_index=255)
    with pytest.raises(ValueError, match=r"class indices must be in \[0, 2\]"):
        DF.calibration_loss(x, t)
    with pytest.raises(ValueError, match=r"from_logits=False expects probabilities in \[0, 1\]"):
        DF.calibration_loss(x, t, ignore_index=255, from_logits=False)
    with pytest.raises(ValueError, match="distributed=True"):
        DF.calibration_loss(x, t, distributed=True)


def test_auto_never_takes_the_reference(monkeypatch):
    # the overlap statistics' auto takes their reference for small CPU inputs; the bins' reference keeps K times
    # the logits, so auto takes the chunked path whatever the size
    def refuse(*a, **k):
        raise AssertionError("auto took the bins' reference backend")

    monkeypatch.setattr(bins, "bin_sums_reference", refuse)
    x, t, _ = _case("multiclass", seed=10, S=(8,))
    t[t == 255] = 0
    DF.calibration_loss(x, t)
