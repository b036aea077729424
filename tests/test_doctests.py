"""The docstring examples of every diceloss module run and print what they say."""

from __future__ import annotations

import doctest
import importlib
import importlib.machinery
import os
import pkgutil

import pytest
import torch
from conftest import LOSSES

import diceloss

# Third-party packages a diceloss module may need without diceloss needing them: a module whose import fails
# because one of these is missing is skipped (with the reason); any other ImportError fails its test.
OPTIONAL_DEPENDENCIES = frozenset({"triton"})


def _all_modules() -> list[str]:
    """Every module of the package, found on disk (nothing is imported to list them)."""
    names = []

    def walk(path: str, prefix: str) -> None:
        for info in pkgutil.iter_modules([path], prefix):
            if info.name.endswith("__main__"):  # importing it runs the command line
                continue
            if _is_compiled(info):
                continue
            names.append(info.name)
            if info.ispkg:
                walk(os.path.join(path, info.name.rpartition(".")[2]), info.name + ".")

    names.append(diceloss.__name__)
    for path in diceloss.__path__:
        walk(path, "diceloss.")
    return sorted(names)


def _is_compiled(info: pkgutil.ModuleInfo) -> bool:
    """A compiled library beside the sources (the CPU kernel ``_kernel.abi3.so``, a torch op library that
    ``torch.ops.load_library`` loads): no Python docstrings, and not importable as a Python module by design."""
    spec = info.module_finder.find_spec(info.name.rpartition(".")[2])
    origin = getattr(spec, "origin", None) or ""
    return origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def _missing_optional_dependency(err: ImportError) -> str | None:
    """The optional package whose absence caused ``err``, or None when the error is anything else."""
    if isinstance(err, ModuleNotFoundError) and err.name:
        top = err.name.partition(".")[0]
        if top in OPTIONAL_DEPENDENCIES:
            return top
    return None


def _examples(module) -> int:
    finder = doctest.DocTestFinder(exclude_empty=True)
    return sum(len(t.examples) for t in finder.find(module))


def test_module_list_is_complete():
    # the walk sees the package's public modules, so a module that moves is still found
    names = _all_modules()
    for name in ("diceloss", "diceloss.functional", "diceloss.losses", "diceloss.metrics", "diceloss.stats"):
        assert name in names


def test_missing_optional_dependency_rule():
    assert _missing_optional_dependency(ModuleNotFoundError("No module named 'triton'", name="triton")) == "triton"
    assert _missing_optional_dependency(ModuleNotFoundError("x", name="triton.language")) == "triton"
    # anything else is a real import error: a cycle, a moved name, a missing required package
    assert _missing_optional_dependency(ImportError("cannot import name 'x' from 'diceloss.stats'")) is None
    assert _missing_optional_dependency(ModuleNotFoundError("No module named 'numpy'", name="numpy")) is None
    assert _missing_optional_dependency(ModuleNotFoundError("x", name="diceloss.triton")) is None


@pytest.mark.parametrize("name", _all_modules())
def test_docstring_examples(name):
    try:
        module = importlib.import_module(name)
    except ImportError as err:
        missing = _missing_optional_dependency(err)
        if missing is None:
            raise
        pytest.skip(f"{name} needs the optional dependency {missing!r}, which is not installed: {err}")
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


@pytest.mark.parametrize("info", LOSSES)
def test_every_public_loss_has_an_example(info):
    assert ">>>" in info.module.__doc__, info.module.__name__
    assert ">>>" in info.function.__doc__, info.function.__name__


def test_every_public_function_has_an_example():
    for name in diceloss.functional.__all__:
        assert ">>>" in getattr(diceloss.functional, name).__doc__, name
