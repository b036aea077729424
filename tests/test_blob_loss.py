"""Blob loss: the fused and Triton paths against the reference, a per-blob loop, and the definition.

* fused == reference (values and input gradients, float64, 1e-10) over modes, targets and options;
* the loss equals a loop over the blobs written from the paper (each blob's Dice computed with MONAI's
  ``DiceLoss`` on the prediction with the other blobs masked out, as the authors' ``compute_blob_loss_multi``
  does): the closed form D_j = 2 S_j / (P0 + S_j + n_j) of one scatter-add is the same number
  (``tests/peers/authors_blob_loss.py`` runs the authors' file itself);
* computed blobs = :func:`diceloss.transforms.label_components` passed as ``instances``; sparse ids; a batch
  without blobs; many blobs; gradcheck; half precision; bad input.
"""

from __future__ import annotations

import _triton_interpreter
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import seeded

import diceloss
from diceloss import blob
from diceloss.functional import blob_loss, dice_loss
from diceloss.transforms import label_components

pytestmark = pytest.mark.usefixtures("one_thread")


def _case(mode: str, from_logits: bool = True, target: str = "index", B: int = 2, C: int = 3, S=(8, 9),
          seed: int = 0, mask: bool = False, ignore: int | None = None):
    g = seeded(seed)
    c = 1 if mode == "binary" else C
    x = 2 * torch.randn(B, c, *S, generator=g, dtype=torch.float64)
    if not from_logits:
        x = torch.softmax(x, 1) if mode == "multiclass" else torch.sigmoid(x)
    if mode == "multiclass":
        t = torch.randint(0, C, (B, *S), generator=g) * (torch.rand(B, *S, generator=g) > 0.5)
        if ignore is not None:
            t[:, 0] = ignore
        if target == "onehot":
            t = F.one_hot(t, C).movedim(-1, 1).double()
    else:
        t = (torch.rand(B, c, *S, generator=g) > 0.7).double()
        if ignore is not None:
            t[:, :, 0] = ignore
    m = (torch.rand(B, *S, generator=g) > 0.2) if mask else None
    return x, t, m


def _value_and_grad(x, t, m, **kw):
    x = x.detach().clone().requires_grad_(True)
    loss = blob_loss(x, t, m, **kw)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


def _close(a, b, tol=1e-10):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


