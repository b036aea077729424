"""Asymmetric unified focal loss: the fused and Triton paths against the reference, the authors' formula, MONAI.

* fused == reference (values and input gradients, float64, 1e-10) over modes, activations and options;
* the authors' Keras code (mlyg/unified-focal-loss ``asym_unified_focal_loss``, two-class softmax output) in a
  NumPy transcription: its focal term equals ours, its focal Tversky term is half of ours (it averages the two
  classes where the paper's eq. 21 sums them: mlyg/unified-focal-loss#22); TensorFlow itself is not a test
  dependency (``tests/peers/authors_unified_focal.py`` runs the authors' file where TensorFlow is installed);
* MONAI's ``AsymmetricUnifiedFocalLoss`` (binary, probabilities): exactly half of ours, values and gradients
  (MONAI averages both terms over the two classes);
* a binary channel equals the two-class softmax; hand values; gradcheck; half precision; saturated logits;
  bad options.
"""

from __future__ import annotations

import _triton_interpreter
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import seeded

import diceloss
from diceloss import unified_focal
from diceloss.functional import unified_focal_loss as ufl

pytestmark = pytest.mark.usefixtures("one_thread")


def _case(mode: str, from_logits: bool = True, target: str = "index", B: int = 2, C: int = 3, S=(5, 6),
          seed: int = 0, mask: bool = False, ignore: int | None = None):
    g = seeded(seed)
    c = 1 if mode == "binary" else C
    x = 2 * torch.randn(B, c, *S, generator=g, dtype=torch.float64)
    if not from_logits:
        x = torch.softmax(x, 1) if mode == "multiclass" else torch.sigmoid(x)
    if mode == "multiclass":
        t = torch.randint(0, C, (B, *S), generator=g)
        if ignore is not None:
            t[:, 0] = ignore
        if target == "onehot":
            t = F.one_hot(t, C).movedim(-1, 1).double()
        elif target == "soft":
            t = torch.softmax(3 * torch.randn(B, C, *S, generator=g, dtype=torch.float64), 1)
    else:
        t = torch.rand(B, c, *S, generator=g, dtype=torch.float64)
        if target != "soft":
            t = (t > 0.6).double()
        if ignore is not None:
            t[:, :, 0] = ignore
    m = (torch.rand(B, *S, generator=g) > 0.3) if mask else None
    return x, t, m


def _value_and_grad(x, t, m, **kw):
    x = x.detach().clone().requires_grad_(True)
    loss = ufl(x, t, m, **kw)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


def _close(a, b, tol=1e-10):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


CASES = [
    ("multiclass", True, "index", {}),
    ("multiclass", True, "index", {"mask": True, "ignore": 255, "include_background": False}),
    ("multiclass", True, "soft", {"batch_dice": True, "gamma": 0.0}),
    ("multiclass", False, "onehot", {"mask": True, "reduction": "sum"}),
    ("binary", True, "dense", {"mask": True, "ignore": 7, "delta": 0.3}),
    ("binary", False, "soft", {"batch_dice": True}),
    ("multilabel", True, "dense", {"include_background": False, "ignore": 7}),
    ("multilabel", False, "dense", {"mask": True, "gamma": 0.8}),
]


def _run_case(mode, from_logits, target, opts, **extra):
    opts = dict(opts)
    x, t, m = _case(mode, from_logits, target, mask=opts.pop("mask", False), ignore=opts.get("ignore"), **extra)
    if opts.pop("ignore", None) is not None:
        opts["ignore_index"] = 255 if mode == "multiclass" else 7
    return x, t, m, dict(mode=mode, from_logits=from_logits, **opts)


@pytest.mark.parametrize("mode,from_logits,target,opts", CASES)
def test_fused_equals_reference(mode, from_logits, target, opts):
    x, t, m, kw = _run_case(mode, from_logits, target, opts)
    ref = _value_and_grad(x, t, m, backend="reference", **kw)
    got = _value_and_grad(x, t, m, backend="fused", **kw)
    _close(got[0], ref[0])
    _close(got[1], ref[1])


