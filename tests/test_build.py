"""The prebuilt CPU kernel (issue 12): what the library carries, each instruction-set level against the reference,
``DICELOSS_CPU_ISA``, the just-in-time fallback and its build lock, and the wheel in a fresh environment.

* The library ``setup.py`` builds (``src/diceloss/stats/cpu/_kernel.abi3.so``, in place for ``make test``) carries
  every level this architecture has (AVX-512, AVX2, baseline x86-64; NEON on aarch64) and links to torch's stable
  C shim only (``aoti_torch_*``, ``torch_*``): no ``at::`` / ``c10::`` symbol, no CPython symbol.
* Every level this CPU runs gives the reference's statistics and gradients (float64 to 1e-10, float32 to 1e-5 of
  the scale, bfloat16 input within its rounding), selected at run time and through ``DICELOSS_CPU_ISA``; a level the
  CPU cannot run, or an unknown one, is refused with a message naming the choices.
* The just-in-time build (``DICELOSS_JIT=1`` forces it): a lock left by a dead process is removed and the build
  runs, with one line on stderr saying what is compiled where; a lock held by a live process is waited for
  ``DICELOSS_BUILD_LOCK_TIMEOUT`` seconds, with a message, and then the loss runs on the PyTorch path.
* The wheel (``pip wheel --no-build-isolation``) in a new virtual environment that sees neither the source tree nor
  a compiler (``CC`` / ``CXX`` = ``/bin/false``): the prebuilt kernel loads, ``available()`` names it, the first call
  compiles nothing.

The two tests that compile (the wheel, a just-in-time build) are marked ``slow``: about 40 s and 15 s here.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import diceloss
from diceloss import compute_stats
from diceloss._checks import env_flag
from diceloss.stats import cpu

ROOT = Path(__file__).resolve().parents[1]
X86 = platform.machine().lower() in ("x86_64", "amd64")

pytestmark = pytest.mark.skipif(env_flag("DICELOSS_NO_CPP"), reason="DICELOSS_NO_CPP is set: the kernel is off")


@pytest.fixture(scope="module")
def kernel():
    k = cpu.load()
    assert k is not None, cpu.status()
    assert k.origin == "prebuilt", (
        f"{cpu.status()}: build the prebuilt kernel with `pip install --no-build-isolation -e .` (make test does)")
    return k


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


# ----------------------------------------------------------------------------------------------
# the library


def test_prebuilt_library_carries_every_level(kernel):
    levels = {lv.name: lv for lv in kernel.levels()}
    if X86:
        assert list(levels) == ["avx512", "avx2", "baseline"]
        assert (levels["avx512"].float_lanes, levels["avx2"].float_lanes, levels["baseline"].float_lanes) == (16, 8, 4)
        flags = _cpu_flags()
        if flags:  # what CPUID says, as /proc/cpuinfo shows it
            assert levels["avx512"].runs_here == ({"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"} <= flags)
            assert levels["avx2"].runs_here == ({"avx2", "fma"} <= flags)
    assert list(levels)[-1] == "baseline" and levels["baseline"].runs_here
    # the widest level the CPU runs is the default
    widest = next(lv.name for lv in kernel.levels() if lv.runs_here)
    if not os.environ.get("DICELOSS_CPU_ISA"):
        assert kernel.isa() == widest
    assert "stable ABI" in kernel.api and kernel.source_hash == cpu.recipe.source_hash()
    status = diceloss.backends.available()["fused"]
    assert "compiled C++ kernel (prebuilt" in status and f"{kernel.isa()} level" in status, status


def test_prebuilt_library_links_to_the_stable_abi_only(kernel):
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("no nm (binutils) to list the library's symbols")
    out = subprocess.run([nm, "-D", "--undefined-only", str(kernel.path)], capture_output=True, text=True,
                         check=True).stdout
    names = [line.split()[-1].split("@")[0] for line in out.splitlines() if line.strip()]
    torch_symbols = [n for n in names if "torch" in n or "c10" in n or n.startswith(("_ZN2at", "_ZN3c10"))]
    assert torch_symbols and all(n.startswith(("aoti_torch_", "torch_")) for n in torch_symbols), torch_symbols
    assert not [n for n in names if n.startswith(("Py", "_Py"))], "the library must not need CPython (abi3)"


# ----------------------------------------------------------------------------------------------
# each level against the reference


def _runnable_levels() -> list[str]:
    k = cpu.load()
    return [lv.name for lv in k.levels() if lv.runs_here] if k is not None else []


def _case(kind: str, dtype, g):
    if kind == "index":  # softmax, class indices with ignore_index and a mask; 72k elements: parallel tasks
        B, C, N = 2, 3, 12000
        t = torch.randint(0, C, (B, N), generator=g)
        t[:, ::7] = -100
        kw = dict(mode="multiclass", ignore_index=-100, cross_entropy=True, label_smoothing=0.1,
                  mask=torch.rand(B, N, generator=g) > 0.2)
    elif kind == "soft":  # softmax, soft targets, 13 classes (staged tile rows), squared
        B, C, N = 2, 13, 700
        t = torch.randn(B, C, N, generator=g, dtype=torch.float64).softmax(1).to(dtype)
        kw = dict(mode="multiclass", squared=True, cross_entropy=True)
    else:  # sigmoid, multilabel with ignored elements, BCE
        B, C, N = 2, 2, 5000
        t = (torch.rand(B, C, N, generator=g) > 0.5).to(dtype)
        t[:, :, ::5] = 255
        kw = dict(mode="multilabel", ignore_index=255, cross_entropy=True, label_smoothing=0.05)
    x = (3 * torch.randn(B, C, N, generator=g, dtype=torch.float64)).to(dtype)
    return x, t, kw


def _stats_and_grad(backend, x, t, kw):
    xx = x.detach().clone().requires_grad_()
    s = compute_stats(xx, t, backend=backend, **kw)
    parts = [s.intersection, s.pred_volume, s.target_volume, s.cross_entropy]
    g = torch.Generator().manual_seed(3)
    total = sum((torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * p).sum() for p in parts)
    (grad,) = torch.autograd.grad(total, xx)
    return torch.cat([p.detach().double().flatten() for p in parts]), grad.double()


@pytest.mark.parametrize("level", _runnable_levels())
def test_each_level_matches_the_reference(kernel, level):
    previous = cpu.select_isa(level)
    try:
        assert kernel.isa() == level
        g = torch.Generator().manual_seed(0)
        for kind in ("index", "soft", "multilabel"):
            for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
                x, t, kw = _case(kind, dtype, g)
                ref, gref = _stats_and_grad("reference", x, t, kw)
                fus, gfus = _stats_and_grad("fused", x, t, kw)
                scale = float(ref.abs().max())
                assert float((fus - ref).abs().max()) <= tol * scale, (level, kind, dtype)
                assert float((gfus - gref).abs().max()) <= tol * float(gref.abs().max()), (level, kind, dtype)
        # bfloat16 logits: statistics in float32 from the rounded logits, as the reference computes them
        x, t, kw = _case("index", torch.bfloat16, g)
        ref, _ = _stats_and_grad("reference", x.float(), t, kw)
        fus, _ = _stats_and_grad("fused", x, t, kw)
        assert float((fus - ref).abs().max()) <= 1e-5 * float(ref.abs().max()), level
    finally:
        cpu.select_isa(previous)


def test_cpu_isa_environment_variable(kernel, monkeypatch):
    previous = kernel.isa()
    try:
        for level in _runnable_levels():
            monkeypatch.setenv("DICELOSS_CPU_ISA", level.upper())
            cpu._apply_environment(kernel)
            assert kernel.isa() == level
        monkeypatch.setenv("DICELOSS_CPU_ISA", "sse9")
        monkeypatch.setattr(cpu, "_isa_error", None)
        cpu._apply_environment(kernel)
        with pytest.raises(ValueError, match=r"DICELOSS_CPU_ISA=sse9: .*one of \['avx2', 'avx512', 'baseline'\]"
                           if X86 else r"DICELOSS_CPU_ISA=sse9"):
            diceloss.DiceLoss()(torch.randn(1, 2, 4, 4), torch.randint(0, 2, (1, 4, 4)))
        assert "unavailable: DICELOSS_CPU_ISA=sse9" in cpu.status()
    finally:
        monkeypatch.setattr(cpu, "_isa_error", None)
        kernel.select_isa(previous)


def test_a_level_the_cpu_cannot_run_is_refused(kernel, monkeypatch):
    levels = kernel.levels()
    fake = [cpu.Level(lv.name, lv.float_lanes, lv.name == "baseline", lv.instructions) for lv in levels]
    monkeypatch.setattr(kernel, "levels", lambda: fake)
    wanted = levels[0].name
    if wanted == "baseline":
        pytest.skip("this library carries the baseline level only")
    with pytest.raises(ValueError, match=f"this CPU cannot run the {wanted} level .*it runs \\['baseline'\\]"):
        kernel.select_isa(wanted)


def test_forced_level_in_a_fresh_process():
    code = ("import json, torch, diceloss\nfrom diceloss.stats import cpu\n"
            "loss = diceloss.DiceLoss()(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8)))\n"
            "print(json.dumps({'isa': cpu.load().isa(), 'status': cpu.status()}))")
    env = {**os.environ, "DICELOSS_CPU_ISA": "baseline"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=240)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["isa"] == "baseline" and "baseline level" in r["status"], r


# ----------------------------------------------------------------------------------------------
# the just-in-time fallback and its lock


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_build_lock(tmp_path, capfd, monkeypatch):
    lock = tmp_path / "build.lock"
    # a lock whose process is gone is removed at once
    lock.write_text(f"{_dead_pid()} {__import__('socket').gethostname()}\n")
    with cpu._build_lock(tmp_path):
        assert lock.read_text().split()[0] == str(os.getpid())
    assert not lock.exists()
    assert "removing the stale build lock" in capfd.readouterr().err
    # a lock without a process id, old: removed; fresh: waited for
    lock.write_text("")
    os.utime(lock, (time.time() - 60, time.time() - 60))
    with cpu._build_lock(tmp_path):
        pass
    assert "it names no process" in capfd.readouterr().err
    # a live process's lock: waited for, with a message, then BuildLockTimeout
    monkeypatch.setenv("DICELOSS_BUILD_LOCK_TIMEOUT", "0.5")
    lock.write_text(f"{os.getpid()} {__import__('socket').gethostname()}\n")
    start = time.monotonic()
    with pytest.raises(cpu.BuildLockTimeout, match="has held the kernel's build lock"):
        with cpu._build_lock(tmp_path):
            pass
    assert time.monotonic() - start < 5
    assert f"waiting for process {os.getpid()}" in capfd.readouterr().err
    assert lock.exists()  # not ours to remove


JIT_CODE = """
import json, torch, diceloss
from diceloss import backends
from diceloss.stats import cpu
torch.manual_seed(0)
x = torch.randn(2, 3, 40, 40, dtype=torch.float64, requires_grad=True)
y = torch.randint(0, 3, (2, 40, 40))
loss = diceloss.DiceCELoss(label_smoothing=0.1)(x, y)
loss.backward()
xr = x.detach().clone().requires_grad_(True)
ref = diceloss.DiceCELoss(label_smoothing=0.1, backend="reference")(xr, y)
ref.backward()
k = cpu.loaded()
print(json.dumps({"status": backends.available()["fused"], "origin": k and k.origin, "levels": k and
                  [lv.name for lv in k.levels()], "err": abs(loss.item() - ref.item()),
                  "grad_err": (x.grad - xr.grad).abs().max().item()}))
