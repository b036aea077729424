"""How the fused CPU kernel is compiled: one recipe for ``setup.py`` (the prebuilt library of the wheel) and
for the just-in-time fallback of :mod:`diceloss.stats.cpu`.

This module imports neither torch nor diceloss (``setup.py`` loads it by path); the callers pass the
values that need them.

* ``fused_stats.cpp`` (with ``simd.h``, ``vec_math.h``) is the kernel; it is compiled once per
  instruction-set level of :func:`levels`, each time in its own namespace with its own flags.
* ``library.cpp`` holds the ops (``torch.ops.diceloss_cpu.*``) and picks a level at load time. It is
  built against the LibTorch stable ABI (``TORCH_TARGET_VERSION`` = 2.10: one binary for every torch from
  2.10 on), or, for an older torch, against the ordinary C++ API (the just-in-time build only).
"""

from __future__ import annotations

import hashlib
import platform
from pathlib import Path

HERE = Path(__file__).resolve().parent
KERNEL_SOURCE = HERE / "fused_stats.cpp"
LIBRARY_SOURCE = HERE / "library.cpp"
HEADERS = (HERE / "simd.h", HERE / "vec_math.h", HERE / "kernel_api.h")
SOURCES = (KERNEL_SOURCE, LIBRARY_SOURCE, *HEADERS)

EXTENSION = "diceloss.stats.cpu._kernel"  # the prebuilt library: src/diceloss/stats/cpu/_kernel.abi3.so
OPS_NAMESPACE = "diceloss_cpu"  # torch.ops.diceloss_cpu
STABLE_MIN_TORCH = (2, 10)  # the oldest torch whose stable ABI has everything library.cpp uses
TORCH_TARGET_VERSION = "0x020a000000000000"  # 2.10.0, as the stable headers encode it

# -g0: no debug information (a fifth of the size); -Wno-maybe-uninitialized: GCC's own AVX-512 headers trip it
COMMON_FLAGS = ("-O3", "-g0", "-std=c++17", "-fPIC", "-ffp-contract=off", "-fvisibility=hidden",
                "-Wno-maybe-uninitialized")

_AVX512 = ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma")


def levels(machine: str | None = None) -> list[tuple[str, str, tuple[str, ...]]]:
    """The instruction-set levels one library carries on this architecture, widest first:
    ``(name, the kernel's level macro, compiler flags)``. The name is the namespace of the level's code and
    the value of ``DICELOSS_CPU_ISA``."""
    machine = (machine or platform.machine()).lower()
    if machine in ("x86_64", "amd64", "i686", "i386"):
        return [
            ("avx512", "DICELOSS_ISA_AVX512", _AVX512),
            ("avx2", "DICELOSS_ISA_AVX2", ("-mavx2", "-mfma")),
            ("baseline", "DICELOSS_ISA_BASELINE", ("-march=x86-64", "-mtune=generic")),
        ]
    if machine in ("aarch64", "arm64"):
        return [("baseline", "DICELOSS_ISA_NEON", ("-march=armv8-a",))]
    return [("baseline", "DICELOSS_ISA_BASELINE", ())]


def defines(num_stats: int, act_softmax: int, act_sigmoid: int, ops_namespace: str = OPS_NAMESPACE) -> list[str]:
    """The statistic columns and activation codes of ``diceloss.stats.types`` (for both sources) and the
    namespace of the ops (``torch.ops.<ops_namespace>``)."""
    return [f"-DDICELOSS_NUM_STATS={num_stats}", f"-DDICELOSS_ACT_SOFTMAX={act_softmax}",
            f"-DDICELOSS_ACT_SIGMOID={act_sigmoid}", f"-DDICELOSS_OPS_NS={ops_namespace}"]


def level_flags(name: str, macro: str, flags: tuple[str, ...]) -> list[str]:
    """Flags of one level's kernel object (after :data:`COMMON_FLAGS` and :func:`defines`)."""
    return [*flags, f"-D{macro}", f"-DDICELOSS_ISA_NS={name}"]


def library_flags(level_names: list[str], stable: bool, source_key: str) -> list[str]:
    """Flags of library.cpp: which levels the library carries, which torch API it is written against, and the
    :func:`source_hash` of the sources it is built from."""
    api = [f"-DTORCH_TARGET_VERSION={TORCH_TARGET_VERSION}"] if stable else ["-DDICELOSS_CLASSIC_ABI"]
    return [*api, *(f"-DDICELOSS_HAVE_{n.upper()}" for n in level_names), f'-DDICELOSS_SOURCE_HASH="{source_key}"']


def source_hash() -> str:
    """A hash of the kernel's sources: the prebuilt library records it, and the loader compares, so a library
    built from other sources (an edited source checkout) is not loaded."""
    h = hashlib.sha256()
    for path in SOURCES:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]
