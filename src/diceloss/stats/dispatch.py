"""Backend choice: which backend computes :class:`~diceloss.stats.types.OverlapStats` for a call.

A backend is a module with ``supports(prep, request) -> str | None`` (None when it can serve the call,
else the reason it cannot), ``compute(prep, request, plan=None) -> OverlapStats`` and ``status() -> str``;
it may have ``auto_plan(prep, request) -> (prefers, plan)``, for backends that can serve a call yet
know a later one is faster for it, and that choose an implementation on the way (the plan, handed to
``compute`` so that the choice is made once per call). ``auto`` takes the first backend of
:data:`AUTO_ORDER` that supports the call (and prefers it).

Backend modules are imported once, when this module is (so that choosing one is a dictionary lookup
that ``torch.compile`` can trace); a backend module imports its heavy dependencies (Triton, a compiled
kernel) lazily. A backend whose import fails, for whatever exception, is unavailable: ``auto`` skips
it, :func:`available` says why, and asking for it by name raises ``ValueError`` with the reason.
"""

from __future__ import annotations

import importlib
from types import ModuleType

_MODULES = {
    "reference": "diceloss.stats.reference",
    "fused": "diceloss.stats.fused",
    "triton": "diceloss.stats.triton",
}
AUTO_ORDER = ("triton", "fused", "reference")

_LOADED: dict[str, ModuleType | None] = {}
_ERRORS: dict[str, str] = {}


def _load(name: str) -> ModuleType | None:
    if name not in _LOADED:
        try:
            _LOADED[name] = importlib.import_module(_MODULES[name])
        except ImportError as err:
            _LOADED[name] = None
            _ERRORS[name] = f"not installed: {_describe(err)}"
        except Exception as err:  # any failure of an optional backend: it is off, and says why
            _LOADED[name] = None
            _ERRORS[name] = f"unavailable: {_describe(err)}"
    return _LOADED[name]


def _describe(err: BaseException) -> str:
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()] or [""]
    return f"{type(err).__name__}: {lines[0][:300]}"


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
            out[name] = _ERRORS[name]
            continue
        status = getattr(mod, "status", None)
        out[name] = status() if status is not None else "available"
    return out


def resolve(name: str, prep, request) -> tuple[ModuleType, object]:
    """(the backend module that serves this call, its plan or None); raises ValueError when a forced
    backend cannot serve it."""
    if name == "auto":
        device = prep.logits.device.type
        for candidate in AUTO_ORDER:
            # Triton serves CUDA tensors; on the CPU it runs only when asked for by name (interpreter tests)
            if candidate == "triton" and device != "cuda":
                continue
            mod = _LOADED.get(candidate) or _load(candidate)
            if mod is None or mod.supports(prep, request) is not None:
                continue
            auto_plan = getattr(mod, "auto_plan", None)
            if auto_plan is None:
                return mod, None
            prefers, plan = auto_plan(prep, request)
            if prefers:
                return mod, plan
        raise RuntimeError("no diceloss backend supports this call")  # reference supports everything
    if name not in _MODULES:
        raise ValueError(
            f"backend must be one of 'auto', {', '.join(repr(n) for n in _MODULES)}; got {name!r}"
        )
    mod = _load(name)
    if mod is None:
        raise ValueError(f"backend {name!r} is not available on this installation ({_ERRORS[name]})")
    reason = mod.supports(prep, request)
    if reason is not None:
        raise ValueError(f"backend {name!r} cannot serve this call: {reason}")
    return mod, None


def select_backend(name: str, prep, request) -> ModuleType:
    """The backend module that serves this call; raises ValueError when a forced backend cannot."""
    return resolve(name, prep, request)[0]


load_all()