"""


def _jit_env(tmp_path, **extra) -> dict:
    env = {**os.environ, "DICELOSS_JIT": "1", "DICELOSS_BUILD_DIR": str(tmp_path), "OMP_NUM_THREADS": "2"}
    env.pop("DICELOSS_CPU_ISA", None)
    env.update(extra)
    return env


def _jit_build_dir(env: dict) -> Path:
    # the directory the child will use: build_dir() reads the same variables
    saved = {k: os.environ.get(k) for k in ("DICELOSS_BUILD_DIR", "CXX")}
    try:
        for k in saved:
            if env.get(k) is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = env[k]
        return cpu.build_dir()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.mark.slow
def test_just_in_time_build_breaks_a_stale_lock(tmp_path):
    if not any(shutil.which(c) for c in (os.environ.get("CXX", "c++"), "c++", "g++")):
        pytest.skip("no C++ compiler: the just-in-time build cannot run here")
    env = _jit_env(tmp_path)
    directory = _jit_build_dir(env)
    directory.mkdir(parents=True)
    (directory / "build.lock").write_text(f"{_dead_pid()} {__import__('socket').gethostname()}\n")
    proc = subprocess.run([sys.executable, "-c", JIT_CODE], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "removing the stale build lock" in proc.stderr
    compiling = [ln for ln in proc.stderr.splitlines() if "compiling the fused backend's CPU kernel" in ln]
    assert len(compiling) == 1 and str(directory) in compiling[0] and "once" in compiling[0], proc.stderr
    assert r["origin"] == "just-in-time build" and r["levels"] == ["native"], r
    assert "just-in-time build, native level" in r["status"], r
    assert r["err"] < 1e-12 and r["grad_err"] < 1e-12, r
    assert not (directory / "build.lock").exists()


def test_a_live_build_lock_times_out_to_the_pytorch_path(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        env = _jit_env(tmp_path, DICELOSS_BUILD_LOCK_TIMEOUT="1", CXX="/bin/false")
        directory = _jit_build_dir(env)
        directory.mkdir(parents=True)
        (directory / "build.lock").write_text(f"{holder.pid} {__import__('socket').gethostname()}\n")
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-c", JIT_CODE], capture_output=True, text=True, env=env,
                              timeout=240)
        assert proc.returncode == 0, proc.stderr
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        assert f"waiting for process {holder.pid}, which is compiling the CPU kernel" in proc.stderr
        assert "the fused backend runs its PyTorch path" in proc.stderr
        assert r["origin"] is None and "pure-PyTorch chunked path" in r["status"] and "build lock" in r["status"], r
        assert r["err"] < 1e-12 and r["grad_err"] < 1e-12, r
        assert time.monotonic() - start < 200
    finally:
        holder.kill()
        holder.wait()


# ----------------------------------------------------------------------------------------------
# the wheel in a fresh environment without a compiler

WHEEL_CODE = """
import json, os, sys, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
import diceloss
t2 = time.perf_counter()
from diceloss import backends
from diceloss.stats import cpu
x = torch.randn(2, 4, 64, 64, requires_grad=True)
y = torch.randint(0, 4, (2, 64, 64))
t3 = time.perf_counter()
diceloss.DiceLoss()(x, y).backward()
t4 = time.perf_counter()
print(json.dumps({"import": t2 - t1, "first_call": t4 - t3, "file": diceloss.__file__, "status":
                  backends.available()["fused"], "built": cpu.build_seconds, "dynamo": "torch._dynamo" in sys.modules,
                  "cache": os.listdir(os.environ["DICELOSS_BUILD_DIR"])}))
