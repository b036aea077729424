"""The build of diceloss's prebuilt CPU kernel; the package's metadata lives in pyproject.toml.

``pip install --no-build-isolation .`` (or ``-e .``, or ``python -m build --wheel --no-isolation``) compiles the
fused backend's kernel (``src/diceloss/stats/cpu``) into one library, ``diceloss/stats/cpu/_kernel.abi3.so``:

* the kernel (``fused_stats.cpp``) once per instruction-set level of ``build.levels()`` (AVX-512, AVX2 and a
  baseline x86-64 build; NEON on aarch64), each in its own namespace with its own flags; a level the compiler
  cannot target is left out with a warning (the baseline one never is);
* the ops (``library.cpp``) against the LibTorch stable ABI, which pick a level at load time from the CPU.

The library links to no CPython symbol and to torch's stable C shim only, so the wheel is tagged ``cp310-abi3``
and serves every CPython >= 3.10 and every torch >= 2.10.

The build needs torch >= 2.10 importable. pyproject.toml does not list torch as a build requirement (pip's build
isolation would download a CUDA build of it), so build without isolation, with torch installed first (the
Makefile does). Without torch, or with ``DICELOSS_NO_PREBUILT=1``, the package is built without the kernel
(a message says so) and compiles it on first use instead.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
CPU_DIR = ROOT / "src" / "diceloss" / "stats" / "cpu"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load("_diceloss_kernel_build", CPU_DIR / "build.py")


def _say(message: str) -> None:
    print(f"diceloss setup: {message}", file=sys.stderr, flush=True)


def _torch_for_kernel():
    """torch, if the kernel can be built against it here; else None (and a message saying why)."""
    if os.environ.get("DICELOSS_NO_PREBUILT", "").strip().lower() not in ("", "0", "false", "off", "no"):
        _say("DICELOSS_NO_PREBUILT is set: no prebuilt CPU kernel; it is compiled on first use instead")
        return None
    try:
        import torch
    except ImportError:
        _say("torch is not importable in this build environment (pip's build isolation?): the package is built "
             "without the prebuilt CPU kernel, which is then compiled on first use. Install torch first and build "
             "with `pip install --no-build-isolation .` to include it.")
        return None
    version = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    if version < build.STABLE_MIN_TORCH:
        _say(f"torch {torch.__version__} has no LibTorch stable ABI (needs >= 2.10): no prebuilt CPU kernel; it is "
             "compiled on first use instead")
        return None
    return torch


def _check_level_symbols(objects: list[str], level: str) -> None:
    """Each level's object must define nothing outside its own namespace: an inline function shared by name
    (std::vector's, say) would be merged by the linker with another level's copy, and a CPU without AVX-512
    could then run AVX-512 code. The kernel is written to avoid that; this keeps it so."""
    nm = shutil.which("nm")
    if nm is None:
        return
    prefix = f"_ZN12diceloss_cpu{len(level)}{level}"
    for obj in objects:
        out = subprocess.run([nm, "-g", "--defined-only", obj], capture_output=True, text=True, check=True).stdout
        stray = [line.split()[-1] for line in out.splitlines()
                 if line.strip() and not line.split()[-1].startswith(prefix)
                 and line.split()[-1] != "DW.ref.__gxx_personality_v0"]
        if stray:
            raise RuntimeError(f"the {level} kernel object defines symbols outside diceloss_cpu::{level}, which the "
                               f"linker could share with another level: {stray[:5]}")


class BuildKernel(build_ext):
    """Compiles the kernel once per instruction-set level, then links the levels with library.cpp."""

    def build_extension(self, ext):
        if ext.name != build.EXTENSION:
            return super().build_extension(ext)
        from setuptools.errors import CompileError

        types = _load("_diceloss_stats_types", ROOT / "src" / "diceloss" / "stats" / "types.py")
        defines = build.defines(types.NUM_STATS, types.ACT_SOFTMAX, types.ACT_SIGMOID)
        def compile_level(level):
            name, macro, flags = level
            try:
                return self.compiler.compile(
                    [str(build.KERNEL_SOURCE)],
                    output_dir=os.path.join(self.build_temp, f"level_{name}"),
                    include_dirs=[str(CPU_DIR)],
                    extra_postargs=[*build.COMMON_FLAGS, *defines, *build.level_flags(name, macro, flags)],
                    depends=[str(p) for p in build.SOURCES],
                )
            except CompileError:
                if name == "baseline":
                    raise
                _say(f"the compiler cannot build the {name} level ({' '.join(flags)}): the library carries the "
                     "others")
                return None

        # the levels compile in parallel (each is a compiler process of its own)
        with ThreadPoolExecutor(max_workers=max(1, min(len(build.levels()), os.cpu_count() or 1))) as pool:
            results = list(pool.map(compile_level, build.levels()))
        objects, carried = [], []
        for (name, _, _), objs in zip(build.levels(), results):
            if objs is None:
                continue
            _check_level_symbols(objs, name)
            objects += objs
            carried.append(name)
        ext.extra_objects = objects
        ext.extra_compile_args = [*build.COMMON_FLAGS, *defines,
                                  *build.library_flags(carried, True, build.source_hash())]
        _say(f"CPU kernel levels: {', '.join(carried)} (LibTorch stable ABI, torch >= 2.10)")
        return super().build_extension(ext)


def _extensions():
    torch = _torch_for_kernel()
    if torch is None:
        return [], {}
    from torch.utils.cpp_extension import include_paths, library_paths

    library = Extension(
        build.EXTENSION,
        sources=[os.path.relpath(build.LIBRARY_SOURCE, ROOT)],
        depends=[os.path.relpath(p, ROOT) for p in build.SOURCES],  # a changed kernel source rebuilds the library
        include_dirs=[str(CPU_DIR), *include_paths()],
        library_dirs=library_paths(),
        libraries=["torch_cpu"],  # the stable C shim; found at load time among the libraries torch has loaded
        language="c++",
        py_limited_api=True,
        optional=os.name == "nt",  # the flags are GCC's and Clang's: MSVC builds the package without the kernel
    )
    return [library], {"bdist_wheel": {"py_limited_api": "cp310"}}


ext_modules, options = _extensions()
setup(ext_modules=ext_modules, cmdclass={"build_ext": BuildKernel}, options=options)
