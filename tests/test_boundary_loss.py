"""The boundary loss (diceloss.boundary) on the weighted-map statistics (diceloss.stats.maps).

* fused and Triton (interpreted) against the reference backend, values and gradients in float64 (1e-10);
* gradcheck; hand-worked values; the computed map against diceloss.transforms.signed_distance at a spacing;
* MONAI's BoundaryLoss (installed): equal with the authors' map convention (``convention="kervadec"``), and the
  difference of the default convention named;
* bad input before any computation.

The authors' code (LIVIAETS/boundary-loss) is compared in ``tests/peers/authors_boundary_loss.py``
(``make peer-tests BOUNDARY_LOSS_SRC=...``).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import seeded

import diceloss
from diceloss import _layout
from diceloss import functional as DF
from diceloss.stats import maps
from diceloss.transforms import signed_distance

pytestmark = pytest.mark.usefixtures("one_thread")

HAS_TRITON = importlib.util.find_spec("triton") is not None
TOL = dict(rtol=1e-10, atol=1e-12)


def _shapes(B: int = 2, H: int = 14, W: int = 16) -> torch.Tensor:
    """Class indices: a rectangle of class 1, a disc of class 2, a small blob of class 1 in the second sample."""
    t = torch.zeros(B, H, W, dtype=torch.long)
    t[:, 2:6, 2:11] = 1
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    t[:, ((yy - 9) ** 2 + (xx - 10) ** 2) <= 9] = 2
    t[1:, 11:13, 1:3] = 1
    return t


def _maps(t: torch.Tensor, C: int, **kw) -> torch.Tensor:
    return torch.stack([signed_distance(t[b], num_classes=C, **kw) for b in range(t.shape[0])]).double()


def _both(fn, x):
    x = x.detach().requires_grad_(True)
    loss = fn(x)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


@pytest.mark.parametrize(
    "mode,kw",
    [
        ("multiclass", {}),
        ("multiclass", dict(include_background=True, ignore_index=1, batch_dice=True)),
        ("binary", dict(from_logits=False)),
        ("multilabel", dict(ignore_index=255, reduction="none")),
    ],
)
def test_fused_equals_reference(mode, kw):
    t = _shapes()
    g = seeded(0)
    phi = _maps(t, 3)
    if mode == "multiclass":
        x = 2 * torch.randn(2, 3, *t.shape[1:], generator=g, dtype=torch.float64)
        target = t
    else:
        C = 1 if mode == "binary" else 3
        x = 2 * torch.randn(2, C, *t.shape[1:], generator=g, dtype=torch.float64)
        target = torch.nn.functional.one_hot(t, 3).movedim(-1, 1).double()[:, 3 - C:]
        phi = phi[:, 3 - C:]
        if mode == "multilabel":
            target[0, 1, :2] = 255
        if not kw.get("from_logits", True):
            x = torch.sigmoid(x)
    mask = torch.rand(2, *t.shape[1:], generator=seeded(1)) > 0.3
    out = {}
    for backend in ("reference", "fused"):
        out[backend] = _both(
            lambda z, b=backend: DF.boundary_loss(z, target, mask, distance_map=phi, mode=mode, backend=b, **kw).sum(),
            x,
        )
    for a, b in zip(out["reference"], out["fused"]):
        torch.testing.assert_close(a, b, **TOL)
    # the map statistics' own chunked path (the fused backend takes the overlap engine's kernel where it can)
    prep = _layout.prepare(x.requires_grad_(True), target, mode=mode, from_logits=kw.get("from_logits", True),
                           ignore_index=kw.get("ignore_index"), mask=mask)
    w = phi.reshape(*x.shape[:2], -1)
    ref, own = maps.compute(prep, w, "reference"), maps.compute(prep, w, "chunked")
    for a, b in zip(ref, own):
        torch.testing.assert_close(a, b, **TOL)
    coef = torch.arange(1.0, 1.0 + x.shape[0] * x.shape[1], dtype=torch.float64).view(x.shape[:2])
    (g_ref,) = torch.autograd.grad((ref.weighted * coef).sum(), x)
    (g_own,) = torch.autograd.grad((own.weighted * coef).sum(), x)
    torch.testing.assert_close(g_ref, g_own, **TOL)


def test_hand_values():
    # one row of 7, class 1 on columns 2..4: phi_1 = [2, 1, 0, -1, 0, 1, 2] (boundary voxels at 0)
    t = torch.zeros(1, 1, 7, dtype=torch.long)
    t[0, 0, 2:5] = 1
    p = torch.zeros(1, 2, 1, 7, dtype=torch.float64)
    p[0, 1, 0] = torch.tensor([0.5, 0.0, 1.0, 1.0, 1.0, 0.25, 0.0], dtype=torch.float64)
    p[0, 0] = 1 - p[0, 1]
    # sum p phi = 0.5 * 2 + 0 - 1 + 0.25 = 0.25, over 7 positions
    got = DF.boundary_loss(p, t, from_logits=False)
    assert float(got) == pytest.approx(0.25 / 7, abs=1e-15)
    # spacing 2 along the row doubles every distance
    assert float(DF.boundary_loss(p, t, from_logits=False, spacing=(1.0, 2.0))) == pytest.approx(0.5 / 7, abs=1e-15)
    # a mask leaves positions out of the sum and of the count: columns 0 and 1 out -> (-1 + 0.25) / 5
    mask = torch.ones(1, 1, 7, dtype=torch.bool)
    mask[0, 0, :2] = False
    assert float(DF.boundary_loss(p, t, mask, from_logits=False)) == pytest.approx(-0.75 / 5, abs=1e-15)
    # with the background: phi_0 = [-1, 0, 1, 2, 1, 0, -1] (its boundary voxels are columns 1 and 5)
    both = DF.boundary_loss(p, t, from_logits=False, include_background=True, reduction="none")
    phi0 = torch.tensor([-1.0, 0, 1, 2, 1, 0, -1], dtype=torch.float64)
    torch.testing.assert_close(both[0], torch.stack([(p[0, 0, 0] * phi0).sum() / 7, both.new_tensor(0.25 / 7)]),
                               rtol=0, atol=1e-15)


def test_computed_map_equals_the_transform_at_a_spacing():
    t = _shapes()
    x = torch.randn(2, 3, *t.shape[1:], generator=seeded(2), dtype=torch.float64)
    spacing = (0.7, 1.9)
    phi = _maps(t, 3, spacing=spacing)
    want = DF.boundary_loss(x, t, distance_map=phi, include_background=True)
    torch.testing.assert_close(DF.boundary_loss(x, t, spacing=spacing, include_background=True), want, **TOL)
    # one-hot targets and the label map give the same maps
    onehot = torch.nn.functional.one_hot(t, 3).movedim(-1, 1).double()
    torch.testing.assert_close(DF.boundary_loss(x, onehot, spacing=spacing, include_background=True), want, **TOL)
    # ignored positions belong to no class: the same as masking them in the labels given to the transform
    t2 = t.clone()
    t2[0, 0, :] = 255
    labels = t2.clone()
    phi2 = torch.stack([
        torch.stack([signed_distance(labels[b] == c, spacing=spacing) for c in range(3)]) for b in range(2)
    ]).double()
    got = DF.boundary_loss(x, t2, ignore_index=255, spacing=spacing, include_background=True)
    want = DF.boundary_loss(x, t2, ignore_index=255, distance_map=phi2, include_background=True)
    torch.testing.assert_close(got, want, **TOL)


def test_one_dimensional_targets():
    t = torch.tensor([[0, 1, 1, 1, 0, 0, 1]])
    x = torch.randn(1, 2, 7, generator=seeded(3), dtype=torch.float64)
    phi = signed_distance(t[None, 0] == 1, spacing=(1.0, 0.5))[None, None].expand(1, 2, 1, 7)[..., 0, :].double()
    torch.testing.assert_close(DF.boundary_loss(x, t, spacing=0.5), DF.boundary_loss(x, t, distance_map=phi), **TOL)


@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("batch", [False, True])
def test_monai_with_the_authors_map(include_background, batch):
    monai_losses = pytest.importorskip("monai.losses")
    t = _shapes()
    x = torch.randn(2, 3, *t.shape[1:], generator=seeded(4), dtype=torch.float64, requires_grad=True)
    theirs = monai_losses.BoundaryLoss(include_background=include_background, softmax=True, to_onehot_y=True,
                                       batch=batch)(x, t[:, None])
    phi = _maps(t, 3, convention="kervadec")
    ours = DF.boundary_loss(x, t, distance_map=phi, include_background=include_background, batch_dice=batch)
    (g_theirs,) = torch.autograd.grad(theirs, x)
    (g_ours,) = torch.autograd.grad(ours, x)
    # MONAI keeps its maps in float32: 1e-6
    torch.testing.assert_close(ours, theirs.double(), rtol=0, atol=1e-6)
    torch.testing.assert_close(g_ours, g_theirs, rtol=0, atol=1e-6)


def test_default_map_differs_from_monai_only_inside_off_axis():
    # the zero of diceloss's map is the boundary voxel layer; MONAI / the authors subtract 1 from the inner
    # distance, which is the same wherever the nearest outside voxel is straight along an axis (rectangles)
    t = torch.zeros(1, 12, 12, dtype=torch.long)
    t[0, 2:9, 3:10] = 1
    torch.testing.assert_close(signed_distance(t[0], num_classes=2)[1],
                               signed_distance(t[0], num_classes=2, convention="kervadec")[1])
    yy, xx = torch.meshgrid(torch.arange(12), torch.arange(12), indexing="ij")
    disc = (((yy - 6) ** 2 + (xx - 6) ** 2) <= 16).long()
    ours = signed_distance(disc, num_classes=2)[1]
    theirs = signed_distance(disc, num_classes=2, convention="kervadec")[1]
    assert torch.equal(ours[disc == 0], theirs[disc == 0])
    assert not torch.equal(ours[disc == 1], theirs[disc == 1])


def test_gradcheck():
    t = _shapes(B=2, H=5, W=6)
    x = torch.randn(2, 3, 5, 6, generator=seeded(5), dtype=torch.float64, requires_grad=True)
    phi = _maps(t, 3)
    for backend in ("fused", "reference"):
        def loss(z, backend=backend):
            return DF.boundary_loss(z, t, distance_map=phi, backend=backend, include_background=True)

        assert torch.autograd.gradcheck(loss, (x,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_half_input_sums_in_float32():
    t = _shapes()
    phi = _maps(t, 3).float()
    x = torch.randn(2, 3, *t.shape[1:], generator=seeded(6)).half()
    got = DF.boundary_loss(x, t, distance_map=phi, backend="fused")
    assert got.dtype == torch.float32
    want = DF.boundary_loss(x.double(), t, distance_map=phi.double())
    assert float(got) == pytest.approx(float(want), abs=1e-5)


def test_module_options():
    loss = diceloss.BoundaryLoss(spacing=[1, 2])
    assert loss.spacing == (1.0, 2.0)
    with pytest.raises(ValueError, match="spacing\\[1\\] must be finite, > 0"):
        loss.spacing = (1.0, -2.0)
    assert loss.spacing == (1.0, 2.0)


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton (pip install diceloss[triton])")
def test_triton_equals_reference(monkeypatch):
    import _triton_interpreter

    from diceloss.stats import maps

    module = _triton_interpreter.interpreted_copy("diceloss.stats.triton.maps")
    monkeypatch.setattr(module, "TILE_ELEMS", 32)
    monkeypatch.setattr(module, "MIN_BLOCK_N", 4)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(maps, "_triton_module", lambda: module)
    monkeypatch.setattr(maps, "_launch_context", lambda device: _triton_interpreter.interpreted_language())
    _triton_interpreter.install(monkeypatch)  # the overlap engine's Triton kernels compute sum p phi here
    t = _shapes(H=6, W=7)
    phi = _maps(t, 3)
    x = torch.randn(2, 3, 6, 7, generator=seeded(7), dtype=torch.float64)
    mask = torch.rand(2, 6, 7, generator=seeded(8)) > 0.2
    out = {
        b: _both(lambda z, b=b: DF.boundary_loss(z, t, mask, distance_map=phi, backend=b, include_background=True), x)
        for b in ("reference", "triton")
    }
    for a, b in zip(out["reference"], out["triton"]):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.usefixtures("auto_value_checks")
def test_bad_input_before_computing(monkeypatch):
    from diceloss import stats

    class Started(Exception):
        pass

    def refuse(*a, **k):
        raise Started

    monkeypatch.setattr(stats, "resolve", refuse)
    t = _shapes()
    x = torch.randn(2, 3, *t.shape[1:])
    phi = _maps(t, 3).float()
    with pytest.raises(Started):
        DF.boundary_loss(x, t, distance_map=phi)
    cases = [
        (dict(distance_map=phi[:, :2]), ValueError, r"multiclass mode expects distance_map of shape \(2, 3, 14, 16\)"),
        (dict(distance_map=phi.long()), TypeError, "distance_map must be a floating tensor"),
        (dict(distance_map=phi.clone().fill_(float("inf"))), ValueError, "distance_map must be finite"),
        (dict(distance_map=phi, spacing=2.0), ValueError, "spacing is used when the distance map is computed"),
        (dict(spacing=(1.0, 2.0, 3.0)), ValueError, "spacing has 3 values but the input has 2 spatial dimensions"),
        (dict(spacing="1"), TypeError, "spacing must be None, a number or a sequence of numbers, got str"),
        (dict(spacing=0.0), ValueError, "spacing must be finite, > 0"),
        (dict(batch_dice=False, distributed=True), ValueError, "distributed=True"),
    ]
    for kw, exc, pattern in cases:
        with pytest.raises(exc, match=pattern):
            DF.boundary_loss(x, t, **kw)
