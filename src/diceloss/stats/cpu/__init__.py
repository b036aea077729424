"""The compiled CPU kernel of the fused backend: prebuilt with the package, one instruction-set level chosen at load.

**Prebuilt.** ``pip install`` (``setup.py``) compiles the kernel into ``_kernel.abi3.so`` beside this file: the
kernel (``fused_stats.cpp``, its vector maths in ``simd.h`` and ``vec_math.h``) once per instruction-set level
(AVX-512, AVX2 and a baseline x86-64 build; NEON on aarch64), and the ops (``library.cpp``,
``torch.ops.diceloss_cpu.*``) against the LibTorch stable ABI, so one library serves every torch from 2.10 on.
It is loaded when :mod:`diceloss.stats.fused` is imported (a few milliseconds, no compiler): so the state is
known before ``torch.compile`` traces anything, and the first loss call is fast.

**The level** is the widest the CPU can run (CPUID, as ATen's DispatchStub picks its kernels);
``DICELOSS_CPU_ISA=avx512|avx2|baseline`` forces one, and a level the CPU cannot run (or the library does not
carry) is refused with an error at the first use. :func:`select_isa` changes it at run time; :func:`levels`
lists them.

**Just-in-time fallback.** Without a usable prebuilt library (a source checkout without a build, a torch older
than 2.10, a library built from other sources than those beside it, or ``DICELOSS_JIT=1``) the kernel is
compiled on first use, for this machine only (``-march=native``), with the C++ compiler (``$CXX`` or ``c++``),
into ``$DICELOSS_BUILD_DIR`` or ``~/.cache/diceloss/<key>`` (the key hashes the sources, torch and the CPU
flags); one line on stderr says so. Builds in several processes are serialised by a lock file holding the
builder's process id: a lock whose process is gone is removed, and a live one is waited for at most
``DICELOSS_BUILD_LOCK_TIMEOUT`` seconds (default 300), with a message, after which this process runs the
pure-PyTorch path.

Gradients of 32 MiB and more are advised to transparent huge pages before the kernel first writes them
(``DICELOSS_NO_HUGEPAGES=1`` turns that off). ``DICELOSS_NO_CPP=1`` turns the kernel off (the fused backend
then runs its pure-PyTorch chunked path); :func:`set_enabled` does the same at run time. :func:`status` says
which path runs and why.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..._checks import env_flag
from ..types import ACT_SIGMOID, ACT_SOFTMAX, NUM_STATS
from . import build as recipe

_HERE = Path(__file__).resolve().parent
_LIBRARY_NAME = "diceloss_kernel.so"  # the just-in-time build's file in its cache directory
_COMPILE_TIMEOUT_S = 900  # a compiler that runs longer is stopped (the PyTorch path runs)
_lock = threading.Lock()
_kernel: Kernel | None = None
_error: str | None = None
_tried = False
_enabled = not env_flag("DICELOSS_NO_CPP")
_isa_error: str | None = None  # DICELOSS_CPU_ISA named a level that cannot run: raised at each use
build_seconds: float | None = None  # wall time of this process's just-in-time build (None: none ran)


class BuildLockTimeout(RuntimeError):
    """Another process held the build lock for longer than ``DICELOSS_BUILD_LOCK_TIMEOUT`` seconds."""


@dataclass(frozen=True)
class Level:
    """One instruction-set level of the loaded library."""

    name: str  # the value of DICELOSS_CPU_ISA: avx512, avx2, baseline (native: a just-in-time build)
    float_lanes: int  # floats per vector
    runs_here: bool  # whether this CPU can run it
    instructions: str  # AVX-512, AVX2, SSE2, NEON


class Kernel:
    """The loaded library: its ops (``stats_forward``, ``stats_backward``: the argument lists of
    ``torch.ops.diceloss.fused_stats``), where it came from, and its instruction-set levels."""

    def __init__(self, namespace: str, path: Path, origin: str):
        ops = getattr(torch.ops, namespace)
        self.namespace = namespace
        self.path = path
        self.origin = origin  # "prebuilt" or "just-in-time build"
        self.stats_forward = ops.stats_forward.default
        self.stats_backward = ops.stats_backward.default
        self._ops = ops
        self.source_hash, self.api = ops.build_info().split(";", 1)

    def levels(self) -> list[Level]:
        """The levels the library carries, widest first."""
        entries = self._ops.isa_levels().split(";")[0]
        out = []
        for entry in entries.split(","):
            name, lanes, runs, instructions = entry.split(":")
            out.append(Level(name, int(lanes), runs == "1", instructions))
        return out

    def isa(self) -> str:
        """The active level's name."""
        return self._ops.isa_levels().split(";")[1]

    def select_isa(self, name: str) -> str:
        """Make ``name`` the active level (``""``: the widest this CPU runs); returns the previous one. Raises
        ``ValueError`` for a level the library does not carry or the CPU cannot run."""
        known = {level.name: level for level in self.levels()}
        if name and name not in known:
            raise ValueError(f"instruction-set level must be one of {sorted(known)} (this {self.origin} library), "
                             f"got {name!r}")
        if name and not known[name].runs_here:
            raise ValueError(f"this CPU cannot run the {name} level ({known[name].instructions}); it runs "
                             f"{[lv.name for lv in known.values() if lv.runs_here]}")
        return self._ops.select_isa(name)

    def set_huge_pages(self, on: bool) -> bool:
        """Advise gradients of 32 MiB and more to transparent huge pages (or not); returns the previous setting."""
        return bool(self._ops.set_huge_pages(bool(on)))

    def build_info(self) -> str:
        active = next(lv for lv in self.levels() if lv.name == self.isa())
        runnable = ", ".join(lv.name for lv in self.levels() if lv.runs_here)
        return (f"{self.origin}, {active.name} level: vector width {active.float_lanes} floats "
                f"({active.instructions}); levels this CPU runs: {runnable}; {self.api}")