"""


@pytest.mark.slow
def test_wheel_in_a_fresh_environment_without_a_compiler(tmp_path):
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "wheel",
                            "--no-build-isolation", "--no-deps", str(ROOT), "-w", str(dist)],
                           capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert build.returncode == 0, build.stderr
    (wheel,) = dist.glob("diceloss-*.whl")
    if X86:
        assert wheel.name.endswith("-cp310-abi3-linux_x86_64.whl"), wheel.name
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    install = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "install",
                              "--no-deps", "--no-index", "--target", str(site), str(wheel)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    # torch and numpy from this environment (a path, not a site directory: its editable diceloss stays out)
    (site / "_torch_from_tests.pth").write_text(str(Path(torch.__file__).parents[1]) + "\n")
    (tmp_path / "cache").mkdir()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "CC": "/bin/false", "CXX": "/bin/false",
           "DICELOSS_BUILD_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "2", "PYTHONNOUSERSITE": "1"}
    runs = []
    for _ in range(2):
        proc = subprocess.run([str(python), "-c", WHEEL_CODE], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=240)
        assert proc.returncode == 0, proc.stderr
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    for r in runs:
        assert r["file"].startswith(str(site)), r  # the wheel's diceloss, not the source tree's
        assert "compiled C++ kernel (prebuilt" in r["status"], r
        assert r["built"] is None and r["cache"] == [] and not r["dynamo"], r
    assert min(r["import"] for r in runs) < 0.2, runs
    assert min(r["first_call"] for r in runs) < 1.0, runs
