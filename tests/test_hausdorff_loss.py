"""The Hausdorff distance-transform loss (diceloss.hausdorff): a plain oracle, hand values, MONAI.

The oracle below is written from the formula alone: SciPy's ``distance_transform_edt(sampling=spacing)`` per
(sample, class) for the fields, plain autograd for the rest, loops over samples and classes. The loss (SciPy
fields on the CPU, or the PyTorch transform that CUDA tensors use, forced here) must equal it to 1e-10 in
float64, values and gradients, over shapes, spacings, modes and options.
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import seeded, value_checks
from scipy.ndimage import distance_transform_edt

import diceloss
import diceloss.hausdorff as H
from diceloss import functional as DF
from diceloss.hausdorff import DiceHausdorffDTLoss, boundary_distance

monai_losses = pytest.importorskip("monai.losses", reason="MONAI is the peer of the HD-DT comparisons")

pytestmark = pytest.mark.usefixtures("one_thread")
TIGHT = dict(rtol=1e-10, atol=1e-12)


@pytest.fixture(params=["scipy", "torch"])
def edt(request, monkeypatch):
    """Run the test with SciPy's transform (the CPU default) and with the PyTorch one (every other device)."""
    monkeypatch.setattr(H, "_use_scipy", lambda device, spatial: request.param == "scipy")
    return request.param


# ----------------------------------------------------------------------------------------------
# the oracle


def _np_field(x: np.ndarray, v: np.ndarray, spacing) -> np.ndarray | None:
    """Distance to the nearest valid position of the other label; None when the valid positions share one."""
    fg, bg = x & v, ~x & v
    if not fg.any() or not bg.any():
        return None
    return np.where(x, distance_transform_edt(~bg, sampling=spacing), distance_transform_edt(~fg, sampling=spacing))


def oracle(x, g, valid, *, act, kept, alpha=2.0, spacing=None, empty="diagonal", reduction="mean"):
    """x (B, C, *S) logits (or probabilities with act=None), g (B, C, *S) target probabilities, valid (B, C, *S)."""
    p = {"softmax": lambda z: torch.softmax(z, 1), "sigmoid": torch.sigmoid, None: lambda z: z}[act](x)
    S = x.shape[2:]
    sp = (1.0,) * len(S) if spacing is None else (spacing,) * len(S) if np.isscalar(spacing) else tuple(spacing)
    diag = math.sqrt(sum(((n - 1) * s) ** 2 for n, s in zip(S, sp)))
    rows = []
    for b in range(x.shape[0]):
        row = []
        for k in kept:
            v = valid[b, k].numpy()
            xp = p[b, k].detach().numpy() > 0.5
            xg = g[b, k].detach().numpy() > 0.5
            fp, fg = _np_field(xp, v, sp), _np_field(xg, v, sp)
            if fp is None or fg is None:
                agree = fp is None and fg is None and (xp & v).any() == (xg & v).any()
                fill = 0.0 if (empty == "zero" or agree) else diag
                fp = np.full(S, fill) if fp is None else fp
                fg = np.full(S, fill) if fg is None else fg
            w = torch.from_numpy(fp**alpha + fg**alpha)
            vt = valid[b, k]
            term = ((p[b, k] - g[b, k]) ** 2 * w)[vt].sum() / max(int(vt.sum()), 1)
            row.append(term)
        rows.append(torch.stack(row))
    out = torch.stack(rows)
    return {"mean": out.mean(), "sum": out.sum(), "none": out}[reduction]


def _blobs(shape, gen, smooth=1):
    """Random smooth fields: structures of a few positions rather than salt and pepper."""
    z = torch.randn(shape, generator=gen, dtype=torch.float64)
    spatial = len(shape) - 2
    pool = [F.avg_pool1d, F.avg_pool2d, F.avg_pool3d][spatial - 1] if spatial <= 3 else None
    if pool is not None and smooth:
        z = pool(z.reshape(-1, *shape[1:]), 3, stride=1, padding=1, count_include_pad=False).reshape(shape) * 3
    return z


