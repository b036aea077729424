"""Soft clDice (diceloss.cldice): the recompute soft skeleton against plain autograd, the loss against an oracle
written from the paper's formula, hand-worked values, input errors, and MONAI 1.6.1's SoftclDiceLoss /
SoftDiceclDiceLoss (the compat classes to float rounding; the diceloss loss where the definitions agree; each
MONAI defect shown).

Tolerances (tests/README.md): float64 against plain autograd or the oracle 1e-10 / 1e-12, equal by construction
1e-12, peers 1e-6 (MONAI's compat classes agree to ~1e-16 here).
"""

from __future__ import annotations

import os
import socket
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import seeded, value_checks

import diceloss
from diceloss import cldice as C
from diceloss import functional as DF
from diceloss.cldice import soft_skeleton

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = dict(rtol=1e-10, atol=1e-12)
PEER = dict(rtol=1e-6, atol=1e-6)


def _skel_ref(x, k):
    return soft_skeleton(x, k, recompute=False)


# ----------------------------------------------------------------------------------------------
# the soft skeleton: the recompute Function against plain autograd


@pytest.mark.parametrize(
    "shape,k",
    [((2, 3, 9, 11), 0), ((2, 3, 9, 11), 3), ((1, 2, 12, 10), 6), ((2, 2, 5, 6, 7), 2), ((1, 1, 1, 8), 2),
     ((1, 1, 4, 1, 5), 3)],
)
def test_recompute_skeleton_equals_plain_autograd(shape, k):
    g = seeded(k)
    x = torch.rand(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    up = torch.randn(*shape, generator=g, dtype=torch.float64)
    fast, ref = soft_skeleton(x, k), _skel_ref(x, k)
    assert torch.equal(fast, ref)  # the same ops on the values: equal to the bit
    (g_fast,) = torch.autograd.grad(fast, x, up)
    (g_ref,) = torch.autograd.grad(ref, x, up)
    torch.testing.assert_close(g_fast, g_ref, **TOL)


def test_skeleton_equals_the_authors_soft_skel_as_monai_ships_it():
    monai_cldice = pytest.importorskip("monai.losses.cldice")
    g = seeded(3)
    for shape, k in (((2, 2, 10, 9), 3), ((1, 2, 6, 7, 5), 4)):
        x = torch.rand(*shape, generator=g, dtype=torch.float64, requires_grad=True)
        up = torch.randn(*shape, generator=g, dtype=torch.float64)
        ours, theirs = soft_skeleton(x, k), monai_cldice.soft_skel(x, k)
        assert torch.equal(ours, theirs)
        torch.testing.assert_close(*(torch.autograd.grad(y, x, up)[0] for y in (ours, theirs)), **TOL)


def test_skeleton_gradcheck():
    g = seeded(1)
    for shape, k in (((1, 2, 6, 7), 3), ((1, 1, 4, 4, 5), 2)):
        x = torch.rand(*shape, generator=g, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda v, k=k: soft_skeleton(v, k), (x,), eps=1e-6, atol=1e-7, rtol=1e-5)


def _tie_oracle(x, k):
    """The soft skeleton by plain autograd with one route per pooling, chosen as documented: the first of equal
    values, the centre first, then the face neighbours axis by axis (previous, next); the box max one axis at a
    time. Autograd through take_along_dim sends each gradient to exactly that position."""
    nd = x.ndim

    def candidates(f, fill, axes):
        out = [f]
        for axis in axes:
            pad = [0, 0] * (nd - 2)
            i = 2 * (nd - 1 - axis)
            pad[i:i + 2] = [1, 1]
            fp = F.pad(f, pad, value=fill)
            n = f.shape[axis]
            out += [fp.narrow(axis, 0, n), fp.narrow(axis, 2, n)]
        return torch.stack(out)

    def pick(stack, largest):
        idx = (stack.argmax(0) if largest else stack.argmin(0))[None]  # the first of equal values
        return stack.take_along_dim(idx, 0)[0]

    def erode(f):
        return pick(candidates(f, float("inf"), range(2, nd)), False)

    def dilate(f):
        for axis in range(2, nd):
            f = pick(candidates(f, float("-inf"), [axis]), True)
        return f

    f, skel = x, None
    for _ in range(k + 1):
        e = erode(f)
        d = torch.relu(f - dilate(e))
        skel = d if skel is None else skel + torch.relu(d - skel * d)
        f = e
    return skel


@pytest.mark.parametrize("shape", [(2, 2, 9, 8), (1, 2, 5, 6, 4)])
def test_ties_route_the_gradient_to_one_position_as_documented(shape):
    """Hard 0/1 masks are all ties: the gradient is the one of the documented single routes, exactly."""
    g = seeded(5)
    x = (torch.rand(*shape, generator=g) > 0.4).double().requires_grad_()
    x2 = x.detach().clone()
    x2[..., 1:3] = torch.rand(x2[..., 1:3].shape, generator=g, dtype=torch.float64).round(decimals=1)
    up = torch.randn(*shape, generator=g, dtype=torch.float64)
    for inp in (x, x2.requires_grad_()):
        fast, ref = soft_skeleton(inp, 3), _tie_oracle(inp, 3)
        assert torch.equal(fast, ref)
        torch.testing.assert_close(*(torch.autograd.grad(y, inp, up)[0] for y in (fast, ref)), **TOL)


def test_the_function_saves_only_its_input():
    x = torch.rand(1, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    for k in (1, 10):
        y = soft_skeleton(x, k)
        saved = y.grad_fn.saved_tensors
        assert len(saved) == 1 and saved[0].data_ptr() == x.data_ptr()


def test_skeleton_hand_values():
    # one-pixel-thick structures are their own skeleton; a 3x3 square shrinks to its centre from k = 1 on
    line = torch.zeros(1, 1, 7, 9)
    line[0, 0, 3, 1:8] = 1
    assert torch.equal(soft_skeleton(line, 3), line)
    square = torch.zeros(1, 1, 7, 7)
    square[0, 0, 2:5, 2:5] = 1
    centre = torch.zeros_like(square)
    centre[0, 0, 3, 3] = 1
    assert torch.equal(soft_skeleton(square, 0), torch.zeros_like(square))  # round 0: opening = the square
    assert torch.equal(soft_skeleton(square, 1), centre)
    # a 3-pixel-thick bar: the middle row, shortened by one pixel at each end
    bar = torch.zeros(1, 1, 7, 7)
    bar[0, 0, 2:5, 1:6] = 1
    assert soft_skeleton(bar)[0, 0].tolist()[3] == [0, 0, 1, 1, 1, 0, 0]
    assert soft_skeleton(bar).sum() == 3
    # 3D: a one-voxel line
    rod = torch.zeros(1, 1, 5, 5, 5)
    rod[0, 0, 2, 2, :] = 1
    assert torch.equal(soft_skeleton(rod, 2), rod)


def test_skeleton_input_errors():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) or \(B, C, D, H, W\).*got shape \(2, 3, 8\)"):
        soft_skeleton(torch.rand(2, 3, 8))
    with pytest.raises(TypeError, match="floating tensor, got dtype torch.int64"):
        soft_skeleton(torch.ones(1, 1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="iterations must be a non-negative int, got -1"):
        soft_skeleton(torch.rand(1, 1, 4, 4), -1)
    with pytest.raises(TypeError, match="iterations must be a non-negative int, got 2.0"):
        soft_skeleton(torch.rand(1, 1, 4, 4), 2.0)
    with pytest.raises(TypeError, match="recompute must be True or False"):
        soft_skeleton(torch.rand(1, 1, 4, 4), 2, recompute="yes")


# ----------------------------------------------------------------------------------------------
# the loss against an oracle written from the formula


def _oracle(x, t, mask=None, *, mode="multiclass", from_logits=True, include_background=None, ignore_index=None,
            batch_dice=False, iterations=3, smooth_nr=1.0, smooth_dr=1.0, reduction="mean", target_skeleton=None):
    """clDice per (sample, class) from the paper's formula, with plain autograd skeletons, class by class."""
    B = x.shape[0]
    if mode == "binary":
        x, t = x.reshape(B, 1, *x.shape[-2:]), t.reshape(B, 1, *x.shape[-2:])
    Cn, S = x.shape[1], x.shape[2:]
    p = (torch.softmax(x, 1) if mode == "multiclass" else torch.sigmoid(x)) if from_logits else x
    valid = torch.ones(B, Cn, *S, dtype=torch.bool)
    if mode == "multiclass" and t.shape != x.shape:
        t = t.reshape(B, *S)
        ok = t != ignore_index if ignore_index is not None else torch.ones_like(t, dtype=torch.bool)
        g = F.one_hot(torch.where(ok, t, 0), Cn).movedim(-1, 1).double() * ok[:, None]
        valid &= ok[:, None]
    else:
        g = t.double()
        if ignore_index is not None:
            valid &= g != ignore_index
            g = torch.where(valid, g, 0.0)
    if mask is not None:
        valid &= mask.reshape(B, 1, *S).bool()
    m = valid.double()
    background = (mode != "multiclass") if include_background is None else include_background
    kept = [c for c in range(Cn) if (background or c > 0 or mode == "binary")
            and not (mode == "multiclass" and c == ignore_index)]
    sums = []
    for b in range(B):
        row = []
        for c in kept:
            pc, gc, mc = p[b:b + 1, c:c + 1], g[b:b + 1, c:c + 1], m[b:b + 1, c:c + 1]
            sp = _skel_ref(pc, iterations)
            sg = _skel_ref(gc, iterations) if target_skeleton is None else target_skeleton[b:b + 1, c:c + 1].double()
            row.append(torch.stack([(sp * gc * mc).sum(), (sp * mc).sum(), (sg * pc * mc).sum(), (sg * mc).sum()]))
        sums.append(torch.stack(row))
    sums = torch.stack(sums)
    if batch_dice:
        sums = sums.sum(0, keepdim=True)
    out = []
    for row in sums:
        vals = []
        for hp, sp, hg, sg in row:
            tprec = (hp + smooth_nr) / (sp + smooth_dr) if sp + smooth_dr > 0 else torch.ones((), dtype=torch.float64)
            tsens = (hg + smooth_nr) / (sg + smooth_dr) if sg + smooth_dr > 0 else torch.ones((), dtype=torch.float64)
            vals.append(1 - 2 * tprec * tsens / (tprec + tsens) if tprec + tsens > 0 else torch.ones(()).double())
        out.append(torch.stack(vals))
    out = torch.stack(out)
    if reduction == "mean":
        return out.mean()
    if reduction == "sum":
        return out.sum()
    return out[0] if batch_dice else out


def _problem(mode, seed, S=(7, 8), B=2, Cn=3):
    g = seeded(seed)
    c = 1 if mode == "binary" else Cn
    x = torch.randn(B, c, *S, generator=g, dtype=torch.float64) * 2
    if mode == "multiclass":
        t = torch.randint(0, Cn, (B, *S), generator=g)
    else:
        t = (torch.rand(B, c, *S, generator=g) > 0.6).double()
    mask = torch.rand(B, *S, generator=g) > 0.2
    return x.requires_grad_(), t, mask


CASES = [
    ("multiclass", {}),
    ("multiclass", dict(include_background=True, reduction="none")),
    ("multiclass", dict(ignore_index=2, iterations=2, smooth_nr=0.5)),
    ("multiclass", dict(batch_dice=True, reduction="none", smooth_nr=0.0, smooth_dr=1e-3)),
    ("multiclass", dict(mask=True, iterations=5, reduction="sum")),
    ("binary", dict(mask=True)),
    ("binary", dict(iterations=0, batch_dice=True)),
    ("multilabel", dict(reduction="none")),
    ("multilabel", dict(include_background=False, mask=True, ignore_index=255)),
]


@pytest.mark.parametrize("mode,opts", CASES, ids=[f"{m}-{','.join(o) or 'defaults'}" for m, o in CASES])
def test_loss_against_oracle(mode, opts):
    opts = dict(opts)
    x, t, mask = _problem(mode, len(opts))
    mask = mask if opts.pop("mask", False) else None
    if mode != "multiclass" and opts.get("ignore_index") is not None:
        t = t.clone()
        t[:, :, 0, :3] = opts["ignore_index"]
    got = DF.cldice_loss(x, t, mask, mode=mode, **opts)
    want = _oracle(x, t, mask, mode=mode, **opts)
    torch.testing.assert_close(got, want, **TOL)
    up = torch.randn(got.shape, generator=seeded(9), dtype=torch.float64)
    torch.testing.assert_close(*(torch.autograd.grad(v, x, up)[0] for v in (got, want)), **TOL)


def test_loss_against_oracle_3d_with_given_skeleton():
    x, t, mask = _problem("multiclass", 4, S=(4, 5, 6))
    skel = torch.rand(2, 3, 4, 5, 6, generator=seeded(4), dtype=torch.float64)
    got = DF.cldice_loss(x, t, mask, target_skeleton=skel, iterations=2)
    want = _oracle(x, t, mask, target_skeleton=skel, iterations=2)
    torch.testing.assert_close(got, want, **TOL)
    torch.testing.assert_close(*(torch.autograd.grad(v, x)[0] for v in (got, want)), **TOL)


def test_loss_gradcheck():
    g = seeded(2)
    x = torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 3, (2, 5, 6), generator=g)
    mask = torch.rand(2, 5, 6, generator=g) > 0.3
    for kw in (dict(), dict(batch_dice=True, include_background=True), dict(mode="multilabel", reduction="none")):
        tt = (torch.rand(2, 3, 5, 6, generator=g) > 0.5).double() if kw.get("mode") == "multilabel" else t
        assert torch.autograd.gradcheck(lambda v, tt=tt, kw=kw: DF.cldice_loss(v, tt, mask, iterations=2, **kw), (x,),
                                        eps=1e-6, atol=1e-7, rtol=1e-5)
    xb = torch.randn(1, 1, 4, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    tb = (torch.rand(1, 1, 4, 4, 5, generator=g) > 0.5).double()
    assert torch.autograd.gradcheck(lambda v: DF.dice_cldice_loss(v, tb, mode="binary", iterations=2), (xb,),
                                    eps=1e-6, atol=1e-7, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# hand-worked values


def _line(gap=False, k=2):
    t = torch.zeros(1, 9, 9, dtype=torch.long)
    t[0, 4, 1:8] = 1  # a 7-pixel line of class 1: its own skeleton
    p = F.one_hot(t, 2).movedim(-1, 1).double()
    if gap:
        p[0, :, 4, 4] = torch.tensor([1.0, 0.0])
    return p, t


def test_perfect_prediction_is_zero_exactly():
    p, t = _line()
    assert float(DF.cldice_loss(p, t, from_logits=False)) == 0.0
    assert float(DF.cldice_loss(p, t, from_logits=False, smooth_nr=0.0, smooth_dr=0.0)) == 0.0
    assert float(DF.dice_cldice_loss(p, t, from_logits=False)) == 0.0
    # 3D, binary: a perfect rod
    rod = torch.zeros(1, 1, 5, 5, 5, dtype=torch.float64)
    rod[0, 0, 2, 2, :] = 1
    assert float(DF.cldice_loss(rod, rod, mode="binary", from_logits=False)) == 0.0


def test_a_gap_in_a_thin_line():
    p, t = _line(gap=True)
    # S(p) = the 6 pixels predicted, all on the line: tprec = (6 + 1) / (6 + 1) = 1
    # S(g) = the 7 line pixels, 6 covered:          tsens = (6 + 1) / (7 + 1) = 7/8
    # loss = 1 - 2 (7/8) / (1 + 7/8) = 1 - 14/15 = 1/15
    assert float(DF.cldice_loss(p, t, from_logits=False)) == pytest.approx(1 / 15, abs=1e-14)
    # without smoothing: tsens = 6/7, loss = 1 - (12/7) / (13/7) = 1/13
    got = DF.cldice_loss(p, t, from_logits=False, smooth_nr=0.0, smooth_dr=0.0)
    assert float(got) == pytest.approx(1 / 13, abs=1e-14)
    # the same 1/13 for the background left in (include_background=True adds class 0, whose loss is not 0)
    both = DF.cldice_loss(p, t, from_logits=False, smooth_nr=0.0, smooth_dr=0.0, include_background=True,
                          reduction="none")
    assert both.shape == (1, 2) and float(both[0, 1]) == pytest.approx(1 / 13, abs=1e-14)


def test_empty_cases():
    p, t = _line()
    p0 = p.clone()
    p0[0, 1] = 0.0
    p0[0, 0] = 1.0
    # the target has the line, the prediction nothing: tprec = 1/1, tsens = 1/8 -> loss = 1 - (1/4)/(9/8) = 7/9
    assert float(DF.cldice_loss(p0, t, from_logits=False)) == pytest.approx(7 / 9, abs=1e-14)
    # target empty, prediction the line: tprec = 1/8, tsens = 1 -> 7/9 as well
    assert float(DF.cldice_loss(p, torch.zeros_like(t), from_logits=False)) == pytest.approx(7 / 9, abs=1e-14)
    # both empty: 0, with or without smoothing (a zero denominator reads 1)
    empty = torch.zeros_like(t)
    assert float(DF.cldice_loss(p0, empty, from_logits=False)) == 0.0
    assert float(DF.cldice_loss(p0, empty, from_logits=False, smooth_nr=0.0, smooth_dr=0.0)) == 0.0
    # smooth_nr = 0 and nothing overlaps: both ratios 0, the loss 1, the gradient finite
    x = torch.zeros(1, 2, 9, 9, dtype=torch.float64)
    x[0, 1, 1, 1:8] = 8.0  # a line two rows away from the target's
    x.requires_grad_()
    loss = DF.cldice_loss(x, t, smooth_nr=0.0, smooth_dr=1e-3)
    loss.backward()
    assert 0.99 < float(loss.detach()) <= 1.0 and torch.isfinite(x.grad).all()


# ----------------------------------------------------------------------------------------------
# formats, masks and ignored positions


def test_target_formats_give_the_same_loss():
    x, t, mask = _problem("multiclass", 11)
    want = DF.cldice_loss(x, t, mask)
    onehot = F.one_hot(t, 3).movedim(-1, 1)
    for target in (t[:, None], t.int(), t.double(), onehot, onehot.bool(), onehot.double()):
        torch.testing.assert_close(DF.cldice_loss(x, target, mask), want, rtol=0, atol=1e-12)
    xb, tb, _ = _problem("binary", 12)
    want = DF.cldice_loss(xb, tb, mode="binary")
    torch.testing.assert_close(DF.cldice_loss(xb[:, 0], tb[:, 0], mode="binary"), want, rtol=0, atol=1e-12)
    torch.testing.assert_close(DF.cldice_loss(xb, tb.bool(), mode="binary"), want, rtol=0, atol=1e-12)
    # binary = a one-channel multilabel input
    torch.testing.assert_close(DF.cldice_loss(xb, tb, mode="multilabel"), want, rtol=0, atol=1e-12)


def test_default_background_follows_the_mode():
    x, t, _ = _problem("multiclass", 13)
    assert DF.cldice_loss(x, t, reduction="none").shape == (2, 2)
    assert DF.cldice_loss(x, t, reduction="none", include_background=True).shape == (2, 3)
    xm = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    tm = (torch.rand(2, 3, 6, 6) > 0.5).double()
    assert DF.cldice_loss(xm, tm, mode="multilabel", reduction="none").shape == (2, 3)
    assert DF.cldice_loss(xm, tm, mode="multilabel", reduction="none", include_background=False).shape == (2, 2)
    assert diceloss.ClDiceLoss().include_background is None and C.ClDiceOptions().background is False
    assert C.ClDiceOptions(mode="multilabel").background is True


def test_mask_leaves_the_sums_not_the_pooling():
    x, t, _ = _problem("multiclass", 14, S=(16, 16))
    mask = torch.zeros(2, 16, 16, dtype=torch.bool)
    mask[:, :, :6] = True
    base = DF.cldice_loss(x, t, mask, iterations=1).detach()
    # predictions and labels beyond the stencil's reach of every valid position (k = 1: 4 pixels) change nothing
    x2, t2 = x.detach().clone(), t.clone()
    x2[..., 11:] = torch.randn(x2[..., 11:].shape, generator=seeded(1), dtype=torch.float64)
    t2[..., 11:] = 0
    torch.testing.assert_close(DF.cldice_loss(x2, t2, mask, iterations=1), base, rtol=0, atol=1e-12)
    # ...but a position next to the valid ones does: its pixels take part in the pooling of the valid ones
    x3 = x.detach().clone()
    x3[:, 1, :, 6] += 3.0  # one class: softmax ignores a shift of every class
    assert abs(float(DF.cldice_loss(x3, t, mask, iterations=1)) - float(base)) > 1e-6
    # ignore_index at the masked positions gives the same sums, but not the same target skeleton: ignored
    # labels belong to no class when the target is skeletonised, masked ones keep their class
    ti = t.clone()
    ti[~mask] = 255
    ignored = DF.cldice_loss(x, ti, ignore_index=255, iterations=1)
    torch.testing.assert_close(ignored, _oracle(x, ti, ignore_index=255, iterations=1), **TOL)


def test_ignore_index_of_a_real_class_drops_its_column():
    x, t, _ = _problem("multiclass", 15)
    assert DF.cldice_loss(x, t, ignore_index=1, reduction="none").shape == (2, 1)
    assert DF.cldice_loss(x, t, ignore_index=1, include_background=True, reduction="none").shape == (2, 2)


def test_batch_dice_sums_over_the_batch_first():
    x, t, _ = _problem("multiclass", 16, B=3)
    got = DF.cldice_loss(x, t, batch_dice=True, reduction="none")
    assert got.shape == (2,)
    one = DF.cldice_loss(x[:1], t[:1], batch_dice=True, reduction="none")
    torch.testing.assert_close(one, DF.cldice_loss(x[:1], t[:1], reduction="none")[0], rtol=0, atol=1e-12)


def test_given_target_skeleton():
    x, t, _ = _problem("multiclass", 17, S=(10, 12))
    onehot = F.one_hot(t, 3).movedim(-1, 1).double()
    soft = soft_skeleton(onehot, 3)
    torch.testing.assert_close(DF.cldice_loss(x, t, target_skeleton=soft), DF.cldice_loss(x, t), rtol=0, atol=1e-12)
    # a label map of the exact (scikit-image) skeleton, as diceloss.transforms.tubed_skeleton returns it
    pytest.importorskip("skimage")
    from diceloss.transforms import tubed_skeleton

    labels = torch.zeros(2, 12, 14, dtype=torch.long)
    labels[:, 3:6, 1:13] = 1
    labels[:, 8:11, 2:7] = 2
    xs = torch.randn(2, 3, 12, 14, generator=seeded(3), dtype=torch.float64)
    skel = tubed_skeleton(labels, radius=0)
    dense = F.one_hot(skel, 3).movedim(-1, 1).double()
    dense[:, 0] = 0
    torch.testing.assert_close(DF.cldice_loss(xs, labels, target_skeleton=skel),
                               DF.cldice_loss(xs, labels, target_skeleton=dense), rtol=0, atol=1e-12)
    want = _oracle(xs, labels, target_skeleton=dense)
    torch.testing.assert_close(DF.cldice_loss(xs, labels, target_skeleton=skel), want, **TOL)


# ----------------------------------------------------------------------------------------------
# errors, options, modules


def _2d(mode="multiclass"):
    x, t, _ = _problem(mode, 0)
    return x.detach(), t


def test_input_errors():
    x, t = _2d()
    with pytest.raises(ValueError, match=r"2 or 3 spatial dimensions.*along a line.*\(2, 3, 8\) with 1 spatial"):
        DF.cldice_loss(x[..., 0, :], t[..., 0, :])
    with pytest.raises(ValueError, match=r"2 or 3 spatial dimensions.*\(2, 3, 2, 2, 2, 2\) with 4 spatial"):
        DF.cldice_loss(torch.randn(2, 3, 2, 2, 2, 2), torch.randint(0, 3, (2, 2, 2, 2, 2)))
    with pytest.raises(ValueError, match="multiclass mode needs at least 2 classes"):
        DF.cldice_loss(x[:, :1], t)
    with pytest.raises(ValueError, match=r"class indices must be in \[0, 2\]"):
        DF.cldice_loss(x, t + 1)
    with pytest.raises(ValueError, match=r"from_logits=False expects probabilities in \[0, 1\]"):
        DF.cldice_loss(x, t, from_logits=False)
    with pytest.raises(TypeError, match="input must be a floating tensor"):
        DF.cldice_loss(t, t)
    # the target skeleton
    with pytest.raises(ValueError, match=r"target_skeleton of shape \(2, 3, 7, 8\).*got \(2, 3, 7\)"):
        DF.cldice_loss(x, t, target_skeleton=torch.rand(2, 3, 7))
    with pytest.raises(ValueError, match=r"target_skeleton values must be in \[0, 1\]"):
        DF.cldice_loss(x, t, target_skeleton=torch.rand(2, 3, 7, 8) * 2)
    with pytest.raises(TypeError, match="label map.*must be integer"):
        DF.cldice_loss(x, t, target_skeleton=torch.rand(2, 7, 8))
    with pytest.raises(ValueError, match="cannot hold the skeleton of class 0"):
        DF.cldice_loss(x, t, target_skeleton=t, include_background=True)
    with pytest.raises(ValueError, match=r"target_skeleton labels must be in \[0, 2\]"):
        DF.cldice_loss(x, t, target_skeleton=t + 1)
    with pytest.raises(TypeError, match="target_skeleton must be a torch.Tensor"):
        DF.cldice_loss(x, t, target_skeleton=[[0]])


@pytest.mark.parametrize(
    "kw,error,message",
    [
        (dict(iterations=-1), ValueError, "iterations must be a non-negative int, got -1"),
        (dict(iterations=2.5), TypeError, "iterations must be a non-negative int"),
        (dict(iterations=True), TypeError, "iterations must be a non-negative int"),
        (dict(include_background="False"), TypeError, "include_background must be True or False"),
        (dict(smooth_nr=2.0), ValueError, r"smooth_nr \(2.0\) must not exceed smooth_dr"),
        (dict(smooth_dr=-1.0), ValueError, "smooth_dr must be finite"),
        (dict(mode="softmax"), ValueError, "mode must be one of"),
        (dict(reduction="avg"), ValueError, "reduction must be one of"),
        (dict(ignore_index=1.5), TypeError, "ignore_index must be an int or None"),
        (dict(distributed=True), ValueError, "only batch Dice needs"),
    ],
)
def test_option_errors_before_any_computation(monkeypatch, kw, error, message):
    x, t = _2d()

    def refuse(*args, **kwargs):
        raise AssertionError("computation started before the options were checked")

    monkeypatch.setattr(C, "_skeleton_values", refuse)
    monkeypatch.setattr(C, "prepare", refuse)
    for make in (lambda: diceloss.ClDiceLoss(**kw), lambda: diceloss.DiceClDiceLoss(**kw),
                 lambda: DF.cldice_loss(x, t, **kw), lambda: DF.dice_cldice_loss(x, t, **kw)):
        with pytest.raises(error, match=message):
            make()
    loss = diceloss.ClDiceLoss()
    (name, value), = kw.items()
    before = getattr(loss, name)
    with pytest.raises(error, match=message):
        setattr(loss, name, value)
    assert getattr(loss, name) == before, "a refused value leaves the module as it was"


def test_compound_option_errors_and_the_checks_run_before_the_dice_term(monkeypatch):
    with pytest.raises(ValueError, match="lambda_cldice must be finite"):
        diceloss.DiceClDiceLoss(lambda_cldice=-1.0)
    with pytest.raises(ValueError, match="backend must be one of"):
        DF.dice_cldice_loss(*_2d(), backend="cuda")

    def refuse(*args, **kwargs):
        raise AssertionError("the Dice term ran before clDice's own checks")

    monkeypatch.setattr(C, "run", refuse)
    x, t = _2d()
    with pytest.raises(ValueError, match="2 or 3 spatial dimensions"):
        DF.dice_cldice_loss(x[..., 0, :], t[..., 0, :])
    with pytest.raises(ValueError, match="target_skeleton values"):
        DF.dice_cldice_loss(x, t, target_skeleton=torch.full((2, 3, 7, 8), 2.0))


def test_modules_equal_functions_and_options_read_and_write_through():
    x, t = _2d()
    loss = diceloss.ClDiceLoss(iterations=2)
    torch.testing.assert_close(loss(x, t), DF.cldice_loss(x, t, iterations=2), rtol=0, atol=0)
    loss.iterations, loss.batch_dice, loss.reduction = 4, True, "none"
    torch.testing.assert_close(loss(x, t), DF.cldice_loss(x, t, iterations=4, batch_dice=True, reduction="none"),
                               rtol=0, atol=0)
    assert loss.options == C.ClDiceOptions(iterations=4, batch_dice=True, reduction="none")
    comp = diceloss.DiceClDiceLoss(lambda_dice=0.2, lambda_cldice=0.8, reduction="none")
    got = comp(x, t)
    dice = DF.dice_loss(x, t, include_background=False, smooth_nr=1.0, smooth_dr=1.0, reduction="none")
    cl = DF.cldice_loss(x, t, reduction="none")
    torch.testing.assert_close(got, 0.2 * dice + 0.8 * cl, rtol=0, atol=1e-15)
    torch.testing.assert_close(comp.components["dice"], dice.detach(), rtol=0, atol=0)
    torch.testing.assert_close(comp.components["cldice"], cl.detach(), rtol=0, atol=0)
    comp.lambda_cldice = 0.0
    torch.testing.assert_close(comp(x, t), 0.2 * dice, rtol=0, atol=1e-15)
    torch.testing.assert_close(DF.dice_cldice_loss(x, t, lambda_dice=0.2, lambda_cldice=0.8, reduction="none"),
                               got, rtol=0, atol=0)
    assert "iterations=3" in repr(diceloss.DiceClDiceLoss())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_finite_and_accumulates_in_float32(dtype):
    g = seeded(6)
    x = (torch.randn(2, 3, 12, 12, generator=g) * 3).to(dtype).requires_grad_()
    t = torch.randint(0, 3, (2, 12, 12), generator=g)
    for fn in (DF.cldice_loss, DF.dice_cldice_loss):
        loss = fn(x, t)
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        (grad,) = torch.autograd.grad(loss, x)
        assert grad.dtype == dtype and torch.isfinite(grad).all()
        want = fn(x.detach().double(), t)
        assert abs(float(loss.detach()) - float(want)) < 1e-5


# ----------------------------------------------------------------------------------------------
# MONAI 1.6.1


def _monai():
    return pytest.importorskip("monai.losses")


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


COMPAT_CASES = [
    dict(softmax=True, to_onehot_y=True),
    dict(softmax=True, to_onehot_y=True, include_background=False, iter_=5, reduction="none"),
    dict(sigmoid=True, smooth_nr=0.5, reduction="sum"),
    dict(other_act=torch.tanh, smooth=1e-2),
    dict(sigmoid=True, include_background=False, iter_=0),
]


@pytest.mark.parametrize("kw", COMPAT_CASES, ids=lambda kw: ",".join(kw))
@pytest.mark.parametrize("spatial", [(7, 8), (4, 5, 6)], ids=["2d", "3d"])
def test_compat_equals_monai(kw, spatial):
    from diceloss.compat import monai as CM

    ML = _monai()
    g = seeded(len(kw))
    x = torch.randn(2, 3, *spatial, generator=g, dtype=torch.float64, requires_grad=True)
    t = (torch.randint(0, 3, (2, 1, *spatial), generator=g) if kw.get("to_onehot_y")
         else (torch.rand(2, 3, *spatial, generator=g) > 0.5).double())
    for theirs, ours in ((ML.SoftclDiceLoss, CM.SoftclDiceLoss), (ML.SoftDiceclDiceLoss, CM.SoftDiceclDiceLoss)):
        a, b = theirs(**kw)(x, t), ours(**kw)(x, t)
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, **PEER)
        torch.testing.assert_close(*(torch.autograd.grad(v.sum(), x)[0] for v in (b, a)), **PEER)


def test_compat_single_channel_and_argument_errors():
    from diceloss.compat import monai as CM

    ML = _monai()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    t = (torch.rand(2, 1, 8, 8) > 0.5).double()
    for kw in (dict(sigmoid=True, include_background=False), dict(softmax=True), dict(to_onehot_y=True)):
        with pytest.warns(UserWarning, match="single channel prediction"):
            b = CM.SoftclDiceLoss(**kw)(x, t)
        torch.testing.assert_close(b, _quiet(ML.SoftclDiceLoss(**kw), x, t), **PEER)
    for kw, error in ((dict(iter_=-1), ValueError), (dict(iter_=1.5), TypeError), (dict(smooth=0.0), ValueError),
                      (dict(sigmoid=True, softmax=True), ValueError), (dict(other_act=3), TypeError)):
        for cls in (ML.SoftclDiceLoss, CM.SoftclDiceLoss):
            with pytest.raises(error):
                cls(**kw)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        CM.SoftDiceclDiceLoss(alpha=1.5)
    with pytest.raises(AssertionError, match="different shape"):
        CM.SoftclDiceLoss()(torch.rand(2, 3, 8, 8), torch.rand(2, 2, 8, 8))
    with pytest.raises(ValueError, match="neither 1 nor the same"):
        CM.SoftDiceclDiceLoss()(torch.rand(2, 3, 8, 8), torch.rand(2, 2, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) or \(B, C, D, H, W\)"):
        CM.SoftclDiceLoss()(torch.rand(2, 3, 8), torch.rand(2, 3, 8))


def test_equal_to_monai_where_the_definitions_agree():
    """One class per sample (binary, or two classes without the background), smooth -> 0 in MONAI's harmonic
    mean: MONAI's per-sample ratio is diceloss's per-(sample, class) clDice."""
    ML = _monai()
    g = seeded(21)
    x = torch.randn(3, 1, 9, 10, generator=g, dtype=torch.float64, requires_grad=True)
    t = (torch.rand(3, 1, 9, 10, generator=g) > 0.5).double()
    theirs = ML.SoftclDiceLoss(sigmoid=True, smooth=1e-300, iter_=4, reduction="none")(x, t)
    ours = DF.cldice_loss(x, t, mode="binary", iterations=4, reduction="none")[:, 0]
    torch.testing.assert_close(ours, theirs, **PEER)
    torch.testing.assert_close(*(torch.autograd.grad(v.sum(), x)[0] for v in (ours, theirs)), **PEER)
    # multiclass with two classes, background excluded; MONAI's forward takes (input, target) since 1.5
    x2 = torch.randn(3, 2, 9, 10, generator=g, dtype=torch.float64)
    t2 = torch.randint(0, 2, (3, 1, 9, 10), generator=g)
    kw = dict(softmax=True, to_onehot_y=True, include_background=False, smooth=1e-300)
    theirs = ML.SoftclDiceLoss(**kw)(x2, t2)
    torch.testing.assert_close(DF.cldice_loss(x2, t2), theirs, **PEER)
    # Dice + clDice: MONAI's alpha is lambda_cldice, 1 - alpha lambda_dice
    ours = DF.dice_cldice_loss(x2, t2, lambda_dice=0.7, lambda_cldice=0.3)
    theirs = ML.SoftDiceclDiceLoss(alpha=0.3, **kw)(x2, t2)
    torch.testing.assert_close(ours, theirs, **PEER)


def test_monai_pools_the_classes_of_a_sample():
    """MONAI sums the skeletons over the classes before the ratios: a long well-predicted class hides a short one
    the prediction misses. diceloss averages per-class clDice (reachable as MONAI's number in compat)."""
    ML = _monai()
    t = torch.zeros(1, 1, 16, 16, dtype=torch.long)
    t[0, 0, 3, 1:15] = 1  # a 14-pixel line of class 1, predicted
    t[0, 0, 10, 6:9] = 2  # a 3-pixel line of class 2, missed
    pred = torch.zeros(1, 16, 16, dtype=torch.long)
    pred[0, 3, 1:15] = 1
    p = F.one_hot(pred, 3).movedim(-1, 1).double()
    theirs = float(ML.SoftclDiceLoss(to_onehot_y=True, include_background=False)(p, t))
    per_class = DF.cldice_loss(p, t[:, 0], from_logits=False, reduction="none")[0]
    # class 1 perfect (0); class 2: tprec = 1/1 (nothing predicted), tsens = 1/4 -> 1 - (1/2)/(5/4) = 3/5
    assert per_class.tolist() == pytest.approx([0.0, 3 / 5], abs=1e-14)
    # MONAI: tprec = (14 + 1)/(14 + 1) = 1, tsens = (14 + 1)/(17 + 1) = 5/6 -> 1 - (5/3)/(11/6 + 1e-4)
    assert theirs == pytest.approx(1 - (5 / 3) / (11 / 6 + 1e-4), abs=1e-12)
    assert theirs < 0.1 < float(per_class.mean())


def test_monai_defects_shown():
    from diceloss.compat import monai as CM

    ML = _monai()
    p, t = _line()
    # 1. a perfect prediction does not score 0: the harmonic mean's smooth (1e-4) leaves 1 - 2/(2 + 1e-4)
    theirs = float(ML.SoftclDiceLoss(to_onehot_y=True, include_background=False)(p, t[:, None]))
    assert theirs == pytest.approx(1 - 2 / (2 + 1e-4), abs=1e-15) and theirs > 0
    assert float(DF.cldice_loss(p, t, from_logits=False)) == 0.0
    # 2. softmax=True on one channel only warns, and the raw logits are skeletonised (values outside [0, 1]
    #    pass through; the loss can leave [0, 1]); diceloss refuses a one-class multiclass input
    x = torch.randn(2, 1, 8, 8, generator=seeded(2), dtype=torch.float64) * 4
    tb = (torch.rand(2, 1, 8, 8, generator=seeded(3)) > 0.5).double()
    with pytest.warns(UserWarning, match="single channel prediction, `softmax=True` ignored"):
        soft = ML.SoftclDiceLoss(softmax=True)(x, tb)
    torch.testing.assert_close(soft, ML.SoftclDiceLoss()(x, tb), rtol=0, atol=0)
    with pytest.raises(ValueError, match="mode='binary'"):
        DF.cldice_loss(x, tb[:, 0].long())
    # 3. SoftDiceclDiceLoss(reduction="none") adds a (B, C, 1, 1) Dice to a (B,) clDice: a (B, C, 1, B) tensor
    xs = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    ts = torch.randint(0, 3, (2, 1, 8, 8))
    shape = ML.SoftDiceclDiceLoss(softmax=True, to_onehot_y=True, reduction="none")(xs, ts).shape
    ours = CM.SoftDiceclDiceLoss(softmax=True, to_onehot_y=True, reduction="none")
    assert shape == (2, 3, 1, 2) == ours(xs, ts).shape
    assert DF.dice_cldice_loss(xs, ts, reduction="none", include_background=True).shape == (2, 3)
    # 4. the argument order flipped in 1.5 (forward(y_true, y_pred) -> forward(input, target)): a call written for
    #    1.4 with the target first still runs and, with an activation, applies it to the target (a wrong number);
    #    the old keyword names, although marked deprecated, are refused
    xl = torch.randn(2, 1, 8, 8, generator=seeded(4), dtype=torch.float64)
    right = ML.SoftclDiceLoss(sigmoid=True)(xl, tb)
    swapped = ML.SoftclDiceLoss(sigmoid=True)(tb, xl)
    assert abs(float(right) - float(swapped)) > 1e-3
    with pytest.raises(TypeError, match="missing a required argument: 'input'"):
        ML.SoftclDiceLoss(sigmoid=True)(y_pred=xl, y_true=tb)
    # 5. fixed in 1.5 and kept here as a check: MONAI <= 1.4 always dropped channel 0, so a one-channel input
    #    scored exactly 0 (Project-MONAI/MONAI#8239), and pooled the batch; 1.6.1 keeps the channel (with a
    #    warning for include_background=False) and gives one value per sample
    one = _quiet(ML.SoftclDiceLoss(sigmoid=True, include_background=False, smooth=1e-300, reduction="none"), x, tb)
    assert one.shape == (2,) and bool((one > 0).all())
    torch.testing.assert_close(one, DF.cldice_loss(x, tb, mode="binary", reduction="none")[:, 0], **PEER)


# ----------------------------------------------------------------------------------------------
# torch.distributed: batch clDice over two ranks equals one process on the union of the batches


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data():
    g = torch.Generator().manual_seed(8)
    return torch.randn(5, 3, 8, 9, generator=g, dtype=torch.float64), torch.randint(0, 3, (5, 8, 9), generator=g)


def _rank(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        x, t = _data()
        part = slice(0, 2) if rank == 0 else slice(2, 5)  # unequal local batches
        xr = x[part].clone().requires_grad_()
        loss = diceloss.DiceClDiceLoss(batch_dice=True, distributed=True)(xr, t[part])
        loss.backward()
        torch.save({"loss": loss.detach(), "grad": xr.grad}, os.path.join(out, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_distributed_batch_cldice_equals_one_process(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_rank, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    x, t = _data()
    x.requires_grad_()
    want = diceloss.DiceClDiceLoss(batch_dice=True)(x, t)
    want.backward()
    r0, r1 = (torch.load(tmp_path / f"{r}.pt") for r in (0, 1))
    for r in (r0, r1):
        torch.testing.assert_close(r["loss"], want.detach(), **TOL)
    # every rank's loss is the global one: DDP's mean of the ranks' parameter gradients is the 1-process gradient
    torch.testing.assert_close(torch.cat([r0["grad"], r1["grad"]]) / 2, x.grad, **TOL)


def test_value_checks_off_still_checks_shapes():
    x, t = _2d()
    with value_checks(False):
        with pytest.raises(ValueError, match="target_skeleton of shape"):
            DF.cldice_loss(x, t, target_skeleton=torch.rand(2, 3, 7))
        assert torch.isfinite(DF.cldice_loss(x, t))
