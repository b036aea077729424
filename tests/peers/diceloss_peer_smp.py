"""pytest plugin: run segmentation_models_pytorch's own ``tests/test_losses.py`` with :mod:`diceloss.compat.smp`
patched in for SMP's ``DiceLoss``, ``JaccardLoss`` and ``TverskyLoss``.

``tests/test_peer_smp.py`` runs it (``-p diceloss_peer_smp`` with ``tests/peers`` on ``PYTHONPATH``) in the
unpacked sdist of segmentation_models_pytorch 0.6.0, which ``make test``'s set-up downloads into
``.venv/peer-src/``; the project never copies a peer's tests in.

SMP's package ``__init__`` imports its model zoo (timm, torchvision), which its losses do not need and the
test set-up does not install. So ``segmentation_models_pytorch`` is registered as a bare package over the
sdist's source folder (or the installed one): ``import segmentation_models_pytorch as smp`` then gives
``smp.losses`` and ``segmentation_models_pytorch.losses._functional`` as usual, and nothing else. The other
losses of the file (focal, MCC, soft CE/BCE) and the functional scores stay SMP's own.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

PATCHED = ("DiceLoss", "JaccardLoss", "TverskyLoss")
NAME = "segmentation_models_pytorch"


def _package_dir(rootdir: Path) -> Path:
    local = rootdir / NAME
    if (local / "losses" / "__init__.py").is_file():
        return local
    spec = importlib.util.find_spec(NAME)  # does not run the package's __init__
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{NAME} source not found under {rootdir} and not installed")
    return Path(list(spec.submodule_search_locations)[0])


def pytest_configure(config):
    from diceloss.compat import smp as compat

    pkg_dir = _package_dir(Path(config.rootpath))
    package = types.ModuleType(NAME)
    package.__path__ = [str(pkg_dir)]
    package.__file__ = str(pkg_dir / "__init__.py")
    sys.modules[NAME] = package
    losses = importlib.import_module(f"{NAME}.losses")
    package.losses = losses
    for name in PATCHED:
        for module_name in (f"{NAME}.losses", f"{NAME}.losses.dice", f"{NAME}.losses.jaccard",
                            f"{NAME}.losses.tversky"):
            module = sys.modules[module_name]
            if hasattr(module, name):
                setattr(module, name, getattr(compat, name))
    config._diceloss_smp_dir = pkg_dir


def pytest_report_header(config):
    return [
        f"diceloss peer tests: {NAME} losses from {config._diceloss_smp_dir}; "
        f"patched with diceloss.compat.smp: {', '.join(PATCHED)}"
    ]