def _mlyg(y_true: np.ndarray, y_pred: np.ndarray, delta: float, gamma: float, eps: float = 1e-7):
    """The authors' asymmetric focal and focal Tversky terms (two-class, channels last), transcribed to NumPy."""
    y_pred = np.clip(y_pred, eps, 1 - eps)
    axis = tuple(range(1, y_true.ndim - 1))
    ce = -y_true * np.log(y_pred)
    back = (1 - delta) * np.power(1 - y_pred[..., 0], gamma) * ce[..., 0]
    fore = delta * ce[..., 1]
    focal = np.mean(back + fore)  # K.mean(K.sum(stack([back, fore]), axis=-1))
    tp = np.sum(y_true * y_pred, axis=axis)
    fn = np.sum(y_true * (1 - y_pred), axis=axis)
    fp = np.sum((1 - y_true) * y_pred, axis=axis)
    ti = (tp + eps) / (tp + delta * fn + (1 - delta) * fp + eps)
    tversky = np.mean(np.stack([1 - ti[:, 0], np.power(1 - ti[:, 1], 1 - gamma)], axis=-1))
    return focal, tversky


@pytest.mark.parametrize("S", [(6, 7), (3, 4, 5)])
def test_against_the_authors_formula(S):
    g = seeded(1)
    p = 0.02 + 0.96 * torch.rand(2, 1, *S, generator=g, dtype=torch.float64)  # no clipping at 1e-7
    y = (torch.rand(2, 1, *S, generator=g) > 0.7).double()
    two_p = torch.cat([1 - p, p], 1).movedim(1, -1).numpy()
    two_y = torch.cat([1 - y, y], 1).movedim(1, -1).numpy()
    focal, tversky = _mlyg(two_y, two_p, delta=0.6, gamma=0.5)
    loss = diceloss.UnifiedFocalLoss("binary", from_logits=False, smooth_nr=1e-7, smooth_dr=1e-7)
    value = loss(p, y)
    assert float(loss.components["focal"]) == pytest.approx(focal, rel=1e-12)
    # the paper sums the two classes' focal Tversky terms (eq. 21), the authors' code averages them
    assert float(loss.components["tversky"]) == pytest.approx(2 * tversky, rel=1e-12)
    assert float(value) == pytest.approx(0.5 * focal + 0.5 * 2 * tversky, rel=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_against_monai(reduction):
    from monai.losses import AsymmetricUnifiedFocalLoss

    g = seeded(2)
    p = (0.02 + 0.96 * torch.rand(3, 1, 6, 7, generator=g, dtype=torch.float64)).requires_grad_(True)
    y = (torch.rand(3, 1, 6, 7, generator=g) > 0.7).double()
    want = AsymmetricUnifiedFocalLoss(delta=0.6, gamma=0.5, weight=0.5)(p, y)
    (want_grad,) = torch.autograd.grad(want, p)
    got, grad = _value_and_grad(p, y, None, mode="binary", from_logits=False, smooth_nr=1e-7, smooth_dr=1e-7)
    # MONAI averages its focal term over the two stacked classes and its Tversky term over (batch, 2 classes):
    # each is half the paper's per-position sum over the classes, so MONAI's loss is exactly half of ours
    torch.testing.assert_close(got / 2, want.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad / 2, want_grad, rtol=1e-12, atol=1e-12)
    del reduction  # MONAI's reduction applies to an already reduced scalar


def test_binary_channel_equals_the_two_class_softmax():
    x, t, m = _case("binary", mask=True, seed=3)
    binary = ufl(x, t, m, mode="binary")
    two = torch.cat([torch.zeros_like(x), x], 1)  # softmax(0, x) = (1 - sigmoid x, sigmoid x)
    multiclass = ufl(two, t[:, 0].long(), m)
    _close(binary, multiclass, 1e-12)
    # multilabel of one channel is binary; of several, the sum of the channels' losses
    _close(ufl(x, t, m, mode="multilabel"), binary, 1e-12)


def test_hand_values():
    # a confident, correct prediction: every mTI ~ 1, log p ~ 0
    x = torch.tensor([[[20.0, -20.0, 20.0], [-20.0, 20.0, -20.0]]], dtype=torch.float64)
    t = torch.tensor([[0, 1, 0]])
    assert float(ufl(x, t)) < 1e-6
    # p = 1/2 everywhere, target (0, 1): I = (1/2, 1/2), P = (1, 1), G = (1, 1); FN = FP = 1/2: mTI = 1/2 per class
    # L_maFT = (1 - 1/2) + (1 - 1/2)^(1/2); L_maF = (1/2)[0.4 (1/2)^(1/2) log 2 + 0.6 log 2]
    x = torch.zeros(1, 2, 2, dtype=torch.float64)
    t = torch.tensor([[0, 1]])
    loss = diceloss.UnifiedFocalLoss(smooth_nr=0.0, smooth_dr=0.0)
    value = loss(x, t)
    ftl = 0.5 + 0.5**0.5
    fl = 0.5 * (0.4 * 0.5**0.5 * np.log(2) + 0.6 * np.log(2))
    assert float(loss.components["tversky"]) == pytest.approx(ftl, abs=1e-14)
    assert float(loss.components["focal"]) == pytest.approx(fl, abs=1e-14)
    assert float(value) == pytest.approx(0.5 * ftl + 0.5 * fl, abs=1e-14)


@pytest.mark.parametrize("backend", ["reference", "fused"])
@pytest.mark.parametrize("mode", ["multiclass", "binary", "multilabel"])
def test_gradcheck(backend, mode):
    x, t, m = _case(mode, B=2, S=(6,), mask=True, seed=4)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda inp: ufl(inp, t, m, mode=mode, backend=backend, gamma=0.3, batch_dice=mode == "multilabel"), (x,)
    )


