"""Running the Triton backend's kernels on CPU tensors in Triton's interpreter, in a process with compiled Triton.

Triton decides at decoration time whether a ``@triton.jit`` function is compiled or interpreted: only when
``TRITON_INTERPRET=1`` was set before Triton was imported. The test process imports Triton earlier (torch
does, and the CUDA tests want compiled kernels), so :func:`install` makes the backend launch, for CPU
tensors, a second copy of :mod:`diceloss.stats.triton.kernels` whose kernels and helpers are interpreted,
and swaps Triton's own ``@jit`` library functions (``tl.sum``, ``tl.zeros`` ...) for interpreted ones
while it launches. Every attribute of ``triton.language`` that the interpreter patches during the launch is
put back afterwards, so compiled kernels (CUDA tests in the same process) are not affected.

This relies on internals of Triton's interpreter (``InterpretedFunction``, ``_LangPatchScope``; checked
with Triton 3.9) and is a testing aid only: the library uses plain ``triton.jit``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import threading
from types import ModuleType

_lock = threading.Lock()
_interpreted: ModuleType | None = None
_lang_cache: dict[int, object] = {}

KERNELS = "diceloss.stats.triton.kernels"


def interpreted_kernels() -> ModuleType:
    """A separate copy of the kernels module, its ``@triton.jit`` functions interpreted."""
    global _interpreted
    with _lock:
        if _interpreted is None:
            import triton
            from triton.runtime.interpreter import InterpretedFunction

            source = importlib.util.find_spec(KERNELS)
            spec = importlib.util.spec_from_file_location(KERNELS + "_interpreted", source.origin)
            module = importlib.util.module_from_spec(spec)
            plain_jit = triton.jit
            triton.jit = InterpretedFunction  # read by the module's decorators while it executes
            try:
                spec.loader.exec_module(module)
            finally:
                triton.jit = plain_jit
            _interpreted = module
        return _interpreted


_copies: dict[str, ModuleType] = {}


def interpreted_copy(name: str) -> ModuleType:
    """A separate copy of module ``name`` (a launcher with its ``@triton.jit`` kernels, such as the statistic kinds'
    ``diceloss.stats.triton.pairs``), its kernels interpreted; launch them inside :func:`interpreted_language`."""
    with _lock:
        if name not in _copies:
            import triton
            from triton.runtime.interpreter import InterpretedFunction

            source = importlib.util.find_spec(name)
            spec = importlib.util.spec_from_file_location(name + "_interpreted", source.origin)
            module = importlib.util.module_from_spec(spec)
            plain_jit = triton.jit
            triton.jit = InterpretedFunction
            try:
                spec.loader.exec_module(module)
            finally:
                triton.jit = plain_jit
            _copies[name] = module
        return _copies[name]


@contextlib.contextmanager
def interpreted_language():
    """While launching on the CPU: Triton's ``@jit`` library functions interpreted, TRITON_INTERPRET=1.

    The interpreter runs Triton's compiled-only library through ``InterpretedFunction`` wrappers of the
    same Python functions; they are swapped in for the launch and swapped back after.
    """
    import triton.language as tl
    import triton.language.core as tl_core
    import triton.language.math as tl_math
    import triton.language.standard as tl_standard
    import triton.runtime.interpreter as interpreter
    from triton.runtime.jit import JITFunction

    missing = object()
    originals: dict[tuple[int, str], tuple[object, str, object]] = {}

    def remember(obj, name):
        originals.setdefault((id(obj), name), (obj, name, getattr(obj, name, missing)))

    # The interpreter patches triton.language for each launch and for each call of an interpreted
    # helper, and undoes only the launch's patches (fine when the whole process is interpreted, not
    # here): record every attribute it touches and put all of them back afterwards.
    scope_cls = getattr(interpreter, "_LangPatchScope", None)
    plain_set_attr = getattr(scope_cls, "set_attr", None)

    def set_attr(self, obj, name, value):
        remember(obj, name)
        plain_set_attr(self, obj, name, value)

    with _lock:
        for module in (tl, tl_standard, tl_core, tl_math):
            for name, value in list(vars(module).items()):
                if isinstance(value, JITFunction):
                    wrapped = _lang_cache.get(id(value))
                    if wrapped is None:
                        wrapped = _lang_cache[id(value)] = interpreter.InterpretedFunction(value.fn)
                    remember(module, name)
                    setattr(module, name, wrapped)
        if plain_set_attr is not None:
            scope_cls.set_attr = set_attr
        previous = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1"
        try:
            yield
        finally:
            if plain_set_attr is not None:
                scope_cls.set_attr = plain_set_attr
            for obj, name, value in reversed(list(originals.values())):
                if value is missing:
                    if hasattr(obj, name):
                        delattr(obj, name)
                else:
                    setattr(obj, name, value)
            if previous is None:
                del os.environ["TRITON_INTERPRET"]
            else:
                os.environ["TRITON_INTERPRET"] = previous


def install(monkeypatch) -> None:
    """For one test (``monkeypatch``): TRITON_INTERPRET=1, and the backend's launches interpreted (CPU tensors)."""
    from diceloss.stats import triton as backend

    plain_context = backend._launch_context

    def launch_context(device):
        return plain_context(device) if device.type == "cuda" else interpreted_language()

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(backend, "_launch_context", launch_context)
    monkeypatch.setattr(backend, "_kernels", interpreted_kernels)
