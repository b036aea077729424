"""segmentation_models_pytorch's own loss tests, run against :mod:`diceloss.compat.smp`.

The tests are SMP's: ``tests/test_losses.py`` of its 0.6.0 sdist, which ``make test``'s set-up downloads
and unpacks into ``.venv/peer-src/`` (as pip fetches any package; the project never copies a peer's tests
in). They run in a separate pytest process with the plugin ``tests/peers/diceloss_peer_smp.py``, which puts
the compat ``DiceLoss``, ``JaccardLoss`` and ``TverskyLoss`` in place of SMP's before the file is imported.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SDIST = ROOT / ".venv" / "peer-src" / "segmentation_models_pytorch-0.6.0"
TESTS = SDIST / "tests" / "test_losses.py"
EXPECTED = 30  # the number of tests in SMP 0.6.0's tests/test_losses.py


@pytest.mark.skipif(
    not TESTS.is_file(),
    reason=f"SMP 0.6.0's sdist is not unpacked at {SDIST.relative_to(ROOT)}: make test's set-up downloads it "
    "(pip download --no-deps --no-binary :all: segmentation-models-pytorch==0.6.0, then tar -x)",
)
def test_smp_own_loss_tests_pass_on_compat():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "tests" / "peers"), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "pytest", "-p", "diceloss_peer_smp", "-p", "no:cacheprovider", "-rfE",
           "tests/test_losses.py"]
    run = subprocess.run(cmd, cwd=SDIST, env=env, capture_output=True, text=True, timeout=300)
    out = run.stdout + run.stderr
    assert "patched with diceloss.compat.smp: DiceLoss, JaccardLoss, TverskyLoss" in out, out[-4000:]
    assert run.returncode == 0, out[-4000:]
    summary = out.strip().splitlines()[-1]
    assert re.search(rf"\b{EXPECTED} passed\b", summary) and "failed" not in summary, summary
