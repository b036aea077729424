"""Every input convention gives the same numbers, and every reduction has its documented shape."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import LOSSES, MODES, losses, seeded

import diceloss
from diceloss import functional as DF

BACKEND = "reference"


def _mc(B=2, C=4, S=(5, 6), seed=0):
    g = seeded(seed)
    return torch.randn(B, C, *S, generator=g, dtype=torch.float64), torch.randint(0, C, (B, *S), generator=g)


@pytest.mark.parametrize("info", LOSSES)
@pytest.mark.parametrize(
    "opts",
    [
        {},
        {"ignore_index": 2},
        {"include_background": False, "batch_dice": True},
        {"weight": [0.5, 1.0, 2.0, 1.5], "squared": True},
    ],
)
def test_index_one_hot_and_soft_one_hot_targets_agree(info, opts):
    x, t = _mc()
    opts = info.accepted(opts)  # e.g. no weight / squared for Generalized Dice
    kind, fn = info.name, info.call
    onehot = F.one_hot(t, 4).movedim(-1, 1)
    variants = {
        "index": t,
        "index (B, 1, *S)": t[:, None],
        "index int32": t.int(),
        "index uint8": t.to(torch.uint8),
        "index float": t.double(),
        "one-hot float64": onehot.double(),
        "one-hot float32": onehot.float(),
        "one-hot int64": onehot,
        "one-hot bool": onehot.bool(),
    }
    ref = fn(x, t, backend=BACKEND, **opts)
    for name, target in variants.items():
        got = fn(x, target, backend=BACKEND, **opts)
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12, msg=f"{kind} {name}")
    # soft one-hot: the same labels as probabilities with soft_label=True (the semimetric equals Dice on them)
    if info.soft_targets and info.takes("soft_label"):
        got = fn(x, onehot.double(), soft_label=True, backend=BACKEND, **opts)
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("info", losses(lambda info: info.soft_targets and info.takes("soft_label")))
def test_soft_label_with_hard_targets_equals_ordinary_loss_every_mode(info):
    x, t = _mc()
    for mode, target in (("multiclass", t), ("multilabel", F.one_hot(t, 4).movedim(-1, 1).double())):
        a = info.call(x, target, mode=mode, backend=BACKEND)
        b = info.call(x, target, mode=mode, soft_label=True, backend=BACKEND)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


SPATIAL_SHAPES = [(7,), (3, 4), (2, 3, 4), (2, 2, 2, 3)]


@pytest.mark.parametrize("info", losses(lambda info: not info.geometric))
@pytest.mark.parametrize("S", SPATIAL_SHAPES)
def test_any_number_of_spatial_dimensions(info, S):
    fn = info.call
    x, t = _mc(S=S, seed=len(S))
    mask = torch.arange(t[0].numel()).reshape(S) % 3 != 0
    mask = mask.expand_as(t)
    flat = fn(x.reshape(2, 4, -1), t.reshape(2, -1), mask.reshape(2, -1), backend=BACKEND)
    got = fn(x, t, mask, backend=BACKEND)
    torch.testing.assert_close(got, flat, rtol=1e-12, atol=1e-12)
    # mask as (B, 1, *S) too
    torch.testing.assert_close(
        fn(x, t, mask[:, None], backend=BACKEND), flat, rtol=1e-12, atol=1e-12
    )
    # multilabel and binary as well
    y = (torch.rand(x.shape, generator=seeded(1)) > 0.5).double()
    if "multilabel" in info.modes:
        flat = fn(x.reshape(2, 4, -1), y.reshape(2, 4, -1), mode="multilabel", backend=BACKEND)
        torch.testing.assert_close(
            fn(x, y, mode="multilabel", backend=BACKEND), flat, rtol=1e-12, atol=1e-12
        )
    flat = fn(x[:, :1].reshape(2, 1, -1), y[:, :1].reshape(2, 1, -1), mode="binary", backend=BACKEND)
    torch.testing.assert_close(
        fn(x[:, :1], y[:, :1], mode="binary", backend=BACKEND), flat, rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("info", losses(lambda info: info.geometric))
@pytest.mark.parametrize("S", SPATIAL_SHAPES)
def test_geometric_losses_take_their_spatial_ranks(info, S):
    """A loss that reads where the positions are (a distance transform, a skeleton, components) is not a function of
    the flattened image; each rank it takes gives a finite value, the same for every mask layout and for a
    non-contiguous input, and each rank it does not take is refused with a ValueError naming the rank."""
    fn = info.call
    x, t = _mc(S=S, seed=len(S))
    mask = (torch.arange(t[0].numel()).reshape(S) % 3 != 0).expand_as(t)
    y = (torch.rand(x.shape, generator=seeded(1)) > 0.5).double()
    if not info.takes_rank(len(S)):
        with pytest.raises(ValueError, match="spatial dimension"):
            fn(x, t, mask)
        return
    got = fn(x, t, mask)
    assert torch.isfinite(got)
    torch.testing.assert_close(fn(x, t, mask[:, None]), got, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fn(x, t, mask.long()), got, rtol=1e-12, atol=1e-12)
    # a channels-last-like (non-contiguous) copy of the same input reads the same positions
    xt = x.movedim(1, -1).contiguous().movedim(-1, 1)
    assert not xt.is_contiguous() or len(S) == 0
    torch.testing.assert_close(fn(xt, t, mask), got, rtol=1e-12, atol=1e-12)
    for mode, xi, yi in (("multilabel", x, y), ("binary", x[:, :1], y[:, :1])):
        if mode in info.modes:
            assert torch.isfinite(fn(xi, yi, mode=mode))


@pytest.mark.parametrize("info", LOSSES)
def test_binary_shapes(info):
    fn = info.call
    g = seeded(2)
    x = torch.randn(3, 1, 4, 5, generator=g, dtype=torch.float64)
    y = (torch.rand(3, 1, 4, 5, generator=g) > 0.5).double()
    ref = fn(x, y, mode="binary", backend=BACKEND)
    for xi, yi in (
        (x[:, 0], y[:, 0]),
        (x, y[:, 0]),
        (x[:, 0], y),
        (x, y.bool()),
        (x, y.long()),
        (x, y.to(torch.uint8)),
    ):
        torch.testing.assert_close(
            fn(xi, yi, mode="binary", backend=BACKEND), ref, rtol=1e-12, atol=1e-12
        )
    # binary = multilabel with one channel
    if "multilabel" in info.modes:
        torch.testing.assert_close(
            fn(x, y, mode="multilabel", backend=BACKEND), ref, rtol=1e-12, atol=1e-12
        )


def test_binary_equals_two_class_sigmoid_foreground():
    # binary Dice on the foreground equals the multiclass Dice of class 1 with probabilities [1 - p, p]
    g = seeded(3)
    p = torch.rand(2, 1, 16, generator=g, dtype=torch.float64)
    y = (torch.rand(2, 1, 16, generator=g) > 0.5).long()
    b = DF.dice_loss(p, y.double(), mode="binary", from_logits=False, reduction="none", backend=BACKEND)
    m = DF.dice_loss(torch.cat([1 - p, p], 1), y[:, 0], from_logits=False, reduction="none", backend=BACKEND)
    torch.testing.assert_close(b[:, 0], m[:, 1])


def test_multilabel_bool_and_integer_targets():
    g = seeded(4)
    x = torch.randn(2, 3, 10, generator=g, dtype=torch.float64)
    y = torch.rand(2, 3, 10, generator=g) > 0.5
    ref = DF.dice_loss(x, y.double(), mode="multilabel", backend=BACKEND)
    for yi in (y, y.long(), y.float(), y.half()):
        torch.testing.assert_close(DF.dice_loss(x, yi, mode="multilabel", backend=BACKEND), ref)


# ----------------------------------------------------------------------------------------------
# reduction shapes


def _reduction_case(mode, info=None):
    x, t = _mc(B=3, C=4, S=(5,))
    if mode == "binary":
        x, t = x[:, :1], (t[:, None] > 1).double()
    elif mode == "multilabel":
        t = (F.one_hot(t, 4).movedim(-1, 1) + (x > 1)).clamp_max(1).double()
    if info is not None and not info.takes_rank(1):  # the same positions as a 1 x 5 image (clDice)
        S = info.fit(5)
        x, t = x.reshape(*x.shape[:2], *S), t.reshape(*t.shape[:-1], *S)
    return x, t


def _with_modes(predicate=None):
    return [
        pytest.param(info, mode, id=f"{mode}-{info.name}") for mode in MODES for info in losses(predicate)
        if mode in info.modes
    ]


@pytest.mark.parametrize("info,mode", _with_modes())
def test_reduction_mean_and_sum_are_scalars(info, mode):
    x, t = _reduction_case(mode, info)
    for reduction in ("mean", "sum"):
        assert info.call(x, t, mode=mode, reduction=reduction, backend=BACKEND).shape == ()
        if info.takes("batch_dice"):
            assert info.call(x, t, mode=mode, reduction=reduction, batch_dice=True, backend=BACKEND).shape == ()


@pytest.mark.parametrize("info,mode", _with_modes(lambda info: info.unreduced is None))
def test_reduction_none_refused_by_compound_losses(info, mode):
    x, t = _reduction_case(mode, info)
    with pytest.raises(ValueError, match="not 'none'"):
        info.call(x, t, mode=mode, reduction="none", backend=BACKEND)


@pytest.mark.parametrize("info,mode", _with_modes(lambda info: info.unreduced == "group"))
def test_reduction_none_one_value_per_group(info, mode):
    x, t = _reduction_case(mode, info)
    fn = info.call
    # one value per sample (with the options that make the samples the groups, for Lovász per_image=True)
    none = fn(x, t, mode=mode, reduction="none", backend=BACKEND, **info.per_sample)
    assert none.shape == (3,)
    if info.takes("batch_dice"):
        batch = fn(x, t, mode=mode, reduction="none", batch_dice=True, backend=BACKEND)
    else:  # the default groups the batch (Lovász per_image=False)
        assert info.per_sample, f"{info.name} takes no batch_dice: the registry names its per-sample options"
        batch = fn(x, t, mode=mode, reduction="none", backend=BACKEND)
    assert batch.shape == ()
    if info.takes("include_background"):
        nobg = fn(x, t, mode=mode, reduction="none", include_background=False, backend=BACKEND, **info.per_sample)
        assert nobg.shape == (3,)


@pytest.mark.parametrize("info,mode", _with_modes(lambda info: info.unreduced == "class"))
def test_reduction_none_one_value_per_class(info, mode):
    x, t = _reduction_case(mode, info)
    fn = info.call
    C = x.shape[1]
    K = C - 1 if mode != "binary" else 1  # binary mode ignores include_background
    # the default keeps the background, or (include_background=None: clDice, Skeleton Recall, boundary) keeps it
    # except in multiclass mode
    K_default = C if info.default_background(mode) else K
    none = fn(x, t, mode=mode, reduction="none", backend=BACKEND)
    nobg = fn(x, t, mode=mode, reduction="none", include_background=False, backend=BACKEND)
    assert none.shape == (3, K_default) and nobg.shape == (3, K)
    if info.default_background(mode) is False:
        assert fn(x, t, mode=mode, reduction="none", include_background=True, backend=BACKEND).shape == (3, C)
    if info.takes("batch_dice"):
        batch = fn(x, t, mode=mode, reduction="none", batch_dice=True, backend=BACKEND)
        assert batch.shape == (K_default,)


@pytest.mark.parametrize("info", losses(lambda info: info.unreduced == "class"))
def test_reduction_none_ignore_index_of_a_real_class_drops_its_column(info):
    x, t = _reduction_case("multiclass", info)
    fn = info.call
    C = x.shape[1]
    # every class to start from (include_background=None drops the background in multiclass mode)
    bg = {} if info.default_background("multiclass") else {"include_background": True}
    # ignore_index naming a real class drops that column too
    t2 = t.clone()
    t2[:, 0] = 2
    ign = fn(x, t2, reduction="none", ignore_index=2, backend=BACKEND, **bg)
    assert ign.shape == (3, C - 1)
    if info.takes("batch_dice"):
        both = fn(
            x,
            t2,
            reduction="none",
            ignore_index=2,
            include_background=False,
            batch_dice=True,
            backend=BACKEND,
        )
        assert both.shape == (C - 2,)
    else:
        assert fn(x, t2, reduction="none", ignore_index=2, include_background=False).shape == (3, C - 2)
    # and the kept columns are the per-class values of the others (classes 0, 1, 3)
    full = fn(x, t2, reduction="none", ignore_index=2, backend=BACKEND, **bg)
    assert torch.equal(ign, full)
    # an ignore_index outside the classes keeps every column
    t3 = t.clone()
    t3[:, 0] = 255
    assert fn(x, t3, reduction="none", ignore_index=255, backend=BACKEND, **bg).shape == (3, C)


def test_ignore_real_class_drops_it_instead_of_pushing_it_to_zero():
    # ignore_index = 2 (a real class): the class leaves the mean, and its positions leave every class's sums.
    x, t = _mc(C=4, S=(20,))
    t[:, ::4] = 2
    keep = t != 2
    got = DF.dice_loss(x, t, ignore_index=2, reduction="none", backend=BACKEND)
    # the same as masking those positions and keeping classes 0, 1, 3
    masked = DF.dice_loss(x, torch.where(keep, t, 0), keep, reduction="none", backend=BACKEND)
    torch.testing.assert_close(got, masked[:, [0, 1, 3]])
    mean = DF.dice_loss(x, t, ignore_index=2, backend=BACKEND)
    torch.testing.assert_close(mean, masked[:, [0, 1, 3]].mean())
    # the loss does not push class 2's prediction: its logits get no gradient from class 2's term; the loss
    # stays the same whatever class 2 predicts at the ignored positions
    x2 = x.clone()
    x2[:, 2] += 5 * (~keep)
    torch.testing.assert_close(DF.dice_loss(x2, t, ignore_index=2, backend=BACKEND), mean)


def test_weight_of_length_c_without_background():
    x, t = _mc()
    w = torch.tensor([100.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    per = DF.dice_loss(x, t, include_background=False, reduction="none", backend=BACKEND)
    got = DF.dice_loss(x, t, include_background=False, weight=w, backend=BACKEND)
    want = ((per * w[1:]).sum(1) / w[1:].sum()).mean()
    torch.testing.assert_close(got, want)
    # the background weight is unused: changing it changes nothing
    w2 = w.clone()
    w2[0] = 0.0
    torch.testing.assert_close(DF.dice_loss(x, t, include_background=False, weight=w2, backend=BACKEND), got)
    # reduction="none" returns the weighted per-class values
    torch.testing.assert_close(
        DF.dice_loss(x, t, include_background=False, weight=w, reduction="none", backend=BACKEND), per * w[1:]
    )
    # weight + ignore_index of a real class: weights of the remaining classes
    t2 = t.clone()
    t2[:, 0] = 3
    per = DF.dice_loss(x, t2, ignore_index=3, include_background=False, reduction="none", backend=BACKEND)
    got = DF.dice_loss(x, t2, ignore_index=3, include_background=False, weight=w, backend=BACKEND)
    torch.testing.assert_close(got, ((per * w[1:3]).sum(1) / w[1:3].sum()).mean())


def test_weight_on_the_module_moves_with_it():
    loss = diceloss.DiceCELoss(weight=[1.0, 2.0, 3.0, 4.0], backend=BACKEND)
    assert loss.weight.shape == (4,) and "weight" in dict(loss.named_buffers())
    x, t = _mc()
    a = loss(x, t)
    b = DF.dice_ce_loss(x, t, weight=[1.0, 2.0, 3.0, 4.0], backend=BACKEND)
    torch.testing.assert_close(a, b)
    # state_dict round trip
    other = diceloss.DiceCELoss(weight=[0.0, 0.0, 0.0, 1.0], backend=BACKEND)
    other.load_state_dict(loss.state_dict())
    torch.testing.assert_close(other(x, t), a)


def test_mask_dtypes_agree():
    x, t = _mc()
    m = torch.rand(t.shape, generator=seeded(5)) > 0.3
    ref = DF.dice_loss(x, t, m, backend=BACKEND)
    for mi in (m.long(), m.float(), m.to(torch.uint8), m[:, None]):
        torch.testing.assert_close(DF.dice_loss(x, t, mi, backend=BACKEND), ref)
