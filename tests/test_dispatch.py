"""Backend choice (diceloss.stats.dispatch): the load policy for optional backends, and one decision per call.

An optional backend whose module fails to import, with any exception (an ``AttributeError`` from a torch
without some API, say), must leave ``import diceloss`` and the other backends working; ``available()``
says why it is off, and asking for it by name raises a ``ValueError`` that names it and the reason.
The failure is injected in a child process by an import hook that makes ``diceloss.stats.triton`` raise.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch

import diceloss
from diceloss import _layout
from diceloss.stats import dispatch, fused
from diceloss.stats.types import StatsRequest

CHILD = textwrap.dedent(
    """
    import importlib.abc, importlib.machinery, json, sys

    class BrokenTriton(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path, target=None):
            if name == "diceloss.stats.triton":
                return importlib.machinery.ModuleSpec(name, self, is_package=True)
            return None

        def create_module(self, spec):
            return None

        def exec_module(self, module):
            raise AttributeError("module 'torch.library' has no attribute 'custom_op'")

    sys.meta_path.insert(0, BrokenTriton())

    import torch
    import diceloss

    out = {"available": diceloss.backends.available()}
    x = torch.randn(2, 3, 40, generator=torch.Generator().manual_seed(0))
    t = torch.randint(0, 3, (2, 40), generator=torch.Generator().manual_seed(1))
    values = {}
    for backend in ("reference", "fused", "auto"):
        s = diceloss.compute_stats(x, t, backend=backend, cross_entropy=True)
        values[backend] = [s.intersection.tolist(), s.cross_entropy.tolist()]
    out["values"] = values
    out["loss"] = float(diceloss.DiceLoss(backend="auto")(x, t))
    try:
        diceloss.compute_stats(x, t, backend="triton")
        out["forced"] = None
    except ValueError as err:
        out["forced"] = str(err)
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def broken_triton() -> dict:
    """What a process whose Triton backend module raises AttributeError at import reports."""
    run = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_import_survives_a_backend_failing_with_any_exception(broken_triton):
    state = broken_triton["available"]
    assert state["triton"].startswith("unavailable: AttributeError"), state
    assert "custom_op" in state["triton"], state
    assert state["reference"] == "available"
    assert state["fused"].startswith("available"), state
    values = broken_triton["values"]
    for backend in ("fused", "auto"):
        torch.testing.assert_close(torch.tensor(values[backend]), torch.tensor(values["reference"]),
                                   rtol=1e-5, atol=1e-5)
    assert math.isfinite(broken_triton["loss"])


def test_asking_for_the_failed_backend_names_it(broken_triton):
    message = broken_triton["forced"]
    assert message is not None, "backend='triton' did not raise"
    assert "'triton'" in message and "not available" in message, message
    assert "AttributeError" in message, message


def test_asking_for_a_failed_backend_raises_value_error_in_process(monkeypatch):
    """The same through select_backend in this process, with the load result replaced."""
    monkeypatch.setitem(dispatch._LOADED, "triton", None)
    monkeypatch.setitem(dispatch._ERRORS, "triton", "unavailable: AttributeError: boom")
    x, t = torch.randn(1, 3, 8), torch.randint(0, 3, (1, 8))
    prep = _layout.prepare(x, t, mode="multiclass", from_logits=True)
    with pytest.raises(ValueError, match=r"backend 'triton' is not available.*AttributeError: boom"):
        dispatch.select_backend("triton", prep, StatsRequest())
    assert dispatch.available()["triton"] == "unavailable: AttributeError: boom"
    assert dispatch.select_backend("auto", prep, StatsRequest()).__name__ != "diceloss.stats.triton"
    assert diceloss.backends.available()["triton"] == "unavailable: AttributeError: boom"


@pytest.mark.parametrize("backend", ["auto", "fused"])
@pytest.mark.parametrize("enabled", [True, False])
def test_kernel_or_chunked_is_decided_once_per_call(monkeypatch, backend, enabled):
    """One choice of the fused implementation per call, carried from the dispatch to the backward."""
    previous = fused.cpu.set_enabled(enabled)
    try:
        calls = []
        plain = fused._choose

        def counted(*args):
            calls.append(args)
            return plain(*args)

        monkeypatch.setattr(fused, "_choose", counted)
        x = torch.randn(2, 3, 6000, requires_grad=True)  # 144 KB: auto takes fused only with the kernel
        t = torch.randint(0, 3, (2, 6000))
        s = diceloss.compute_stats(x, t, backend=backend, cross_entropy=True)
        (s.intersection.sum() + s.cross_entropy.sum()).backward()
        assert x.grad is not None
        assert len(calls) == 1, calls
    finally:
        fused.cpu.set_enabled(previous)


def test_the_kernel_builds_where_a_compiler_is():
    """A C++ source that does not compile must fail the suite, not turn every kernel test into a skip (the fused
    backend falls back to its PyTorch path, and the kernel tests skip, when no kernel could be built)."""
    import shutil

    from diceloss._checks import env_flag
    from diceloss.stats import cpu

    if env_flag("DICELOSS_NO_CPP"):
        pytest.skip("DICELOSS_NO_CPP is set: the kernel is off by request")
    if not any(shutil.which(cc) for cc in ("c++", "g++", "clang++")):
        pytest.skip("no C++ compiler on this machine: the fused backend runs its PyTorch path")
    assert cpu.load() is not None, cpu.status()
