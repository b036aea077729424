"""diceloss.doctor and ``diceloss doctor``: broken losses fail the right check, every diceloss loss passes."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F

import diceloss
from diceloss import doctor
from diceloss.cli import main
from diceloss.cli.doctor import load_loss
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


def dice_score_summed_over_classes(x, t):
    """The forum's "my Dice is 1.9": a Dice *score* summed over the classes and divided by the batch size."""
    I, P, G = _stats(x, t)
    return ((2 * I + 1e-5) / (P + G + 1e-5)).sum() / x.shape[0]


def dice_score_summed_over_batch(x, t):
    I, P, G = _stats(x, t)
    return ((2 * I + 1e-5) / (P + G + 1e-5)).sum(0).mean()


def dice_score_summed(x, t):
    I, P, G = _stats(x, t)
    return ((2 * I + 1e-5) / (P + G + 1e-5)).sum()


def dice_score(x, t):
    I, P, G = _stats(x, t)
    return ((2 * I + 1e-5) / (P + G + 1e-5)).mean()


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
    "dice_score_summed_over_classes": Broken(
        dice_score_summed_over_classes,
        "perfect",
        cause=("a score, not a loss", "grows", "C = 3", "summed over the classes instead of averaged"),
        others={"wrong": "fail", "range": "fail"},
        text=("return 1 - Dice",),
    ),
    "dice_score": Broken(
        dice_score,
        "wrong",
        cause=("a score, not a loss", "grows"),
        others={"perfect": "fail", "range": "pass"},  # a score in [0, 1]: no sum to name
        text=("return 1 - Dice",),
    ),
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


@pytest.mark.parametrize(
    "loss, count",
    [
        (dice_score_summed_over_classes, "C = 3"),
        (dice_score_summed_over_batch, "B = 2"),
        (dice_score_summed, "B x C = 6"),
    ],
    ids=["classes", "batch", "batch_and_classes"],
)
def test_score_summed_is_named(loss, count):
    """A Dice score summed over classes / batch: every value check names a score and the sum, never a swap."""
    report = doctor.check(loss)
    for name in ("perfect", "wrong", "range"):
        result = report[name]
        assert result.status == "fail", str(report)
        assert "a score, not a loss" in result.cause, str(report)
        assert "1 - Dice" in result.fix, str(report)
        assert "input and target swapped" not in result.cause
    for name in ("perfect", "range"):
        assert count in report[name].cause, str(report)
        assert "instead of averag" in report[name].cause, str(report)
    assert "values from" in report["range"].summary and "above 1" in report["range"].summary


def test_score_sum_with_equal_counts_names_both():
    """C = B = 2: a perfect score of 2 is a sum over the classes or over the batch; both are named."""
    report = doctor.check(dice_score_summed_over_classes, num_classes=2)
    cause = report["range"].cause
    assert "C = 2" in cause and "B = 2" in cause, str(report)


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


def test_many_classes_checks_and_linear_float16_probe():
    """--num-classes 40 runs (the generated problems grow with C), and the float16 probe grows at most as C."""
    sizes = {}
    for C in (3, 40):
        report = doctor.check(good_dice, num_classes=C)
        assert report.ok, str(report)
        shape = report["float16"].summary.split("input of ")[1].split(" gives")[0]
        sizes[C] = math.prod(int(n) for n in shape.split(" x "))
    assert sizes[40] <= sizes[3] * 40 / 3 * 1.05, sizes


def test_float16_overflow_found_with_many_classes():
    report = doctor.check(dice_half_sums, num_classes=40)
    assert report["float16"].status == "fail", str(report)
    assert "65504" in report["float16"].cause


def test_cli_many_classes(user_dir, capsys):
    assert main(["doctor", f"{user_dir}:dice_fn", "--num-classes", "40"]) == 0, capsys.readouterr()
    assert "9 passed, 0 failed" in capsys.readouterr().out


def test_explicit_spatial_too_small_names_both():
    with pytest.raises(ValueError, match=r"at least 2 \* num_classes = 80 positions, got \(8, 8\) \(64"):
        doctor.check(good_dice, num_classes=40, spatial=(8, 8))


EXITS = "import sys\n\nsys.exit({code})\n\n\ndef dice(x, t):\n    return x.sum()\n"

