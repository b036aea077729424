"""Every loss of the registry exists in both forms, under its public name, and the two forms agree.

The registry (``tests/conftest.py``) is checked against the package here: every public loss is in it, and the
options it states for a loss are the function's keywords.
"""

import importlib
import inspect

import pytest
import torch
from conftest import LOSSES, MODES, PLUMBING, seeded

import diceloss

# public classes named *Loss that wrap another loss instead of being one
WRAPPERS = {"DeepSupervisionLoss"}


def test_public_names_import():
    for name in ("DiceLoss", "JaccardLoss", "TverskyLoss", "GeneralizedDiceLoss", "DiceCELoss", "DiceFocalLoss"):
        assert callable(getattr(diceloss, name))


def test_registry_lists_every_public_loss():
    functions = set(diceloss.functional.__all__)
    assert {info.function.__name__ for info in LOSSES} == functions
    classes = {name for name in diceloss.__all__ if name.endswith("Loss")} - WRAPPERS
    assert {info.module.__name__ for info in LOSSES} == classes


@pytest.mark.parametrize("info", LOSSES)
def test_loss_is_public_under_its_name(info):
    assert getattr(diceloss, info.module.__name__) is info.module
    assert getattr(diceloss.functional, info.function.__name__) is info.function
    assert issubclass(info.module, torch.nn.Module)


@pytest.mark.parametrize("info", LOSSES)
def test_registry_options_are_the_function_keywords(info):
    keywords = set(inspect.signature(info.function).parameters) - {"input", "target", "mask"}
    # a head takes every plumbing keyword; a loss that is not a head only those it can honour
    assert keywords - PLUMBING == info.shared | info.options
    assert not info.head or PLUMBING <= keywords


@pytest.mark.parametrize("info", LOSSES)
@pytest.mark.parametrize("example", [False, True], ids=["defaults", "example"])
def test_module_and_function_agree(info, example):
    g = seeded(0)
    x = torch.randn(2, 3, 4, 5, generator=g)
    t = torch.randint(0, 3, (2, 4, 5), generator=g)
    kw = info.example if example else {}
    got = info.module(**kw)(x, t)
    want = info.function(x, t, **kw)
    assert got.shape == () and torch.isfinite(got)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_dice_loss_known_value():
    x = torch.zeros(1, 2, 4)
    t = torch.tensor([[0, 0, 1, 1]])
    assert abs(float(diceloss.DiceLoss()(x, t)) - 0.5) < 1e-5  # smoothing moves it by 1.25e-6


@pytest.mark.parametrize("info", LOSSES)
def test_registry_facts_name_real_things(info):
    """The facts of a row point at what exists: a renamed compute hook would silently leave ``no_compute``
    (tests/test_inputs.py) watching nothing; a mode, a rank or an option the loss does not have would make a generic
    test skip checks it should run."""
    for hook in info.compute_hooks:
        module, _, attr = hook.rpartition(".")
        assert callable(getattr(importlib.import_module(module), attr)), hook
    assert info.modes and set(info.modes) <= set(MODES) and "multiclass" in info.modes
    assert info.min_spatial_dims >= 1
    assert info.max_spatial_dims is None or info.max_spatial_dims >= info.min_spatial_dims
    assert info.takes(*info.per_sample) and info.takes(*info.example)
    # a head is none of the things a loss that is not a head may be
    if info.head:
        assert (info.modes, info.min_spatial_dims, info.max_spatial_dims) == (MODES, 1, None)
        assert not info.geometric and info.fullgraph and info.mask_local and not info.compute_hooks
    # a loss that refuses soft targets is not minimal at them either
    assert not (info.hard_targets and info.soft_targets)
