"""Hard-label metrics: dice_score, iou_score and DiceMetric on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from diceloss import metrics
from diceloss.metrics import DiceMetric, dice_score, iou_score

NAN = math.nan


def _close(got, want):
    want = torch.tensor(want, dtype=torch.float64)
    torch.testing.assert_close(got, want, equal_nan=True)


# pred [0, 1, 1, 2] vs target [0, 1, 2, 2]:
#   class 0: I = 1, P = 1, G = 1 -> Dice 1, IoU 1
#   class 1: I = 1, P = 2, G = 1 -> Dice 2/3, IoU 1/2
#   class 2: I = 1, P = 1, G = 2 -> Dice 2/3, IoU 1/2
PRED = torch.tensor([[0, 1, 1, 2]])
GT = torch.tensor([[0, 1, 2, 2]])


def test_hand_case_index_maps():
    _close(dice_score(PRED, GT, mode="multiclass", num_classes=3), [[1.0, 2 / 3, 2 / 3]])
    _close(iou_score(PRED, GT, mode="multiclass", num_classes=3), [[1.0, 0.5, 0.5]])
    _close(dice_score(PRED, GT, mode="multiclass", num_classes=3, include_background=False), [[2 / 3, 2 / 3]])
    _close(dice_score(PRED, GT, mode="multiclass", num_classes=3, reduction="mean"), (1 + 4 / 3) / 3)


def test_scores_are_argmaxed_and_one_hot_targets_accepted():
    scores = F.one_hot(PRED, 3).movedim(-1, 1).float() * 5 + torch.randn(1, 3, 4) * 0.1
    onehot = F.one_hot(GT, 3).movedim(-1, 1).float()
    _close(dice_score(scores, GT, mode="multiclass"), [[1.0, 2 / 3, 2 / 3]])
    _close(dice_score(scores, onehot, mode="multiclass"), [[1.0, 2 / 3, 2 / 3]])
    _close(dice_score(scores, GT[:, None], mode="multiclass"), [[1.0, 2 / 3, 2 / 3]])
    _close(dice_score(PRED[:, None], GT, mode="multiclass", num_classes=3), [[1.0, 2 / 3, 2 / 3]])
    # from_logits changes nothing for argmax
    _close(dice_score(scores, GT, mode="multiclass", from_logits=True), [[1.0, 2 / 3, 2 / 3]])


@pytest.mark.parametrize("empty,value", [("nan", NAN), ("one", 1.0), ("zero", 0.0)])
def test_empty_policy(empty, value):
    # class 3 absent from prediction and target; class 2 absent from the target only -> 0, not empty
    pred = torch.tensor([[0, 1, 1, 2]])
    gt = torch.tensor([[0, 1, 1, 1]])
    _close(dice_score(pred, gt, mode="multiclass", num_classes=4, empty=empty), [[1.0, 0.8, 0.0, value]])
    _close(iou_score(pred, gt, mode="multiclass", num_classes=4, empty=empty), [[1.0, 2 / 3, 0.0, value]])
    mean = dice_score(pred, gt, mode="multiclass", num_classes=4, empty=empty, reduction="mean")
    vals = [1.0, 0.8, 0.0] + ([] if empty == "nan" else [value])
    assert float(mean) == pytest.approx(sum(vals) / len(vals))


def test_everything_empty_mean_is_nan():
    z = torch.zeros(1, 4, dtype=torch.long)
    assert math.isnan(float(dice_score(z, z, mode="binary", reduction="mean")))
    assert float(dice_score(z, z, mode="binary", empty="one", reduction="mean")) == 1.0


def test_binary_threshold_and_logits():
    probs = torch.tensor([[[0.2, 0.55, 0.7, 0.9]]])
    gt = torch.tensor([[[0, 1, 1, 0]]])
    # threshold 0.5: pred [0, 1, 1, 1] -> I = 2, P = 3, G = 2 -> 4/5
    _close(dice_score(probs, gt, mode="binary"), [[0.8]])
    # threshold 0.6: pred [0, 0, 1, 1] -> I = 1, P = 2, G = 2 -> 1/2
    _close(dice_score(probs, gt, mode="binary", threshold=0.6), [[0.5]])
    # logits: thresholded at 0, whatever threshold says
    logits = torch.logit(probs)
    _close(dice_score(logits, gt, mode="binary", from_logits=True), [[0.8]])
    _close(dice_score(logits, gt, mode="binary", from_logits=True, threshold=0.9), [[0.8]])
    # (B, *S) input and (B, 1, *S) target
    _close(dice_score(probs[:, 0], gt, mode="binary"), [[0.8]])
    # integer hard labels
    _close(dice_score((probs > 0.5).long(), gt, mode="binary"), [[0.8]])
    _close(iou_score(probs, gt.bool(), mode="binary"), [[2 / 3]])


def test_multilabel_per_channel():
    pred = torch.tensor([[[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 1, 0]]])
    gt = torch.tensor([[[1, 0, 0, 0], [0, 0, 0, 0], [1, 0, 1, 1]]])
    _close(dice_score(pred, gt, mode="multilabel"), [[2 / 3, NAN, 0.8]])
    _close(dice_score(pred, gt, mode="multilabel", include_background=False), [[NAN, 0.8]])
    _close(iou_score(pred, gt, mode="multilabel", empty="zero"), [[0.5, 0.0, 2 / 3]])


def test_ignore_index():
    pred = torch.tensor([[0, 1, 1, 2]])
    gt = torch.tensor([[0, 1, 255, 2]])
    # position 2 skipped: class 1: I = 1, P = 1, G = 1 ; class 2: I = 1, P = 1, G = 1
    _close(dice_score(pred, gt, mode="multiclass", num_classes=3, ignore_index=255), [[1.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match=r"target class indices must be in \[0, 2\], got \[255\]"):
        dice_score(pred, gt, mode="multiclass", num_classes=3)
    # binary: elements whose target is the ignore value are skipped
    probs = torch.tensor([[[0.9, 0.9, 0.1, 0.8]]])
    gtb = torch.tensor([[[1.0, -1.0, 0.0, 1.0]]])
    _close(dice_score(probs, gtb, mode="binary", ignore_index=-1), [[1.0]])


def test_num_classes():
    with pytest.raises(ValueError, match="num_classes is needed"):
        dice_score(PRED, GT, mode="multiclass")
    # a class beyond those seen counts as empty
    _close(dice_score(PRED, GT, mode="multiclass", num_classes=4), [[1.0, 2 / 3, 2 / 3, NAN]])
    scores = torch.randn(1, 3, 4)
    with pytest.raises(ValueError, match="num_classes=4 differs from the scores' C = 3"):
        dice_score(scores, GT, mode="multiclass", num_classes=4)
    with pytest.raises(ValueError, match=r"prediction class indices must be in \[0, 1\], got \[2\]"):
        dice_score(PRED, GT.clamp_max(1), mode="multiclass", num_classes=2)


def test_per_sample_rows():
    pred = torch.tensor([[0, 1, 1, 1], [1, 1, 0, 0]])
    gt = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]])
    # sample 0: class 0: I 1, P 1, G 2 -> 2/3 ; class 1: I 2, P 3, G 2 -> 4/5
    # sample 1: class 0: I 0, P 2, G 0 -> 0   ; class 1: I 2, P 2, G 4 -> 2/3
    _close(dice_score(pred, gt, mode="multiclass", num_classes=2), [[2 / 3, 0.8], [0.0, 2 / 3]])


def test_matches_hard_soft_dice():
    # hard Dice = the soft Dice of one-hot probabilities with no smoothing
    from diceloss import functional as DF

    g = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 4, (3, 6, 7), generator=g)
    gt = torch.randint(0, 4, (3, 6, 7), generator=g)
    hard = dice_score(pred, gt, mode="multiclass", num_classes=4)
    soft = 1 - DF.dice_loss(
        F.one_hot(pred, 4).movedim(-1, 1).double(),
        gt,
        from_logits=False,
        smooth_nr=0.0,
        smooth_dr=1e-300,
        reduction="none",
        backend="reference",
    )
    torch.testing.assert_close(hard, soft)


def test_hard_counts():
    I, P, G = metrics.hard_counts(PRED, GT, mode="multiclass", num_classes=3)
    assert I.tolist() == [[1, 1, 1]] and P.tolist() == [[1, 2, 1]] and G.tolist() == [[1, 1, 2]]
    assert I.dtype == torch.int64


# ----------------------------------------------------------------------------------------------
# DiceMetric


def test_dice_metric_accumulates_over_batches():
    m = DiceMetric(mode="multiclass", num_classes=3)
    m.update(PRED, GT)
    _close(m.compute(reduction="none"), [1.0, 2 / 3, 2 / 3])
    # a second batch: [1, 1, 1, 1] vs [1, 1, 1, 0] -> class 0: 0 (G 1, P 0) ; class 1: 6/7 ; class 2 empty
    m.update(torch.tensor([[1, 1, 1, 1]]), torch.tensor([[1, 1, 1, 0]]))
    _close(m.compute(reduction="none"), [(1 + 0) / 2, (2 / 3 + 6 / 7) / 2, 2 / 3])
    assert float(m.compute()) == pytest.approx((0.5 + (2 / 3 + 6 / 7) / 2 + 2 / 3) / 3)
    m.reset()
    # nothing seen since the reset: no class has a value (a rank without data still joins the all-reduce)
    assert torch.isnan(m.compute(reduction="none")).all()


def test_dice_metric_global_aggregation():
    m = DiceMetric(mode="multiclass", num_classes=3, aggregation="global")
    m.update(PRED, GT)
    m.update(torch.tensor([[1, 1, 1, 1]]), torch.tensor([[1, 1, 1, 0]]))
    # class 0: 2I = 2, P + G = 1 + 1 + 0 + 1 = 3 ; class 1: 2I = 2 + 6, P + G = 3 + 7 ; class 2: 2 / 3
    _close(m.compute(reduction="none"), [2 / 3, 8 / 10, 2 / 3])


def test_dice_metric_options():
    m = DiceMetric(mode="multiclass", num_classes=3, include_background=False)
    m.update(PRED, GT)
    _close(m.compute(reduction="none"), [2 / 3, 2 / 3])
    m = DiceMetric(mode="binary", from_logits=True)
    m.update(torch.tensor([[[-1.0, 2.0, 3.0, 0.5]]]), torch.tensor([[[0, 1, 1, 0]]]))
    _close(m.compute(reduction="none"), [0.8])
    m = DiceMetric(mode="multiclass", num_classes=3, ignore_index=255)
    m.update(PRED, torch.tensor([[0, 1, 255, 2]]))
    _close(m.compute(reduction="none"), [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="aggregation must be one of 'sample', 'global'"):
        DiceMetric(aggregation="batch")
    with pytest.raises(ValueError, match="mode must be one of"):
        DiceMetric(mode="multi")
    m = DiceMetric(mode="multiclass")
    m.update(torch.randn(1, 3, 4), GT)
    with pytest.raises(ValueError, match="update with 4 classes after 3"):
        m.update(torch.randn(1, 4, 4), GT)


def test_dice_metric_without_update_gives_nan_per_class_with_num_classes_and_raises_without():
    metric = DiceMetric(mode="multiclass", num_classes=3)
    out = metric.compute(reduction="none")
    assert out.shape == (3,) and torch.isnan(out).all()
    with pytest.raises(RuntimeError, match="num_classes"):
        DiceMetric(mode="multiclass").compute()


# ----------------------------------------------------------------------------------------------
# Defects of issue 15 (adversarial findings W2, W7, C5, C6, C9): the metrics follow the losses' rules


def test_ignore_index_naming_a_class_drops_it_like_the_losses():
    # W2: pred [0, 1, 1, 2, 2, 0] vs gt [0, 1, 2, 2, 2, 0], class 1 ignored -> positions 0, 2, 3, 4, 5 count
    #   class 0: I 2, P 2, G 2 -> Dice 1, IoU 1 ; class 2: I 2, P 2, G 3 -> Dice 0.8, IoU 2/3 ; class 1: dropped
    import diceloss

    pred = torch.tensor([[0, 1, 1, 2, 2, 0]])
    gt = torch.tensor([[0, 1, 2, 2, 2, 0]])
    kw = dict(mode="multiclass", num_classes=3, ignore_index=1)
    _close(dice_score(pred, gt, **kw), [[1.0, 0.8]])
    _close(iou_score(pred, gt, **kw), [[1.0, 2 / 3]])
    assert float(dice_score(pred, gt, **kw, reduction="mean")) == pytest.approx(0.9)
    _close(dice_score(pred, gt, **kw, include_background=False), [[0.8]])
    # a one-hot target: the positions whose ignored channel is on drop out, and so does the class
    onehot = F.one_hot(gt, 3).movedim(-1, 1).float()
    _close(dice_score(pred, onehot, **kw), [[1.0, 0.8]])
    # DiceMetric: both aggregations
    for aggregation in ("sample", "global"):
        m = DiceMetric(mode="multiclass", num_classes=3, ignore_index=1, aggregation=aggregation)
        m.update(pred, gt)
        _close(m.compute(reduction="none"), [1.0, 0.8])
        assert float(m.compute()) == pytest.approx(0.9)
    m = DiceMetric(mode="multiclass", num_classes=3, ignore_index=1, include_background=False)
    m.update(pred, gt)
    _close(m.compute(reduction="none"), [0.8])
    # the same K as the loss's reduction="none"
    loss = diceloss.DiceLoss(ignore_index=1, reduction="none", from_logits=True)(torch.randn(1, 3, 6), gt)
    assert dice_score(pred, gt, **kw).shape == loss.shape == (1, 2)
    # an ignore value outside [0, C) names no class: all C columns stay
    _close(dice_score(pred, gt, mode="multiclass", num_classes=3, ignore_index=255), [[1.0, 2 / 3, 0.8]])
    with pytest.raises(ValueError, match="no class is left to score"):
        dice_score(pred.clamp_max(1), gt.clamp_max(1), mode="multiclass", num_classes=2, ignore_index=1,
                   include_background=False)


def test_binary_metrics_take_only_the_losses_layouts():
    # W7: a transposed target of the same element count is an error, as in the loss
    import diceloss

    g = torch.Generator().manual_seed(0)
    pred = torch.randn(4, 1, 6, 5, generator=g)
    gt = (torch.rand(4, 1, 6, 5, generator=g) > 0.5).float()
    bad = gt[:, 0].transpose(1, 2)
    with pytest.raises(ValueError, match=r"binary mode expects .* got input \(4, 1, 6, 5\) and target \(4, 5, 6\)"):
        diceloss.DiceLoss(mode="binary", from_logits=True)(pred, bad)
    with pytest.raises(ValueError, match=r"binary mode expects .* got input \(4, 1, 6, 5\) and target \(4, 5, 6\)"):
        dice_score(pred, bad, mode="binary", from_logits=True)
    with pytest.raises(ValueError, match=r"got input \(4, 1, 6, 5\) and target \(4, 30\)"):
        iou_score(pred, gt.reshape(4, 30), mode="binary", from_logits=True)
    with pytest.raises(ValueError, match=r"got input \(4, 1, 6, 5\) and target \(4, 5, 6\)"):
        DiceMetric(mode="binary", from_logits=True).update(pred, bad)
    # the layouts the loss takes still work, and agree
    want = dice_score(pred, gt, mode="binary", from_logits=True)
    torch.testing.assert_close(dice_score(pred, gt[:, 0], mode="binary", from_logits=True), want)
    torch.testing.assert_close(dice_score(pred[:, 0], gt, mode="binary", from_logits=True), want)


def test_fractional_class_indices_raise_instead_of_rounding():
    # W7: 1.6 was rounded to 2 and scored [[1, 1, 1]]
    with pytest.raises(ValueError, match="whole numbers.*fractional"):
        dice_score(torch.tensor([[0, 1, 2, 2]]), torch.tensor([[0.0, 1.0, 1.6, 2.0]]), mode="multiclass",
                   num_classes=3)
    with pytest.raises(ValueError, match="whole numbers"):
        iou_score(torch.randn(1, 3, 4), torch.tensor([[[0.0, 1.0, 1.6, 2.0]]]), mode="multiclass")
    # whole floats are class indices
    _close(dice_score(PRED, GT.double(), mode="multiclass", num_classes=3), [[1.0, 2 / 3, 2 / 3]])


def test_all_zero_one_hot_row_raises_like_the_loss():
    # W7: an all-zero row (MONAI's ignored positions) was argmaxed to class 0 and counted as background
    import diceloss

    onehot = F.one_hot(GT, 3).movedim(-1, 1).float()
    onehot[0, :, 3] = 0
    scores = torch.randn(1, 3, 4)
    with pytest.raises(ValueError, match=r"must sum to 1 .* got sums in \[0, 1\]"):
        diceloss.DiceLoss(from_logits=True)(scores, onehot)
    with pytest.raises(ValueError, match=r"must sum to 1 .* got sums in \[0, 1\]"):
        dice_score(scores, onehot, mode="multiclass")
    with pytest.raises(ValueError, match=r"must sum to 1 .* got sums in \[0, 1\]"):
        DiceMetric(mode="multiclass").update(PRED, onehot.long())
    # several classes on at a position: multi-label, not multiclass
    onehot[0, :, 3] = 1
    with pytest.raises(ValueError, match="must sum to 1.*multilabel"):
        dice_score(scores, onehot, mode="multiclass")
    # values outside [0, 1] in an integer one-hot
    with pytest.raises(ValueError, match=r"target values must be in \[0, 1\], got values in \[0, 2\]"):
        dice_score(PRED, F.one_hot(GT, 3).movedim(-1, 1) * 2, mode="multiclass")


def test_integer_and_bool_one_hot_targets_are_accepted():
    # C5: what F.one_hot returns (int64), and bool, as the losses accept them
    onehot = F.one_hot(GT, 3).movedim(-1, 1)
    scores = F.one_hot(PRED, 3).movedim(-1, 1).float()
    want = [[1.0, 2 / 3, 2 / 3]]
    for target in (onehot, onehot.bool(), onehot.to(torch.uint8), onehot.float()):
        _close(dice_score(scores, target, mode="multiclass"), want)
        _close(dice_score(PRED, target, mode="multiclass"), want)
        _close(dice_score(PRED[:, None], target, mode="multiclass", num_classes=3), want)
        m = DiceMetric(mode="multiclass")
        m.update(PRED, target)
        _close(m.compute(reduction="none"), want[0])
    with pytest.raises(ValueError, match="one-hot target has 3 channels, expected C = 4"):
        dice_score(PRED, onehot, mode="multiclass", num_classes=4)
    with pytest.raises(TypeError, match="class-index targets must be integer.*got dtype torch.bool"):
        dice_score(PRED, GT.bool(), mode="multiclass", num_classes=3)


def test_empty_batch_sparse_and_unsupported_dtypes_give_clear_errors():
    # C9: raw torch errors before
    scores = torch.randn(2, 3, 4)
    gt = torch.randint(0, 3, (2, 4))
    with pytest.raises(ValueError, match=r"at least one sample.*got shape \(0, 3, 4\)"):
        dice_score(scores[:0], gt[:0], mode="multiclass")
    with pytest.raises(ValueError, match=r"at least one sample.*got shape \(0, 4\)"):
        iou_score(gt[:0], gt[:0], mode="multiclass", num_classes=3)
    with pytest.raises(ValueError, match=r"at least one sample.*got shape \(0, 1, 4\)"):
        DiceMetric(mode="binary").update(scores[:0, :1], scores[:0, :1])
    with pytest.raises(TypeError, match="input must be a dense .strided. tensor, got layout torch.sparse_coo"):
        dice_score(scores.to_sparse(), gt, mode="multiclass")
    with pytest.raises(TypeError, match="target must be a dense .strided. tensor, got layout torch.sparse_coo"):
        dice_score(scores, gt.to_sparse(), mode="multiclass")
    with pytest.raises(TypeError, match="target must be a torch.Tensor, got list"):
        dice_score(scores, [0, 1], mode="multiclass")
    if hasattr(torch, "float8_e4m3fn"):
        with pytest.raises(TypeError, match="input dtype torch.float8_e4m3fn is not supported"):
            dice_score(scores.to(torch.float8_e4m3fn), gt, mode="multiclass")
    with pytest.raises(TypeError, match="complex"):
        dice_score(scores.to(torch.complex64), gt, mode="multiclass")


def test_hard_counts_memory_is_linear_in_batch_times_classes(monkeypatch):
    # C6: one bincount of B * C * C (0.57 GB for C = 3000 and two 8x16x16 maps); now O(B * C)
    sizes = []
    bincount = torch.bincount

    def recording_bincount(x, weights=None, minlength=0):
        out = bincount(x, weights=weights, minlength=minlength)
        sizes.append(max(minlength, out.numel()))
        return out

    monkeypatch.setattr(torch, "bincount", recording_bincount)
    B, C = 8, 3000
    g = torch.Generator().manual_seed(0)
    pred = torch.randint(0, C, (B, 16, 16), generator=g)
    gt = pred.clone()
    gt[:, :8] = torch.randint(0, C, (B, 8, 16), generator=g)
    I, P, G = metrics.hard_counts(pred, gt, mode="multiclass", num_classes=C)
    assert sizes and max(sizes) <= B * C
    assert I.shape == P.shape == G.shape == (B, C)
    # the counts against a one-hot reference
    pred_oh = F.one_hot(pred.reshape(B, -1), C).bool()
    gt_oh = F.one_hot(gt.reshape(B, -1), C).bool()
    assert torch.equal(I, (pred_oh & gt_oh).sum(1))
    assert torch.equal(P, pred_oh.sum(1)) and torch.equal(G, gt_oh.sum(1))
    m = DiceMetric(mode="multiclass", num_classes=C)
    m.update(pred, gt)
    assert m.compute(reduction="none").shape == (C,)
    assert max(sizes) <= B * C
