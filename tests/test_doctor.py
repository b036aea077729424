"""diceloss.doctor and ``diceloss doctor``: broken losses fail the right check, every diceloss loss passes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F

import diceloss
from diceloss import doctor
from diceloss.cli import main
from diceloss.compat import smp as compat_smp

# small tensors: on a shared machine thread start-up dominates (the float16 probe is ~0.5M elements)
pytestmark = pytest.mark.usefixtures("one_thread")


def _onehot(t: torch.Tensor, C: int, dtype) -> torch.Tensor:
    return F.one_hot(t, C).permute(0, 3, 1, 2).to(dtype)


def _stats(x, t, dims=(2, 3)):
    p = x.softmax(1)
    g = _onehot(t, x.shape[1], x.dtype if x.dtype != torch.float16 else torch.float32)
    return (p * g).sum(dims), p.sum(dims), g.sum(dims)


def good_dice(x, t):
    I, P, G = _stats(x, t)
    return 1 - ((2 * I + 1e-5) / (P + G + 1e-5)).mean()


def dice_item(x, t):
    return good_dice(x, t).item()


def dice_detached(x, t):
    return good_dice(x, t).detach()


def dice_summed_over_classes(x, t):
    I, P, G = _stats(x, t)
    return 1 - ((2 * I + 1e-5) / (P + G + 1e-5)).sum(1).mean()


def dice_no_factor_2(x, t):
    I, P, G = _stats(x, t)
    return 1 - ((I + 1e-5) / (P + G + 1e-5)).mean()


def dice_smooth_denominator_only(x, t):
    I, P, G = _stats(x, t)
    return 1 - (2 * I / (P + G + 1.0)).mean()


def dice_weights_in_numerator(x, t):
    I, P, G = _stats(x, t)
    w = torch.tensor([1.0, 2.0, 4.0], dtype=I.dtype)
    return 1 - (2 * w * I / (P + G + 1e-5)).mean()


def negative_dice(x, t):
    I, P, G = _stats(x, t)
    return -((2 * I + 1e-5) / (P + G + 1e-5)).mean()


def dice_no_smoothing(x, t):
    I, P, G = _stats(x, t)
    return 1 - (2 * I / (P + G)).mean()


def dice_summed_over_batch(x, t):
    I, P, G = _stats(x, t)
    return (1 - (2 * I + 1e-5) / (P + G + 1e-5)).mean(1).sum()


def hard_dice(x, t):
    pred = _onehot(x.argmax(1), x.shape[1], x.dtype)
    g = _onehot(t, x.shape[1], x.dtype)
    return 1 - ((2 * (pred * g).sum((2, 3)) + 1e-5) / ((pred + g).sum((2, 3)) + 1e-5)).mean() + 0 * x.sum()


def dice_half_sums(x, t):
    p = x.softmax(1)
    g = _onehot(t, x.shape[1], x.dtype)  # float16 one-hot: float16 sums overflow
    return 1 - ((2 * (p * g).sum((2, 3)) + 1e-5) / ((p + g).sum((2, 3)) + 1e-5)).mean()


class _DiceFunction(torch.autograd.Function):
    """A Dice loss with a hand-written backward: ``scale`` corrupts it (-1: sign error, B: missing 1/B)."""

    scale = 1.0

    @staticmethod
    def forward(ctx, x, t):
        ctx.save_for_backward(x, t)
        return good_dice(x, t)

    @classmethod
    def backward(cls, ctx, grad_out):
        x, t = ctx.saved_tensors
        with torch.enable_grad():
            xx = x.detach().requires_grad_(True)
            (gx,) = torch.autograd.grad(good_dice(xx, t), xx)
        return cls.scale * gx * grad_out, None


class WrongSignDice(_DiceFunction):
    scale = -1.0


class MissingBatchScaleDice(_DiceFunction):
    scale = 2.0  # the forward averages over B = 2 samples; this backward forgets the 1/B


def test_good_hand_written_loss_passes():
    report = doctor.check(good_dice)
    assert report.ok, str(report)
    assert [c.name for c in report.checks] == list(doctor.CHECKS)
    assert all(c.status == "pass" for c in report.checks)


class Broken(NamedTuple):
    """A broken loss, the check it must fail, and what the report must say.

    cause / summary / text: phrases of the failing check's cause and summary, and of the whole report's text.
    others: the status ("pass", "fail", "skip") of other checks. failed: the exact list of failed checks.
    """

    loss: Callable
    check: str
    cause: tuple[str, ...] = ()
    summary: tuple[str, ...] = ()
    others: dict = {}
    failed: list | None = None
    text: tuple[str, ...] = ()


BROKEN = {
    "wrong_sign_backward": Broken(
        WrongSignDice.apply,
        "gradient",
        cause=("sign error",),
        summary=("-1.000",),
        # it climbs; the values themselves are right
        others={"descent": "fail", "perfect": "pass", "range": "pass"},
        text=("WrongSignDice.apply",),
    ),
    "missing_batch_scale_in_backward": Broken(
        MissingBatchScaleDice.apply,
        "gradient",
        cause=("batch size B = 2",),
        summary=("2 x",),
        others={"descent": "pass"},  # Adam does not notice a scale: only the gradient check does
    ),
    "item_cuts_the_graph": Broken(
        dice_item,
        "graph",
        cause=(".item()",),
        others={"gradient": "skip", "descent": "skip", "perfect": "pass"},  # values are still checked
        failed=["graph"],
    ),
    "detached_result": Broken(dice_detached, "graph", summary=("detached",)),
    "dice_summed_over_classes": Broken(
        dice_summed_over_classes,
        "range",
        cause=("summed over the classes",),
        summary=("Dice above 1",),
        others={"perfect": "fail"},
    ),
    "missing_factor_2": Broken(
        dice_no_factor_2, "perfect", cause=("factor 2",), others={"gradient": "pass", "range": "pass"}
    ),
    "smoothing_in_denominator_only": Broken(dice_smooth_denominator_only, "perfect", cause=("denominator only",)),
    "class_weights_in_numerator_only": Broken(dice_weights_in_numerator, "range", cause=("numerator",)),
    "negative_dice": Broken(negative_dice, "range", cause=("-Dice",)),
    "no_smoothing_fails_on_empty_masks": Broken(
        dice_no_smoothing, "empty", summary=("empty target, empty prediction",)
    ),
    "sum_over_batch": Broken(dice_summed_over_batch, "batch", cause=("sums over the samples",)),
    "hard_argmax_is_flat": Broken(hard_dice, "gradient", summary=("flat",)),
    "float16_overflow": Broken(dice_half_sums, "float16", cause=("65504",), failed=["float16"]),
}


@pytest.mark.parametrize("case", list(BROKEN.values()), ids=list(BROKEN))
def test_broken_loss_fails_its_check(case):
    report = doctor.check(case.loss)
    result = report[case.check]
    assert result.status == "fail", str(report)
    for phrase in case.cause:
        assert phrase in result.cause
    for phrase in case.summary:
        assert phrase in result.summary
    for name, status in case.others.items():
        assert report[name].status == status, f"{name}: {report[name].status}"
    if case.failed is not None:
        assert report.failed == case.failed
    for phrase in case.text:
        assert phrase in str(report)


def test_report_text_and_errors():
    report = doctor.check(dice_no_factor_2)
    text = str(report)
    assert text.startswith("diceloss doctor: dice_no_factor_2 (mode=multiclass")
    assert "FAIL  perfect" in text and "likely cause:" in text and "fix:" in text
    assert text.rstrip().endswith("8 passed, 1 failed, 0 skipped")
    with pytest.raises(KeyError, match="no check named"):
        report["speed"]
    with pytest.raises(ValueError, match="mode must be one of"):
        doctor.check(good_dice, mode="semantic")
    with pytest.raises(ValueError, match="inputs must be one of"):
        doctor.check(good_dice, inputs="scores")
    with pytest.raises(TypeError, match="callable"):
        doctor.check(3)
    with pytest.raises(ValueError, match="num_classes"):
        doctor.check(good_dice, num_classes=1)


def test_loss_that_rejects_the_input():
    def binary_only(x, t):
        if x.shape[1] != 1:
            raise ValueError("expects one channel")
        return x.sum()

    report = doctor.check(binary_only)
    assert report["graph"].status == "fail" and "expects one channel" in report["graph"].summary
    assert all(c.status == "skip" for c in report.checks[1:])


@pytest.mark.parametrize(
    "make, mode, inputs, target",
    [
        (lambda: diceloss.DiceLoss(), "multiclass", "logits", "index"),
        (lambda: diceloss.JaccardLoss(), "multiclass", "logits", "index"),
        (lambda: diceloss.TverskyLoss(alpha=0.3, beta=0.7, exponent=0.75), "multiclass", "logits", "index"),
        (lambda: diceloss.GeneralizedDiceLoss(), "multiclass", "logits", "index"),
        (lambda: diceloss.DiceCELoss(), "multiclass", "logits", "index"),
        (lambda: diceloss.DiceFocalLoss(), "multiclass", "logits", "index"),
        (lambda: diceloss.DiceLoss(log=True, include_background=False), "multiclass", "logits", "onehot"),
        (lambda: diceloss.DiceCELoss(from_logits=False, batch_dice=True), "multiclass", "probs", "onehot"),
        (lambda: diceloss.DiceLoss("binary", squared=True), "binary", "logits", "index"),
        (lambda: diceloss.DiceFocalLoss("binary", from_logits=False), "binary", "probs", "index"),
        (lambda: diceloss.JaccardLoss("multilabel", soft_label=True), "multilabel", "logits", "index"),
        (
            lambda: diceloss.GeneralizedDiceLoss("multilabel", from_logits=False),
            "multilabel",
            "probs",
            "index",
        ),
        (lambda: compat_smp.DiceLoss("multiclass"), "multiclass", "logits", "index"),
    ],
)
def test_every_diceloss_loss_passes(make, mode, inputs, target):
    report = doctor.check(make(), mode=mode, inputs=inputs, target=target)
    assert report.ok, str(report)


# ------------------------------------------------------------------------------------------------ CLI

BROKEN_MODULE = textwrap.dedent(
    """
    import torch
    import torch.nn.functional as F
    from torch import nn


    def _dice(x, t, factor=2.0):
        p = x.softmax(1)
        g = F.one_hot(t, x.shape[1]).permute(0, 3, 1, 2).float()
        I, S = (p * g).sum((2, 3)), (p + g).sum((2, 3))
        return 1 - ((factor * I + 1e-5) / (S + 1e-5)).mean()


    class GoodDice(nn.Module):
        def __init__(self, factor=2.0):
            super().__init__()
            self.factor = factor

        def forward(self, x, t):
            return _dice(x, t, self.factor)


    def dice_fn(x, t, factor=2.0):
        return _dice(x, t, factor)


    class SignFlip(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, t):
            ctx.save_for_backward(x, t)
            return _dice(x, t)

        @staticmethod
        def backward(ctx, g):
            x, t = ctx.saved_tensors
            with torch.enable_grad():
                xx = x.detach().requires_grad_(True)
                (gx,) = torch.autograd.grad(_dice(xx, t), xx)
            return -gx * g, None
    """
)


@pytest.fixture
def user_dir(tmp_path, monkeypatch, request):
    name = f"user_losses_{request.node.name.replace('[', '_').replace(']', '').replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(BROKEN_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield name
    sys.modules.pop(name, None)


def test_cli_passing_module_class(user_dir, capsys):
    assert main(["doctor", f"{user_dir}:GoodDice"]) == 0
    out = capsys.readouterr().out
    assert "9 passed, 0 failed" in out


def test_cli_kwargs_and_function(user_dir, capsys):
    assert main(["doctor", f"{user_dir}:GoodDice", "--kwargs", '{"factor": 1.0}']) == 1
    assert "factor 2" in capsys.readouterr().out
    assert main(["doctor", f"{user_dir}:dice_fn", "--kwargs", '{"factor": 1.0}']) == 1
    assert main(["doctor", f"{user_dir}:dice_fn"]) == 0


def test_cli_autograd_function_uses_apply(user_dir, capsys):
    assert main(["doctor", f"{user_dir}:SignFlip", "--mode", "multiclass", "--inputs", "logits"]) == 1
    out = capsys.readouterr().out
    assert "SignFlip" in out and "FAIL  gradient" in out and "sign error" in out


def test_cli_file_path_and_load_errors(user_dir, tmp_path, capsys):
    assert main(["doctor", f"{tmp_path / user_dir}.py:GoodDice"]) == 0
    capsys.readouterr()
    assert main(["doctor", "no_such_module_xyz:Loss"]) == 2
    assert "cannot import module" in capsys.readouterr().err
    assert main(["doctor", f"{user_dir}:Missing"]) == 2
    assert "has no attribute" in capsys.readouterr().err
    assert main(["doctor", f"{user_dir}:GoodDice", "--kwargs", "[1]"]) == 2
    assert main(["doctor", f"{user_dir}:GoodDice", "--kwargs", '{"nope": 1}']) == 2
    assert "cannot build" in capsys.readouterr().err
    assert main(["doctor", "GoodDice"]) == 2


def test_cli_subprocess_exit_code(tmp_path):
    (tmp_path / "sub_losses.py").write_text(BROKEN_MODULE)
    cmd = [sys.executable, "-m", "diceloss", "doctor", "sub_losses:SignFlip", "--mode", "multiclass"]
    proc = subprocess.run(
        cmd,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL  gradient" in proc.stdout
