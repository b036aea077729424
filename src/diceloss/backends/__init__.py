"""Backends compute :class:`~diceloss.stats.OverlapStats` from a :class:`~diceloss._layout.Prepared`.

Each backend is a module with ``supports(prep, request) -> str | None`` (None when it can serve the
call, else the reason it cannot) and ``compute(prep, request) -> OverlapStats``. ``auto`` takes the
first backend of :data:`AUTO_ORDER` that supports the call.
"""

from __future__ import annotations

import importlib
from types import ModuleType

_MODULES = {
    "reference": "diceloss.backends.reference",
    "fused": "diceloss.backends.fused",
    "triton": "diceloss.backends.triton_kernels",
}
AUTO_ORDER = ("triton", "fused", "reference")


# Backend modules are imported once, when diceloss is imported (see the end of stats.py), so that
# selecting one is a dictionary lookup that torch.compile can trace. A backend module must therefore
# import its heavy dependencies (Triton, a compiled kernel) lazily.
_LOADED: dict[str, ModuleType | None] = {}


def _load(name: str) -> ModuleType | None:
    if name not in _LOADED:
        try:
            _LOADED[name] = importlib.import_module(_MODULES[name])
        except ImportError:
            _LOADED[name] = None
    return _LOADED[name]


def load_all() -> None:
    for name in _MODULES:
        _load(name)


def available() -> dict[str, str]:
    """Each backend and its state on this machine: "available", or why it is not.

    Example:
        >>> from diceloss import backends
        >>> backends.available()["reference"]
        'available'
    """
    out = {}
    for name in _MODULES:
        mod = _load(name)
        if mod is None:
            out[name] = "not installed"
            continue
        status = getattr(mod, "status", None)
        out[name] = status() if status is not None else "available"
    return out


def select_backend(name: str, prep, request) -> ModuleType:
    """The backend module that serves this call; raises ValueError when a forced backend cannot."""
    if name == "auto":
        for candidate in AUTO_ORDER:
            # Triton serves CUDA tensors; on the CPU it runs only when asked for by name (interpreter tests)
            if candidate == "triton" and prep.logits.device.type != "cuda":
                continue
            mod = _load(candidate)
            if mod is not None and mod.supports(prep, request) is None:
                # a backend may serve a call yet know a later one is faster for it (auto_prefers)
                prefers = getattr(mod, "auto_prefers", None)
                if prefers is not None and not prefers(prep, request):
                    continue
                return mod
        raise RuntimeError("no diceloss backend supports this call")  # reference supports everything
    if name not in _MODULES:
        raise ValueError(
            f"backend must be one of 'auto', {', '.join(repr(n) for n in _MODULES)}; got {name!r}"
        )
    mod = _load(name)
    if mod is None:
        raise ValueError(f"backend {name!r} is not available on this installation")
    reason = mod.supports(prep, request)
    if reason is not None:
        raise ValueError(f"backend {name!r} cannot serve this call: {reason}")
    return mod
