"""The loss modules as holders of one options object and one head: options declared as properties, checked
again when set after construction, and a module equal to its function after any change."""

from __future__ import annotations

import inspect

import pytest
import torch
from conftest import LOSSES, PLUMBING

import diceloss
from diceloss import functional as DF

MODULES = [info.module for info in LOSSES]
FUNCTION_OF = {info.module: info.call for info in LOSSES}
INFO_OF = {info.module: info for info in LOSSES}


def _has(info, name: str) -> bool:
    """Whether the loss has the option or plumbing keyword ``name`` (a loss that is not a head lacks some)."""
    return info.plumbs(name) if name in PLUMBING else info.takes(name)

# (attribute, bad value, error type, message fragment): each is also refused by the constructor
BAD_SHARED = [
    ("mode", "softmax", ValueError, "mode must be one of"),
    ("reduction", "avg", ValueError, "reduction must be one of"),
    ("backend", "cuda", ValueError, "backend must be one of"),
    ("ignore_index", 1.5, TypeError, "ignore_index must be an int or None"),
    ("smooth_nr", -1.0, ValueError, "smooth_nr must be finite"),
    ("smooth_nr", 1.0, ValueError, "must not exceed smooth_dr"),
    ("distributed", True, ValueError, "only batch( Dice|_dice=True) needs"),  # the wordings of the heads, the maps
]
BAD_OWN = {
    diceloss.DiceLoss: [("absent", "skip", ValueError, "absent must be one of")],
    diceloss.JaccardLoss: [("absent", "skip", ValueError, "absent must be one of")],
    diceloss.TverskyLoss: [
        ("alpha", -0.1, ValueError, "alpha must be finite"),
        ("exponent", 0.0, ValueError, "exponent must be finite, > 0"),
    ],
    diceloss.GeneralizedDiceLoss: [("weighting", "log", ValueError, "weighting must be one of")],
    diceloss.DiceCELoss: [
        ("reduction", "none", ValueError, "adds terms of different shapes"),
        ("label_smoothing", 1.5, ValueError, "label_smoothing must be finite"),
        ("lambda_ce", -1.0, ValueError, "lambda_ce must be finite"),
        ("absent", "skip", ValueError, "absent must be one of"),
    ],
    diceloss.DiceFocalLoss: [
        ("reduction", "none", ValueError, "adds terms of different shapes"),
        ("gamma", -2.0, ValueError, "gamma must be finite"),
        ("lambda_focal", -1.0, ValueError, "lambda_focal must be finite"),
    ],
    diceloss.ClDiceLoss: [("iterations", -1, ValueError, "iterations must be a non-negative int")],
    diceloss.DiceClDiceLoss: [("lambda_cldice", -1.0, ValueError, "lambda_cldice must be finite")],
    diceloss.HausdorffDTLoss: [
        ("alpha", -1.0, ValueError, "alpha must be finite, > 0"),
        ("spacing", (1.0, 0.0), ValueError, "spacing\\[1\\] must be finite, > 0"),
        ("empty", "inf", ValueError, "empty must be one of"),
    ],
    diceloss.BlobLoss: [
        ("lambda_blob", -1.0, ValueError, "lambda_blob must be finite"),
        ("connectivity", 0, ValueError, "connectivity must be None"),
    ],
    diceloss.UnifiedFocalLoss: [
        ("gamma", 1.0, ValueError, "gamma must be in \\[0, 1\\)"),
        ("delta", 1.5, ValueError, "delta must be finite"),
    ],
    diceloss.GeneralizedWassersteinDiceLoss: [("weighting", "square", ValueError, "weighting must be one of")],
    diceloss.LovaszLoss: [
        ("per_image", "yes", TypeError, "per_image must be True or False"),
        ("classes", "some", ValueError, "classes must be one of 'present', 'all'"),
    ],
    diceloss.SkeletonRecallLoss: [("smooth_dr", -1.0, ValueError, "smooth_dr must be finite, >= 0")],
    diceloss.DiceCESkeletonRecallLoss: [
        ("reduction", "none", ValueError, "not 'none'"),
        ("lambda_skeleton", -1.0, ValueError, "lambda_skeleton must be finite"),
        ("lambda_ce", float("nan"), ValueError, "lambda_ce must be finite"),
    ],
    diceloss.BoundaryLoss: [
        ("spacing", (1.0, 0.0), ValueError, "spacing\\[1\\] must be finite, > 0"),
        ("spacing", -1.0, ValueError, "spacing must be finite, > 0"),
    ],
    diceloss.CalibrationLoss: [
        ("bins", 0, ValueError, "bins must be in \\[1, 10000\\]"),
        ("empty_weight", -1.0, ValueError, "empty_weight must be finite, > 0"),
        ("absent", "drop", ValueError, "absent must be one of 'include', 'exclude'"),
        ("soft", "yes", TypeError, "soft must be True or False"),
    ],
}