def _case(mode, S, seed, *, C=3, ignore=False, with_mask=False, onehot=False):
    """Inputs for ``mode`` and the oracle's canonical form (x, g, valid)."""
    gen = seeded(seed)
    B = 2
    if mode == "multiclass":
        x = _blobs((B, C, *S), gen)
        t = _blobs((B, C, *S), gen).argmax(1)
        if ignore:
            t[0, ..., :1] = 255
        g = F.one_hot(t.clamp(max=C - 1), C).movedim(-1, 1).double()
        valid = (t != 255)[:, None].expand(B, C, *S).clone()
        target = g if onehot else t
    else:
        Cm = 1 if mode == "binary" else C
        x = _blobs((B, Cm, *S), gen)
        g = (_blobs((B, Cm, *S), gen) > 0.2).double()
        valid = torch.ones(B, Cm, *S, dtype=torch.bool)
        target = g.clone()
        if ignore:
            target[0, ..., :1] = 255
            valid = target != 255
    mask = None
    if with_mask:
        mask = torch.rand(B, *S, generator=gen) > 0.25
        valid = valid & mask[:, None]
    return x, target, mask, g, valid


def _kept(mode, C, include_background):
    if mode == "binary":
        return [0]
    return list(range(C)) if include_background else list(range(1, C))


GRID = [
    # (mode, S, spacing, options, ignore, with_mask)
    ("multiclass", (9, 7), None, {}, False, False),
    ("multiclass", (9, 7), (1.0, 2.5), {"include_background": False}, True, False),
    ("multiclass", (5, 4, 6), (3.0, 0.7, 1.1), {"alpha": 1.0}, False, True),
    ("multiclass", (23,), 0.5, {"empty": "zero", "reduction": "none"}, True, True),
    ("binary", (8, 9), (0.8, 1.9), {"alpha": 3.5}, True, False),
    ("binary", (4, 5, 3), None, {"reduction": "sum"}, False, True),
    ("multilabel", (6, 10), 2.0, {"include_background": False, "reduction": "none"}, False, True),
    ("multilabel", (3, 4, 5), (1.0, 1.0, 4.0), {"empty": "zero"}, True, False),
    ("multilabel", (2, 3, 2, 3), None, {}, False, False),  # four spatial dimensions
]


@pytest.mark.parametrize("mode,S,spacing,opts,ignore,with_mask", GRID)
def test_against_oracle(edt, mode, S, spacing, opts, ignore, with_mask):
    x, target, mask, g, valid = _case(mode, S, seed=len(S) + len(opts), ignore=ignore, with_mask=with_mask)
    kw = dict(mode=mode, spacing=spacing, **opts)
    if ignore:
        kw["ignore_index"] = 255
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    got = DF.hausdorff_dt_loss(xa, target, mask, **kw)
    act = "softmax" if mode == "multiclass" else "sigmoid"
    kept = _kept(mode, x.shape[1], opts.get("include_background", True))
    want = oracle(xb, g, valid, act=act, kept=kept, alpha=opts.get("alpha", 2.0), spacing=spacing,
                  empty=opts.get("empty", "diagonal"), reduction=opts.get("reduction", "mean"))
    torch.testing.assert_close(got, want, **TIGHT)
    seed = torch.randn(got.shape, generator=seeded(9), dtype=torch.float64)
    (got * seed).sum().backward()
    (want * seed).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, **TIGHT)


def test_probabilities_one_hot_and_soft_targets_against_oracle(edt):
    x, t, _, g, valid = _case("multiclass", (7, 8), seed=4)
    p = torch.softmax(x, 1).requires_grad_(True)
    pb = p.detach().clone().requires_grad_(True)
    soft = (0.8 * g + 0.2 / 3)  # soft one-hot: still sums to 1; thresholded at 0.5 it is g
    got = DF.hausdorff_dt_loss(p, soft, from_logits=False, spacing=(1.5, 1.0))
    want = oracle(pb, soft, valid, act=None, kept=[0, 1, 2], spacing=(1.5, 1.0))
    torch.testing.assert_close(got, want, **TIGHT)
    got.backward()
    want.backward()
    torch.testing.assert_close(p.grad, pb.grad, **TIGHT)
    # class indices, (B, 1, *S) indices and a one-hot target are one problem
    ref = DF.hausdorff_dt_loss(x, t)
    torch.testing.assert_close(DF.hausdorff_dt_loss(x, t[:, None]), ref, rtol=0, atol=0)
    torch.testing.assert_close(DF.hausdorff_dt_loss(x, g), ref, **TIGHT)


def test_soft_target_gets_a_gradient():
    x, _, _, g, valid = _case("multilabel", (6, 5), seed=5)
    soft = (0.7 * g + 0.1).requires_grad_(True)
    sb = soft.detach().clone().requires_grad_(True)
    DF.hausdorff_dt_loss(x, soft, mode="multilabel").backward()
    oracle(x, sb, valid, act="sigmoid", kept=[0, 1, 2]).backward()
    torch.testing.assert_close(soft.grad, sb.grad, **TIGHT)