# ----------------------------------------------------------------------------------------------
# switches


def set_enabled(enabled: bool) -> bool:
    """Use the compiled kernel (True) or force the pure-PyTorch path (False); returns the previous setting."""
    global _enabled
    previous, _enabled = _enabled, bool(enabled)
    return previous


def enabled() -> bool:
    return _enabled


# ----------------------------------------------------------------------------------------------
# the prebuilt library


def prebuilt_path() -> Path | None:
    """The library ``setup.py`` built beside this file, if there is one."""
    candidates = sorted(_HERE.glob("_kernel*.so")) + sorted(_HERE.glob("_kernel*.pyd"))
    return candidates[0] if candidates else None


def _load_prebuilt() -> tuple[Kernel | None, str]:
    """(the prebuilt library, "") or (None, why it cannot be used)."""
    if env_flag("DICELOSS_JIT"):
        return None, "DICELOSS_JIT is set"
    path = prebuilt_path()
    if path is None:
        return None, "no prebuilt library beside the sources (a source checkout not built with pip?)"
    if not hasattr(torch.ops, "load_library"):
        return None, "this torch cannot load libraries"
    try:
        torch.ops.load_library(str(path))
        kernel = Kernel(recipe.OPS_NAMESPACE, path, "prebuilt")
    except Exception as err:  # an older torch without the stable ABI's symbols, a foreign architecture
        return None, f"the prebuilt library does not load here ({_describe(err)})"
    try:
        expected = recipe.source_hash()
    except OSError:  # an installation without the sources: nothing to compare with
        expected = kernel.source_hash
    if kernel.source_hash != expected:
        return None, "the prebuilt library was built from other sources than those beside it (rebuild with pip)"
    return kernel, ""


def _describe(err: BaseException) -> str:
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()] or [""]
    return f"{type(err).__name__}: {lines[0][:300]}"


# ----------------------------------------------------------------------------------------------
# the just-in-time build


def _stable_abi() -> bool:
    version = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2] if p.isdigit())
    return version >= recipe.STABLE_MIN_TORCH


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor()


def _key() -> str:
    h = hashlib.sha256()
    h.update(recipe.source_hash().encode())
    h.update(torch.__version__.encode())
    h.update(_cpu_flags().encode())
    h.update(os.environ.get("CXX", "c++").encode())
    return h.hexdigest()[:16]


def build_dir() -> Path:
    """Where the just-in-time build of this source, torch and CPU goes."""
    env = os.environ.get("DICELOSS_BUILD_DIR")
    root = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "diceloss"
    return root / _key()


def _jit_namespace() -> str:
    # its own op namespace: a process may hold the prebuilt library too
    return "diceloss_jit_" + _key()


def _lock_timeout() -> float:
    try:
        return float(os.environ.get("DICELOSS_BUILD_LOCK_TIMEOUT", "300"))
    except ValueError:
        return 300.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return False
    return True


def _lock_owner(path: Path) -> tuple[int | None, str, float]:
    """(pid, host, age in seconds) of a lock file; pid None when it cannot be read."""
    try:
        text = path.read_text().split()
        age = time.time() - path.stat().st_mtime
    except (OSError, ValueError):
        return None, "", 0.0
    try:
        return int(text[0]), text[1], age
    except (IndexError, ValueError):
        return None, "", age


def _stale(path: Path) -> str | None:
    """Why the lock at ``path`` is stale (its process is gone), or None while its owner may still be building."""
    pid, host, age = _lock_owner(path)
    if pid is None:
        # written between its creation and its first line, or garbage: stale once it is old
        return "it names no process" if age > 30 else None
    if host == socket.gethostname():
        return None if _pid_alive(pid) else f"its process {pid} is gone"
    # another machine's process (a shared cache directory): only its age tells
    return f"it is {age / 3600:.1f} h old, from {host}" if age > 3 * 3600 else None


