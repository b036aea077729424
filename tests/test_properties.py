"""Property tests (hypothesis): ranges, minima, invariances and identities that hold for any input.

Every loss of the registry gets the properties its row says it has: a range in [0, 1] (``range01``), classes
that play symmetric parts (``class_symmetric``), positions that leave it entirely when masked (``mask_local``);
the modes it takes, soft targets unless it refuses them (``hard_targets``), the options it takes, and the same
positions as a 2-D image where it needs one (``fit``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import LOSS, LOSSES, losses, seeded
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from diceloss import functional as DF
from diceloss import metrics

BACKEND = "reference"
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)

# from the registry (tests/conftest.py): the losses with a value per class, and all of them
PER_CLASS = {info.name: info.call for info in losses(lambda info: info.unreduced == "class")}
ALL = {info.name: info.call for info in LOSSES}
# the losses that reach exactly 0 at p = g (no pixel-wise term), also for soft targets
OVERLAP_ONLY = [info.name for info in losses(lambda info: not info.compound)]
ZERO_AT_PERFECT = [name for name in OVERLAP_ONLY if LOSS[name].zero_minimum]
# the per-class losses whose values lie in [0, 1]
UNIT = [name for name in PER_CLASS if LOSS[name].range01]
# the losses with a value per sample (reduction="none")
PER_SAMPLE = [name for name in OVERLAP_ONLY if LOSS[name].unreduced is not None]


def _fit(kind, x, t, mode, *masks):
    """Check that the loss takes the problem (its modes; soft targets unless it refuses them), and reshape the
    N positions to a spatial shape it takes (a 2-D image for clDice), masks (B, N) included."""
    info = LOSS[kind]
    assume(mode in info.modes)
    if info.hard_targets:
        assume(not bool(((t > 0) & (t < 1)).any()))
    S = info.fit(x.shape[-1])
    out = [x.reshape(*x.shape[:2], *S), t.reshape(*t.shape[:-1], *S)]
    return (*out, *(m.reshape(m.shape[0], *S) for m in masks))


@st.composite
def problems(draw, modes=("multiclass", "binary", "multilabel"), soft=True):
    """A random (input, target, mode) with B, C, N small; logits may be large (saturated softmax)."""
    mode = draw(st.sampled_from(modes))
    B = draw(st.integers(1, 3))
    C = 1 if mode == "binary" else draw(st.integers(2, 4))
    N = draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([0.1, 1.0, 5.0, 30.0]))
    target_kind = draw(st.sampled_from(["hard", "soft"] if soft else ["hard"]))
    g = seeded(seed)
    x = torch.randn(B, C, N, generator=g, dtype=torch.float64) * scale
    if mode == "multiclass":
        if target_kind == "soft":
            t = torch.softmax(torch.randn(B, C, N, generator=g, dtype=torch.float64) * 3, 1)
        else:
            t = torch.randint(0, C, (B, N), generator=g)
    else:
        t = torch.rand(B, C, N, generator=g, dtype=torch.float64)
        if target_kind == "hard":
            t = (t > 0.5).double()
    return x, t, mode


def _one_hot(t, C):
    return F.one_hot(t, C).movedim(-1, 1).double() if not t.is_floating_point() else t


COMMON = st.fixed_dictionaries(
    {
        "batch_dice": st.booleans(),
        "include_background": st.booleans(),
        "soft_label": st.booleans(),
    }
)


@pytest.mark.parametrize("kind", UNIT)
@SETTINGS
@given(problems(), COMMON, st.booleans())
def test_per_class_losses_in_unit_interval(kind, problem, opts, squared):
    x, t, mode = problem
    x, t = _fit(kind, x, t, mode)
    kw = LOSS[kind].accepted(opts)
    if LOSS[kind].takes("squared"):
        kw["squared"] = squared
    per = PER_CLASS[kind](x, t, mode=mode, reduction="none", backend=BACKEND, **kw)
    assert torch.isfinite(per).all()
    assert (per >= 0).all() and (per <= 1).all()
    score = 1 - per  # the Dice / Jaccard / Tversky value itself
    assert (score >= 0).all() and (score <= 1).all()


@SETTINGS
@given(problems(), st.booleans(), st.sampled_from(["square", "simple", "uniform"]))
def test_generalized_dice_in_unit_interval(problem, batch_dice, weighting):
    x, t, mode = problem
    loss = DF.generalized_dice_loss(
        x, t, mode=mode, batch_dice=batch_dice, weighting=weighting, reduction="none", backend=BACKEND
    )
    assert torch.isfinite(loss).all() and (loss >= 0).all() and (loss <= 1).all()


@SETTINGS
@given(problems(soft=False))
def test_hard_metric_dice_in_unit_interval(problem):
    x, t, mode = problem
    for fn in (metrics.dice_score, metrics.iou_score):
        s = fn(x, t, mode=mode, from_logits=True, empty="one")
        assert s.dtype == torch.float64 and ((s >= 0) & (s <= 1)).all()


@pytest.mark.parametrize("kind", list(ALL))
@SETTINGS
@given(problems(), st.booleans())
def test_perfect_prediction_is_the_minimum(kind, problem, batch_dice):
    x, t, mode = problem
    x, t = _fit(kind, x, t, mode)
    C = x.shape[1]
    g = _one_hot(t, C)
    soft = bool(((g > 0) & (g < 1)).any())
    if soft and not LOSS[kind].soft_targets:
        return  # the focal term of a soft target is not minimal at p = g (it is not a proper scoring rule)
    kw = {
        "batch_dice": batch_dice,
        "from_logits": False,
        "backend": BACKEND,
        "mode": mode,
        "soft_label": bool(soft),
    }
    if not LOSS[kind].soft_targets:
        kw.pop("soft_label")
    kw = LOSS[kind].accepted(kw) | {"backend": BACKEND}
    p = torch.softmax(x, 1) if mode == "multiclass" else torch.sigmoid(x)
    perfect = ALL[kind](g.clone(), t, **kw)
    other = ALL[kind](p, t, **kw)
    assert float(other) >= float(perfect) - 1e-12
    if kind in ZERO_AT_PERFECT:
        # the Dice-family losses reach exactly 0 at p = g, also for soft targets (the semimetric)
        assert abs(float(perfect)) < 1e-12


@pytest.mark.parametrize("kind", [info.name for info in losses(lambda info: info.class_symmetric)])
@SETTINGS
@given(problems(modes=("multiclass", "multilabel")), st.data())
def test_class_permutation_invariance(kind, problem, data):
    x, t, mode = problem
    x, t = _fit(kind, x, t, mode)
    C = x.shape[1]
    perm = torch.tensor(data.draw(st.permutations(list(range(C)))))
    inv = torch.argsort(perm)
    weight = torch.linspace(0.5, 2.0, C, dtype=torch.float64)
    if t.is_floating_point():
        t_perm = t[:, perm]
    else:
        t_perm = inv[t]  # class k becomes the class at which k sits after the permutation
    kw = {"mode": mode, "backend": BACKEND}
    if not LOSS[kind].default_background(mode):
        kw["include_background"] = True  # channel 0 is no background when the classes are permuted
    if LOSS[kind].takes("weight"):
        kw["weight"] = weight
        kw_perm = dict(kw, weight=weight[perm])
    else:
        kw_perm = kw
    a = ALL[kind](x, t, **kw)
    b = ALL[kind](x[:, perm], t_perm, **kw_perm)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    if kind in PER_CLASS:
        a = ALL[kind](x, t, reduction="none", **kw)
        b = ALL[kind](x[:, perm], t_perm, reduction="none", **kw_perm)
        torch.testing.assert_close(a[:, perm], b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", [info.name for info in losses(lambda info: info.mask_local)])
@SETTINGS
@given(problems(), st.booleans(), st.integers(0, 2**31 - 1))
def test_ignored_positions_change_nothing(kind, problem, batch_dice, seed):
    x, t, mode = problem
    _fit(kind, x, t, mode)  # the modes and targets it takes
    B, C, N = x.shape
    g = seeded(seed)
    mask = torch.rand(B, N, generator=g) > 0.4
    noise_x = torch.randn(B, C, N, generator=g, dtype=torch.float64) * 10
    x2 = torch.where(mask[:, None], x, noise_x)
    if t.is_floating_point():
        t2 = torch.where(mask[:, None], t, torch.rand(t.shape, generator=g, dtype=t.dtype).round())
        if mode == "multiclass":
            t2 = torch.where(
                mask[:, None],
                t,
                F.one_hot(torch.randint(0, C, (B, N), generator=g), C).movedim(-1, 1).double(),
            )
    else:
        t2 = torch.where(mask, t, torch.randint(0, C, (B, N), generator=g))
    kw = LOSS[kind].accepted({"mode": mode, "batch_dice": batch_dice}) | {"backend": BACKEND}
    x, t, x2, t2, mask = _fit_all(kind, x, t, x2, t2, mask)
    xa = x.clone().requires_grad_(True)
    xb = x2.clone().requires_grad_(True)
    a = ALL[kind](xa, t, mask, **kw)
    b = ALL[kind](xb, t2, mask, **kw)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    (ga,) = torch.autograd.grad(a, xa)
    (gb,) = torch.autograd.grad(b, xb)
    torch.testing.assert_close(ga, gb, rtol=1e-8, atol=1e-12)
    assert (gb[~mask[:, None].expand_as(gb)] == 0).all()  # no gradient reaches an ignored position

    # the same with ignore_index: the ignored label replaces the target where mask is 0
    if mode == "multiclass" and not t.is_floating_point():
        ti = torch.where(mask, t, torch.full_like(t, 255))
        c = ALL[kind](x2, ti, ignore_index=255, **kw)
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)
    elif mode != "multiclass":
        ti = torch.where(mask[:, None], t, torch.full_like(t, -1.0))
        c = ALL[kind](x2, ti, ignore_index=-1, **kw)
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)


def _fit_all(kind, x, t, x2, t2, mask):
    S = LOSS[kind].fit(x.shape[-1])
    spatial = [z.reshape(*z.shape[:-1], *S) for z in (x, t, x2, t2)]
    return (*spatial, mask.reshape(mask.shape[0], *S))


@pytest.mark.parametrize("kind", PER_SAMPLE)
@SETTINGS
@given(problems(), st.integers(0, 2**31 - 1))
def test_per_sample_loss_independent_of_other_samples(kind, problem, seed):
    x, t, mode = problem
    x, t = _fit(kind, x, t, mode)
    B = x.shape[0]
    if B < 2:
        x, t = torch.cat([x, x.flip(-1)]), torch.cat([t, t.flip(-1)])
    g = seeded(seed)
    x2 = x.clone()
    x2[1:] = torch.randn(x2[1:].shape, generator=g, dtype=x.dtype) * 4
    t2 = t.clone()
    t2[1:] = t[1:].flip(-1)
    kw = {"mode": mode, "reduction": "none", "backend": BACKEND, **LOSS[kind].per_sample}
    a = ALL[kind](x, t, **kw)
    b = ALL[kind](x2, t2, **kw)
    torch.testing.assert_close(a[0], b[0], rtol=1e-12, atol=1e-14)
    alone = ALL[kind](x[:1], t[:1], **kw)
    torch.testing.assert_close(a[0], alone[0], rtol=1e-12, atol=1e-14)


@SETTINGS
@given(problems(), COMMON, st.sampled_from([1e-5, 0.1, 1.0]))
def test_tversky_half_half_is_dice(problem, opts, s):
    x, t, mode = problem
    # T(0.5, 0.5) = (I + s)/(0.5 (P + G) + s) = (2I + 2s)/(P + G + 2s): Dice with smoothing 2s
    tv = DF.tversky_loss(
        x,
        t,
        mode=mode,
        alpha=0.5,
        beta=0.5,
        smooth_nr=s,
        smooth_dr=s,
        reduction="none",
        backend=BACKEND,
        **opts,
    )
    d = DF.dice_loss(
        x, t, mode=mode, smooth_nr=2 * s, smooth_dr=2 * s, reduction="none", backend=BACKEND, **opts
    )
    torch.testing.assert_close(tv, d, rtol=1e-10, atol=1e-12)


@SETTINGS
@given(problems(), COMMON, st.sampled_from([1e-5, 0.1, 1.0]))
def test_tversky_one_one_is_jaccard(problem, opts, s):
    x, t, mode = problem
    tv = DF.tversky_loss(
        x,
        t,
        mode=mode,
        alpha=1.0,
        beta=1.0,
        smooth_nr=s,
        smooth_dr=s,
        reduction="none",
        backend=BACKEND,
        **opts,
    )
    j = DF.jaccard_loss(x, t, mode=mode, smooth_nr=s, smooth_dr=s, reduction="none", backend=BACKEND, **opts)
    torch.testing.assert_close(tv, j, rtol=1e-10, atol=1e-12)


@SETTINGS
@given(problems(modes=("binary",), soft=False))
def test_gdl_single_class_is_dice(problem):
    x, t, mode = problem
    # with one class every weighting cancels: Generalized Dice = Dice
    for weighting in ("square", "simple", "uniform"):
        gd = DF.generalized_dice_loss(
            x,
            t,
            mode=mode,
            weighting=weighting,
            smooth_nr=0.0,
            smooth_dr=1e-9,
            reduction="none",
            backend=BACKEND,
        )
        d = DF.dice_loss(x, t, mode=mode, smooth_nr=0.0, smooth_dr=1e-9, reduction="none", backend=BACKEND)
        torch.testing.assert_close(gd, d[:, 0], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("kind", [name for name in PER_CLASS if LOSS[name].takes("batch_dice")])
def test_batch_dice_with_one_sample_equals_per_sample(kind):
    g = seeded(1)
    S = LOSS[kind].fit(10)  # 2 x 5 for a loss that needs a 2-D image
    x = torch.randn(1, 3, 10, generator=g, dtype=torch.float64).reshape(1, 3, *S)
    t = torch.randint(0, 3, (1, 10), generator=g).reshape(1, *S)
    a = PER_CLASS[kind](x, t, reduction="none", backend=BACKEND)
    b = PER_CLASS[kind](x, t, reduction="none", batch_dice=True, backend=BACKEND)
    torch.testing.assert_close(a[0], b)