@pytest.mark.parametrize("S,spacing", [((31,), (0.3,)), ((12, 17), (1.0, 0.35)), ((6, 9, 14), (2.5, 1.0, 0.6))])
def test_torch_transform_equals_scipy(S, spacing):
    gen = seeded(len(S))
    sites = torch.rand(5, *S, generator=gen) > 0.93
    sites[0] = False  # no site: inf everywhere
    sites[1] = False
    sites[1].view(-1)[-1] = True  # one site in a corner: the longest distances
    got = H._edt_torch(sites, spacing, torch.float64)
    assert torch.isinf(got[0]).all()
    want = np.stack([distance_transform_edt(~s, sampling=spacing) for s in sites[1:].numpy()])
    np.testing.assert_allclose(got[1:].numpy(), want, rtol=1e-13, atol=0)


def test_transform_choice():
    # SciPy on the CPU for 1-D, 2-D and small 3-D images (faster there); PyTorch for larger volumes and any other
    # device (benchmarks/bench_hausdorff.py); both are tested against the oracle above (the edt fixture)
    cpu, meta = torch.device("cpu"), torch.device("meta")
    assert H._use_scipy(cpu, (512, 512)) and H._use_scipy(cpu, (40, 40, 40))
    assert not H._use_scipy(cpu, (64, 64, 64)) and not H._use_scipy(meta, (8, 8))


# ----------------------------------------------------------------------------------------------
# gradcheck: logits far enough from the threshold that the perturbations leave the fields as they are


@pytest.mark.parametrize("mode", ["multiclass", "binary", "multilabel"])
def test_gradcheck(mode):
    gen = seeded(7)
    if mode == "multiclass":
        t = torch.randint(0, 3, (2, 4, 3), generator=gen)
        x = 3 * F.one_hot(torch.randint(0, 3, (2, 4, 3), generator=gen), 3).movedim(-1, 1).double()
        x = x + 0.3 * torch.rand(x.shape, generator=gen, dtype=torch.float64)
        kw = dict(spacing=(1.0, 2.0), include_background=False, reduction="none")
    else:
        C = 1 if mode == "binary" else 2
        t = (torch.rand(2, C, 5, 3, generator=gen) > 0.5).double()
        sign = torch.where(torch.rand(t.shape, generator=gen) > 0.4, 1.0, -1.0).double()
        x = sign * (0.5 + torch.rand(t.shape, generator=gen, dtype=torch.float64))
        kw = dict(mode=mode, spacing=0.7, alpha=1.5)
    x.requires_grad_(True)
    mask = torch.rand(2, *t.shape[-2:], generator=gen) > 0.2
    assert torch.autograd.gradcheck(lambda z: DF.hausdorff_dt_loss(z, t, mask, **kw), (x,))


# ----------------------------------------------------------------------------------------------
# values by hand


def test_perfect_prediction_is_zero():
    t = torch.randint(0, 3, (2, 6, 7), generator=seeded(1))
    p = F.one_hot(t, 3).movedim(-1, 1).double()
    assert float(DF.hausdorff_dt_loss(p, t, from_logits=False, spacing=(2.0, 0.5))) == 0.0