def test_saturated_prediction_has_a_finite_gradient():
    # p = 1 exactly at the target class: (1 - p)^gamma with gamma < 1 has an infinite slope at 0, which the loss
    # must not turn into NaN (its true gradient there is 0)
    x = torch.tensor([[[60.0, -60.0], [-60.0, 60.0]]], dtype=torch.float64)
    t = torch.tensor([[0, 1]])
    for backend in ("reference", "fused"):
        _, grad = _value_and_grad(x, t, None, backend=backend)
        assert torch.isfinite(grad).all()
    p = torch.tensor([[[1.0, 0.0, 1.0]]], dtype=torch.float64)
    y = torch.tensor([[[1.0, 0.0, 0.0]]], dtype=torch.float64)
    for backend in ("reference", "fused"):
        _, grad = _value_and_grad(p, y, None, mode="binary", from_logits=False, backend=backend)
        assert torch.isfinite(grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_input_accumulates_in_float32(dtype):
    x, t, _ = _case("multiclass", seed=5)
    xh = x.to(dtype)
    got = ufl(xh, t, backend="fused")
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(float(ufl(xh.double(), t, backend="reference")), abs=1e-5)
    x1 = xh.clone().requires_grad_(True)
    ufl(x1, t).backward()
    assert x1.grad.dtype == dtype and torch.isfinite(x1.grad.float()).all()


def test_module_options_and_bad_input(monkeypatch):
    loss = diceloss.UnifiedFocalLoss(delta=0.7)
    x, t, _ = _case("multiclass", seed=6)
    _close(loss(x, t), ufl(x, t, delta=0.7), 1e-14)
    loss.gamma = 0.2
    _close(loss(x, t), ufl(x, t, delta=0.7, gamma=0.2), 1e-14)
    with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\)"):
        loss.gamma = 1.0
    assert loss.gamma == 0.2

    def refuse(*args, **kwargs):
        raise AssertionError("the statistics were computed before the inputs were checked")

    monkeypatch.setattr(unified_focal, "asymmetric_focal_sums", refuse)
    with pytest.raises(ValueError, match=r"delta must be finite, >= 0 and <= 1.0; got 1.5"):
        ufl(x, t, delta=1.5)
    with pytest.raises(ValueError, match="UnifiedFocalLoss adds terms of different shapes"):
        ufl(x, t, reduction="none")
    with pytest.raises(ValueError, match="class indices must be in"):
        ufl(x, t + 3)
    with pytest.raises(ValueError, match="only batch Dice needs"):
        ufl(x, t, distributed=True)


# ----------------------------------------------------------------------------------------------
# Triton, in the interpreter


@pytest.fixture
def interpreted(monkeypatch):
    pytest.importorskip("triton", reason="needs triton (pip install diceloss[triton])")
    from diceloss.stats import focal_asym

    module = _triton_interpreter.interpreted_copy("diceloss.stats.triton.focal_asym")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(module, "launch_context", lambda device: _triton_interpreter.interpreted_language())
    monkeypatch.setattr(module, "BLOCK_N", 8)
    monkeypatch.setattr(focal_asym, "_triton", lambda: module)


@pytest.mark.parametrize("mode,from_logits,target,opts", CASES[1:])
def test_triton_equals_reference(interpreted, mode, from_logits, target, opts):
    x, t, m, kw = _run_case(mode, from_logits, target, opts, S=(3, 5))
    ref = _value_and_grad(x, t, m, backend="reference", **kw)
    got = _value_and_grad(x, t, m, backend="triton", **kw)
    _close(got[0], ref[0])
    _close(got[1], ref[1])
