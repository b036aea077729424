"""The torchmetrics.Metric classes (Dice, IoU, calibration error) give the numbers of diceloss's functions, under
torchmetrics and under a Lightning Trainer on the CPU."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from diceloss.metrics import DiceMetric, calibration_error, dice_score, iou_score

torchmetrics = pytest.importorskip("torchmetrics")

from diceloss.metrics import CalibrationErrorTorchMetric, DiceTorchMetric, IoUTorchMetric  # noqa: E402


def _batches(n=3, B=2, C=3, S=(6, 7), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(B, C, *S, generator=g).softmax(1), torch.randint(0, C, (B, *S), generator=g))
            for _ in range(n)]


def _all(batches):
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


@pytest.mark.parametrize("aggregation", ["sample", "global"])
@pytest.mark.parametrize("include_background", [True, False])
def test_dice_equals_dice_metric(aggregation, include_background):
    batches = _batches()
    ours = DiceTorchMetric(num_classes=3, aggregation=aggregation, include_background=include_background)
    per_class = DiceTorchMetric(num_classes=3, aggregation=aggregation, include_background=include_background,
                                reduction="none")
    ref = DiceMetric(num_classes=3, aggregation=aggregation, include_background=include_background)
    for p, y in batches:
        ours.update(p, y)
        per_class.update(p, y)
        ref.update(p, y)
    torch.testing.assert_close(ours.compute(), ref.compute(), atol=1e-15, rtol=0)
    torch.testing.assert_close(per_class.compute(), ref.compute(reduction="none"), atol=1e-15, rtol=0)
    if aggregation == "sample":
        p, y = _all(batches)
        want = torch.nanmean(dice_score(p, y, mode="multiclass", include_background=include_background), 0)
        torch.testing.assert_close(per_class.compute(), want, atol=1e-15, rtol=0)


def test_iou_equals_iou_score():
    batches = _batches(seed=1)
    samp, glob = IoUTorchMetric(num_classes=3, reduction="none"), IoUTorchMetric(num_classes=3, aggregation="global")
    for p, y in batches:
        samp.update(p, y)
        glob.update(p, y)
    p, y = _all(batches)
    torch.testing.assert_close(samp.compute(), torch.nanmean(iou_score(p, y, mode="multiclass"), 0), atol=1e-15,
                               rtol=0)
    pred = torch.nn.functional.one_hot(p.argmax(1), 3).movedim(-1, 1).bool()
    truth = torch.nn.functional.one_hot(y, 3).movedim(-1, 1).bool()
    inter = (pred & truth).sum((0, 2, 3)).double()
    union = (pred | truth).sum((0, 2, 3)).double()
    torch.testing.assert_close(glob.compute(), (inter / union).mean(), atol=1e-15, rtol=0)


def test_binary_dice():
    g = torch.Generator().manual_seed(4)
    p, y = torch.rand(4, 1, 9, 9, generator=g), torch.randint(0, 2, (4, 1, 9, 9), generator=g)
    m = DiceTorchMetric(mode="binary")
    m.update(p, y)
    torch.testing.assert_close(m.compute(), dice_score(p, y, mode="binary", reduction="mean"))


@pytest.mark.parametrize("kind,aggregation", [("ece", "global"), ("mce", "global"), ("ace", "sample"),
                                              ("ece", "sample")])
def test_calibration_equals_function(kind, aggregation):
    batches = _batches(seed=2)
    m = CalibrationErrorTorchMetric(num_classes=3, kind=kind, aggregation=aggregation, bins=12, reduction="none")
    for p, y in batches:
        m.update(p, y)
    p, y = _all(batches)
    want = calibration_error(p, y, kind=kind, aggregation=aggregation, bins=12)
    if aggregation == "sample":
        want = torch.nanmean(want, 0)
    torch.testing.assert_close(m.compute(), want, atol=1e-12, rtol=0)


def test_forward_reset_and_merge_states():
    batches = _batches(n=4, seed=3)
    whole, left, right = (DiceTorchMetric(num_classes=3) for _ in range(3))
    cal, cal_left, cal_right = (CalibrationErrorTorchMetric(num_classes=3) for _ in range(3))
    for i, (p, y) in enumerate(batches):
        batch_value = whole(p, y)  # forward: this batch's value, and accumulates
        torch.testing.assert_close(batch_value, torch.nanmean(torch.nanmean(dice_score(p, y, mode="multiclass"), 0)))
        cal(p, y)
        (left if i < 2 else right).update(p, y)
        (cal_left if i < 2 else cal_right).update(p, y)
    left.merge_state(right)
    cal_left.merge_state(cal_right)
    torch.testing.assert_close(left.compute(), whole.compute())
    torch.testing.assert_close(cal_left.compute(), cal.compute())
    torch.testing.assert_close(cal.compute(), calibration_error(*_all(batches), aggregation="global",
                                                                reduction="mean"), atol=1e-12, rtol=0)
    whole.reset()
    whole.update(*batches[0])
    torch.testing.assert_close(whole.compute(), torch.nanmean(torch.nanmean(dice_score(*batches[0],
                                                                                       mode="multiclass"), 0)))


def test_errors():
    with pytest.raises(ValueError, match="needs num_classes"):
        DiceTorchMetric()
    m = DiceTorchMetric(num_classes=4)
    p, y = _batches(n=1)[0]
    with pytest.raises(ValueError, match="num_classes=4 differs from the scores. C = 3"):
        m.update(p, y)
    with pytest.raises(ValueError, match="needs binning='width'"):
        CalibrationErrorTorchMetric(num_classes=3, kind="ace")


def test_without_torchmetrics():
    code = (
        "import sys; sys.modules['torchmetrics'] = None\n"
        "import diceloss.metrics as m\n"
        "m.DiceMetric(num_classes=2)\n"
        "try:\n    m.DiceTorchMetric(num_classes=2)\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pip install torchmetrics" in out.stdout


def test_lightning_trainer_logs_the_metrics(tmp_path):
    pl = pytest.importorskip("pytorch_lightning")
    torch.manual_seed(0)
    C = 3
    data = [(torch.randn(2, 4, 8, 8), torch.randint(0, C, (2, 8, 8))) for _ in range(2)]

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Conv2d(4, C, 1)
            self.dice = DiceTorchMetric(num_classes=C)
            self.iou = IoUTorchMetric(num_classes=C, aggregation="global")
            self.ece = CalibrationErrorTorchMetric(num_classes=C)
            self.seen = []

        def training_step(self, batch, _):
            x, y = batch
            logits = self.net(x)
            probs = logits.softmax(1)
            self.seen.append((probs.detach().clone(), y))
            for name in ("dice", "iou", "ece"):
                getattr(self, name).update(probs, y)
                self.log(name, getattr(self, name), on_step=False, on_epoch=True)
            return torch.nn.functional.cross_entropy(logits, y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.5)

    module = Module()
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=None))
    assert len(module.seen) == 2
    p, y = _all(module.seen)
    logged = trainer.callback_metrics
    torch.testing.assert_close(logged["dice"].double(), torch.nanmean(torch.nanmean(dice_score(p, y, mode="multiclass"),
                                                                                    0)), atol=1e-6, rtol=0)
    ref = DiceMetric(num_classes=C)
    for pb, yb in module.seen:
        ref.update(pb, yb)
    torch.testing.assert_close(logged["dice"].double(), ref.compute(), atol=1e-6, rtol=0)
    pred = torch.nn.functional.one_hot(p.argmax(1), C).movedim(-1, 1).bool()
    truth = torch.nn.functional.one_hot(y, C).movedim(-1, 1).bool()
    iou = ((pred & truth).sum((0, 2, 3)) / (pred | truth).sum((0, 2, 3))).double().mean()
    torch.testing.assert_close(logged["iou"].double(), iou, atol=1e-6, rtol=0)
    ece = calibration_error(p, y, aggregation="global", reduction="mean")
    torch.testing.assert_close(logged["ece"].double(), ece, atol=1e-6, rtol=0)