CASES = [
    ("binary", True, "dense", {}),
    ("binary", False, "dense", {"mask": True, "ignore": 7, "batch_dice": True}),
    ("multiclass", True, "index", {"mask": True, "ignore": 255, "include_background": False}),
    ("multiclass", True, "onehot", {"reduction": "sum", "lambda_blob": 2.5}),
    ("multiclass", False, "index", {"connectivity": 1}),
    ("multilabel", True, "dense", {"mask": True, "batch_dice": True, "include_background": False}),
    ("multilabel", False, "dense", {"ignore": 7, "lambda_global": 0.0}),
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


def _loop(p: torch.Tensor, ids: torch.Tensor, classes: torch.Tensor | None):
    """Mean over samples with blobs of the mean over their blobs of MONAI's Dice loss of p * [id in {0, j}]
    against [id = j] (the authors' masking, on probabilities); ``classes[j]``: the channel of blob j."""
    from monai.losses import DiceLoss

    crit = DiceLoss(include_background=True, sigmoid=False)
    per_sample = []
    for b in range(p.shape[0]):
        losses = []
        for j in torch.unique(ids[b]).tolist():
            if j == 0:
                continue
            c = 0 if classes is None else int(classes[b][j])
            keep = (ids[b] == 0) | (ids[b] == j)
            if classes is not None:
                # other classes' blobs do not mask class c: only the blobs of class c do
                keep = keep | (classes[b][ids[b]] != c)
            pc = p[b : b + 1, c : c + 1] * keep
            losses.append(crit(pc, (ids[b] == j)[None, None].double()))
        if losses:
            per_sample.append(sum(losses) / len(losses))
    return sum(per_sample) / len(per_sample)


def test_binary_equals_the_loop_over_blobs():
    x, t, _ = _case("binary", S=(12, 12), seed=1)
    t[1] = 0  # a sample without blobs: left out of the mean, as the authors do
    ids = torch.stack([label_components(t[b, 0].bool())[0] for b in range(2)])
    x1 = x.clone().requires_grad_(True)
    want = _loop(torch.sigmoid(x1), ids, None)
    (want_grad,) = torch.autograd.grad(want, x1)
    got, grad = _value_and_grad(x, t, None, mode="binary", lambda_global=0.0)
    _close(got, want.detach(), 1e-12)
    _close(grad, want_grad, 1e-12)
    # the given ids, as (B, 1, *S), give the same; the global term is the Dice loss
    _close(blob_loss(x, t, mode="binary", instances=ids[:, None], lambda_global=0.0), got, 1e-14)
    full = blob_loss(x, t, mode="binary", lambda_global=0.5, lambda_blob=2.0)
    _close(full, 0.5 * dice_loss(x, t, mode="binary") + 2.0 * got, 1e-12)


def test_multiclass_equals_the_loop_over_blobs():
    x, t, _ = _case("multiclass", C=3, S=(10, 11), seed=2)
    ids, classes = [], []
    for b in range(2):
        i, c = label_components(t[b])
        ids.append(i)
        classes.append(c)
    want = _loop(torch.softmax(x, 1), torch.stack(ids), classes)
    got = blob_loss(x, t, lambda_global=0.0)
    _close(got, want, 1e-12)


def test_ids_may_repeat_across_classes_and_be_sparse():
    x, t, _ = _case("multiclass", C=4, S=(9, 9), seed=3)
    ref = blob_loss(x, t)  # computed: ids unique across classes
    # per class numbering (ids restart at 1 in every class): a blob is an id and a class
    per_class = torch.zeros_like(t)
    for b in range(2):
        for c in range(1, 4):
            per_class[b] += torch.from_numpy(
                np.asarray(label_components((t[b] == c).numpy())[0])).to(t.dtype) * (t[b] == c)
    _close(blob_loss(x, t, instances=per_class), ref, 1e-14)
    # ids far above the number of positions are renumbered, not allocated
    sparse = torch.where(per_class > 0, per_class * 1_000_003 + 7, 0)
    _close(blob_loss(x, t, instances=sparse[:, None]), ref, 1e-14)


def test_no_blob_anywhere_leaves_the_global_term():
    x, t, _ = _case("binary", seed=4)
    t = torch.zeros_like(t)
    loss = diceloss.BlobLoss("binary", lambda_blob=3.0)
    _close(loss(x, t), dice_loss(x, t, mode="binary"), 1e-14)
    assert float(loss.components["blob"]) == 0.0


def test_many_blobs_one_pass():
    # 400 single-pixel blobs on a checkerboard of period 2: every blob costs O(1), and the value equals the loop
    g = seeded(5)
    t = torch.zeros(1, 1, 40, 40, dtype=torch.float64)
    t[..., ::2, ::2] = 1
    x = torch.randn(1, 1, 40, 40, generator=g, dtype=torch.float64)
    ids = torch.from_numpy(np.asarray(label_components(t[0, 0].bool().numpy(), 1)[0]))[None]
    assert int(ids.max()) == 400
    got = blob_loss(x, t, mode="binary", instances=ids, lambda_global=0.0)
    # closed form per blob: D_j = 2 p_j / (P0 + p_j + 1)
    p = torch.sigmoid(x)[0, 0]
    inside = t[0, 0] > 0
    P0 = p[~inside].sum()
    s = 1e-5
    want = (1 - (2 * p[inside] + s) / (P0 + p[inside] + 1 + s)).mean()
    _close(got, want, 1e-12)


@pytest.mark.parametrize("backend", ["reference", "fused"])
@pytest.mark.parametrize("mode", ["multiclass", "binary", "multilabel"])
def test_gradcheck(backend, mode):
    x, t, m = _case(mode, B=2, S=(4, 5), mask=True, seed=6)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda inp: blob_loss(inp, t, m, mode=mode, backend=backend, lambda_blob=2.0, connectivity=1), (x,)
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_input_accumulates_in_float32(dtype):
    x, t, _ = _case("multiclass", seed=7)
    xh = x.to(dtype)
    got = blob_loss(xh, t, backend="fused")
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(float(blob_loss(xh.double(), t, backend="reference")), abs=1e-5)
    x1 = xh.clone().requires_grad_(True)
    blob_loss(x1, t).backward()
    assert x1.grad.dtype == dtype and torch.isfinite(x1.grad.float()).all()


def test_bad_input(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the statistics were computed before the inputs were checked")

    monkeypatch.setattr(blob, "region_sums", refuse)
    x, t, _ = _case("multiclass", seed=8)
    with pytest.raises(TypeError, match="instances must be an integer tensor of instance ids"):
        blob_loss(x, t, instances=t.double())
    with pytest.raises(ValueError, match=r"instances must have shape \(B, \*S\) = \(2, 8, 9\) or \(B, 1, \*S\)"):
        blob_loss(x, t, instances=t[:, :4])
    with pytest.raises(ValueError, match="instances must hold ids >= 0"):
        blob_loss(x, t, instances=t - 1)
    with pytest.raises(ValueError, match=r"input's shape \(2, 3, 8, 9\) in multilabel mode"):
        blob_loss(x, (x > 0).double(), mode="multilabel", instances=t)
    with pytest.raises(ValueError, match="connectivity must be None"):
        blob_loss(x, t, connectivity=0)
    with pytest.raises(ValueError, match="BlobLoss adds terms of different shapes"):
        diceloss.BlobLoss(reduction="none")
    with pytest.raises(ValueError, match="lambda_blob must be finite, >= 0"):
        blob_loss(x, t, lambda_blob=-1.0)
    with pytest.raises(ValueError, match="class indices must be in"):
        blob_loss(x, t + 3)


# ----------------------------------------------------------------------------------------------
# Triton, in the interpreter


@pytest.fixture
def interpreted(monkeypatch):
    pytest.importorskip("triton", reason="needs triton (pip install diceloss[triton])")
    from diceloss.stats import regions

    module = _triton_interpreter.interpreted_copy("diceloss.stats.triton.regions")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(module, "launch_context", lambda device: _triton_interpreter.interpreted_language())
    monkeypatch.setattr(module, "BLOCK_N", 16)
    monkeypatch.setattr(regions, "_triton", lambda: module)


@pytest.mark.parametrize("mode,from_logits,target,opts", CASES[1:])
def test_triton_equals_reference(interpreted, mode, from_logits, target, opts):
    x, t, m, kw = _run_case(mode, from_logits, target, opts, S=(5, 7))
    ref = _value_and_grad(x, t, m, backend="reference", **kw)
    got = _value_and_grad(x, t, m, backend="triton", **kw)
    _close(got[0], ref[0])
    _close(got[1], ref[1])
