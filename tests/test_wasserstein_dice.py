"""Generalized Wasserstein Dice loss: the fused and Triton paths against the reference, the definition, MONAI.

* fused == reference (values and input gradients, float64, 1e-10) over modes, targets and options;
* the loss equals a direct NumPy transcription of the paper's per-position formula (W_n, TP, both weightings),
  which never forms the per-class sums V, N of :mod:`diceloss.stats.pairs`;
* MONAI's ``GeneralizedWassersteinDiceLoss`` (installed) on random inputs: equal where the definitions agree
  (every weighting and reduction; MONAI's "GDL" weights are float32, hence the 1e-7 tolerance there);
* hand values (a perfect prediction, binary GWDL = binary Dice), gradcheck, half precision, bad input.
"""

from __future__ import annotations

import _triton_interpreter
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import seeded

import diceloss
from diceloss import wasserstein
from diceloss.functional import dice_loss
from diceloss.functional import generalized_wasserstein_dice_loss as gwdl

pytestmark = pytest.mark.usefixtures("one_thread")

M3 = [[0.0, 1.0, 1.0], [1.0, 0.0, 0.5], [1.0, 0.5, 0.0]]


def _matrix(C: int, seed: int = 0) -> torch.Tensor:
    g = seeded(seed)
    m = 0.2 + torch.rand(C, C, generator=g, dtype=torch.float64) * 3  # max != 1: exercises the normalisation
    return m.fill_diagonal_(0)


def _case(mode: str, target: str = "index", B: int = 2, C: int = 4, S=(5, 6), seed: int = 0, mask: bool = False,
          ignore: int | None = None):
    g = seeded(seed)
    if mode == "binary":
        x = torch.randn(B, 1, *S, generator=g, dtype=torch.float64)
        t = (torch.rand(B, 1, *S, generator=g) > 0.6).double()
        if ignore is not None:
            t[:, :, 0] = ignore
    else:
        x = torch.randn(B, C, *S, generator=g, dtype=torch.float64)
        t = torch.randint(0, C, (B, *S), generator=g)
        if ignore is not None:
            t[:, 0] = ignore
        if target == "onehot":
            t = F.one_hot(t, C).movedim(-1, 1).double()
    m = (torch.rand(B, *S, generator=g) > 0.3) if mask else None
    return x, t, m


def _value_and_grad(x, t, m, **kw):
    x = x.detach().clone().requires_grad_(True)
    loss = gwdl(x, t, m, **kw)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad


def _close(a, b, tol=1e-10):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize(
    "mode,target,opts",
    [
        ("multiclass", "index", {}),
        ("multiclass", "index", {"mask": True, "ignore": 255, "weighting": "GDL"}),
        ("multiclass", "onehot", {"mask": True, "batch_dice": True}),
        ("multiclass", "index", {"from_logits": False, "reduction": "none"}),
        ("binary", "dense", {"mask": True, "ignore": 7, "weighting": "GDL", "reduction": "sum"}),
        ("binary", "dense", {"from_logits": False, "batch_dice": True, "reduction": "none"}),
    ],
)
def test_fused_equals_reference(mode, target, opts):
    opts = dict(opts)
    x, t, m = _case(mode, target, mask=opts.pop("mask", False), ignore=opts.get("ignore"))
    if opts.pop("ignore", None) is not None:
        opts["ignore_index"] = 255 if mode == "multiclass" else 7
    if not opts.get("from_logits", True):
        x = torch.softmax(x, 1) if mode == "multiclass" else torch.sigmoid(x)
    M = _matrix(2 if mode == "binary" else 4)
    ref = _value_and_grad(x, t, m, dist_matrix=M, mode=mode, backend="reference", **opts)
    got = _value_and_grad(x, t, m, dist_matrix=M, mode=mode, backend="fused", **opts)
    _close(got[0], ref[0])
    _close(got[1], ref[1])


