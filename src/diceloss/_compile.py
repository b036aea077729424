"""``host_only``: a function that torch.compile must run eagerly (SciPy, scikit-image on the host), marked
without importing torch._dynamo.

``torch.compiler.disable`` as a decorator imports dynamo (about 0.9 s) when the module that uses it is
imported, on every eager run too. ``host_only`` asks ``torch.compiler.is_compiling()`` at each call instead:
in eager mode it calls the function as it is; under tracing it calls (and keeps) a disabled copy, so the
compiler breaks the graph there rather than trace into SciPy.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch

F = TypeVar("F", bound=Callable)


def host_only(fn: F) -> F:
    disabled: list[Callable] = []

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if torch.compiler.is_compiling():
            if not disabled:
                disabled.append(torch.compiler.disable(fn))
            return disabled[0](*args, **kwargs)
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