def test_one_dimensional_case_by_hand_with_spacing_2():
    # g = [0, 1, 1, 0, 0], p = [0.2, 0.6, 0.4, 0.1, 0.3]; spacing 2, alpha 2.
    # d_G (to the nearest position of the other label in g):   [2, 2, 2, 2, 4]
    # [p > 0.5] = [0, 1, 0, 0, 0]; d_P:                          [2, 2, 2, 4, 6]
    # w = d_G^2 + d_P^2 = [8, 8, 8, 20, 52]; (p - g)^2 = [0.04, 0.16, 0.36, 0.01, 0.09]
    # sum = 0.32 + 1.28 + 2.88 + 0.2 + 4.68 = 9.36, over 5 positions: 1.872
    p = torch.tensor([[0.2, 0.6, 0.4, 0.1, 0.3]], dtype=torch.float64, requires_grad=True)
    g = torch.tensor([[0.0, 1.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    loss = DF.hausdorff_dt_loss(p, g, mode="binary", from_logits=False, spacing=2.0)
    assert loss.item() == pytest.approx(1.872, abs=1e-14)
    loss.backward()
    # dL/dp = 2 (p - g) w / 5
    want = torch.tensor([[0.64, -1.28, -1.92, 0.8, 6.24]], dtype=torch.float64)
    torch.testing.assert_close(p.grad, want, rtol=0, atol=1e-14)


def test_missed_structure_costs_the_diagonal():
    # g = [0, 0, 1, 0, 0]; the prediction misses it with p = 0.45 there (nothing above 0.5), or finds it (0.55).
    # d_G = [2, 1, 1, 1, 2]. Missed: d_P = D = 4 (the diagonal: 4 steps of 1) everywhere,
    #   loss = 0.55^2 (1 + 16) / 5 = 1.0285. Found: d_P = d_G, loss = 0.45^2 (1 + 1) / 5 = 0.081.
    # empty="zero" (MONAI's rule): missed 0.55^2 * 1 / 5 = 0.0605 < found 0.081: finding it costs more.
    g = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    missed = torch.tensor([[0.0, 0.0, 0.45, 0.0, 0.0]], dtype=torch.float64)
    found = torch.tensor([[0.0, 0.0, 0.55, 0.0, 0.0]], dtype=torch.float64)
    kw = dict(mode="binary", from_logits=False)
    assert float(DF.hausdorff_dt_loss(missed, g, **kw)) == pytest.approx(0.3025 * 17 / 5, abs=1e-14)
    assert float(DF.hausdorff_dt_loss(found, g, **kw)) == pytest.approx(0.2025 * 2 / 5, abs=1e-14)
    assert float(DF.hausdorff_dt_loss(missed, g, empty="zero", **kw)) == pytest.approx(0.3025 / 5, abs=1e-14)
    # a structure predicted in a class the target lacks: d_G = D, d_P = [2, 1, 1, 1, 2]: 0.55^2 (16 + 1) / 5
    assert float(DF.hausdorff_dt_loss(found, 0 * g, **kw)) == pytest.approx(0.3025 * 17 / 5, abs=1e-14)
    # both empty: no structure anywhere, both fields 0, whatever the sub-threshold probabilities
    assert float(DF.hausdorff_dt_loss(missed, 0 * g, **kw)) == 0.0


def test_missed_structure_pulls_towards_it():
    # 2D: a class present in the target, predicted nowhere. Its positions get the gradient of the diagonal field.
    t = torch.zeros(1, 9, 9, dtype=torch.long)
    t[0, 6:8, 6:8] = 1
    x = torch.zeros(1, 2, 9, 9, dtype=torch.float64)
    x[:, 0] = 2.0  # background everywhere: class 1 missed
    x.requires_grad_(True)
    DF.hausdorff_dt_loss(x, t, include_background=False, spacing=(1.0, 2.0)).backward()
    inside = x.grad[0, 1, 6:8, 6:8]
    assert (inside < 0).all()  # raise class 1's logit there
    zero = x.clone().detach().requires_grad_(True)
    DF.hausdorff_dt_loss(zero, t, include_background=False, spacing=(1.0, 2.0), empty="zero").backward()
    diag2 = 8**2 + 16**2  # (9 - 1) * 1 and (9 - 1) * 2
    # with the diagonal field the pull is (d_G^2 + D^2) / d_G^2 times MONAI's; d_G = 1 or 2 inside
    ratio = inside / zero.grad[0, 1, 6:8, 6:8]
    # d_G = 1 inside: each position has an outside neighbour one row (1 mm) away; columns are 2 mm apart
    torch.testing.assert_close(ratio, torch.full_like(ratio, 1.0 + diag2), rtol=1e-12, atol=0)


def test_images_without_positions_or_with_one(edt):
    x = torch.randn(2, 3, 0, 4, dtype=torch.float64, requires_grad=True)
    loss = DF.hausdorff_dt_loss(x, torch.zeros(2, 0, 4, dtype=torch.long))
    loss.backward()
    assert float(loss) == 0.0 and x.grad.shape == x.shape
    # one position: the diagonal is 0, so nothing can be measured
    assert float(DF.hausdorff_dt_loss(torch.randn(2, 3, 1, 1), torch.zeros(2, 1, 1, dtype=torch.long))) == 0.0


def test_isotropic_spacing_scales_by_its_power():
    x, t, *_ = _case("multiclass", (8, 9), seed=2)
    base = DF.hausdorff_dt_loss(x, t, alpha=1.5, reduction="none")
    scaled = DF.hausdorff_dt_loss(x, t, alpha=1.5, spacing=0.25, reduction="none")
    torch.testing.assert_close(scaled, base * 0.25**1.5, rtol=1e-12, atol=0)


def test_anisotropic_spacing_matters(edt):
    # a horizontal band and an error k rows above it: the distance is k rows times the row spacing
    t = torch.zeros(1, 12, 6, dtype=torch.long)
    t[0, 8:] = 1
    p = F.one_hot(t, 2).movedim(-1, 1).double()
    p[0, :, 2] = torch.tensor([0.3, 0.7]).double()[:, None]  # row 2: wrong (class 1 predicted, 6 rows off)
    kw = dict(from_logits=False, include_background=False, reduction="none")
    unit = DF.hausdorff_dt_loss(p, t, **kw)
    rows3 = DF.hausdorff_dt_loss(p, t, spacing=(3.0, 1.0), **kw)
    cols3 = DF.hausdorff_dt_loss(p, t, spacing=(1.0, 3.0), **kw)
    # every distance here runs along the rows: 3 mm rows make the loss 9 times larger, 3 mm columns change nothing
    torch.testing.assert_close(rows3, 9 * unit, rtol=1e-12, atol=0)
    torch.testing.assert_close(cols3, unit, rtol=1e-12, atol=0)


def test_masked_positions_contribute_nothing_and_the_mean_is_over_the_valid_ones():
    x, t, *_ = _case("multiclass", (7, 7), seed=3)
    mask = torch.ones(2, 7, 7, dtype=torch.bool)
    mask[:, :, :2] = False
    ref = DF.hausdorff_dt_loss(x, t, mask, reduction="none")
    x2, t2 = x.clone(), t.clone()
    x2[..., :2] = torch.randn(x2[..., :2].shape, generator=seeded(4), dtype=torch.float64)
    t2[..., :2] = 2
    x2.requires_grad_(True)
    got = DF.hausdorff_dt_loss(x2, t2, mask, reduction="none")
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    got.sum().backward()
    assert (x2.grad[..., :2] == 0).all()
    # ignore_index on those positions is the same problem
    t3 = t.clone()
    t3[..., :2] = -1
    torch.testing.assert_close(DF.hausdorff_dt_loss(x, t3, ignore_index=-1, reduction="none"), ref, rtol=0, atol=0)
    # everything masked: nothing to score, 0
    assert float(DF.hausdorff_dt_loss(x, t, torch.zeros_like(mask))) == 0.0


def test_target_distance_precomputed_in_the_loader(edt):
    x, t, mask, g, valid = _case("multiclass", (8, 6), seed=6, with_mask=True)
    x = x.requires_grad_(True)
    xb = x.detach().clone().requires_grad_(True)
    sp = (1.0, 2.5)
    td = boundary_distance(g.bool(), sp, valid=mask[:, None], dtype=torch.float64)
    got = DF.hausdorff_dt_loss(x, t, mask, spacing=sp, target_distance=td)
    want = DF.hausdorff_dt_loss(xb, t, mask, spacing=sp)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    got.backward()
    want.backward()
    torch.testing.assert_close(x.grad, xb.grad, rtol=0, atol=0)
    # a class with no boundary in the target takes the loss's rule: its field entries are unused
    t0 = torch.zeros_like(t)
    td0 = boundary_distance(F.one_hot(t0, 3).movedim(-1, 1).bool(), sp) + 7.0
    torch.testing.assert_close(
        DF.hausdorff_dt_loss(x, t0, spacing=sp, target_distance=td0), DF.hausdorff_dt_loss(x, t0, spacing=sp)
    )
    # the module takes it in forward
    loss = diceloss.HausdorffDTLoss(spacing=sp)
    torch.testing.assert_close(loss(x, t, mask, td), want, rtol=0, atol=0)


def test_boundary_distance_by_hand():
    g = torch.tensor([[0, 0, 1, 1, 1, 0, 0]], dtype=torch.bool)
    assert boundary_distance(g, 2.0, spatial_dims=1).tolist() == [[4.0, 2.0, 2.0, 4.0, 2.0, 2.0, 4.0]]
    # the last two positions not valid: the fifth's nearest valid outside position is then the second (3 steps);
    # the invalid ones keep a distance (to the nearest valid position of the other label) that the loss never reads
    valid = torch.tensor([[1, 1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    assert boundary_distance(g, 2.0, spatial_dims=1, valid=valid).tolist() == [[4.0, 2.0, 2.0, 4.0, 6.0, 2.0, 4.0]]
    assert boundary_distance(torch.zeros(3, 4, dtype=torch.bool)).abs().sum() == 0  # no boundary: 0


# ----------------------------------------------------------------------------------------------
# options, module, errors


def test_module_equals_function_and_options_are_checked_when_set():
    x, t, *_ = _case("multiclass", (6, 5), seed=8)
    loss = diceloss.HausdorffDTLoss()
    loss.alpha, loss.spacing, loss.empty = 1.5, (2, 0.5), "zero"
    assert loss.spacing == (2.0, 0.5)
    want = DF.hausdorff_dt_loss(x, t, alpha=1.5, spacing=(2.0, 0.5), empty="zero")
    torch.testing.assert_close(loss(x, t), want, rtol=0, atol=0)
    before = loss.options
    for name, value, err in [("alpha", -1, ValueError), ("alpha", 0.0, ValueError), ("alpha", "2", TypeError),
                             ("spacing", (1.0, -2.0), ValueError), ("spacing", "1", TypeError),
                             ("spacing", float("nan"), ValueError), ("empty", "inf", ValueError),
                             ("reduction", "avg", ValueError), ("mode", "softmax", ValueError),
                             ("include_background", "False", TypeError)]:
        with pytest.raises(err, match=name):
            setattr(loss, name, value)
        with pytest.raises(err, match=name):
            diceloss.HausdorffDTLoss(**{name: value})
        assert loss.options is before
    assert "alpha=1.5" in repr(loss)


def test_errors_before_computation(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the distance fields were computed before the inputs were checked")

    monkeypatch.setattr(H, "_opposite_distance", refuse)
    x, t, *_ = _case("multiclass", (6, 5), seed=8)
    with pytest.raises(ValueError, match=r"spacing has 3 values but the input has 2 spatial dimensions"):
        DF.hausdorff_dt_loss(x, t, spacing=(1, 2, 3))
    with pytest.raises(ValueError, match=r"target_distance must have shape \(2, 3, 6, 5\)"):
        DF.hausdorff_dt_loss(x, t, target_distance=torch.zeros(2, 2, 6, 5))
    with pytest.raises(TypeError, match=r"target_distance must be a floating tensor"):
        DF.hausdorff_dt_loss(x, t, target_distance=torch.zeros(2, 3, 6, 5, dtype=torch.long))
    with value_checks(None):
        with pytest.raises(ValueError, match=r"target_distance must hold finite distances >= 0"):
            DF.hausdorff_dt_loss(x, t, target_distance=-torch.ones(2, 3, 6, 5))
    # the tensor errors are those of every loss (one place: diceloss._layout.prepare)
    bad = t.clone()
    bad[0, 0, 0] = 3
    for args in [(x, bad), (x.long(), t), (x, t[:, :4]), (x[:, :1], t)]:
        with pytest.raises((ValueError, TypeError)) as ours:
            DF.hausdorff_dt_loss(*args)
        with pytest.raises(type(ours.value)) as dice:
            DF.dice_loss(*args)
        assert str(ours.value) == str(dice.value)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_input(dtype):
    x, t, *_ = _case("multiclass", (16, 16), seed=9)
    xh = x.to(dtype).requires_grad_(True)
    xd = xh.detach().double().requires_grad_(True)  # the same rounded inputs in float64
    got = DF.hausdorff_dt_loss(xh, t, spacing=(1.0, 0.8))
    want = DF.hausdorff_dt_loss(xd, t, spacing=(1.0, 0.8))
    assert got.dtype == torch.float32
    assert abs(got.item() - want.item()) <= 1e-5 * want.item()  # float32 sums, float32 fields
    got.backward()
    want.backward()
    assert xh.grad.dtype == dtype
    torch.testing.assert_close(xh.grad.double(), xd.grad, rtol=1e-2, atol=1e-5)


def test_dice_hausdorff_compound():
    x, t, *_ = _case("multiclass", (8, 8), seed=10)
    loss = DiceHausdorffDTLoss(include_background=False, lambda_hd=0.1, lambda_ce=0.5, spacing=2.0, batch_dice=True)
    got = loss(x, t)
    want = DF.dice_ce_loss(x, t, include_background=False, lambda_ce=0.5, batch_dice=True) + 0.1 * DF.hausdorff_dt_loss(
        x, t, include_background=False, spacing=2.0
    )
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    assert sorted(loss.components) == ["ce", "dice", "hausdorff"]
    loss.lambda_hd = 0.0
    torch.testing.assert_close(loss(x, t), DF.dice_ce_loss(x, t, include_background=False, lambda_ce=0.5,
                                                           batch_dice=True), rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="lambda_hd must be finite"):
        loss.lambda_hd = -1.0
    assert loss.lambda_hd == 0.0
    with pytest.raises(ValueError, match="adds terms of different shapes"):
        DiceHausdorffDTLoss(reduction="none")
    # the options read and write through: the shared ones on both parts, or (refused) on neither
    loss.alpha, loss.batch_dice, loss.include_background = 1.0, False, True
    assert (loss.hausdorff.alpha, loss.dice_ce.batch_dice, loss.dice_ce.include_background) == (1.0, False, True)
    assert loss.hausdorff.include_background
    before = (loss.dice_ce.options, loss.hausdorff.options)
    with pytest.raises(ValueError, match="adds terms of different shapes"):
        loss.reduction = "none"  # DiceCELoss refuses it, HausdorffDTLoss would take it
    with pytest.raises(ValueError, match="alpha must be finite"):
        loss.alpha = -1.0
    assert (loss.dice_ce.options, loss.hausdorff.options) == before and loss.reduction == "mean"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fields_stay_on_the_device(monkeypatch):
    def no_numpy(*args, **kwargs):
        raise AssertionError("a CUDA tensor went through NumPy")

    monkeypatch.setattr(torch.Tensor, "numpy", no_numpy)
    x, t, mask, *_ = _case("multiclass", (20, 17, 9), seed=11, with_mask=True)
    xc = x.cuda().requires_grad_(True)
    xd = x.clone().requires_grad_(True)
    got = DF.hausdorff_dt_loss(xc, t.cuda(), mask.cuda(), spacing=(2.0, 1.0, 0.5))
    monkeypatch.undo()
    want = DF.hausdorff_dt_loss(xd, t, mask, spacing=(2.0, 1.0, 0.5))
    torch.testing.assert_close(got.cpu(), want, **TIGHT)
    got.backward()
    want.backward()
    torch.testing.assert_close(xc.grad.cpu(), xd.grad, **TIGHT)


# ----------------------------------------------------------------------------------------------
# MONAI 1.6.1's HausdorffDTLoss


def _monai(**kw):
    return monai_losses.HausdorffDTLoss(**kw)


MONAI_CASES = list(itertools.product(["softmax", "sigmoid"], [True, False], ["mean", "sum", "none"], [False, True]))


@pytest.mark.parametrize("act,include_background,reduction,batch", MONAI_CASES[::2] + [MONAI_CASES[5]])
def test_equals_monai_where_the_definitions_agree(act, include_background, reduction, batch):
    S = (9, 8) if batch else (5, 6, 4)
    gen = seeded(12)
    x = _blobs((2, 3, *S), gen)
    t = _blobs((2, 3, *S), gen).argmax(1)
    onehot = F.one_hot(t, 3).movedim(-1, 1).double()
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    want = _monai(include_background=include_background, reduction=reduction, batch=batch, to_onehot_y=True,
                  **{act: True})(xb, t[:, None])
    mode = "multiclass" if act == "softmax" else "multilabel"
    target = t if act == "softmax" else onehot
    ours = DF.hausdorff_dt_loss(xa, target, mode=mode, include_background=include_background, empty="zero",
                                reduction="none" if batch else reduction)
    if batch:  # MONAI's batch option: the mean over samples and positions per class (equal numbers of positions)
        ours = ours.mean(0, keepdim=True)
        ours = {"mean": ours.mean(), "sum": ours.sum(), "none": ours}[reduction]
    if reduction == "none":
        assert want.shape == (*ours.shape, *([1] * len(S)))
        want = want.reshape(ours.shape)
    # MONAI rounds the fields and their powers to float32: agreement to float32 rounding of the weights
    torch.testing.assert_close(ours, want, rtol=1e-6, atol=1e-6)
    ours.sum().backward()
    want.sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-6, atol=1e-6)


def test_equals_monai_binary_and_default_empty_rule_when_every_mask_has_a_boundary():
    gen = seeded(13)
    x = _blobs((3, 1, 10, 9), gen)
    g = (_blobs((3, 1, 10, 9), gen) > 0).double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI: "single channel prediction, `include_background=False` ignored."
        want = _monai(sigmoid=True)(x, g)
    assert ((torch.sigmoid(x) > 0.5).flatten(1).any(1) & ~(torch.sigmoid(x) > 0.5).flatten(1).all(1)).all()
    torch.testing.assert_close(DF.hausdorff_dt_loss(x, g, mode="binary"), want, rtol=1e-6, atol=0)


def test_monai_defect_a_missed_structure_costs_less_than_a_found_one():
    g = torch.zeros(1, 1, 7, 7, dtype=torch.float64)
    g[..., 3, 3] = 1
    missed, found = 0.45 * g, 0.55 * g
    monai = _monai()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m_missed, m_found = float(monai(missed, g)), float(monai(found, g))
    assert m_missed < m_found  # MONAI: crossing the threshold onto the structure raises the loss
    kw = dict(mode="binary", from_logits=False)
    assert float(DF.hausdorff_dt_loss(missed, g, **kw)) > 10 * float(DF.hausdorff_dt_loss(found, g, **kw))
    assert float(DF.hausdorff_dt_loss(missed, g, empty="zero", **kw)) == pytest.approx(m_missed, rel=1e-6)


def test_monai_defect_a_full_target_missed_entirely_costs_nothing():
    # every position belongs to the class, the prediction has none of it: every position is wrong
    g = torch.ones(1, 1, 6, 6, dtype=torch.float64)
    p = torch.full_like(g, 0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert float(_monai()(p, g)) == 0.0
    # here: both fields are the diagonal, 0.8^2 * 2 * (5^2 + 5^2)
    assert float(DF.hausdorff_dt_loss(p, g, mode="binary", from_logits=False)) == pytest.approx(0.64 * 100, abs=1e-12)


def test_monai_defect_no_spacing():
    # rows 3 mm apart: MONAI has no spacing argument and measures in voxels, so an error 6 rows off weighs 6^2
    # where its distance is 18 mm; the spacing-aware loss is 9 times MONAI's here (all distances along the rows)
    t = torch.zeros(1, 12, 6, dtype=torch.long)
    t[0, 8:] = 1
    p = F.one_hot(t, 2).movedim(-1, 1).double()
    p[0, :, 2] = torch.tensor([0.3, 0.7]).double()[:, None]
    monai = float(_monai(include_background=False)(p, F.one_hot(t, 2).movedim(-1, 1).double()))
    kw = dict(from_logits=False, include_background=False)
    assert float(DF.hausdorff_dt_loss(p, t, **kw)) == pytest.approx(monai, rel=1e-6)
    assert float(DF.hausdorff_dt_loss(p, t, spacing=(3.0, 1.0), **kw)) == pytest.approx(9 * monai, rel=1e-6)


# ----------------------------------------------------------------------------------------------
# diceloss.compat.monai.HausdorffDTLoss: MONAI's arguments and numbers


@pytest.mark.parametrize(
    "kw",
    [
        dict(softmax=True, to_onehot_y=True),
        dict(sigmoid=True, include_background=True, reduction="none", batch=True),
        dict(softmax=True, to_onehot_y=True, reduction="sum", alpha=1.0),
        dict(other_act=torch.tanh, reduction="none"),
        dict(alpha=3.0, include_background=True),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_compat_equals_monai(kw, dtype):
    from diceloss.compat.monai import HausdorffDTLoss as Compat

    gen = seeded(14)
    x = _blobs((2, 3, 7, 6), gen).to(dtype)
    t = _blobs((2, 3, 7, 6), gen).argmax(1)
    target = t[:, None] if kw.get("to_onehot_y") else F.one_hot(t, 3).movedim(-1, 1).to(dtype)
    if "sigmoid" not in kw and "softmax" not in kw and "other_act" not in kw:
        x = torch.sigmoid(x)  # probabilities
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    got, want = Compat(**kw)(xa, target), _monai(**kw)(xb, target)
    assert got.shape == want.shape and got.dtype == want.dtype
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-6, atol=1e-6)
    torch.testing.assert_close(got, want, **tol)
    got.sum().backward()
    want.sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, **tol)


def test_compat_single_channel_warnings_and_errors():
    from diceloss.compat.monai import HausdorffDTLoss as Compat
    from diceloss.compat.monai import ShapeMismatchError

    x = torch.rand(2, 1, 5, 5, generator=seeded(15), dtype=torch.float64)
    g = (x > 0.6).double()
    with pytest.warns(UserWarning, match="include_background=False"):
        got = Compat()(x, g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.testing.assert_close(got, _monai()(x, g), rtol=1e-12, atol=0)
    with pytest.raises(ShapeMismatchError):
        Compat()(x, g[:, :, :4])
    with pytest.raises(ValueError, match="Incompatible values"):
        Compat(sigmoid=True, softmax=True)