@contextlib.contextmanager
def _build_lock(directory: Path):
    """Hold ``directory/build.lock`` (created exclusively, holding pid and host). A stale lock is removed; a live
    one is waited for at most :func:`_lock_timeout` seconds, then :class:`BuildLockTimeout` is raised."""
    path = directory / "build.lock"
    timeout = _lock_timeout()
    deadline = time.monotonic() + timeout
    announced = False
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            reason = _stale(path)
            if reason is not None:
                print(f"diceloss: removing the stale build lock {path} ({reason})", file=sys.stderr, flush=True)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            pid = _lock_owner(path)[0]
            if time.monotonic() >= deadline:
                raise BuildLockTimeout(
                    f"process {pid} has held the kernel's build lock {path} for more than {timeout:.0f} s "
                    f"(DICELOSS_BUILD_LOCK_TIMEOUT); delete the file if no build is running") from None
            if not announced:
                print(f"diceloss: waiting for process {pid}, which is compiling the CPU kernel in {directory} "
                      f"(at most {timeout:.0f} s)", file=sys.stderr, flush=True)
                announced = True
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()} {socket.gethostname()}\n")
        break
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _compile(directory: Path) -> Path:
    """Compile the library for this machine into ``directory``; returns its path."""
    from torch.utils.cpp_extension import include_paths, library_paths

    stable = _stable_abi()
    cxx = os.environ.get("CXX", "c++")
    defines = recipe.defines(NUM_STATS, ACT_SOFTMAX, ACT_SIGMOID, _jit_namespace())
    common = [*recipe.COMMON_FLAGS, *defines, "-march=native", f"-I{_HERE}"]
    torch_flags = [f"-I{p}" for p in include_paths()]
    if not stable:
        torch_flags.append(f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}")
    work = Path(tempfile.mkdtemp(prefix="build-", dir=directory))
    try:
        kernel_obj, library_obj = work / "kernel.o", work / "library.o"
        jobs = [
            [cxx, *common, "-DDICELOSS_ISA_NATIVE", "-DDICELOSS_ISA_NS=native", "-c", str(recipe.KERNEL_SOURCE),
             "-o", str(kernel_obj)],
            [cxx, *common, *torch_flags, *recipe.library_flags(["native"], stable, recipe.source_hash()), "-c",
             str(recipe.LIBRARY_SOURCE), "-o", str(library_obj)],
        ]
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for cmd in jobs]
        failures = []
        for cmd, proc in zip(jobs, procs):
            try:
                out, _ = proc.communicate(timeout=_COMPILE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                for other in procs:
                    other.kill()
                raise RuntimeError(f"the compiler ran for more than {_COMPILE_TIMEOUT_S} s") from None
            if proc.returncode != 0:
                failures.append(f"{' '.join(cmd[:1])} {cmd[-3]} failed ({proc.returncode}): {out.strip()[-2000:]}")
        if failures:
            raise RuntimeError("; ".join(failures))
        libs = ["-ltorch_cpu"] if stable else ["-ltorch_cpu", "-ltorch", "-lc10"]
        target = work / _LIBRARY_NAME
        link = [cxx, "-shared", str(kernel_obj), str(library_obj), *(f"-L{p}" for p in library_paths()), *libs,
                "-o", str(target)]
        proc = subprocess.run(link, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=_COMPILE_TIMEOUT_S)
        if proc.returncode != 0:
            raise RuntimeError(f"linking failed ({proc.returncode}): {proc.stdout.strip()[-2000:]}")
        final = directory / _LIBRARY_NAME
        os.replace(target, final)  # atomic: a reader sees the whole library or none
        return final
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _load_jit(reason: str) -> Kernel:
    """The just-in-time build, compiling it first unless it is in the cache."""
    global build_seconds
    directory = build_dir()
    library = directory / _LIBRARY_NAME
    if not library.exists():
        directory.mkdir(parents=True, exist_ok=True)
        with _build_lock(directory):
            if not library.exists():  # another process may have built it while this one waited
                about = "about 10 s" if _stable_abi() else "about 30 s"  # measured on 2 cores
                print(f"diceloss: compiling the fused backend's CPU kernel for this machine into {directory} "
                      f"({about}, once; {reason})", file=sys.stderr, flush=True)
                start = time.perf_counter()
                _compile(directory)
                build_seconds = time.perf_counter() - start
    torch.ops.load_library(str(library))
    return Kernel(_jit_namespace(), library, "just-in-time build")


# ----------------------------------------------------------------------------------------------
# loading


def _apply_environment(kernel: Kernel) -> None:
    global _isa_error
    if env_flag("DICELOSS_NO_HUGEPAGES"):
        kernel.set_huge_pages(False)
    wanted = os.environ.get("DICELOSS_CPU_ISA", "").strip().lower()
    if wanted:
        try:
            kernel.select_isa(wanted)
        except ValueError as err:
            _isa_error = f"DICELOSS_CPU_ISA={wanted}: {err}"


def _check_isa() -> None:
    if _isa_error is not None:
        raise ValueError(_isa_error)


def preload() -> Kernel | None:
    """Load the prebuilt library if there is a usable one (milliseconds; never compiles); returns the kernel
    or None. The just-in-time build, when needed, waits for :func:`load`."""
    global _kernel, _tried
    if not _enabled or _tried:
        return _kernel
    with _lock:
        if not _tried:
            kernel, _ = _load_prebuilt()
            if kernel is not None:
                _apply_environment(kernel)
                _kernel, _tried = kernel, True
    return _kernel


def loaded() -> Kernel | None:
    """The kernel if it is loaded and enabled; never loads or compiles (safe while ``torch.compile`` traces)."""
    return _kernel if _enabled else None


def load() -> Kernel | None:
    """The kernel, loading (or compiling) it on first call; None when disabled or when it is unavailable (then
    :func:`status` says why). Raises ``ValueError`` when ``DICELOSS_CPU_ISA`` names a level that cannot run."""
    global _kernel, _error, _tried
    if not _enabled:
        return None
    if _tried:
        _check_isa()
        return _kernel
    with _lock:
        if not _tried:
            kernel, why = _load_prebuilt()
            if kernel is None:
                try:
                    kernel = _load_jit(why)
                except BuildLockTimeout as err:
                    print(f"diceloss: {err}; the fused backend runs its PyTorch path", file=sys.stderr, flush=True)
                    _error = f"{why}; just-in-time build: {_describe(err)}"
                except Exception as err:  # no compiler, headers missing: fall back, say why
                    _error = f"{why}; just-in-time build failed: {_describe(err)}"
            if kernel is not None:
                _apply_environment(kernel)
            _kernel, _tried = kernel, True
    _check_isa()
    return _kernel


def is_built() -> bool:
    """Whether the kernel can be loaded without compiling (a prebuilt library, or a cached just-in-time build)."""
    return (_kernel is not None or (prebuilt_path() is not None and not env_flag("DICELOSS_JIT"))
            or (build_dir() / _LIBRARY_NAME).exists())


def levels() -> list[Level]:
    """The instruction-set levels of the loaded library (empty without one)."""
    kernel = load()
    return kernel.levels() if kernel is not None else []


def select_isa(name: str) -> str:
    """Make ``name`` (avx512, avx2, baseline; "" for the widest this CPU runs) the active level; returns the
    previous one. Raises ``ValueError`` for a level the library lacks or the CPU cannot run, ``RuntimeError``
    without a kernel."""
    global _isa_error
    kernel = load() if _isa_error is None else _kernel
    if kernel is None:
        raise RuntimeError(f"no compiled CPU kernel: {status()}")
    previous = kernel.select_isa(name)
    _isa_error = None
    return previous


def status() -> str:
    """Which path the fused backend runs on the CPU, and why."""
    if not _enabled:
        return "pure-PyTorch chunked path (compiled kernel disabled by DICELOSS_NO_CPP or set_enabled(False))"
    try:
        kernel = load()
    except ValueError as err:
        return f"unavailable: {err}"
    if kernel is None:
        return f"pure-PyTorch chunked path (compiled kernel unavailable: {_error})"
    return f"compiled C++ kernel ({kernel.build_info()}; {kernel.path})"


# Instruction-set levels under their former names, for tests that compare one with the active level.
VARIANTS = {"avx2": "avx2", "portable": "baseline"}


class _LevelKernel:
    """The loaded kernel run at one level (the active level is switched around each call; tests only)."""

    def __init__(self, kernel: Kernel, name: str):
        self._kernel, self.name = kernel, name

    def _run(self, op, *args):
        previous = self._kernel.select_isa(self.name)
        try:
            return op(*args)
        finally:
            self._kernel.select_isa(previous)

    def stats_forward(self, *args):
        return self._run(self._kernel.stats_forward, *args)

    def stats_backward(self, *args):
        return self._run(self._kernel.stats_backward, *args)


def build_variant(name: str) -> _LevelKernel:
    """The kernel at one of :data:`VARIANTS`' levels (raises ``ValueError`` where it cannot run)."""
    kernel = load()
    if kernel is None:
        raise RuntimeError(f"no compiled CPU kernel: {status()}")
    kernel.select_isa(kernel.select_isa(VARIANTS[name]))  # check it runs here, restore
    return _LevelKernel(kernel, VARIANTS[name])