ARGPARSE_SCRIPT = textwrap.dedent(
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    SEEN_ARGV = list(sys.argv)
    """
)


@pytest.mark.parametrize("code", ["0", "1", "'stop'"])
def test_cli_module_calling_sys_exit_is_a_load_error(tmp_path, monkeypatch, capsys, code):
    (tmp_path / "exits.py").write_text(EXITS.format(code=code))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "exits", raising=False)
    assert main(["doctor", "exits.py:dice"]) == 2
    err = capsys.readouterr().err
    assert "sys.exit" in err and "SystemExit" in err and "exits.py" in err, err
    monkeypatch.delitem(sys.modules, "exits", raising=False)
    assert main(["doctor", "exits:dice"]) == 2  # as a module name too
    assert "SystemExit" in capsys.readouterr().err


def test_cli_argparse_script_does_not_hijack_the_command_line(user_dir, tmp_path, monkeypatch, capsys):
    (tmp_path / "train_script.py").write_text(ARGPARSE_SCRIPT + BROKEN_MODULE)
    argv = ["diceloss", "doctor", "train_script.py:dice_fn"]
    monkeypatch.setattr(sys, "argv", list(argv))
    monkeypatch.delitem(sys.modules, "train_script", raising=False)
    try:
        assert main(argv[1:]) == 0, capsys.readouterr()
        assert sys.argv == argv  # restored
        assert sys.modules["train_script"].SEEN_ARGV == ["train_script.py"]
    finally:
        sys.modules.pop("train_script", None)
    assert "9 passed, 0 failed" in capsys.readouterr().out


def test_cli_script_with_required_arguments_is_a_load_error(tmp_path, monkeypatch, capsys):
    script = "import argparse\n\np = argparse.ArgumentParser()\np.add_argument('--data', required=True)\n"
    script += "p.parse_args()\n"
    (tmp_path / "needs_args.py").write_text(script)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["diceloss", "doctor", "needs_args.py:dice"])
    monkeypatch.delitem(sys.modules, "needs_args", raising=False)
    assert main(["doctor", "needs_args.py:dice"]) == 2
    err = capsys.readouterr().err
    assert "SystemExit" in err and "needs_args.py" in err, err
    assert sys.argv == ["diceloss", "doctor", "needs_args.py:dice"]
    sys.modules.pop("needs_args", None)


def test_help_and_docs_say_the_file_is_imported(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["doctor", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "imported" in text and "its top level runs" in text, text
    page = (Path(__file__).resolve().parents[1] / "docs" / "cli" / "doctor.md").read_text()
    section = page.split("# Checking a hand-written loss: `diceloss doctor`")[1].split("\n## ")[0]
    section = " ".join(section.split())
    assert "imported" in section and "its top level runs" in section


def test_cli_kwargs_typo_for_a_function_is_a_load_error(user_dir, capsys):
    assert main(["doctor", f"{user_dir}:dice_fn", "--kwargs", '{"factr": 1.0}']) == 2
    captured = capsys.readouterr()
    assert "'factr'" in captured.err and "factor" in captured.err, captured.err  # what came, what was expected
    assert "--mode" not in captured.err and captured.out == ""


def test_cli_mode_is_passed_to_a_loss_that_takes_one(capsys):
    assert main(["doctor", "diceloss:DiceCELoss", "--mode", "binary"]) == 0, capsys.readouterr()
    assert "9 passed, 0 failed" in capsys.readouterr().out
    assert main(["doctor", "diceloss.functional:dice_loss", "--mode", "multilabel"]) == 0, capsys.readouterr()
    capsys.readouterr()
    # --kwargs wins over --mode, and without --mode the loss keeps its own default
    loss_fn, _ = load_loss("diceloss:DiceLoss", {"mode": "multilabel"}, mode="binary")
    assert loss_fn.mode == "multilabel"
    loss_fn, _ = load_loss("diceloss:DiceLoss", {})
    assert loss_fn.mode == "multiclass"


def float32_inside_dice(x, t):
    """A correct loss that computes in float32 whatever the input dtype (an AMP-safe idiom)."""
    return good_dice(x.float(), t)


def test_gradient_check_of_a_float32_loss_and_many_classes():
    """Correct losses pass the gradient check when they compute in float32, and at C = 150 (tiny gradients)."""
    report = doctor.check(float32_inside_dice)
    assert report["gradient"].passed, str(report)
    assert "float32" in report["gradient"].summary
    report = doctor.check(good_dice, num_classes=150)
    assert report.ok, str(report)