def _direct(x: np.ndarray, t: np.ndarray, valid: np.ndarray, M: np.ndarray, weighting: str, s: float = 1e-5):
    """The paper's per-position formula in NumPy, per sample: W_n, TP = sum alpha_t (1 - W), the denominators."""
    M = M / M.max()
    e = np.exp(x - x.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    out = []
    for b in range(x.shape[0]):
        pb, tb, vb = p[b][:, valid[b]], t[b][valid[b]], None
        W = np.array([M[tb[n]] @ pb[:, n] for n in range(tb.size)])
        if weighting == "GDL":
            counts = np.bincount(tb, minlength=M.shape[0])
            alpha = 1.0 / (counts + 1.0)
        else:
            alpha = np.ones(M.shape[0])
            alpha[0] = 0.0
        a = alpha[tb]
        tp = (a * (1 - W)).sum()
        den = (a * (2 - W)).sum() if weighting == "GDL" else 2 * tp + W.sum()
        out.append(1 - (2 * tp + s) / (den + s))
        del vb
    return np.array(out)


@pytest.mark.parametrize("weighting", ["default", "GDL"])
def test_equals_the_direct_formula(weighting):
    x, t, m = _case("multiclass", mask=True, seed=3)
    M = _matrix(4, seed=3)
    got = gwdl(x, t, m, dist_matrix=M, weighting=weighting, reduction="none", backend="fused")
    want = _direct(x.reshape(2, 4, -1).numpy(), t.reshape(2, -1).numpy(), m.reshape(2, -1).numpy(), M.numpy(),
                   weighting)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("weighting", ["default", "GDL"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_equals_monai(weighting, reduction):
    from monai.losses import GeneralizedWassersteinDiceLoss as MonaiGWDL

    x, t, _ = _case("multiclass", C=3, S=(6, 7), seed=5)
    M = _matrix(3, seed=5)
    x1 = x.clone().requires_grad_(True)
    want = MonaiGWDL(M, weighting_mode=weighting, reduction=reduction)(x1, t)
    (want_grad,) = torch.autograd.grad(want.sum(), x1)
    got, grad = _value_and_grad(x, t, None, dist_matrix=M, weighting=weighting, reduction=reduction)
    # MONAI's alpha is float32 (torch.ones(...).float(), one_hot(...).float()): its GDL weights 1/(N_k + 1) are
    # rounded to float32 (relative 6e-8), so the values differ there by ~1e-9
    tol = 1e-12 if weighting == "default" else 1e-7
    torch.testing.assert_close(got, want.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(grad, want_grad, rtol=tol, atol=tol)


def test_hand_values():
    # a confident, correct prediction: W_n ~ 0 everywhere, loss ~ 0
    x = torch.tensor([[[9.0, -9.0, -9.0], [-9.0, 9.0, -9.0], [-9.0, -9.0, 9.0]]], dtype=torch.float64)
    t = torch.tensor([[0, 1, 2]])
    assert float(gwdl(x, t, dist_matrix=M3)) < 1e-6
    # uniform prediction p = 1/3, labels 0, 1, 2 and M3: W = (0 + 1 + 1)/3, (1 + 0 + .5)/3, (1 + .5 + 0)/3
    # TP (alpha = 0, 1, 1) = (1 - 0.5) + (1 - 0.5) = 1; sum W = 2/3 + 1/2 + 1/2 = 5/3
    # loss = 1 - 2 / (2 + 5/3) = 1 - 6/11 = 5/11
    u = torch.zeros(1, 3, 3, dtype=torch.float64)
    assert float(gwdl(u, t, dist_matrix=M3, smooth_nr=0.0, smooth_dr=0.0)) == pytest.approx(5 / 11, abs=1e-14)


def test_binary_with_the_two_class_matrix_is_the_binary_dice_loss():
    # M = [[0, 1], [1, 0]]: TP = sum_{g=1} p, sum W = sum |p - g| = P + G - 2I, so GWDS = 2I / (P + G)
    x, t, m = _case("binary", mask=True, seed=7)
    got = gwdl(x, t, m, mode="binary", reduction="none")
    want = dice_loss(x, t, m, mode="binary", reduction="none")[:, 0]
    _close(got, want, 1e-12)


def test_no_matrix_is_every_distance_one():
    x, t, _ = _case("multiclass", seed=9)
    _close(gwdl(x, t), gwdl(x, t, dist_matrix=1 - torch.eye(4)), 1e-12)


def test_matrix_is_normalised_and_module_equals_function():
    x, t, _ = _case("multiclass", C=3, seed=11)
    M = torch.tensor(M3, dtype=torch.float64)
    _close(gwdl(x, t, dist_matrix=4 * M), gwdl(x, t, dist_matrix=M), 1e-14)
    module = diceloss.GeneralizedWassersteinDiceLoss(dist_matrix=np.array(M3) * 2, weighting="GDL", batch_dice=True)
    _close(module(x, t), gwdl(x, t, dist_matrix=M3, weighting="GDL", batch_dice=True), 1e-14)
    module.weighting = "default"
    _close(module(x, t), gwdl(x, t, dist_matrix=M3, batch_dice=True), 1e-14)
    with pytest.raises(ValueError, match="weighting must be one of 'default', 'GDL'; got 'square'"):
        module.weighting = "square"
    assert module.weighting == "default"


@pytest.mark.parametrize("backend", ["reference", "fused"])
@pytest.mark.parametrize("mode", ["multiclass", "binary"])
def test_gradcheck(backend, mode):
    x, t, m = _case(mode, C=3, B=2, S=(5,), mask=True, seed=13)
    M = _matrix(2 if mode == "binary" else 3, seed=13)
    x.requires_grad_(True)
    for weighting in ("default", "GDL"):
        assert torch.autograd.gradcheck(
            lambda inp, w=weighting: gwdl(inp, t, m, dist_matrix=M, mode=mode, weighting=w, reduction="none",
                                          backend=backend), (x,))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_input_accumulates_in_float32(dtype):
    x, t, _ = _case("multiclass", seed=15)
    xh = x.to(dtype)
    got = gwdl(xh, t, dist_matrix=_matrix(4), backend="fused")
    assert got.dtype == torch.float32
    want = gwdl(xh.double(), t, dist_matrix=_matrix(4), backend="reference")
    assert float(got) == pytest.approx(float(want), abs=1e-5)
    x1 = xh.clone().requires_grad_(True)
    gwdl(x1, t, dist_matrix=_matrix(4), backend="fused").backward()
    assert x1.grad.dtype == dtype and torch.isfinite(x1.grad.float()).all()


def test_bad_input(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the statistics were computed before the inputs were checked")

    monkeypatch.setattr(wasserstein, "wasserstein_sums", refuse)
    x, t, _ = _case("multiclass", C=3, seed=17)
    with pytest.raises(ValueError, match=r"dist_matrix must be 3 x 3 for this input \(C = 3\), got \(4, 4\)"):
        gwdl(x, t, dist_matrix=_matrix(4))
    with pytest.raises(ValueError, match=r"square \(C, C\) matrix with C >= 2, got shape \(3, 2\)"):
        gwdl(x, t, dist_matrix=torch.ones(3, 2))
    with pytest.raises(ValueError, match="zero diagonal"):
        gwdl(x, t, dist_matrix=torch.ones(3, 3))
    with pytest.raises(ValueError, match="finite distances >= 0"):
        gwdl(x, t, dist_matrix=-torch.tensor(M3))
    with pytest.raises(TypeError, match="dist_matrix must be a \\(C, C\\) tensor"):
        gwdl(x, t, dist_matrix="euclidean")
    with pytest.raises(ValueError, match="exclusive classes: mode must be 'multiclass' or 'binary', got 'multilabel'"):
        gwdl(x, t, mode="multilabel")
    with pytest.raises(ValueError, match="class indices must be in"):
        gwdl(x, t + 5)
    with pytest.raises(TypeError, match="pass the distance matrix by keyword"):
        diceloss.GeneralizedWassersteinDiceLoss(M3)
    with pytest.raises(ValueError, match="only batch Dice needs"):
        gwdl(x, t, distributed=True)


# ----------------------------------------------------------------------------------------------
# Triton, in the interpreter


@pytest.fixture
def interpreted(monkeypatch):
    pytest.importorskip("triton", reason="needs triton (pip install diceloss[triton])")
    from diceloss.stats import pairs

    module = _triton_interpreter.interpreted_copy("diceloss.stats.triton.pairs")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(module, "launch_context", lambda device: _triton_interpreter.interpreted_language())
    monkeypatch.setattr(module, "BLOCK_N", 8)
    monkeypatch.setattr(pairs, "_triton", lambda: module)


@pytest.mark.parametrize(
    "mode,target,opts",
    [
        ("multiclass", "index", {"mask": True, "ignore": 255}),
        ("multiclass", "onehot", {"weighting": "GDL"}),
        ("multiclass", "index", {"from_logits": False}),
        ("binary", "dense", {"mask": True, "ignore": 7}),
        ("binary", "dense", {"from_logits": False}),
    ],
)
def test_triton_equals_reference(interpreted, mode, target, opts):
    opts = dict(opts)
    x, t, m = _case(mode, target, C=3, S=(4, 5), mask=opts.pop("mask", False), ignore=opts.get("ignore"))
    if opts.pop("ignore", None) is not None:
        opts["ignore_index"] = 255 if mode == "multiclass" else 7
    if not opts.get("from_logits", True):
        x = torch.softmax(x, 1) if mode == "multiclass" else torch.sigmoid(x)
    M = _matrix(2 if mode == "binary" else 3)
    ref = _value_and_grad(x, t, m, dist_matrix=M, mode=mode, reduction="none", backend="reference", **opts)
    got = _value_and_grad(x, t, m, dist_matrix=M, mode=mode, reduction="none", backend="triton", **opts)
    _close(got[0], ref[0])
    _close(got[1], ref[1])
