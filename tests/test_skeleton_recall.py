"""Skeleton Recall (diceloss.skeleton_recall) and the map statistics it runs on (diceloss.stats.maps).

* the fused path and the Triton kernels (in Triton's interpreter here) against the reference backend, values and
  gradients in float64 (1e-10), over the modes, the two map forms, ignore_index, masks, batch sums;
* gradcheck; hand-worked values; the given skeleton against the one computed from the target;
* the compound Dice + CE + Skeleton Recall against its parts; torch.compile with a given skeleton;
* bad input: a clear error before any computation.

The comparison with the authors' code (MIC-DKFZ/Skeleton-Recall) needs their source tree:
``tests/peers/authors_skeleton_recall.py``, run by ``make peer-tests SKELETON_RECALL_SRC=...``.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import seeded, value_checks

import diceloss
from diceloss import _layout
from diceloss import functional as DF
from diceloss.skeleton_recall import skeleton_of_target
from diceloss.stats import maps
from diceloss.transforms import tubed_skeleton

pytestmark = pytest.mark.usefixtures("one_thread")

HAS_TRITON = importlib.util.find_spec("triton") is not None
TOL = dict(rtol=1e-10, atol=1e-12)


def _bars(B: int = 2, H: int = 12, W: int = 14) -> torch.Tensor:
    """Class indices with thin structures: a horizontal bar of class 1 and a vertical one of class 2."""
    t = torch.zeros(B, H, W, dtype=torch.long)
    t[:, 2:5, 1:W - 1] = 1
    t[:, 6:H - 1, 4:7] = 2
    t[1:, 8:10, 9:13] = 1
    return t


def _case(mode: str, seed: int = 0, B: int = 2, C: int = 3, S=(9, 11), probabilities: bool = False):
    g = seeded(seed)
    C = 1 if mode == "binary" else C
    x = 2 * torch.randn(B, C, *S, generator=g, dtype=torch.float64)
    if probabilities:
        x = torch.softmax(x, 1) if mode == "multiclass" else torch.sigmoid(x)
    if mode == "multiclass":
        t = torch.randint(0, C, (B, *S), generator=g)
        s = torch.randint(0, C, (B, *S), generator=g) * (torch.rand(B, *S, generator=g) < 0.4)
    else:
        t = (torch.rand(B, C, *S, generator=g) < 0.4).double()
        s = (torch.rand(B, C, *S, generator=g) < 0.3).double()
    return x, t, s


def _both(fn, x, *args, **kw):
    x = x.detach().requires_grad_(True)
    loss = fn(x, *args, **kw)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


# ----------------------------------------------------------------------------------------------
# the statistics: fused against the reference


@pytest.mark.parametrize(
    "mode,dense",
    [("multiclass", False), ("multiclass", True), ("binary", True), ("multilabel", True)],
    ids=["multiclass-label_map", "multiclass-dense_map", "binary", "multilabel"],
)
def test_map_sums_fused_equal_reference(mode, dense):
    x, t, s = _case(mode, seed=1, S=(37,))
    if mode == "multiclass":
        t[0, :5] = 255
        if dense:
            s = torch.rand(x.shape, generator=seeded(2), dtype=torch.float64)
    else:
        t[0, 0, :4] = 255
    mask = torch.rand(x.shape[0], 37, generator=seeded(3)) > 0.2
    prep = _layout.prepare(x.requires_grad_(True), t, mode=mode, from_logits=True, ignore_index=255, mask=mask)
    w = s.reshape(s.shape[0], -1) if not dense and mode == "multiclass" else s.reshape(*x.shape[:2], -1)
    coef = torch.arange(1.0, 1.0 + x.shape[0] * x.shape[1], dtype=torch.float64).view(x.shape[:2])
    got = {}
    for backend in ("reference", "fused", "chunked"):  # fused: the overlap engine's kernel where it serves the call
        sums = maps.compute(prep, w, backend)
        (grad,) = torch.autograd.grad((sums.weighted * coef).sum(), x)
        got[backend] = (*sums, grad)
    for fast in ("fused", "chunked"):
        for a, b in zip(got["reference"], got[fast]):
            torch.testing.assert_close(a, b, **TOL)


def test_fused_map_sums_run_the_compiled_kernel_where_it_serves():
    from diceloss.stats import cpu, fused

    if cpu.load() is None:
        pytest.skip(f"no compiled kernel here: {cpu.status()}")
    x, t, s = _case("multiclass", seed=16, S=(40,))
    prep = _layout.prepare(x.float(), t, mode="multiclass", from_logits=True)
    with fused.debug_counters() as counts:
        maps.compute(prep, s, "fused")
    assert counts["kernel_calls"] == 1


def test_map_sums_chunks_cover_the_positions(monkeypatch):
    # several chunks: the sums and the gradient are the same as in one
    from diceloss.stats import chunked

    x, t, s = _case("multiclass", seed=4, S=(50,))
    prep = _layout.prepare(x.requires_grad_(True), t, mode="multiclass", from_logits=True)
    one = maps.compute(prep, s, "chunked")
    (g_one,) = torch.autograd.grad(one.weighted.sum(), x)
    monkeypatch.setattr(chunked, "chunk_positions", lambda *a, **k: 7)
    many = maps.compute(prep, s, "chunked")
    (g_many,) = torch.autograd.grad(many.weighted.sum(), x)
    for a, b in zip((*one, g_one), (*many, g_many)):
        torch.testing.assert_close(a, b, **TOL)


def test_map_sums_half_input_accumulates_in_float32():
    x, t, s = _case("multiclass", seed=5, S=(64,))
    xh = x.half()
    prep = _layout.prepare(xh, t, mode="multiclass", from_logits=True)
    got = maps.compute(prep, s, "chunked")
    assert got.weighted.dtype == torch.float32
    want = maps.compute(_layout.prepare(xh.double(), t, mode="multiclass", from_logits=True), s, "reference")
    torch.testing.assert_close(got.weighted.double(), want.weighted, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# the loss: backends, hand values, the skeleton


@pytest.mark.parametrize(
    "mode,kw",
    [
        ("multiclass", {}),
        ("multiclass", dict(ignore_index=1, batch_dice=True)),
        ("multiclass", dict(from_logits=False, reduction="none")),
        ("binary", dict(smooth_nr=0.0, smooth_dr=0.0)),
        ("multilabel", dict(ignore_index=255, reduction="sum")),
    ],
)
def test_loss_fused_equals_reference(mode, kw):
    x, t, s = _case(mode, seed=6, probabilities=not kw.get("from_logits", True))
    if mode == "multilabel":
        t[0, 1, :2] = 255
    mask = torch.rand(x.shape[0], *x.shape[2:], generator=seeded(7)) > 0.3
    def loss(z, backend):
        return DF.skeleton_recall_loss(z, t, mask, skeleton=s, mode=mode, backend=backend, **kw).sum()

    ref, fused = _both(loss, x, "reference"), _both(loss, x, "fused")
    for a, b in zip(ref, fused):
        torch.testing.assert_close(a, b, **TOL)


def test_hand_values():
    # a skeleton of class 1 along row 3, columns 1..12 (12 pixels); class 2 has none (R = 1, loss 0)
    s = torch.zeros(1, 7, 14, dtype=torch.long)
    s[0, 3, 1:13] = 1
    t = s.clone()
    p = torch.zeros(1, 3, 7, 14, dtype=torch.float64)
    p[0, 0] = 1.0
    p[0, :, 3, 1:7] = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)[:, None]      # 6 pixels at p_1 = 1
    p[0, :, 3, 7:13] = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)[:, None]   # 6 pixels at p_1 = 1/4
    kw = dict(skeleton=s, from_logits=False, reduction="none")
    got = DF.skeleton_recall_loss(p, t, smooth_nr=0, smooth_dr=0, **kw)
    torch.testing.assert_close(got, torch.tensor([[1 - 7.5 / 12, 0.0]], dtype=torch.float64), rtol=0, atol=1e-15)
    # the authors' smoothing, 1e-5 on both sides; the mean over the two foreground classes
    got = DF.skeleton_recall_loss(p, t, skeleton=s, from_logits=False)
    assert float(got) == pytest.approx((1 - (7.5 + 1e-5) / (12 + 1e-5)) / 2, abs=1e-15)
    # with the background kept (a dense skeleton): its channel has no skeleton either
    dense = torch.nn.functional.one_hot(s, 3).movedim(-1, 1).double() * (s > 0)[:, None]
    got = DF.skeleton_recall_loss(p, t, skeleton=dense, from_logits=False, include_background=True)
    assert float(got) == pytest.approx((1 - (7.5 + 1e-5) / (12 + 1e-5)) / 3, abs=1e-15)


def test_empty_skeleton_is_a_perfect_recall():
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    t = torch.zeros(2, 6, 6, dtype=torch.long)
    assert float(DF.skeleton_recall_loss(x, t)) == 0.0  # R = s_nr / s_dr = 1, as in the authors' code
    # everything ignored: no position counts, 0 and not NaN
    assert float(DF.skeleton_recall_loss(x, t, ignore_index=0)) == 0.0


def test_computed_skeleton_equals_the_transform():
    t = _bars()
    x = torch.randn(2, 3, *t.shape[1:], generator=seeded(8), dtype=torch.float64)
    s = torch.stack([tubed_skeleton(t[b]) for b in range(t.shape[0])])
    torch.testing.assert_close(DF.skeleton_recall_loss(x, t), DF.skeleton_recall_loss(x, t, skeleton=s), **TOL)
    # (B, 1, *S) and the dense (B, C, *S) forms of the same skeleton
    dense = torch.nn.functional.one_hot(s, 3).movedim(-1, 1).double()
    dense[:, 0] = 0
    for given in (s[:, None], dense):
        torch.testing.assert_close(DF.skeleton_recall_loss(x, t, skeleton=given), DF.skeleton_recall_loss(x, t), **TOL)
    # one-hot targets: the skeleton of their labels
    onehot = torch.nn.functional.one_hot(t, 3).movedim(-1, 1).double()
    torch.testing.assert_close(DF.skeleton_recall_loss(x, onehot), DF.skeleton_recall_loss(x, t), **TOL)


def test_computed_skeleton_multilabel_and_background():
    t = _bars()
    onehot = torch.nn.functional.one_hot(t, 3).movedim(-1, 1)
    prep = _layout.prepare(torch.zeros(onehot.shape), onehot.float(), mode="multilabel", from_logits=True)
    got = skeleton_of_target(prep, True).reshape(onehot.shape)
    for c in range(3):
        for b in range(t.shape[0]):
            assert torch.equal(got[b, c].bool(), tubed_skeleton(onehot[b, c].bool()))
    # multiclass with the background kept: a dense map whose channel 0 is the background's tube
    prep = _layout.prepare(torch.zeros(onehot.shape), t, mode="multiclass", from_logits=True)
    dense = skeleton_of_target(prep, True).reshape(onehot.shape)
    assert torch.equal(dense.bool(), got.bool())


def test_one_dimensional_runs_are_their_own_skeleton():
    t = torch.tensor([[0, 1, 1, 1, 0, 2, 2, 0, 1]])
    x = torch.randn(1, 3, 9, generator=seeded(9), dtype=torch.float64)
    torch.testing.assert_close(DF.skeleton_recall_loss(x, t), DF.skeleton_recall_loss(x, t, skeleton=t), **TOL)


def test_batch_dice_sums_before_the_ratio():
    x, t, s = _case("multiclass", seed=10)
    sums = DF.skeleton_recall_loss(x, t, skeleton=s, batch_dice=True, reduction="none")
    p = torch.softmax(x, 1)
    onehot = torch.nn.functional.one_hot(s, 3).movedim(-1, 1).double() * (s > 0)[:, None]
    hit, tube = (p * onehot).sum((0, 2, 3)), onehot.sum((0, 2, 3))
    want = 1 - (hit + 1e-5) / (tube + 1e-5)
    torch.testing.assert_close(sums, want[1:], **TOL)


@pytest.mark.parametrize("mode", ["multiclass", "multilabel"])
def test_gradcheck(mode):
    x, t, s = _case(mode, seed=11, C=3, S=(4, 5))
    x.requires_grad_(True)
    for backend in ("fused", "reference"):
        def loss(z, backend=backend):
            return DF.skeleton_recall_loss(z, t, skeleton=s, mode=mode, backend=backend, batch_dice=True)

        assert torch.autograd.gradcheck(loss, (x,), eps=1e-6, atol=1e-7, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# the compound loss


def test_dice_ce_skeleton_recall_is_the_sum_of_its_parts():
    t = _bars()
    x = torch.randn(2, 3, *t.shape[1:], generator=seeded(12), dtype=torch.float64)
    loss = diceloss.DiceCESkeletonRecallLoss(lambda_dice=0.5, lambda_ce=2.0, lambda_skeleton=3.0)
    got = loss(x, t)
    dice_ce = DF.dice_ce_loss(x, t, include_background=False, lambda_dice=0.5, lambda_ce=2.0)
    sr = DF.skeleton_recall_loss(x, t)
    torch.testing.assert_close(got, dice_ce + 3.0 * sr, **TOL)
    assert sorted(loss.components) == ["ce", "dice", "skeleton_recall"]
    torch.testing.assert_close(loss.components["skeleton_recall"], sr, **TOL)
    with pytest.raises(ValueError, match="reduction='mean' or 'sum', not 'none'"):
        diceloss.DiceCESkeletonRecallLoss(reduction="none")


def test_module_options_are_checked_when_set():
    loss = diceloss.SkeletonRecallLoss()
    with pytest.raises(ValueError, match="distributed=True .* batch_dice=True"):
        loss.distributed = True
    assert loss.distributed is False
    loss.batch_dice = True
    assert loss.options.batch_dice is True


def test_compile_fullgraph_with_a_given_skeleton():
    dynamo = pytest.importorskip("torch._dynamo")
    from torch._dynamo.testing import CompileCounterWithBackend

    dynamo.reset()
    t = _bars()
    s = torch.stack([tubed_skeleton(t[b]) for b in range(2)])
    x = torch.randn(2, 3, *t.shape[1:], generator=seeded(13), requires_grad=True)
    loss = diceloss.SkeletonRecallLoss(backend="fused")
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(loss, fullgraph=True, backend=counter)
    with value_checks(False):
        got = compiled(x, t, skeleton=s)
        (g_got,) = torch.autograd.grad(got, x)
    want = loss(x, t, skeleton=s)
    (g_want,) = torch.autograd.grad(want, x)
    assert counter.frame_count == 1
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_got, g_want, rtol=1e-4, atol=1e-7)


# ----------------------------------------------------------------------------------------------
# Triton, in the interpreter


@pytest.fixture
def interpreted_maps(monkeypatch):
    import _triton_interpreter

    module = _triton_interpreter.interpreted_copy("diceloss.stats.triton.maps")
    monkeypatch.setattr(module, "TILE_ELEMS", 32)
    monkeypatch.setattr(module, "MIN_BLOCK_N", 4)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(maps, "_triton_module", lambda: module)
    monkeypatch.setattr(maps, "_launch_context", lambda device: _triton_interpreter.interpreted_language())
    _triton_interpreter.install(monkeypatch)  # the overlap engine's Triton kernels, which serve most calls


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton (pip install diceloss[triton])")
@pytest.mark.parametrize(
    "mode,dense", [("multiclass", False), ("multiclass", True), ("multilabel", True)],
    ids=["multiclass-label_map", "multiclass-dense_map", "multilabel"],
)
def test_own_triton_kernels_equal_reference(interpreted_maps, mode, dense):
    # the kernels of stats/triton/maps.py themselves ("triton" hands most calls to the overlap engine's kernels)
    x, t, s = _case(mode, seed=17, S=(23,))
    if mode == "multiclass":
        t[0, :3] = 255
        if dense:
            s = torch.rand(x.shape, generator=seeded(18), dtype=torch.float64)
    else:
        t[0, 1, :3] = 255
    mask = torch.rand(2, 23, generator=seeded(19)) > 0.2
    prep = _layout.prepare(x.requires_grad_(True), t, mode=mode, from_logits=True, ignore_index=255, mask=mask)
    coef = torch.arange(1.0, 1.0 + x.shape[0] * x.shape[1], dtype=torch.float64).view(x.shape[:2])
    got = {}
    for backend in ("reference", "triton_maps"):
        sums = maps.compute(prep, s, backend)
        (grad,) = torch.autograd.grad((sums.weighted * coef).sum(), x)
        got[backend] = (*sums, grad)
    for a, b in zip(got["reference"], got["triton_maps"]):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton (pip install diceloss[triton])")
@pytest.mark.parametrize("mode", ["multiclass", "multilabel"])
def test_triton_equals_reference(interpreted_maps, mode):
    # multiclass: the overlap engine's kernels; multilabel with an ignore_index per element: this module's kernels
    x, t, s = _case(mode, seed=14, S=(5, 7))
    if mode == "multiclass":
        t[0, 0] = 255
    else:
        t[0, 1, 0] = 255
    mask = torch.rand(2, 5, 7, generator=seeded(15)) > 0.2
    kw = dict(skeleton=s, mode=mode, ignore_index=255, reduction="none")
    ref = _both(lambda z, *a, **k: DF.skeleton_recall_loss(z, *a, **k).sum(), x, t, mask, backend="reference", **kw)
    tri = _both(lambda z, *a, **k: DF.skeleton_recall_loss(z, *a, **k).sum(), x, t, mask, backend="triton", **kw)
    for a, b in zip(ref, tri):
        torch.testing.assert_close(a, b, **TOL)


# ----------------------------------------------------------------------------------------------
# bad input


class ComputationStarted(Exception):
    pass


@pytest.fixture
def no_compute(monkeypatch):
    from diceloss import stats

    def refuse(*args, **kwargs):
        raise ComputationStarted

    monkeypatch.setattr(stats, "resolve", refuse)


@pytest.mark.usefixtures("auto_value_checks")
def test_bad_skeletons_raise_before_computing(no_compute):
    x, t, s = _case("multiclass")
    with pytest.raises(ComputationStarted):
        DF.skeleton_recall_loss(x, t, skeleton=s)
    cases = [
        (dict(skeleton=s[:, :4]), ValueError, r"multiclass mode expects skeleton of shape \(2, 3, 9, 11\)"),
        (dict(skeleton=s.double()), TypeError, "read as a label map .* must be integer, got dtype torch.float64"),
        (dict(skeleton=s + 3), ValueError, r"skeleton labels must be in \[0, 2\] for input with C = 3"),
        (dict(skeleton=s, include_background=True), ValueError, "cannot hold the skeleton of class 0"),
        (dict(skeleton=2.0 * torch.ones(x.shape)), ValueError, r"skeleton values must be in \[0, 1\], got"),
        (dict(skeleton=[[0]]), TypeError, "skeleton must be a torch.Tensor, got list"),
        (dict(skeleton=s, batch_dice=False, distributed=True), ValueError, "distributed=True"),
        (dict(include_background=1), TypeError, "include_background must be True or False"),
    ]
    for kw, exc, pattern in cases:
        with pytest.raises(exc, match=pattern):
            DF.skeleton_recall_loss(x, t, **kw)
    with pytest.raises(ValueError, match=r"binary mode expects skeleton of shape \(2, 9, 11\) or \(2, 1, 9, 11\)"):
        DF.skeleton_recall_loss(x[:, :1], t[:, None].clamp_max(1).double(), mode="binary", skeleton=s[:1])
    with pytest.raises(ValueError, match="1, 2 or 3 spatial dimensions"):
        DF.skeleton_recall_loss(torch.randn(1, 2, 2, 2, 2, 2), torch.zeros(1, 2, 2, 2, 2, dtype=torch.long))
