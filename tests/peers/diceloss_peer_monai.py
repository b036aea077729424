"""pytest plugin: run MONAI's own loss tests with :mod:`diceloss.compat.monai` patched in for MONAI's classes.

Loaded by ``make peer-tests`` (``-p diceloss_peer_monai`` with ``tests/peers`` on ``PYTHONPATH``) on the test
files of a MONAI source tree given by ``MONAI_SRC``; the project never copies a peer's tests in. Before any
test module is imported, ``monai.losses.<Name>`` (and the same name in ``monai.losses.dice`` /
``monai.losses.tversky``, where MONAI defines it) becomes the compat class, so ``from monai.losses import
DiceLoss`` in MONAI's tests reads the compat class. TorchScript tests (``test_script``, and MONAI's helper
``test_script_save`` that the files import) are skipped: the compat classes are not scriptable (they
dispatch to diceloss's backends in Python).
"""

from __future__ import annotations

import pytest

PATCHED = ("DiceLoss", "GeneralizedDiceLoss", "TverskyLoss", "DiceCELoss", "DiceFocalLoss")
SCRIPT = "TorchScript: the diceloss.compat classes are not scriptable (excluded from parity)"
HELPER = "MONAI's TorchScript helper tests.test_utils.test_script_save, imported, not a test"


def pytest_configure(config):
    import monai.losses
    import monai.losses.dice
    import monai.losses.tversky

    from diceloss.compat import monai as compat

    for name in PATCHED:
        for module in (monai.losses, monai.losses.dice, monai.losses.tversky):
            if hasattr(module, name):
                setattr(module, name, getattr(compat, name))


def pytest_report_header(config):
    import monai

    return [f"diceloss peer tests: MONAI {monai.__version__}; patched with diceloss.compat.monai: {', '.join(PATCHED)}"]


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.name == "test_script_save":
            item.add_marker(pytest.mark.skip(reason=HELPER))
        elif item.name.startswith("test_script"):
            item.add_marker(pytest.mark.skip(reason=SCRIPT))