def _shared_cases(info) -> list[tuple]:
    """The rows of BAD_SHARED for the options the loss has; smooth_nr above smooth_dr is 1.0 (2 smooth_dr where the
    default smooth_dr is 1 or more, as clDice's)."""
    out = []
    for name, value, error, message in BAD_SHARED:
        if not _has(info, name):
            continue
        if message == "must not exceed smooth_dr":
            value = max(value, 2 * inspect.signature(info.module).parameters["smooth_dr"].default)
        out.append((name, value, error, message))
    return out


# a registered loss without a row here fails loudly (KeyError) rather than going untested
CASES = [(cls, *bad) for cls in MODULES for bad in _shared_cases(INFO_OF[cls]) + BAD_OWN[cls]]


@pytest.mark.parametrize("cls,name,value,error,message", CASES, ids=lambda v: getattr(v, "__name__", repr(v)))
def test_an_option_set_after_construction_is_checked_like_the_constructor(cls, name, value, error, message):
    with pytest.raises(error, match=message):
        cls(**{name: value})
    loss = cls()
    before = getattr(loss, name)
    with pytest.raises(error, match=message):
        setattr(loss, name, value)
    assert getattr(loss, name) == before, "a refused value must leave the module as it was"


def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 4, 6, 5, generator=g, dtype=torch.float64)
    t = torch.randint(0, 4, (3, 6, 5), generator=g)
    return x, t


CHANGES = [
    {"batch_dice": True},
    {"include_background": False},
    {"ignore_index": 2, "smooth_nr": 0.0, "smooth_dr": 1e-3},
    {"from_logits": True, "soft_label": True, "backend": "reference"},
]


def _change_cases():
    # each change with the options the loss has (all of them for a head); a change left empty is no case
    out = []
    for info in LOSSES:
        for changes in CHANGES:
            kept = {k: v for k, v in changes.items() if _has(info, k)}
            if kept:
                out.append(pytest.param(info.module, kept, id=f"{info.module.__name__}-{','.join(kept)}"))
    return out


@pytest.mark.parametrize("cls,changes", _change_cases())
def test_a_module_changed_after_construction_equals_one_built_with_the_change(cls, changes):
    x, t = _problem()
    changed = cls()
    for name, value in changes.items():
        setattr(changed, name, value)
    built = cls(**changes)
    want = FUNCTION_OF[cls](x, t, **changes)
    torch.testing.assert_close(changed(x, t), want, rtol=0, atol=1e-12)
    torch.testing.assert_close(built(x, t), want, rtol=0, atol=1e-12)
    for name, value in changes.items():
        assert getattr(changed, name) == value


def test_gdl_and_dice_change_batch_dice_the_same_way():
    """A GDL whose batch_dice is changed behaves like a DiceLoss whose batch_dice is changed: the statistics are
    summed over the batch before the head, which is one group then."""
    x, t = _problem(1)
    gdl, dice = diceloss.GeneralizedDiceLoss(reduction="none"), diceloss.DiceLoss(reduction="none")
    assert gdl(x, t).shape == (3,) and dice(x, t).shape == (3, 4)
    gdl.batch_dice = dice.batch_dice = True
    assert gdl(x, t).shape == () and dice(x, t).shape == (4,)
    torch.testing.assert_close(gdl(x, t), DF.generalized_dice_loss(x, t, batch_dice=True, reduction="none"))
    torch.testing.assert_close(dice(x, t), DF.dice_loss(x, t, batch_dice=True, reduction="none"))


@pytest.mark.parametrize("cls", MODULES, ids=lambda c: c.__name__)
def test_every_loss_declares_mode_and_ignore_index(cls):
    info = INFO_OF[cls]
    mode = "multilabel" if "multilabel" in info.modes else "binary"  # a mode other than the default
    loss = cls(mode=mode, ignore_index=255)
    assert loss.mode == mode and loss.ignore_index == 255
    for name in ("mode", "ignore_index", "batch_dice", "reduction", "backend", "from_logits"):
        if _has(info, name):
            assert isinstance(getattr(type(loss), name), property) or hasattr(type(loss), name)


def test_compound_lambdas_and_dice_options_read_and_write_through():
    loss = diceloss.DiceCELoss(lambda_ce=0.5, log=True, smooth_dr=1e-3)
    assert (loss.lambda_ce, loss.lambda_dice, loss.log, loss.smooth_dr) == (0.5, 1.0, True, 1e-3)
    x, t = _problem(2)
    loss.lambda_ce, loss.log = 2.0, False
    torch.testing.assert_close(loss(x, t), DF.dice_ce_loss(x, t, lambda_ce=2.0, smooth_dr=1e-3))
    assert sorted(loss.components) == ["ce", "dice"]


def test_weight_stays_a_buffer_that_follows_the_module():
    loss = diceloss.DiceLoss(weight=[1.0, 2.0, 0.5, 1.0])
    assert "weight" in dict(loss.named_buffers())
    loss = loss.double()
    assert loss.weight.dtype == torch.float64
    x, t = _problem(3)
    torch.testing.assert_close(loss(x, t), DF.dice_loss(x, t, weight=[1.0, 2.0, 0.5, 1.0]))
