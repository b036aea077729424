"""The compiled CPU kernel of the fused backend: built once, lazily, with ``torch.utils.cpp_extension``.

The C++ source (``fused_stats.cpp`` beside this file, its vector maths in ``vec_math.h``) is compiled on
first use with the machine's C++ compiler (``-O3 -march=native -fopenmp``, vectorised with ``at::vec`` and parallel with
``at::parallel_for``) and cached, so later processes load it in milliseconds. The cache directory is
``$DICELOSS_BUILD_DIR`` if set, else ``~/.cache/diceloss/<key>``, the key hashing the sources, the torch
version and the CPU flags. Concurrent builds (pytest-xdist workers) are serialised by the lock file that
``cpp_extension`` keeps in the build directory.

Gradients of 32 MiB and more are advised to transparent huge pages before the kernel first writes them
(a fresh mapping on every call, whose 4 KiB page faults would otherwise cost more than the kernel);
``DICELOSS_NO_HUGEPAGES=1`` turns that off.

``DICELOSS_NO_CPP=1`` turns the kernel off (the fused backend then runs its pure-PyTorch chunked
path); :func:`set_enabled` does the same at run time. :func:`status` says which path runs and why, and
:func:`is_built` whether a compiled kernel is already in the cache (loading it then takes milliseconds).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

import torch

from ..._checks import env_flag
from ..types import ACT_SIGMOID, ACT_SOFTMAX, NUM_STATS

_HERE = Path(__file__).resolve().parent
_SOURCE = _HERE / "fused_stats.cpp"
_HEADERS = (_HERE / "vec_math.h",)
# the statistic columns and activation codes of diceloss.stats.types, for the C++ source
_DEFINES = (f"-DDICELOSS_NUM_STATS={NUM_STATS}", f"-DDICELOSS_ACT_SOFTMAX={ACT_SOFTMAX}",
            f"-DDICELOSS_ACT_SIGMOID={ACT_SIGMOID}")
_lock = threading.Lock()
_module: ModuleType | None = None
_error: str | None = None
_tried = False
_enabled = not env_flag("DICELOSS_NO_CPP")
build_seconds: float | None = None  # wall time of this process's build (None: loaded from cache or not built)


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return line
    except OSError:
        pass
    return platform.processor()


def _key() -> str:
    h = hashlib.sha256()
    for path in (_SOURCE, *_HEADERS):
        h.update(path.read_bytes())
    h.update(" ".join(_DEFINES).encode())
    h.update(torch.__version__.encode())
    h.update(platform.python_version().encode())
    h.update(_cpu_flags().encode())
    return h.hexdigest()[:16]


def build_dir() -> Path:
    env = os.environ.get("DICELOSS_BUILD_DIR")
    root = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "diceloss"
    return root / _key()


def set_enabled(enabled: bool) -> bool:
    """Use the compiled kernel (True) or force the pure-PyTorch path (False); returns the previous setting."""
    global _enabled
    previous, _enabled = _enabled, bool(enabled)
    return previous


def enabled() -> bool:
    return _enabled


def is_built() -> bool:
    """Whether the native kernel is compiled and cached for this source, torch and CPU (no build runs)."""
    return any(build_dir().glob("*.so"))


@contextlib.contextmanager
def _ninja_on_path():
    """cpp_extension.load needs ninja; the pip package puts it next to the interpreter, which may not be on
    PATH: add that directory for the build only."""
    if shutil.which("ninja") is not None:
        yield
        return
    previous = os.environ.get("PATH")
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + (previous or "")
    try:
        yield
    finally:
        if previous is None:
            del os.environ["PATH"]
        else:
            os.environ["PATH"] = previous


def _build(variant: str = "", arch_flags: tuple[str, ...] = ("-march=native",)) -> ModuleType:
    from torch.utils import cpp_extension

    directory = build_dir() / variant if variant else build_dir()
    directory.mkdir(parents=True, exist_ok=True)
    with _ninja_on_path():
        return cpp_extension.load(
            name="diceloss_fused_cpu_" + _key() + (f"_{variant}" if variant else ""),
            sources=[str(_SOURCE)],
            extra_cflags=["-O3", *arch_flags, "-fopenmp", "-ffp-contract=off", *_DEFINES],
            extra_include_paths=[str(_HERE)],
            build_directory=str(directory),
            verbose=bool(env_flag("DICELOSS_BUILD_VERBOSE")),
        )


def load() -> ModuleType | None:
    """The compiled module, building it on first call; None when disabled or when the build failed."""
    global _module, _error, _tried, build_seconds
    if not _enabled:
        return None
    if _tried:
        return _module
    with _lock:
        if not _tried:
            start = time.perf_counter()
            try:
                existed = is_built()
                _module = _build()
                if env_flag("DICELOSS_NO_HUGEPAGES"):
                    _module.set_huge_pages(False)
                if not existed:
                    build_seconds = time.perf_counter() - start
            except Exception as err:  # no compiler, no ninja, headers missing: fall back, say why
                _module = None
                lines = [ln for ln in str(err).strip().splitlines() if ln.strip()] or [""]
                _error = f"{type(err).__name__}: {lines[0][:300]}"
            _tried = True
    return _module


def status() -> str:
    """Which path the fused backend runs on the CPU, and why."""
    if not _enabled:
        return "pure-PyTorch chunked path (compiled kernel disabled by DICELOSS_NO_CPP or set_enabled(False))"
    mod = load()
    if mod is None:
        return f"pure-PyTorch chunked path (compiled kernel unavailable: {_error})"
    return f"compiled C++ kernel ({mod.build_info()}, cache {build_dir()})"


# Instruction-set variants of the kernel, for the tests: the machine that builds diceloss picks the
# widest at::vec specialisation it has (AVX-512 here), so the AVX2 and portable code paths that other
# machines compile would otherwise never run in CI.
VARIANTS = {
    "avx2": ("-march=native", "-DDICELOSS_NO_AVX512"),
    "portable": ("-march=x86-64",),
}


def build_variant(name: str) -> ModuleType:
    """The kernel compiled for one of :data:`VARIANTS` (cached next to the native build)."""
    return _build(name, VARIANTS[name])
