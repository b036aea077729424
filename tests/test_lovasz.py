"""diceloss.lovasz: the Lovász loss against its plain reference, by hand, under gradcheck, and against its peers.

* oracle: the fast path (packed-key radix sort in float32, a stable segmented sort in float64, closed-form Lovász
  weights, gradient from the forward pass) equals :func:`diceloss.lovasz._reference` (a Python loop over groups
  and classes, the authors' formula, plain autograd) to 1e-10 in float64, values and gradients, over modes,
  options, masks, ignore_index, 1D-3D shapes and chunk boundaries;
* the packed-key sort gives the same permutation as a stable ``torch.sort``, ties and odd bit patterns included;
* hand-worked values with the arithmetic in comments; gradcheck at points with distinct errors;
* peers: segmentation_models_pytorch 0.6.0 (``LovaszLoss``, and ``diceloss.compat.smp.LovaszLoss`` against it),
  kornia 0.9.0 (``lovasz_softmax_loss``, ``lovasz_hinge_loss``); each peer bug found is shown by a test that
  documents it. The authors' own file (bermanmaxim/LovaszSoftmax) is compared in
  ``tests/peers/diceloss_peer_lovasz.py``, run by ``make peer-tests LOVASZ_SRC=...``.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import random
import sys

import pytest
import torch
from conftest import seeded, value_checks

import diceloss
import diceloss.lovasz as L
from diceloss import LovaszLoss
from diceloss.compat import smp as compat_smp
from diceloss.functional import lovasz_loss

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = dict(rtol=1e-10, atol=1e-12)
MODES = ("multiclass", "binary", "multilabel")


def _inputs(mode, B, C, S, *, from_logits=True, dtype=torch.float64, seed=0, target="index", ignore=None):
    """Random logits (or probabilities) and a hard target; ``ignore`` marks ~20 % of the target with that value."""
    g = seeded(seed)
    c = 1 if mode == "binary" else C
    x = torch.randn(B, c, *S, generator=g, dtype=torch.float64) * 2
    if not from_logits:
        x = torch.softmax(x, 1) if mode == "multiclass" else torch.sigmoid(x)
    if mode == "multiclass":
        t = torch.randint(0, C, (B, *S), generator=g)
        if target == "onehot":
            t = torch.nn.functional.one_hot(t, C).movedim(-1, 1).to(torch.float64)
    else:
        t = (torch.rand(B, c, *S, generator=g) > 0.6).to(torch.float64)
    if ignore is not None:
        t[torch.rand(t.shape, generator=g) > 0.8] = ignore
    return x.to(dtype), t


def _both(x, t, mask=None, weight=None, **kw):
    """Values and input gradients of the fast path and of the reference (``weight``: a random cotangent)."""
    out = []
    for fn in (lovasz_loss, L._reference):
        xi = x.detach().clone().requires_grad_(True)
        v = fn(xi, t, mask, **kw)
        w = torch.ones_like(v) if weight is None else weight
        (v * w).sum().backward()
        out.append((v.detach(), xi.grad))
    return out


def _random_case(rng: random.Random):
    mode = rng.choice(MODES)
    ndim = rng.choice([1, 2, 3])
    S = tuple(rng.randint(2, 5) for _ in range(ndim))
    kw = dict(
        mode=mode,
        per_image=rng.random() < 0.5,
        classes=rng.choice(["present", "all"]),
        from_logits=rng.random() < 0.6,
        reduction=rng.choice(["mean", "sum", "none"]),
        include_background=rng.random() < 0.7,
    )
    ignore = None
    if rng.random() < 0.4:
        ignore = rng.choice([255, -1, 1]) if mode == "multiclass" else 255
        kw["ignore_index"] = ignore
    return mode, rng.randint(1, 3), rng.randint(2, 4), S, kw, ignore, rng.random() < 0.3


# ----------------------------------------------------------------------------------------------
# the fast path against the reference


@pytest.mark.parametrize("seed", range(40))
def test_fast_path_equals_reference_float64(seed):
    rng = random.Random(seed)
    mode, B, C, S, kw, ignore, with_mask = _random_case(rng)
    x, t = _inputs(mode, B, C, S, from_logits=kw["from_logits"], seed=seed, ignore=ignore)
    mask = (torch.rand(B, *S, generator=seeded(seed + 1000)) > 0.3) if with_mask else None
    with value_checks(False):  # the reference runs the same checks; valid by construction
        (v, g), (v_ref, g_ref) = _both(x, t, mask, **kw)
    assert v.shape == v_ref.shape
    torch.testing.assert_close(v, v_ref, **TOL)
    torch.testing.assert_close(g, g_ref, **TOL)


@pytest.mark.parametrize("mode", MODES)
def test_fast_path_equals_reference_with_a_random_cotangent(mode):
    x, t = _inputs(mode, 3, 4, (5, 6), seed=1)
    w = torch.rand(3, generator=seeded(2), dtype=torch.float64)
    (v, g), (v_ref, g_ref) = _both(x, t, per_image=True, reduction="none", mode=mode, weight=w)
    torch.testing.assert_close(v, v_ref, **TOL)
    torch.testing.assert_close(g, g_ref, **TOL)


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("elements", [1, 2 * 3 * 10, 2 * 2 * 3 * 10 - 1, 5 * 2 * 3 * 10])
def test_chunk_boundaries(monkeypatch, elements, per_image):
    # B * N = 60 elements per class: 1 class per chunk, 1, 2 (one short), every class (5 classes)
    x, t = _inputs("multiclass", 2, 5, (3, 10), seed=3, ignore=255)
    mask = torch.rand(2, 3, 10, generator=seeded(4)) > 0.2
    kw = dict(mode="multiclass", per_image=per_image, classes="all", ignore_index=255)
    want = _both(x, t, mask, **kw)[1]
    for dtype in (torch.float64, torch.float32):
        monkeypatch.setattr(L, "_CHUNK_ELEMENTS", elements)
        xi = x.detach().to(dtype).requires_grad_(True)
        v = lovasz_loss(xi, t, mask, **kw)
        v.backward()
        tol = TOL if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(v.double(), want[0], **tol)
        torch.testing.assert_close(xi.grad.double(), want[1], **tol)


def test_classes_absent_everywhere_are_skipped_without_changing_the_result():
    # classes 2 and 3 absent from the whole batch: with "present" the fast path does not sort them at all
    x, t = _inputs("multiclass", 2, 4, (4, 4), seed=5)
    t = t % 2
    for classes in ("present", "all"):
        (v, g), (v_ref, g_ref) = _both(x, t, classes=classes)
        torch.testing.assert_close(v, v_ref, **TOL)
        torch.testing.assert_close(g, g_ref, **TOL)


@pytest.mark.parametrize("mode", MODES)
def test_float32_path_equals_reference_at_exact_errors(mode):
    # errors are exact in float32 when the inputs are dyadic with few bits: probabilities k / 2**12 (distinct)
    # and margins k / 2**8; so the packed-key sort sees the errors of the float64 reference, and only the
    # float32 sums and weights round
    g = seeded(6)
    B, C, N = 2, (1 if mode == "binary" else 3), 300
    k = torch.randperm(4096, generator=g)[: B * C * N].reshape(B, C, N).double()
    t = torch.randint(0, C, (B, N), generator=g) if mode == "multiclass" else (torch.rand(B, C, N, generator=g) > 0.5)
    t = t if mode == "multiclass" else t.double()
    for from_logits, x in ((False, k / 4096), (True, (k - 2048) / 256)):
        if mode == "multiclass" and from_logits:
            continue  # the softmax rounds differently in float32
        for per_image in (False, True):
            kw = dict(mode=mode, from_logits=from_logits, per_image=per_image, classes="all")
            got = lovasz_loss(x.float().requires_grad_(True), t, **kw)
            want = L._reference(x, t, **kw)
            assert got.dtype == torch.float32
            assert abs(float(got.detach()) - float(want)) < 2e-7 * max(1.0, abs(float(want)))


def test_packed_sort_equals_stable_torch_sort_with_ties_and_odd_bits():
    g = seeded(7)
    S, M = 5, 200
    e = (torch.randint(0, 6, (S, M), generator=g).float() / 4)  # many ties
    e[0, :3] = torch.tensor([float("inf"), 0.0, 1e-40])  # inf, zero, a subnormal
    values, perm = torch.sort(e, dim=-1, descending=True, stable=True)
    want = (perm + (torch.arange(S) * M).unsqueeze(1)).view(-1)
    for got_e, got_perm in (L._sort_packed(e.clone()), L._sort_generic(e.double())):
        assert torch.equal(got_perm, want)
        assert torch.equal(got_e.float(), values)
    # one segment: the int32 keys, decoded back into the errors (the input is consumed)
    e1, p1 = L._sort_packed(e[:1].clone())
    assert torch.equal(p1, perm[0]) and torch.equal(e1, values[:1])
    # several segments: -0.0 stays inside its segment (its bit pattern is negative as an int32)
    e2 = e.clone()
    e2[1, 10] = -0.0
    perm2 = L._sort_packed(e2)[1].view(S, M)
    assert torch.equal(perm2.div(M, rounding_mode="floor"), torch.arange(S).unsqueeze(1).expand(S, M))
    e3 = e[1:2].clone()
    e3[0, 10] = -0.0
    # one segment: -0.0 (all bits but the sign's clear) sorts after every zero, which changes no loss: an
    # element after a zero error has a zero error, adds nothing and gets no gradient
    want3 = torch.sort(e3.abs(), dim=-1, descending=True, stable=True)[0]
    got3, got_perm3 = L._sort_packed(e3.clone())
    assert torch.equal(got3, want3) and int(got_perm3[-1]) == 10


def test_closed_form_weights_equal_the_authors_differences_in_float64():
    g = seeded(8)
    fg = torch.rand(6, 50, generator=g) > 0.6
    fg[1] = False  # a row without foreground: weight 1 at the top, then 0
    fg[2] = True
    fg[3, 0], fg[3, 1:] = True, False  # one foreground element, first
    got = L._lovasz_weights(fg, torch.float64)
    want = torch.stack([L._jaccard_grad(row.double()) for row in fg])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
    assert got[1, 0] == 1 and (got[1, 1:] == 0).all()


def test_closed_form_weights_keep_float32_accuracy_where_the_differences_cancel():
    # the peers' formula (the authors' lovasz_grad, also in SMP and kornia): Jaccard of every prefix, then first
    # differences, in float32. On a segment of 2**19 elements single weights come out orders of magnitude off
    # where they are small (1 - I/U of neighbours agreeing to 7 digits); the closed form is one rounding away
    g = seeded(9)
    n = 1 << 19
    fg = torch.rand(1, n, generator=g) > 0.7
    exact = L._lovasz_weights(fg, torch.float64)[0]
    ours = L._lovasz_weights(fg, torch.float32)[0].double()
    theirs = L._jaccard_grad(fg[0].float()).double()
    nz = exact > 0
    rel = lambda w: float(((w - exact).abs()[nz] / exact[nz]).max())  # noqa: E731
    assert rel(ours) < 1e-6
    assert rel(theirs) > 1.0  # documented: a weight off by more than 100 %


# ----------------------------------------------------------------------------------------------
# gradcheck


GRADCHECK = [
    dict(mode="multiclass"),
    dict(mode="multiclass", per_image=True, classes="all", include_background=False),
    dict(mode="multiclass", from_logits=False, ignore_index=255, mask=True),
    dict(mode="binary", per_image=True),
    dict(mode="binary", from_logits=False, ignore_index=255),
    dict(mode="multilabel", classes="all", reduction="none", per_image=True, mask=True),
    dict(mode="multilabel", from_logits=False, reduction="sum"),
]


@pytest.mark.parametrize("opts", GRADCHECK, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_gradcheck(opts):
    opts = dict(opts)
    use_mask = opts.pop("mask", False)
    mode = opts["mode"]
    x, t = _inputs(mode, 2, 3, (7,), seed=10, ignore=opts.get("ignore_index"))
    if not opts.get("from_logits", True):
        # probabilities away from 0 and 1 (and from p = y), so the finite differences stay off the kinks
        x = 0.1 + 0.8 * torch.rand(x.shape, generator=seeded(11), dtype=torch.float64)
        if mode == "multiclass":
            x = x / x.sum(1, keepdim=True)
    mask = torch.rand(2, 7, generator=seeded(12)) > 0.3 if use_mask else None
    x.requires_grad_(True)
    with value_checks(False):  # a probability input perturbed by eps leaves [0, 1] / the simplex
        assert torch.autograd.gradcheck(
            lambda z: lovasz_loss(z, t, mask, **opts), (x,), eps=1e-6, atol=1e-7, rtol=1e-5
        )


# ----------------------------------------------------------------------------------------------
# hand-worked values

# the 4-pixel case: probabilities p of the foreground, target y
P4 = [0.9, 0.2, 0.6, 0.3]
Y4 = [1.0, 0.0, 0.0, 1.0]
# errors |y - p| = [0.1, 0.2, 0.6, 0.7]; sorted decreasing: 0.7 (fg), 0.6 (bg), 0.2 (bg), 0.1 (fg); n = 2 fg.
# Jaccard loss of each prefix, 1 - I/U with I = fg not yet covered, U = n + |prefix| - covered fg:
#   {0.7}: I = 1, U = 2 -> 1/2;  +0.6: I = 1, U = 3 -> 2/3;  +0.2: I = 1, U = 4 -> 3/4;  +0.1: I = 0 -> 1
# weights (differences): 1/2, 1/6, 1/12, 1/4; loss = 0.7/2 + 0.6/6 + 0.2/12 + 0.1/4 = 59/120
LOSS4 = 59 / 120


def test_four_pixels_lovasz_sigmoid_by_hand():
    x = torch.tensor([[P4]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[Y4]], dtype=torch.float64)
    loss = lovasz_loss(x, y, mode="binary", from_logits=False)
    assert float(loss.detach()) == pytest.approx(LOSS4, abs=1e-15)
    loss.backward()
    # d loss / d p = sign(p - y) * weight of the element's rank: -1/4, +1/12, +1/6, -1/2
    torch.testing.assert_close(x.grad[0, 0], torch.tensor([-1 / 4, 1 / 12, 1 / 6, -1 / 2], dtype=torch.float64))


def test_four_pixels_hinge_on_margins_2p_minus_1_is_twice_the_sigmoid_variant():
    # hinge errors 1 - z (2y - 1) at z = 2p - 1 are 2 |y - p|: 0.2, 0.4, 1.2, 1.4 -> twice 59/120
    z = 2 * torch.tensor([[P4]], dtype=torch.float64) - 1
    y = torch.tensor([[Y4]], dtype=torch.float64)
    assert float(lovasz_loss(z, y, mode="binary")) == pytest.approx(2 * LOSS4, abs=1e-15)


def test_four_pixels_lovasz_softmax_by_hand():
    # two classes, probabilities of class 1 = P4, labels = Y4. Class 1 is the case above: 59/120.
    # Class 0: p0 = 1 - P4, y0 = 1 - Y4, the same errors [0.1, 0.2, 0.6, 0.7] with the foreground at 0.2 and 0.6;
    # sorted 0.7 (bg), 0.6 (fg), 0.2 (fg), 0.1 (bg), n = 2: Jaccard 1/3, 2/3, 1, 1 -> weights 1/3, 1/3, 1/3, 0;
    # loss (0.7 + 0.6 + 0.2) / 3 = 1/2. Mean over the two present classes: (1/2 + 59/120) / 2 = 119/240
    p1 = torch.tensor(P4, dtype=torch.float64)
    x = torch.stack([1 - p1, p1]).unsqueeze(0)
    t = torch.tensor([Y4]).long()
    assert float(lovasz_loss(x, t, from_logits=False)) == pytest.approx(119 / 240, abs=1e-15)
    # from logits: the softmax of log-probabilities is the same point
    assert float(lovasz_loss(x.log(), t)) == pytest.approx(119 / 240, abs=1e-15)


def test_perfect_prediction_gives_zero():
    g = seeded(13)
    t = torch.randint(0, 3, (2, 5, 5), generator=g)
    onehot = torch.nn.functional.one_hot(t, 3).movedim(-1, 1).double()
    x = onehot.clone().requires_grad_(True)
    loss = lovasz_loss(x, t, from_logits=False, per_image=True, classes="all")
    loss.backward()
    assert float(loss.detach()) == 0.0 and (x.grad == 0).all()
    # the hinge is 0 once every margin is at least 1 on the right side
    y = (torch.rand(2, 1, 5, 5, generator=g) > 0.5).double()
    assert float(lovasz_loss(3 * (2 * y - 1), y, mode="binary")) == 0.0
    assert float(lovasz_loss(y, y, mode="multilabel", from_logits=False, classes="all")) == 0.0


def test_empty_target_scores_the_largest_error():
    # no foreground: the Jaccard loss of any non-empty mistake set is 1, so the Lovász extension is max(e),
    # and only the largest error gets a gradient
    x = torch.tensor([[[0.3, 0.1, 0.2]]], dtype=torch.float64, requires_grad=True)
    loss = lovasz_loss(x, torch.zeros(1, 1, 3, dtype=torch.float64), mode="binary", from_logits=False)
    assert float(loss.detach()) == pytest.approx(0.3, abs=1e-15)
    loss.backward()
    assert x.grad.tolist() == [[[1.0, 0.0, 0.0]]]


def test_present_and_all_by_hand():
    # class 2 absent: "present" averages classes 0 and 1; "all" adds class 2 at its largest probability
    x = torch.tensor([[[0.7, 0.2], [0.2, 0.5], [0.1, 0.3]]], dtype=torch.float64)
    t = torch.tensor([[0, 1]])
    # class 0: errors 0.3 (fg), 0.2 (bg): weights 1/1, then bg with I = 0 -> 0; loss 0.3
    # class 1: errors 0.2 (bg), 0.5 (fg): sorted 0.5 fg (1/1), 0.2 bg (0): loss 0.5
    # class 2: no foreground: max error 0.3
    assert float(lovasz_loss(x, t, from_logits=False)) == pytest.approx((0.3 + 0.5) / 2, abs=1e-15)
    assert float(lovasz_loss(x, t, from_logits=False, classes="all")) == pytest.approx((0.3 + 0.5 + 0.3) / 3)
    assert float(lovasz_loss(x, t, from_logits=False, include_background=False)) == pytest.approx(0.5)


def test_every_position_ignored_gives_zero_with_zero_gradient():
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    t = torch.full((2, 4), 255)
    for per_image in (False, True):
        for classes in ("present", "all"):
            loss = lovasz_loss(x, t, ignore_index=255, per_image=per_image, classes=classes)
            (g,) = torch.autograd.grad(loss, x)
            assert float(loss.detach()) == 0.0 and (g == 0).all()


def test_per_image_means_over_samples_and_counts_an_empty_one():
    x, t = _inputs("multiclass", 3, 3, (4, 4), seed=14)
    mask = torch.ones(3, 4, 4, dtype=torch.bool)
    mask[1] = False  # sample 1 has nothing to score: 0, still counted
    per = lovasz_loss(x, t, mask, per_image=True, reduction="none")
    assert per.shape == (3,) and float(per[1]) == 0.0
    for b in (0, 2):
        torch.testing.assert_close(per[b], lovasz_loss(x[b : b + 1], t[b : b + 1]), **TOL)
    torch.testing.assert_close(lovasz_loss(x, t, mask, per_image=True), per.mean(), **TOL)
    torch.testing.assert_close(lovasz_loss(x, t, mask, per_image=True, reduction="sum"), per.sum(), **TOL)


def test_reduction_shapes():
    x, t = _inputs("multiclass", 3, 3, (4,), seed=15)
    assert lovasz_loss(x, t, reduction="none").shape == ()
    assert lovasz_loss(x, t, reduction="none", per_image=True).shape == (3,)
    assert lovasz_loss(x, t, reduction="sum").shape == ()
    # one group: mean, sum and none are the same number
    v = lovasz_loss(x, t)
    assert torch.equal(v, lovasz_loss(x, t, reduction="sum")) and torch.equal(v, lovasz_loss(x, t, reduction="none"))


def test_ignore_index_equals_the_loss_without_those_positions():
    x, t = _inputs("multiclass", 1, 3, (12,), seed=16)
    t[0, :4] = 255
    torch.testing.assert_close(lovasz_loss(x, t, ignore_index=255), lovasz_loss(x[..., 4:], t[:, 4:]), **TOL)
    # a real class as ignore_index: its positions leave every class, and the class is not scored (the softmax
    # still runs over every class, so the cropped input keeps the class's channel)
    t2 = t.clone()
    t2[0, :4] = 1
    keep = t2[0] != 1
    got = lovasz_loss(x, t2, ignore_index=1, classes="all")
    per_class = []
    p = torch.softmax(x, 1)[..., keep]
    for c in (0, 2):
        one = torch.stack([1 - p[:, c], p[:, c]], 1)  # a two-class problem with the same errors for class c
        per_class.append(L._reference(one, (t2[:, keep] == c).long(), from_logits=False, include_background=False))
    torch.testing.assert_close(got, torch.stack(per_class).mean(), **TOL)


def test_multilabel_scores_each_channel_as_a_class():
    x, t = _inputs("multilabel", 2, 3, (6,), seed=17)
    per_channel = [lovasz_loss(x[:, c : c + 1], t[:, c : c + 1], mode="binary") for c in range(3)]
    torch.testing.assert_close(lovasz_loss(x, t, mode="multilabel", classes="all"), torch.stack(per_channel).mean())


def test_target_formats_agree():
    x, t = _inputs("multiclass", 2, 3, (4, 5), seed=18)
    onehot = torch.nn.functional.one_hot(t, 3).movedim(-1, 1)
    want = lovasz_loss(x, t)
    for tt in (t[:, None], t.int(), t.double(), onehot, onehot.bool(), onehot.double()):
        torch.testing.assert_close(lovasz_loss(x, tt), want, **TOL)
    # binary: (B, *S) and (B, 1, *S), float / bool / int targets
    xb, yb = x[:, :1], (t[:, None] == 1)
    want = lovasz_loss(xb, yb.double(), mode="binary")
    for a, b in ((xb[:, 0], yb[:, 0]), (xb, yb), (xb, yb.long()), (xb[:, 0], yb[:, 0].float())):
        torch.testing.assert_close(lovasz_loss(a, b, mode="binary"), want, **TOL)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_are_finite_and_close_to_float32(dtype):
    x, t = _inputs("multiclass", 2, 4, (16, 16), seed=19, dtype=torch.float32)
    xh = x.to(dtype).requires_grad_(True)
    loss = lovasz_loss(xh, t, per_image=True)
    assert loss.dtype == torch.float32  # accumulated (and returned) in float32
    loss.backward()
    assert xh.grad.dtype == dtype and torch.isfinite(xh.grad).all()
    # the same rounded inputs in float32: the same number up to float32 sums
    x32 = xh.detach().float().requires_grad_(True)
    ref = lovasz_loss(x32, t, per_image=True)
    ref.backward()
    assert abs(float(loss.detach()) - float(ref.detach())) < 1e-6
    torch.testing.assert_close(xh.grad.float(), x32.grad, rtol=1e-2, atol=1e-4 if dtype == torch.bfloat16 else 1e-6)
    # binary hinge too
    xb, yb = _inputs("binary", 2, 1, (16, 16), seed=20, dtype=torch.float32)
    got = lovasz_loss(xb.to(dtype), yb, mode="binary")
    assert torch.isfinite(got) and abs(float(got) - float(lovasz_loss(xb.to(dtype).float(), yb, mode="binary"))) < 1e-6


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("per_image", [False, True])
def test_inputs_are_left_as_they_are_and_the_graph_can_be_kept(mode, per_image):
    # the fast path works in place on its own copies only; the backward does not consume the saved gradient
    for from_logits in (True, False):
        x, t = _inputs(mode, 2, 3, (5,), seed=24, from_logits=from_logits, ignore=255)
        x0, t0 = x.clone(), t.clone()
        xi = x.requires_grad_(True)
        loss = lovasz_loss(xi, t, mode=mode, per_image=per_image, from_logits=from_logits, ignore_index=255)
        (g1,) = torch.autograd.grad(loss, xi, retain_graph=True)
        (g2,) = torch.autograd.grad(loss, xi)
        assert torch.equal(x.detach(), x0) and torch.equal(t, t0)
        assert torch.equal(g1, g2)


def test_no_gradient_kept_without_requires_grad():
    x, t = _inputs("multiclass", 2, 3, (4,), seed=21)
    v = lovasz_loss(x, t)
    assert v.grad_fn is None and not v.requires_grad
    with torch.no_grad():
        assert not lovasz_loss(x.requires_grad_(True), t).requires_grad


# ----------------------------------------------------------------------------------------------
# options and input errors


@pytest.mark.parametrize(
    "name,value,error,message",
    [
        ("mode", "softmax", ValueError, "mode must be one of"),
        ("classes", "some", ValueError, "classes must be one of 'present', 'all'"),
        ("classes", [0, 1], ValueError, "classes must be one of"),
        ("per_image", "False", TypeError, "per_image must be True or False"),
        ("from_logits", 1, TypeError, "from_logits must be True or False"),
        ("include_background", None, TypeError, "include_background must be True or False"),
        ("ignore_index", 1.5, TypeError, "ignore_index must be an int or None"),
        ("reduction", "avg", ValueError, "reduction must be one of"),
    ],
)
def test_bad_options_raise_in_the_function_the_constructor_and_on_set(name, value, error, message):
    x, t = _inputs("multiclass", 1, 3, (4,))
    with pytest.raises(error, match=message):
        lovasz_loss(x, t, **{name: value})
    with pytest.raises(error, match=message):
        LovaszLoss(**{name: value})
    loss = LovaszLoss()
    before = loss.options
    with pytest.raises(error, match=message):
        setattr(loss, name, value)
    assert loss.options is before, "a refused value leaves the module as it was"


def test_options_set_after_construction_equal_the_function():
    x, t = _inputs("multiclass", 2, 3, (5,), seed=22)
    loss = LovaszLoss()
    loss.per_image = True
    loss.classes = "all"
    loss.include_background = False
    assert loss.per_image and loss.classes == "all"
    torch.testing.assert_close(
        loss(x, t), lovasz_loss(x, t, per_image=True, classes="all", include_background=False), rtol=0, atol=0
    )
    assert "per_image=True" in repr(loss)
    assert isinstance(loss.options, L.LovaszOptions)


def test_module_has_no_options_it_cannot_honour():
    for name in ("batch_dice", "smooth_nr", "weight", "backend"):
        with pytest.raises(TypeError):
            LovaszLoss(**{name: None})


@pytest.fixture
def no_compute(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the loss was computed before the inputs were checked")

    monkeypatch.setattr(L, "_compute", refuse)


def test_soft_targets_are_refused_before_computation(no_compute, auto_value_checks):
    x, t = _inputs("multiclass", 2, 3, (4,), seed=23)
    soft = torch.softmax(torch.randn(2, 3, 4, dtype=torch.float64), 1)
    with pytest.raises(ValueError, match=r"hard targets \(0 or 1\).*got values such as"):
        lovasz_loss(x, soft)
    with pytest.raises(ValueError, match="hard targets"):
        lovasz_loss(x, torch.full((2, 3, 4), 0.5), mode="multilabel")
    with pytest.raises(ValueError, match="hard targets"):
        lovasz_loss(x[:, :1], torch.full((2, 1, 4), 0.25), mode="binary")
    # the ignore value and masked-out positions are not targets
    y = torch.full((2, 1, 4), 255.0)
    y[:, :, 0] = 1
    with pytest.raises(AssertionError, match="computed before"):
        lovasz_loss(x[:, :1], y, mode="binary", ignore_index=255)


def test_tensor_errors_are_those_of_the_other_losses_and_come_first(no_compute, auto_value_checks):
    x, t = _inputs("multiclass", 2, 3, (4, 5))
    for fn in (lovasz_loss, diceloss.functional.dice_loss):
        with pytest.raises(ValueError, match=r"spatial shape of target \(4, 4\) differs"):
            fn(x, t[..., :4])
        with pytest.raises(ValueError, match=r"class indices must be in \[0, 2\].*got \[7\]"):
            fn(x, torch.full_like(t, 7))
        with pytest.raises(ValueError, match="probabilities in"):
            fn(x, t, from_logits=False)
        with pytest.raises(TypeError, match="input must be a floating tensor"):
            fn(t, t)
        with pytest.raises(ValueError, match=r"mask must have shape"):
            fn(x, t, torch.ones(2, 4, dtype=torch.bool))
        with pytest.raises(ValueError, match="multiclass mode needs at least 2 classes"):
            fn(x[:, :1], t)


def test_empty_spatial_size_gives_zero():
    x = torch.randn(2, 3, 0, requires_grad=True)
    t = torch.zeros(2, 0, dtype=torch.long)
    loss = lovasz_loss(x, t, classes="all")
    loss.backward()
    assert float(loss.detach()) == 0.0 and x.grad.shape == x.shape


# ----------------------------------------------------------------------------------------------
# peers: segmentation_models_pytorch 0.6.0 and kornia 0.9.0


def _load_smp_losses():
    spec = importlib.util.find_spec("segmentation_models_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    losses_dir = os.path.join(list(spec.submodule_search_locations)[0], "losses")
    name = "_smp_losses_standalone"  # the same module object as tests/test_compat.py's
    if name in sys.modules:
        return sys.modules[name]
    lspec = importlib.util.spec_from_file_location(
        name, os.path.join(losses_dir, "__init__.py"), submodule_search_locations=[losses_dir]
    )
    module = importlib.util.module_from_spec(lspec)
    sys.modules[name] = module
    lspec.loader.exec_module(module)
    return module


smp_losses = _load_smp_losses()
needs_smp = pytest.mark.skipif(
    smp_losses is None, reason="segmentation_models_pytorch 0.6.0 is not installed (make test installs it)"
)
kornia_losses = pytest.importorskip("kornia.losses") if importlib.util.find_spec("kornia") else None
needs_kornia = pytest.mark.skipif(
    kornia_losses is None, reason="kornia 0.9.0 is not installed (the 'test' extra has it)"
)

# SMP's Lovász runs in float32 only (see test_smp_lovasz_fails_in_float64): its comparisons are in float32,
# where the loss of these sizes agrees to float32 rounding
PEER32 = dict(rtol=0, atol=2e-6)


def _smp_case(mode, per_image, ignore, seed):
    g = seeded(seed)
    B, C = 3, (1 if mode == "binary" else 4)
    x = torch.randn(B, C, 6, 7, generator=g)
    if mode == "multiclass":
        t = torch.randint(0, C, (B, 6, 7), generator=g)
    else:
        t = (torch.rand(B, C, 6, 7, generator=g) > 0.5).float()
    if ignore is not None:
        t[torch.rand(t.shape, generator=g) > 0.8] = ignore
    return x, t


@needs_smp
@pytest.mark.parametrize("mode,per_image,ignore", list(itertools.product(MODES, [False, True], [None, 255])))
def test_compat_smp_lovasz_equals_smp(mode, per_image, ignore):
    x, t = _smp_case(mode, per_image, ignore, seed=30)
    peer, ours = smp_losses.LovaszLoss(mode, per_image, ignore), compat_smp.LovaszLoss(mode, per_image, ignore)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    v1, v2 = peer(x1, t), ours(x2, t)
    torch.testing.assert_close(v2, v1, **PEER32)
    v1.backward()
    v2.backward()
    torch.testing.assert_close(x2.grad, x1.grad, **PEER32)


@needs_smp
@pytest.mark.parametrize("per_image", [False, True])
def test_smp_multiclass_is_lovasz_softmax_over_present_classes(per_image):
    x, t = _smp_case("multiclass", per_image, 255, seed=31)
    want = lovasz_loss(x.double(), t, per_image=per_image, ignore_index=255)
    assert abs(float(smp_losses.LovaszLoss("multiclass", per_image, 255)(x, t)) - float(want)) < 2e-6


@needs_smp
def test_smp_multilabel_pools_the_channels_where_diceloss_scores_each():
    # a convention, not a bug: SMP flattens (N, C, *S) per sample into one binary problem
    x, t = _smp_case("multilabel", True, None, seed=32)
    pooled = lovasz_loss(x.reshape(3, 1, -1).double(), t.reshape(3, 1, -1), mode="binary", per_image=True)
    smp_v = smp_losses.LovaszLoss("multilabel", per_image=True)(x, t)
    assert abs(float(smp_v) - float(pooled)) < 2e-6
    per_class = lovasz_loss(x.double(), t, mode="multilabel", per_image=True)
    assert abs(float(smp_v) - float(per_class)) > 1e-3


@needs_smp
def test_smp_lovasz_ignores_from_logits():
    # documented SMP bug: from_logits=False is accepted and ignored (the softmax of probabilities / the hinge of
    # probabilities); the compat class honours it
    x, t = _smp_case("multiclass", False, None, seed=33)
    p = torch.softmax(x, 1)
    smp_false = smp_losses.LovaszLoss("multiclass", from_logits=False)(p, t)
    smp_softmax_twice = smp_losses.LovaszLoss("multiclass")(p, t)
    assert float(smp_false) == float(smp_softmax_twice)
    right = lovasz_loss(p.double(), t, from_logits=False)
    assert abs(float(smp_false) - float(right)) > 1e-2
    ours = compat_smp.LovaszLoss("multiclass", from_logits=False)(p, t)
    assert abs(float(ours) - float(right)) < 1e-6


@needs_smp
def test_smp_lovasz_fails_in_float64():
    # documented SMP bug: _lovasz_grad casts to float32 (gt_sorted.float()), so torch.dot meets float64 errors
    x, t = _smp_case("multiclass", False, None, seed=34)
    with pytest.raises(RuntimeError, match="same dtype"):
        smp_losses.LovaszLoss("multiclass")(x.double(), t)
    xb, tb = _smp_case("binary", False, None, seed=34)
    with pytest.raises(RuntimeError, match="same dtype"):
        smp_losses.LovaszLoss("binary")(xb.double(), tb.double())
    assert compat_smp.LovaszLoss("multiclass")(x.double(), t).dtype == torch.float64


@needs_smp
def test_smp_lovasz_every_pixel_ignored_returns_an_empty_tensor():
    # documented SMP bug: the 'only void pixels' branch returns probas * 0, shape (0, C), which backward refuses
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    t = torch.full((2, 4, 4), 255)
    v = smp_losses.LovaszLoss("multiclass", ignore_index=255)(x, t)
    assert v.shape == (0, 3)
    with pytest.raises(RuntimeError, match="scalar outputs"):
        v.backward()
    ours = compat_smp.LovaszLoss("multiclass", ignore_index=255)(x, t)
    ours.backward()
    assert ours.shape == () and float(ours.detach()) == 0.0 and (x.grad == 0).all()


@needs_smp
def test_smp_lovasz_hinge_fails_on_bool_targets():
    # documented SMP bug: 1 - gt_sorted on a bool tensor
    x, t = _smp_case("binary", False, None, seed=35)
    with pytest.raises(RuntimeError, match="bool"):
        smp_losses.LovaszLoss("binary")(x, t.bool())
    torch.testing.assert_close(compat_smp.LovaszLoss("binary")(x, t.bool()), smp_losses.LovaszLoss("binary")(x, t))


@needs_smp
def test_smp_float32_weights_lose_the_loss_digits_on_a_large_batch():
    # the cancellation of test_closed_form_weights_keep_float32_accuracy... on a whole loss: one 8 x 256 x 256
    # segment per class (per_image=False) in float32
    g = seeded(36)
    x = 2 * torch.randn(8, 4, 256, 256, generator=g)
    t = torch.randint(0, 4, (8, 256, 256), generator=g)
    with torch.no_grad():
        exact = float(lovasz_loss(x.double(), t))
        ours = float(lovasz_loss(x, t))
        smp_v = float(smp_losses.LovaszLoss("multiclass")(x, t))
    assert abs(ours - exact) < 3e-7
    assert abs(smp_v - exact) > 3 * abs(ours - exact)


@needs_kornia
@pytest.mark.parametrize("seed", [40, 41])
def test_kornia_lovasz_softmax_is_per_image_over_all_classes(seed):
    g = seeded(seed)
    x = torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64)
    t = torch.randint(0, 4, (3, 5, 6), generator=g)
    t[0] = t[0] % 2  # classes absent from an image: kornia scores them (its largest probability)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    v1 = kornia_losses.lovasz_softmax_loss(x1, t)
    v2 = lovasz_loss(x2, t, per_image=True, classes="all")
    torch.testing.assert_close(v2, v1, **TOL)
    v1.backward()
    v2.backward()
    torch.testing.assert_close(x2.grad, x1.grad, **TOL)


@needs_kornia
def test_kornia_lovasz_hinge_is_the_per_image_binary_hinge():
    g = seeded(42)
    x = torch.randn(3, 1, 5, 6, generator=g, dtype=torch.float64)
    t = (torch.rand(3, 5, 6, generator=g) > 0.5).long()
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    v1 = kornia_losses.lovasz_hinge_loss(x1, t)
    v2 = lovasz_loss(x2, t, mode="binary", per_image=True)
    torch.testing.assert_close(v2, v1, **TOL)
    v1.backward()
    v2.backward()
    torch.testing.assert_close(x2.grad, x1.grad, **TOL)


@needs_kornia
def test_kornia_has_no_ignore_index_and_takes_the_ignore_label_as_a_target():
    # documented kornia limitation: no ignore_index. The hinge reads a -100 label as the target 'sign -201'
    # (its loss changes, and can go below 0); the softmax refuses it inside one_hot. diceloss leaves them out.
    g = seeded(43)
    x = torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64)
    t = (torch.rand(2, 4, 4, generator=g) > 0.5).long()
    t_ign = t.clone()
    t_ign[:, 0] = -100
    keep = t_ign[:, None] != -100
    ours = lovasz_loss(x, t_ign, mode="binary", per_image=True, ignore_index=-100)
    cropped = torch.stack([lovasz_loss(x[b : b + 1, :, 1:], t[b : b + 1, 1:], mode="binary") for b in range(2)]).mean()
    torch.testing.assert_close(ours, cropped, **TOL)
    assert keep.sum() == 24
    k = kornia_losses.lovasz_hinge_loss(x, t_ign)
    assert abs(float(k) - float(ours)) > 1e-3
    with pytest.raises(RuntimeError):
        kornia_losses.lovasz_softmax_loss(torch.randn(2, 3, 4, 4, dtype=torch.float64), t_ign)


@needs_kornia
def test_kornia_is_2d_only():
    with pytest.raises((ValueError, TypeError, RuntimeError)):
        kornia_losses.lovasz_softmax_loss(torch.randn(2, 3, 4, 4, 4), torch.randint(0, 3, (2, 4, 4, 4)))
    assert lovasz_loss(torch.randn(2, 3, 4, 4, 4), torch.randint(0, 3, (2, 4, 4, 4)), per_image=True).shape == ()
