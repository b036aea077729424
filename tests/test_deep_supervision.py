"""DeepSupervisionLoss: weights, the target brought to each output's size (each target kind), gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import diceloss
from diceloss import DeepSupervisionLoss


def _outputs(B=2, C=3, size=16, levels=3, dims=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(B, C, *((size // 2**i,) * dims), generator=g, dtype=torch.float64).requires_grad_()
        for i in range(levels)
    ]


class Recorder:
    """A loss that records what it was called with and returns the mean of its input."""

    def __init__(self, mode="multiclass", ignore_index=None):
        self.mode = mode
        self.ignore_index = ignore_index
        self.calls = []

    def __call__(self, x, t, mask=None):
        self.calls.append((x, t, mask))
        return x.mean()


def test_default_weights_halve_and_sum_to_one():
    loss = DeepSupervisionLoss(diceloss.DiceLoss())
    assert loss.weights_for(1) == [1.0]
    assert loss.weights_for(3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    w = loss.weights_for(5)
    assert sum(w) == pytest.approx(1.0)
    assert all(a == pytest.approx(2 * b) for a, b in zip(w, w[1:]))


def test_weighted_sum_of_levels_with_default_and_given_weights():
    outs = _outputs()
    t = torch.randint(0, 3, (2, 16, 16))
    base = diceloss.DiceCELoss()
    per_level = [
        base(o, F.interpolate(t[:, None].double(), size=o.shape[2:], mode="nearest-exact")[:, 0].long())
        for o in outs
    ]
    ds = DeepSupervisionLoss(base)
    want = sum(w * v for w, v in zip([4 / 7, 2 / 7, 1 / 7], per_level))
    torch.testing.assert_close(ds(outs, t), want)
    assert sorted(ds.components) == ["level0", "level1", "level2"]
    torch.testing.assert_close(ds.components["level1"], per_level[1].detach())
    ds = DeepSupervisionLoss(base, weights=[2.0, 1.0, 1.0])
    torch.testing.assert_close(ds(outs, t), 0.5 * per_level[0] + 0.25 * per_level[1] + 0.25 * per_level[2])


def test_single_tensor_and_identical_full_resolution_outputs_give_the_base_loss():
    x = _outputs(levels=1)[0]
    t = torch.randint(0, 3, (2, 16, 16))
    base = diceloss.DiceLoss()
    assert float(DeepSupervisionLoss(base)(x, t).detach()) == float(base(x, t).detach())
    torch.testing.assert_close(DeepSupervisionLoss(base)([x, x, x], t), base(x, t))


def test_index_targets_are_downsampled_by_nearest_and_keep_only_their_labels():
    rec = Recorder(ignore_index=255)
    t = torch.randint(0, 3, (2, 16, 16))
    t[:, 5:9, 5:9] = 255
    DeepSupervisionLoss(rec)(_outputs(), t)
    sizes = [tuple(c[1].shape) for c in rec.calls]
    assert sizes == [(2, 16, 16), (2, 8, 8), (2, 4, 4)]
    for _, ti, _ in rec.calls:
        assert ti.dtype == torch.int64
        assert set(ti.unique().tolist()) <= {0, 1, 2, 255}
    assert 255 in rec.calls[1][1].unique().tolist()
    # nearest-exact: level 1 reads the centre-most pixel of every 2x2 block: t[2i + 1, 2j + 1]
    assert torch.equal(rec.calls[1][1], t[:, 1::2, 1::2])
    assert torch.equal(rec.calls[2][1], t[:, 2::4, 2::4])


def test_index_target_with_channel_dim_and_3d():
    rec = Recorder()
    t = torch.randint(0, 3, (2, 1, 8, 8, 8))
    DeepSupervisionLoss(rec)(_outputs(size=8, dims=3), t)
    assert [tuple(c[1].shape) for c in rec.calls] == [(2, 1, 8, 8, 8), (2, 1, 4, 4, 4), (2, 1, 2, 2, 2)]
    assert torch.equal(rec.calls[1][1], t[:, :, 1::2, 1::2, 1::2])


def test_one_hot_targets_are_downsampled_by_area_and_still_sum_to_one():
    rec = Recorder()
    t = torch.randint(0, 3, (2, 16, 16))
    onehot = F.one_hot(t, 3).permute(0, 3, 1, 2).double()
    DeepSupervisionLoss(rec)(_outputs(), onehot)
    t1 = rec.calls[1][1]
    assert t1.shape == (2, 3, 8, 8)
    torch.testing.assert_close(t1, F.avg_pool2d(onehot, 2))
    torch.testing.assert_close(t1.sum(1), torch.ones(2, 8, 8, dtype=torch.float64))
    assert ((t1 > 0) & (t1 < 1)).any(), "area averaging gives soft labels at boundaries"
    torch.testing.assert_close(rec.calls[2][1], F.avg_pool2d(onehot, 4))


def test_soft_multilabel_and_binary_targets_by_area():
    soft = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    rec = Recorder(mode="multilabel")
    DeepSupervisionLoss(rec)(_outputs(), soft)
    torch.testing.assert_close(rec.calls[1][1], F.avg_pool2d(soft, 2))
    # binary: (B, 1, *S) outputs with a (B, *S) target, and a bool target
    rec = Recorder(mode="binary")
    tb = torch.rand(2, 16, 16) > 0.5
    DeepSupervisionLoss(rec)(_outputs(C=1), tb)
    assert rec.calls[1][1].shape == (2, 8, 8) and rec.calls[1][1].dtype == torch.float32
    torch.testing.assert_close(rec.calls[1][1], F.avg_pool2d(tb[:, None].float(), 2)[:, 0])


def test_dense_target_with_ignore_value_uses_nearest():
    rec = Recorder(mode="multilabel", ignore_index=255)
    t = (torch.rand(2, 3, 16, 16) > 0.5).float()
    t[:, :, :4] = 255
    DeepSupervisionLoss(rec)(_outputs(), t)
    assert set(rec.calls[1][1].unique().tolist()) <= {0.0, 1.0, 255.0}


def test_mask_is_downsampled_by_nearest():
    rec = Recorder()
    mask = torch.rand(2, 16, 16) > 0.3
    DeepSupervisionLoss(rec)(_outputs(), torch.randint(0, 3, (2, 16, 16)), mask)
    assert torch.equal(rec.calls[1][2], mask[:, 1::2, 1::2])


def test_list_of_targets_is_used_as_given():
    rec = Recorder()
    outs = _outputs()
    targets = [torch.randint(0, 3, (2, s, s)) for s in (16, 8, 4)]
    DeepSupervisionLoss(rec)(outs, targets)
    assert all(c[1] is t for c, t in zip(rec.calls, targets))
    with pytest.raises(ValueError, match="3 outputs but 2 targets"):
        DeepSupervisionLoss(rec)(outs, targets[:2])


@pytest.mark.parametrize(
    "loss",
    [
        diceloss.DiceLoss(),
        diceloss.GeneralizedDiceLoss(),
        diceloss.DiceCELoss(),
        diceloss.DiceFocalLoss(),
        diceloss.TverskyLoss(alpha=0.3, beta=0.7),
        diceloss.JaccardLoss(),
        diceloss.DiceLoss(batch_dice=True),
    ],
    ids=lambda m: type(m).__name__,
)
def test_gradient_reaches_every_output(loss):
    outs = _outputs()
    t = torch.randint(0, 3, (2, 16, 16))
    DeepSupervisionLoss(loss)(outs, t).backward()
    for i, o in enumerate(outs):
        assert o.grad is not None and float(o.grad.abs().sum()) > 0, f"no gradient at level {i}"


def test_gradient_of_each_level_is_its_weight_times_the_base_gradient():
    outs = _outputs()
    t = torch.randint(0, 3, (2, 16, 16))
    DeepSupervisionLoss(diceloss.DiceLoss())(outs, t).backward()
    o1 = outs[1].detach().clone().requires_grad_()
    diceloss.DiceLoss()(o1, t[:, 1::2, 1::2]).backward()
    torch.testing.assert_close(outs[1].grad, (2 / 7) * o1.grad)


def test_zero_weight_skips_its_output():
    outs = _outputs()
    rec = Recorder()
    DeepSupervisionLoss(rec, weights=[1, 1, 0])(outs, torch.randint(0, 3, (2, 16, 16)))
    assert len(rec.calls) == 2


def test_bad_arguments():
    with pytest.raises(TypeError, match="callable"):
        DeepSupervisionLoss("dice")
    with pytest.raises(ValueError, match="non-negative"):
        DeepSupervisionLoss(diceloss.DiceLoss(), weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="non-negative"):
        DeepSupervisionLoss(diceloss.DiceLoss(), weights=[0.0, 0.0])
    with pytest.raises(ValueError, match="3 outputs but 2 weights"):
        DeepSupervisionLoss(diceloss.DiceLoss(), weights=[1, 1])(_outputs(), torch.randint(0, 3, (2, 16, 16)))
    with pytest.raises(TypeError, match="list of tensors"):
        DeepSupervisionLoss(diceloss.DiceLoss())([], torch.randint(0, 3, (2, 16, 16)))


def test_exported_from_package():
    assert diceloss.DeepSupervisionLoss is DeepSupervisionLoss
    assert "DeepSupervisionLoss" in diceloss.__all__


def test_gdl_with_a_dense_ignore_index_target_keeps_the_marker():
    """GeneralizedDiceLoss declares mode and ignore_index like every loss: a multilabel float target holding
    ignore_index is resized by nearest neighbour (the marker survives), not area-averaged into 127.5."""
    gdl = diceloss.GeneralizedDiceLoss(mode="multilabel", ignore_index=255)
    ds = DeepSupervisionLoss(gdl)
    outs = _outputs()
    t = (torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3)) > 0.5).double()
    t[:, :, :3] = 255
    assert ds.resize_target(t, outs[1]).unique().tolist() == [0.0, 1.0, 255.0]
    want = sum(w * gdl(o, t[..., s // 2 :: s, s // 2 :: s]) for w, o, s in zip(ds.weights_for(3), outs, (1, 2, 4)))
    torch.testing.assert_close(ds(outs, t), want)


def test_gdl_binary_outputs_without_a_channel_get_their_own_size():
    gdl = diceloss.GeneralizedDiceLoss(mode="binary")
    ds = DeepSupervisionLoss(gdl)
    leaves = _outputs(C=1)
    outs = [o[:, 0] for o in leaves]  # (B, *S) binary outputs
    t = (torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(4)) > 0.5).double()
    assert ds.resize_target(t, outs[1]).shape == (2, 8, 8)
    value = ds(outs, t)
    want = sum(w * gdl(o, F.avg_pool2d(t[:, None], s)[:, 0]) for w, o, s in zip(ds.weights_for(3), outs, (1, 2, 4)))
    torch.testing.assert_close(value, want)
    value.backward()
    assert all(leaf.grad is not None and torch.isfinite(leaf.grad).all() for leaf in leaves)


def test_a_plain_callable_takes_mode_and_ignore_index_as_arguments():
    def plain(x, t, mask=None):
        plain.seen.append(t)
        return x.mean()

    plain.seen = []
    t = (torch.rand(2, 3, 16, 16) > 0.5).float()
    t[:, :, :4] = 255
    DeepSupervisionLoss(plain, mode="multilabel", ignore_index=255)(_outputs(), t)
    assert set(plain.seen[1].unique().tolist()) <= {0.0, 1.0, 255.0}
    plain.seen = []
    DeepSupervisionLoss(plain, mode="binary")([o[:, 0] for o in _outputs(C=1)], t[:, 0])
    assert [tuple(s.shape) for s in plain.seen] == [(2, 16, 16), (2, 8, 8), (2, 4, 4)]
    with pytest.raises(ValueError, match="mode must be one of"):
        DeepSupervisionLoss(plain, mode="softmax")
    with pytest.raises(ValueError, match="the loss declares ignore_index=255"):
        DeepSupervisionLoss(diceloss.DiceLoss(ignore_index=255), ignore_index=0)
