"""The docstring examples of every diceloss module run and print what they say."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest
import torch

import diceloss

CORE = [
    "diceloss",
    "diceloss._checks",
    "diceloss._layout",
    "diceloss._heads",
    "diceloss.stats",
    "diceloss.functional",
    "diceloss.losses",
    "diceloss.metrics",
    "diceloss.backends",
    "diceloss.backends.reference",
]


def _all_modules() -> list[str]:
    names = set(CORE)
    for info in pkgutil.walk_packages(diceloss.__path__, prefix="diceloss."):
        if not info.name.endswith("__main__"):  # importing it runs the command line
            names.add(info.name)
    return sorted(names)


def _examples(module) -> int:
    finder = doctest.DocTestFinder(exclude_empty=True)
    return sum(len(t.examples) for t in finder.find(module))


@pytest.mark.parametrize("name", _all_modules())
def test_docstring_examples(name):
    try:
        module = importlib.import_module(name)
    except ImportError as err:  # an optional dependency (e.g. triton) that this machine lacks
        pytest.skip(f"{name} needs an optional dependency: {err}")
    torch.manual_seed(0)
    result = doctest.testmod(
        module,
        extraglobs={"torch": torch},
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
        report=True,
        verbose=False,
    )
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples of {name} failed"


@pytest.mark.parametrize(
    "name", ["diceloss.functional", "diceloss.losses", "diceloss.metrics", "diceloss.stats"]
)
def test_core_modules_have_examples(name):
    # the public API documents itself with runnable examples
    assert _examples(importlib.import_module(name)) >= 3


def test_every_public_loss_has_an_example():
    for name in (
        "DiceLoss",
        "JaccardLoss",
        "TverskyLoss",
        "GeneralizedDiceLoss",
        "DiceCELoss",
        "DiceFocalLoss",
    ):
        assert ">>>" in getattr(diceloss, name).__doc__, name
    for name in diceloss.functional.__all__:
        assert ">>>" in getattr(diceloss.functional, name).__doc__, name
