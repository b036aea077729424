"""One test per bad-input rule of issue 2: the exception type, and a message naming expected and got.

Every error must come before any computation: the fixture ``no_compute`` replaces the backend
dispatch with one that fails loudly, so a check that runs too late shows up as that failure rather than
as the expected ValueError / TypeError.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from conftest import LOSSES, MODES, functions, losses, modules, seeded

import diceloss
from diceloss import _checks, _layout, stats
from diceloss import functional as DF

# every check below that concerns all losses runs for each row of the registry (tests/conftest.py)
ALL_FUNCS = functions()
ALL_MODULES = modules()
WEIGHTED_FUNCS = functions(lambda info: info.takes("weight"))
WEIGHTED_MODULES = modules(lambda info: info.takes("weight"))
ABSENT_MODULES = modules(lambda info: info.takes("absent"))
COMPOUND_FUNCS = functions(lambda info: info.compound)
COMPOUND_MODULES = modules(lambda info: info.compound)

pytestmark = pytest.mark.usefixtures("auto_value_checks")


class ComputationStarted(Exception):
    pass


@pytest.fixture
def no_compute(monkeypatch):
    def refuse(*args, **kwargs):
        raise ComputationStarted("the statistics were computed before the inputs were checked")

    # every head and compute_stats reach a backend through diceloss.stats.stats_from_layout, which asks the
    # dispatcher (``resolve``, looked up in the stats package) for one: refuse there
    monkeypatch.setattr(stats, "resolve", refuse)
    # a loss that is not a head starts computing elsewhere (a distance transform, a sort, a skeleton, its own
    # sums): the registry names where, and those functions refuse too
    for hook in sorted({hook for info in LOSSES for hook in info.compute_hooks}):
        monkeypatch.setattr(hook, refuse)


def _mc(B=2, C=3, S=(4, 5)):
    g = seeded(0)
    return torch.randn(B, C, *S, generator=g), torch.randint(0, C, (B, *S), generator=g)


def _raises(exc, pattern, fn, *args, **kwargs):
    with pytest.raises(exc) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert re.search(pattern, msg), f"message {msg!r} does not match {pattern!r}"
    assert type(info.value) is exc  # not an AssertionError, not a torch RuntimeError / IndexError
    return msg


@pytest.mark.parametrize("fn", ALL_FUNCS)
def test_no_compute_refuses_valid_inputs(no_compute, fn):
    # the fixture is live: a valid call reaches the statistics (or a registered compute hook) and is stopped there
    x, t = _mc()
    with pytest.raises(ComputationStarted):
        fn(x, t)
    with pytest.raises(ComputationStarted):
        diceloss.compute_stats(x, t)


# ----------------------------------------------------------------------------------------------
# shapes


@pytest.mark.parametrize("info", LOSSES)
def test_wrong_number_of_dimensions(no_compute, info):
    fn = info.call
    x, t = _mc()
    msg = _raises(ValueError, r"\(2, 4, 5\).*got \(4, 5\)", fn, x, t[0])
    assert "class indices" in msg
    _raises(ValueError, r"at least one spatial dimension, got shape \(2, 3\)", fn, x[:, :, 0, 0], t[:, 0, 0])
    _raises(ValueError, r"batch dimension.*got shape \(3,\)", fn, torch.randn(3), t)
    if "multilabel" in info.modes:
        _raises(
            ValueError,
            r"multilabel mode expects a target of the input's shape \(2, 3, 4, 5\), got \(2, 4, 5\)",
            fn,
            x,
            t,
            mode="multilabel",
        )
    else:  # refused as a mode, whatever the target
        _raises(ValueError, r"mode must be .*got 'multilabel'", fn, x, t, mode="multilabel")
    if info.min_spatial_dims > 1:  # a rank the loss does not take: refused, naming the rank it got
        _raises(ValueError, r"spatial dimension", fn, x[..., 0], t[..., 0])
    if info.max_spatial_dims is not None:
        d = info.max_spatial_dims + 1
        xd, td = x.reshape(2, 3, *([1] * (d - 2)), 4, 5), t.reshape(2, *([1] * (d - 2)), 4, 5)
        _raises(ValueError, r"spatial dimension", fn, xd, td)


@pytest.mark.parametrize("fn", ALL_FUNCS)
def test_batch_shape_mismatch(no_compute, fn):
    x, t = _mc()
    _raises(ValueError, r"batch size of target \(1\) differs from input's \(2\)", fn, x, t[:1])
    _raises(
        ValueError,
        r"input \(2, 1, 4, 5\) and target \(1, 1, 4, 5\)",
        fn,
        x[:, :1],
        t[:1, None].float(),
        mode="binary",
    )


@pytest.mark.parametrize("fn", ALL_FUNCS)
def test_spatial_shape_mismatch(no_compute, fn):
    x, t = _mc()
    _raises(
        ValueError, r"spatial shape of target \(4, 4\) differs from the input's \(4, 5\)", fn, x, t[..., :4]
    )
    _raises(
        ValueError,
        r"expects input \(B, 1, \*spatial\).*got input \(2, 1, 4, 5\) and target \(2, 1, 4, 4\)",
        fn,
        x[:, :1],
        t[:, None, :, :4].float(),
        mode="binary",
    )
    onehot = F.one_hot(t, 3).movedim(-1, 1).float()
    _raises(
        ValueError, r"must have the input's shape \(2, 3, 4, 5\), got \(2, 3, 4, 4\)", fn, x, onehot[..., :4]
    )


def test_one_hot_with_wrong_number_of_classes(no_compute):
    x, t = _mc()
    onehot4 = F.one_hot(t, 4).movedim(-1, 1).float()
    _raises(
        ValueError,
        r"one-hot / soft probabilities \(B, C, \*spatial\) = \(2, 3, 4, 5\); got \(2, 4, 4, 5\)",
        DF.dice_loss,
        x,
        onehot4,
    )


def test_mask_shape(no_compute):
    x, t = _mc()
    _raises(
        ValueError,
        r"mask must have shape \(B, \*spatial\) = \(2, 4, 5\) or \(B, 1, \*spatial\), got \(2, 5, 4\)",
        DF.dice_loss,
        x,
        t,
        torch.ones(2, 5, 4),
    )
    _raises(TypeError, r"mask must be a torch.Tensor, got list", DF.dice_loss, x, t, [[1]])


def test_empty_batch_or_no_class(no_compute):
    x, t = _mc()
    _raises(ValueError, r"at least one sample.*got shape \(0, 3, 4, 5\)", DF.dice_loss, x[:0], t[:0])
    _raises(
        ValueError,
        r"one class, got shape \(2, 0, 4, 5\)",
        DF.dice_loss,
        x[:, :0],
        x[:, :0],
        mode="multilabel",
    )


# ----------------------------------------------------------------------------------------------
# values


@pytest.mark.parametrize("fn", ALL_FUNCS)
@pytest.mark.parametrize("bad", [3, 255, -1, -100])
def test_class_index_out_of_range(no_compute, fn, bad):
    x, t = _mc()
    t[1, 2, 3] = bad
    msg = _raises(
        ValueError, rf"class indices must be in \[0, 2\] for input with C = 3, got \[{bad}\]", fn, x, t
    )
    assert "ignore_index" in msg


def test_class_index_out_of_range_names_the_ignore_index(no_compute):
    x, t = _mc()
    t[0, 0, 0] = 255
    t[0, 0, 1] = 7
    msg = _raises(ValueError, r"got \[7\] \(ignore_index is 255\)", DF.dice_loss, x, t, ignore_index=255)
    assert "255]" not in msg.split("got")[1].split("(")[0]


def test_ignore_index_values_are_accepted():
    x, t = _mc()
    for ii in (255, -100, -1, 1000):
        t2 = t.clone()
        t2[:, 0] = ii
        assert torch.isfinite(DF.dice_loss(x, t2, ignore_index=ii))


def test_fractional_float_index_target(no_compute):
    x, t = _mc()
    msg = _raises(ValueError, r"whole numbers; got fractional values", DF.dice_loss, x, t.float() + 0.25)
    assert "(B, C, *spatial)" in msg


def test_bool_index_target(no_compute):
    x, t = _mc()
    _raises(TypeError, r"integer .*got dtype torch.bool", DF.dice_loss, x, t > 0)


@pytest.mark.parametrize("mode", ["binary", "multilabel", "multiclass"])
@pytest.mark.parametrize("value", [1.5, -0.25, float("nan")])
def test_float_target_outside_unit_interval(no_compute, mode, value):
    x, t = _mc()
    if mode == "binary":
        x, tf = x[:, :1], (t[:, None] > 0).float()
    else:
        tf = F.one_hot(t, 3).movedim(-1, 1).float()
    tf[0, 0, 0, 0] = value
    _raises(
        ValueError, r"target values must be in \[0, 1\].*got values in \[", DF.dice_loss, x, tf, mode=mode
    )


def test_binary_target_outside_unit_interval_mentions_ignore_index():
    x, t = _mc()
    tf = (t[:, None] > 0).float()
    tf[0, 0, 0, 0] = 2.0
    _raises(
        ValueError,
        r"\[0, 1\] \(or ignore_index, 255\), got values in \[0, 2\]",
        DF.dice_loss,
        x[:, :1],
        tf,
        mode="binary",
        ignore_index=255,
    )
    tf[0, 0, 0, 0] = 255.0
    assert torch.isfinite(DF.dice_loss(x[:, :1], tf, mode="binary", ignore_index=255))


@pytest.mark.parametrize("fn", ALL_FUNCS)
@pytest.mark.parametrize("value", [1.2, -0.1])
def test_probabilities_outside_unit_interval(no_compute, fn, value):
    x, t = _mc()
    p = torch.softmax(x, 1)
    p[0, 0, 0, 0] = value
    msg = _raises(
        ValueError,
        r"from_logits=False expects probabilities in \[0, 1\], got values in \[",
        fn,
        p,
        t,
        from_logits=False,
    )
    assert "from_logits=True" in msg


@pytest.mark.parametrize("fn", ALL_FUNCS)
def test_single_class_in_multiclass_mode(no_compute, fn):
    x, t = _mc()
    msg = _raises(ValueError, r"at least 2 classes \(C >= 2\).*got C = 1", fn, x[:, :1], torch.zeros_like(t))
    assert "mode='binary'" in msg


@pytest.mark.parametrize("fn", ALL_FUNCS)
def test_soft_target_not_summing_to_one(no_compute, fn):
    x, t = _mc()
    soft = torch.softmax(torch.randn(2, 3, 4, 5), 1) * 0.9
    msg = _raises(
        ValueError,
        r"must sum to 1 over the classes at every position, got sums in \[0\.9, 0\.9\]",
        fn,
        x,
        soft,
    )
    assert "multilabel" not in msg


@pytest.mark.parametrize("fn", ALL_FUNCS)
def test_multi_hot_target_points_to_multilabel(no_compute, fn):
    x, t = _mc()
    multi = F.one_hot(t, 3).movedim(-1, 1).float()
    multi[:, 0] = 1.0  # background on everywhere as well
    _raises(ValueError, r"got sums in \[1, 2\].*multi-label: use mode='multilabel'", fn, x, multi)


def test_multi_hot_ignores_masked_positions():
    # rows that do not sum to 1 are fine where the mask removes them
    x, t = _mc()
    multi = F.one_hot(t, 3).movedim(-1, 1).float()
    multi[:, 0, 0] = 1.0
    mask = torch.ones(2, 4, 5, dtype=torch.bool)
    mask[:, 0] = False
    assert torch.isfinite(DF.dice_loss(x, multi, mask))


@pytest.mark.parametrize("fn", ALL_FUNCS)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
def test_integer_input(no_compute, fn, dtype):
    x, t = _mc()
    xi = (x > 0).to(dtype)
    msg = _raises(TypeError, rf"input must be a floating tensor of logits, got dtype {dtype}", fn, xi, t)
    assert "dice_score" in msg


def test_input_and_target_must_be_tensors(no_compute):
    x, t = _mc()
    _raises(TypeError, r"input must be a torch.Tensor, got ndarray", DF.dice_loss, x.numpy(), t)
    _raises(TypeError, r"target must be a torch.Tensor, got list", DF.dice_loss, x, t.tolist())


def test_complex_input(no_compute):
    x, t = _mc()
    _raises(TypeError, r"complex", DF.dice_loss, x.to(torch.complex64), t)


# ----------------------------------------------------------------------------------------------
# weight


@pytest.mark.parametrize("fn", WEIGHTED_FUNCS)
@pytest.mark.parametrize("n", [2, 4])
def test_weight_wrong_length(no_compute, fn, n):
    x, t = _mc()
    msg = _raises(
        ValueError, rf"expected length 3 \(C of the input\), got shape \({n},\)", fn, x, t, weight=[1.0] * n
    )
    assert "one entry per class" in msg


def test_weight_wrong_length_without_background(no_compute):
    # the weight has length C also with include_background=False
    x, t = _mc()
    _raises(
        ValueError,
        r"expected length 3.*got shape \(2,\)",
        DF.dice_loss,
        x,
        t,
        weight=[1.0, 2.0],
        include_background=False,
    )


def test_weight_wrong_length_binary(no_compute):
    x, t = _mc()
    _raises(
        ValueError,
        r"expected length 1 .*1 in binary mode.*got shape \(3,\)",
        DF.dice_loss,
        x[:, :1],
        (t[:, None] > 0).float(),
        mode="binary",
        weight=[1.0, 2.0, 3.0],
    )


@pytest.mark.parametrize("cls", WEIGHTED_MODULES)
@pytest.mark.parametrize("weight", [[1.0, -0.5, 1.0], [1.0, float("nan"), 1.0], [float("inf"), 1.0, 1.0]])
def test_weight_negative_or_not_finite_in_constructor(cls, weight):
    _raises(ValueError, r"weight must be finite and non-negative, got \[", cls, weight=weight)
    _raises(ValueError, r"weight must be finite and non-negative", cls, weight=torch.tensor(weight))


def test_weight_bad_type_or_shape():
    _raises(
        TypeError,
        r"weight must be a sequence of numbers or a 1-D tensor, got",
        diceloss.DiceLoss,
        weight=["a", "b"],
    )
    _raises(
        ValueError,
        r"weight must be 1-D with one entry per class, got shape \(3, 1\)",
        diceloss.DiceLoss,
        weight=torch.ones(3, 1),
    )
    _raises(
        TypeError,
        r"weight must be a real tensor, got dtype torch.complex64",
        diceloss.DiceLoss,
        weight=torch.ones(3, dtype=torch.complex64),
    )


def test_weight_negative_in_function(no_compute):
    x, t = _mc()
    _raises(
        ValueError,
        r"weight must be finite and non-negative, got \[1.0, -2.0, 1.0\]",
        DF.dice_loss,
        x,
        t,
        weight=[1.0, -2.0, 1.0],
    )


def test_generalized_dice_takes_no_weight():
    with pytest.raises(TypeError, match="weight"):
        diceloss.GeneralizedDiceLoss(weight=[1.0, 2.0])


# ----------------------------------------------------------------------------------------------
# options (raised by the constructors)


@pytest.mark.parametrize("info", LOSSES)
def test_unknown_mode(info):
    cls = info.module
    if info.modes == MODES:
        _raises(
            ValueError, r"mode must be one of 'binary', 'multiclass', 'multilabel'; got 'multi'", cls, "multi"
        )
    else:  # the modes it takes, named in the message (in any order)
        msg = _raises(ValueError, r"mode must be one of .*; got 'multi'", cls, "multi")
        assert all(repr(m) in msg for m in info.modes)
    _raises(ValueError, r"mode must be one of .*got 'multi'", cls, mode="multi")


@pytest.mark.parametrize("cls", ALL_MODULES)
def test_unknown_reduction(cls):
    _raises(ValueError, r"reduction must be one of 'mean', 'sum'.*got 'avg'", cls, reduction="avg")


@pytest.mark.parametrize("cls", COMPOUND_MODULES)
def test_compound_rejects_reduction_none(cls):
    msg = _raises(
        ValueError, rf"{cls.__name__} .*reduction='mean' or 'sum', not 'none'", cls, reduction="none"
    )
    assert "different shapes" in msg


@pytest.mark.parametrize("fn", COMPOUND_FUNCS)
def test_compound_function_rejects_reduction_none(no_compute, fn):
    x, t = _mc()
    _raises(ValueError, r"not 'none'", fn, x, t, reduction="none")


def test_unknown_weighting():
    _raises(
        ValueError,
        r"weighting must be one of 'square', 'simple', 'uniform'; got 'sq'",
        diceloss.GeneralizedDiceLoss,
        weighting="sq",
    )


@pytest.mark.parametrize("cls", ABSENT_MODULES)
def test_unknown_absent(cls):
    _raises(ValueError, r"absent must be one of 'include', 'exclude'; got 'drop'", cls, absent="drop")


@pytest.mark.parametrize("cls", modules(lambda info: info.plumbs("backend")))
def test_unknown_backend(cls):
    _raises(ValueError, r"backend must be one of 'auto', 'reference'.*got 'cuda'", cls, backend="cuda")


@pytest.mark.parametrize("info", losses(lambda info: not info.plumbs("backend")))
def test_no_backend_keyword_is_a_type_error(info):
    # a loss with one implementation takes no backend: passing one is a TypeError naming it, not ignored
    _raises(TypeError, r"backend", info.module, backend="reference")
    x, t = _mc()
    _raises(TypeError, r"backend", info.function, x, t, backend="reference")


@pytest.mark.parametrize(
    "kw,pattern",
    [
        ({"alpha": -0.1}, r"alpha must be finite, >= 0; got -0.1"),
        ({"beta": float("nan")}, r"beta must be finite, >= 0; got nan"),
        ({"alpha": 0.0, "beta": 0.0}, r"alpha \+ beta must be > 0.*alpha=0.0, beta=0.0"),
        ({"exponent": 0.0}, r"exponent must be finite, > 0; got 0.0"),
        ({"exponent": -1.0}, r"exponent must be finite, > 0; got -1.0"),
        ({"exponent": float("inf")}, r"exponent must be finite"),
    ],
)
def test_tversky_options_out_of_range(kw, pattern):
    _raises(ValueError, pattern, diceloss.TverskyLoss, **kw)


def test_tversky_option_types():
    _raises(TypeError, r"alpha must be a number, got str", diceloss.TverskyLoss, alpha="0.3")
    _raises(TypeError, r"exponent must be a number, got bool", diceloss.TverskyLoss, exponent=True)


@pytest.mark.parametrize("cls", modules(lambda info: info.takes("smooth_nr", "smooth_dr")))
@pytest.mark.parametrize(
    "kw,pattern",
    [
        ({"smooth_nr": -1.0}, r"smooth_nr must be finite, >= 0; got -1.0"),
        ({"smooth_dr": -1e-5}, r"smooth_dr must be finite, >= 0; got -1e-05"),
        ({"smooth_dr": float("inf")}, r"smooth_dr must be finite"),
        (
            {"smooth_nr": 1.0, "smooth_dr": 0.5},
            r"smooth_nr \(1.0\) must not exceed smooth_dr \(0.5\).*above 1",
        ),
    ],
)
def test_smoothing_out_of_range(cls, kw, pattern):
    _raises(ValueError, pattern, cls, **kw)


@pytest.mark.parametrize(
    "kw,pattern",
    [
        ({"label_smoothing": 1.5}, r"label_smoothing must be finite, >= 0 and <= 1.0; got 1.5"),
        ({"label_smoothing": -0.1}, r"label_smoothing must be finite"),
        ({"lambda_ce": -1.0}, r"lambda_ce must be finite, >= 0; got -1.0"),
        ({"lambda_dice": float("nan")}, r"lambda_dice must be finite"),
    ],
)
def test_dice_ce_options(kw, pattern):
    _raises(ValueError, pattern, diceloss.DiceCELoss, **kw)


@pytest.mark.parametrize(
    "kw,pattern",
    [
        ({"gamma": -1.0}, r"gamma must be finite, >= 0; got -1.0"),
        ({"lambda_focal": -2.0}, r"lambda_focal must be finite, >= 0; got -2.0"),
    ],
)
def test_dice_focal_options(kw, pattern):
    _raises(ValueError, pattern, diceloss.DiceFocalLoss, **kw)


@pytest.mark.parametrize("cls", ALL_MODULES)
def test_ignore_index_type(cls):
    _raises(TypeError, r"ignore_index must be an int or None, got 1.5", cls, ignore_index=1.5)
    _raises(TypeError, r"ignore_index must be an int or None, got True", cls, ignore_index=True)


def test_distributed_needs_batch_dice():
    _raises(ValueError, r"distributed=True .*batch_dice=False", diceloss.DiceLoss, distributed=True)


def test_options_fail_in_the_constructor_not_at_the_first_batch():
    # each module refuses a bad option when it is built; the functions refuse it before computing
    for info in LOSSES:
        with pytest.raises(ValueError):
            info.make(reduction="bogus")
    x, t = _mc()
    for info in LOSSES:
        with pytest.raises(ValueError):
            info.call(x, t, reduction="bogus")


@pytest.mark.parametrize("info", LOSSES)
def test_option_errors_before_computation(no_compute, info):
    fn = info.function
    x, t = _mc()
    _raises(ValueError, r"mode must be one of", fn, x, t, mode="foo")
    if info.takes("smooth_nr", "smooth_dr"):
        _raises(ValueError, r"smooth_nr .* must not exceed smooth_dr", fn, x, t, smooth_nr=1.0, smooth_dr=0.0)
    else:  # the loss has no smoothing: the keyword itself is refused
        _raises(TypeError, r"smooth_nr", fn, x, t, smooth_nr=1.0)


def test_one_hot_ignore_index_must_name_a_channel(no_compute):
    x, t = _mc()
    onehot = F.one_hot(t, 3).movedim(-1, 1).float()
    _raises(
        ValueError,
        r"ignore_index must name a channel in \[0, 3\), got 255",
        DF.dice_loss,
        x,
        onehot,
        ignore_index=255,
    )


def test_no_class_left(no_compute):
    x, t = _mc(C=2)
    _raises(
        ValueError,
        r"no class is left to score: num_classes=2, include_background=False, ignore_index=1",
        DF.dice_loss,
        x,
        t,
        include_background=False,
        ignore_index=1,
    )


# ----------------------------------------------------------------------------------------------
# devices


def test_tensors_on_different_devices(no_compute):
    x, t = _mc()
    _raises(ValueError, r"one device, got input on cpu, target on meta", DF.dice_loss, x, t.to("meta"))
    _raises(
        ValueError,
        r"input on cpu, target on cpu, mask on meta",
        DF.dice_loss,
        x,
        t,
        torch.ones(2, 4, 5, device="meta"),
    )
    _raises(ValueError, r"weight on meta", DF.dice_loss, x, t, weight=torch.ones(3, device="meta"))


# ----------------------------------------------------------------------------------------------
# the value-check switch


def test_value_checks_switch():
    x, t = _mc()
    p = torch.softmax(x, 1)
    p[0, 0, 0, 0] = 1.5
    with pytest.raises(ValueError):
        DF.dice_loss(p, t, from_logits=False)
    previous = diceloss.set_value_checks(False)
    try:
        assert previous is None
        assert not _checks.value_checks_enabled(torch.device("cpu"))
        # the value is not read: no error, a (meaningless) number
        assert torch.isfinite(DF.dice_loss(p, t, from_logits=False))
        # shape, dtype and device checks still run
        with pytest.raises(ValueError, match="batch size"):
            DF.dice_loss(x, t[:1])
        with pytest.raises(TypeError, match="floating"):
            DF.dice_loss(t[:, None].expand(2, 3, 4, 5), t)
    finally:
        assert diceloss.set_value_checks(previous) is False
    assert _checks.value_checks_enabled(torch.device("cpu"))
    # automatic: off on CUDA (a check there would synchronise the host with the device)
    assert not _checks.value_checks_enabled(torch.device("cuda"))
    diceloss.set_value_checks(True)
    assert _checks.value_checks_enabled(torch.device("cuda"))
    _raises(
        TypeError,
        r"set_value_checks expects True, False or None, got 'yes'",
        diceloss.set_value_checks,
        "yes",
    )


@pytest.mark.parametrize(
    "env,expected", [("0", False), ("off", False), ("1", True), ("true", True), ("", None), (None, None)]
)
def test_value_checks_environment_variable(monkeypatch, env, expected):
    if env is None:
        monkeypatch.delenv("DICELOSS_VALUE_CHECKS", raising=False)
    else:
        monkeypatch.setenv("DICELOSS_VALUE_CHECKS", env)
    assert _checks.env_flag("DICELOSS_VALUE_CHECKS", None) is expected


def test_metrics_bad_input():
    from diceloss import metrics

    x, t = _mc()
    _raises(ValueError, r"mode must be one of", metrics.dice_score, x, t, mode="nope")
    _raises(
        ValueError,
        r"empty must be one of 'nan', 'one', 'zero'; got 'x'",
        metrics.dice_score,
        x,
        t,
        mode="multiclass",
        empty="x",
    )
    t[0, 0, 0] = 9
    _raises(
        ValueError,
        r"target class indices must be in \[0, 2\], got \[9\]",
        metrics.dice_score,
        x,
        t,
        mode="multiclass",
    )
    _raises(
        ValueError,
        r"num_classes is needed",
        metrics.dice_score,
        t.clamp_max(2),
        t.clamp_max(2),
        mode="multiclass",
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_unit_interval_fast_path_is_exact(dtype):
    # the bit-pattern test says "surely in [0, 1]" only when every value is; it may defer (-0.0) but never err
    specials = torch.tensor([0.0, -0.0, 1.0, 0.5, 1e-30, -1e-30, 1.0 + 1e-3, -1.0, 2.0, float("inf"), float("-inf"),
                             float("nan"), -float("nan"), 255.0], dtype=torch.float64).to(dtype)
    g = seeded(0)
    for _ in range(200):
        t = specials[torch.randint(0, len(specials), (int(torch.randint(1, 6, (1,), generator=g)),), generator=g)]
        exact = bool(((t >= 0) & (t <= 1)).all())
        fast = _layout._surely_in_unit_interval(t)
        assert not fast or exact, t
        if exact and not bool(torch.signbit(t).any()):
            assert fast, t  # no -0.0: the fast path decides
    assert _layout._surely_in_unit_interval(torch.rand(4, 1, 33, 17, generator=g).to(dtype)[:, :, ::2])
