"""A process's first use of diceloss (issue 12): the import, the first loss call, torch.compile as the first use.

Each check runs in a fresh interpreter (``subprocess``), since what is measured happens once per process: the
import of diceloss after torch's, the first ``DiceLoss`` forward + backward on (2, 4, 64, 64) with the prebuilt
CPU kernel (no compiler runs, no ``torch._dynamo`` is imported on the eager path), and
``torch.compile(DiceLoss(), fullgraph=True)`` before any eager call.

The two times are the issue's acceptance thresholds for a fresh install (0.2 s beyond ``import torch``, 1 s for
the first call), not benchmarks: each is the minimum over a few processes, so that one process slowed by the
shared machine does not decide, and both thresholds are several times what the prebuilt kernel needs (about
0.06 s and 0.01 s here). Benchmarks of the kernel's speed are in ``benchmarks/``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from diceloss._checks import env_flag
from diceloss.stats import cpu

pytestmark = pytest.mark.skipif(env_flag("DICELOSS_NO_CPP"), reason="DICELOSS_NO_CPP is set: the kernel is off")

IMPORT_LIMIT_S = 0.2
FIRST_CALL_LIMIT_S = 1.0


def run_fresh(code: str, env: dict | None = None, timeout: float = 240) -> dict:
    """Run ``code`` in a new interpreter (2 threads); it prints one JSON object last, which is returned."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "2", **(env or {})}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env,
                          timeout=timeout)
    assert proc.returncode == 0, f"the child failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


IMPORT_CODE = """
import json, sys, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
import diceloss
t2 = time.perf_counter()
print(json.dumps({"torch": t1 - t0, "diceloss": t2 - t1, "dynamo": "torch._dynamo" in sys.modules}))
"""

FIRST_CALL_CODE = """
import json, sys, time
import torch
import diceloss
from diceloss import backends
from diceloss.stats import cpu, fused
torch.manual_seed(0)
x = torch.randn(2, 4, 64, 64, requires_grad=True)
y = torch.randint(0, 4, (2, 64, 64))
with fused.debug_counters() as counts:
    t0 = time.perf_counter()
    loss = diceloss.DiceLoss()(x, y)
    loss.backward()
    elapsed = time.perf_counter() - t0
print(json.dumps({"first_call": elapsed, "dynamo": "torch._dynamo" in sys.modules, "counts": counts,
                  "fused": backends.available()["fused"], "build_seconds": cpu.build_seconds,
                  "finite": bool(torch.isfinite(x.grad).all())}))
"""


def test_import_adds_little_to_torch():
    runs = [run_fresh(IMPORT_CODE) for _ in range(3)]
    best = min(r["diceloss"] for r in runs)
    assert best < IMPORT_LIMIT_S, f"import diceloss took {best:.3f} s after import torch (best of 3): {runs}"
    assert not any(r["dynamo"] for r in runs), "import diceloss imported torch._dynamo"


def test_first_call_runs_the_prebuilt_kernel_without_compiling():
    assert cpu.prebuilt_path() is not None, (
        "no prebuilt kernel beside the sources: build it with `pip install --no-build-isolation -e .` (make test)")
    runs = [run_fresh(FIRST_CALL_CODE) for _ in range(2)]
    for r in runs:
        assert r["counts"]["kernel_calls"] == 1 and r["counts"]["chunked_calls"] == 0, r
        assert r["build_seconds"] is None, r  # nothing was compiled
        assert "compiled C++ kernel (prebuilt" in r["fused"], r["fused"]
        assert not r["dynamo"], "the eager path imported torch._dynamo"
        assert r["finite"]
    best = min(r["first_call"] for r in runs)
    assert best < FIRST_CALL_LIMIT_S, f"first DiceLoss forward + backward took {best:.3f} s (best of 2): {runs}"


COMPILE_CODE = """
import json, sys
import torch
import diceloss
from torch._dynamo.testing import CompileCounterWithBackend
torch.manual_seed(0)
x = torch.randn(2, 4, 16, 16, dtype=torch.float64)
y = torch.randint(0, 4, (2, 16, 16))
y[:, 0, :3] = 255
counter = CompileCounterWithBackend("aot_eager")
loss = diceloss.DiceCELoss(ignore_index=255, label_smoothing=0.1)
compiled = torch.compile(loss, fullgraph=True, backend=counter)
xc = x.clone().requires_grad_(True)
value = compiled(xc, y)  # the first use of diceloss in this process
value.backward()
xr = x.clone().requires_grad_(True)
expected = diceloss.DiceCELoss(ignore_index=255, label_smoothing=0.1, backend="reference")(xr, y)
expected.backward()
print(json.dumps({"frames": counter.frame_count, "value": value.item(), "expected": expected.item(),
                  "grad_err": (xc.grad - xr.grad).abs().max().item()}))
"""


def test_torch_compile_fullgraph_as_the_first_use():
    # dynamo traces the loss before anything of the fused backend has run in this process
    r = run_fresh(COMPILE_CODE)
    assert r["frames"] == 1, r
    assert r["value"] == pytest.approx(r["expected"], rel=1e-10, abs=1e-12), r
    assert r["grad_err"] < 1e-12, r
