"""Shared test floor: the registry of losses and the fixtures several test files use.

The registry (``LOSSES``) is the one place that lists the losses, after PyTorch's ``module_db``
(``torch/testing/_internal/common_modules.py``): a generic test is parametrised over it, so a new loss is
tested by adding one ``LossInfo`` row. Test files import it with ``from conftest import LOSSES`` (pytest
puts ``tests/`` on ``sys.path``; the module is the same object pytest loaded as the conftest), and a test
parametrised with ``LossInfo`` values gets the loss's ``name`` as its id (``pytest_make_parametrize_id``).

Fixtures:

* ``one_thread`` (module scope): one intra-op thread while a module runs; tiny tensors on a shared
  machine spend more time starting threads than computing. Use with
  ``pytestmark = pytest.mark.usefixtures("one_thread")``.
* ``no_value_checks`` / ``auto_value_checks``: switch ``diceloss.set_value_checks`` off / to automatic
  for one test and restore the previous setting; ``value_checks(flag)`` is the same as a ``with`` block.
* ``gen``: a ``torch.Generator`` seeded with 0, fresh for each test (``seeded(seed)`` for other seeds).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Callable, Iterator

import pytest
import torch

import diceloss
from diceloss import functional as DF

# the options every loss takes (besides input, target, mask and the backend / distributed plumbing)
SHARED_OPTIONS = frozenset(
    {
        "mode",
        "from_logits",
        "include_background",
        "ignore_index",
        "batch_dice",
        "smooth_nr",
        "smooth_dr",
        "soft_label",
        "reduction",
    }
)
# keywords of every function that are not loss options
PLUMBING = frozenset({"backend", "distributed", "process_group"})
MODES = ("multiclass", "binary", "multilabel")
# the weight of the examples (C = 3)
W3 = [0.5, 1.0, 2.0]


@dataclasses.dataclass(frozen=True)
class LossInfo:
    """One public loss: its function, its module, and the facts the generic tests need about it.

    name:         short id, used in test ids and as the key of ``LOSS``.
    function:     the functional form, ``diceloss.functional.<name>_loss``.
    module:       the ``nn.Module`` form; ``module(**options)(input, target, mask)`` equals
                  ``function(input, target, mask, **options)``.
    options:      the options it takes beyond ``SHARED_OPTIONS`` (checked against the signature by
                  ``tests/test_smoke.py``).
    unreduced:    what ``reduction="none"`` returns: ``"class"`` per (sample, class) ``(B, K)`` (``(K,)``
                  with batch_dice), ``"group"`` one value per sample ``(B,)`` (``()`` with batch_dice),
                  or ``None``: refused with a ValueError (the compound losses: two terms of different shapes).
    pixel_term:   the name of the pixel-wise term a compound loss adds to its Dice term (``"ce"``,
                  ``"focal"``; the key of ``module.components``), or ``None``.
    soft_targets: the loss is minimal at ``p = g`` for soft (probability) targets and ``soft_label=True``
                  applies to it; False for the focal term, which is not a proper scoring rule.
    head:         the loss is a head on the statistics (``diceloss.compute_stats``); False for Lovász, clDice,
                  Hausdorff-DT: the generic tests then skip the checks that read the statistics.
    shared:       the subset of ``SHARED_OPTIONS`` the loss takes (all of them for a head; a loss that is not a
                  head takes only those it can honour, and refuses ``batch_dice`` and the like by signature).
    example:      non-default options for a multiclass input with C = 3 (module == function, smoke tests).
    """

    name: str
    function: Callable
    module: type
    options: frozenset
    unreduced: str | None = "class"
    pixel_term: str | None = None
    soft_targets: bool = True
    head: bool = True
    example: dict = dataclasses.field(default_factory=dict)
    shared: frozenset = SHARED_OPTIONS

    @property
    def compound(self) -> bool:
        return self.pixel_term is not None

    def takes(self, *options: str) -> bool:
        """Whether the loss accepts every one of ``options``."""
        return set(options) <= self.shared | self.options

    def accepted(self, opts: dict) -> dict:
        """``opts`` without the options this loss does not take."""
        return {k: v for k, v in opts.items() if self.takes(k)}

    def _plumbed(self, kw: dict, params) -> dict:
        # a loss that is not a head has no backend / distributed keywords: the generic tests' plumbing drops out
        return {k: v for k, v in kw.items() if k not in PLUMBING or k in params}

    def call(self, *args, **kw):
        """``function(*args, **kw)`` without the plumbing keywords (``backend`` ...) the function does not take."""
        return self.function(*args, **self._plumbed(kw, inspect.signature(self.function).parameters))

    def make(self, **kw):
        """``module(**kw)`` without the plumbing keywords the module does not take."""
        return self.module(**self._plumbed(kw, inspect.signature(self.module).parameters))

    def __repr__(self) -> str:
        return f"LossInfo({self.name})"


_DICE_OPTIONS = frozenset({"weight", "squared", "log", "absent"})

LOSSES: tuple[LossInfo, ...] = (
    LossInfo(
        "dice",
        DF.dice_loss,
        diceloss.DiceLoss,
        _DICE_OPTIONS,
        example=dict(weight=W3, squared=True),
    ),
    LossInfo(
        "jaccard",
        DF.jaccard_loss,
        diceloss.JaccardLoss,
        frozenset({"weight", "absent"}),
        example=dict(batch_dice=True),
    ),
    LossInfo(
        "tversky",
        DF.tversky_loss,
        diceloss.TverskyLoss,
        frozenset({"weight", "absent", "alpha", "beta", "exponent"}),
        example=dict(alpha=0.2, beta=0.8, exponent=0.75),
    ),
    LossInfo(
        "gdl",
        DF.generalized_dice_loss,
        diceloss.GeneralizedDiceLoss,
        frozenset({"weighting"}),
        unreduced="group",
        example=dict(weighting="simple"),
    ),
    LossInfo(
        "dice_ce",
        DF.dice_ce_loss,
        diceloss.DiceCELoss,
        _DICE_OPTIONS | {"lambda_dice", "lambda_ce", "label_smoothing"},
        unreduced=None,
        pixel_term="ce",
        example=dict(weight=W3, label_smoothing=0.1, lambda_ce=0.5),
    ),
    LossInfo(
        "dice_focal",
        DF.dice_focal_loss,
        diceloss.DiceFocalLoss,
        _DICE_OPTIONS | {"lambda_dice", "lambda_focal", "gamma"},
        unreduced=None,
        pixel_term="focal",
        soft_targets=False,
        example=dict(gamma=1.5, lambda_focal=2.0),
    ),
)
LOSS: dict[str, LossInfo] = {info.name: info for info in LOSSES}


def losses(predicate: Callable[[LossInfo], bool] | None = None) -> list[LossInfo]:
    """The registry rows for which ``predicate`` holds (all of them without one), for ``parametrize``."""
    return [info for info in LOSSES if predicate is None or predicate(info)]


def functions(predicate: Callable[[LossInfo], bool] | None = None) -> list:
    """The functional forms of the rows for which ``predicate`` holds, as ``pytest.param`` with the name as id."""
    return [pytest.param(info.function, id=info.name) for info in losses(predicate)]


def modules(predicate: Callable[[LossInfo], bool] | None = None) -> list:
    """The module classes of the rows for which ``predicate`` holds, as ``pytest.param`` with the name as id."""
    return [pytest.param(info.module, id=info.name) for info in losses(predicate)]


def pytest_make_parametrize_id(config, val, argname):
    if isinstance(val, LossInfo):
        return val.name
    return None


# ----------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for the module: on a shared machine thread start-up dominates tiny tensors."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@contextlib.contextmanager
def value_checks(flag: bool | None) -> Iterator[None]:
    """``diceloss.set_value_checks(flag)`` inside the block, the previous setting after it."""
    previous = diceloss.set_value_checks(flag)
    try:
        yield
    finally:
        diceloss.set_value_checks(previous)


@pytest.fixture
def no_value_checks() -> Iterator[None]:
    """Value checks off: for inputs valid by construction, where the checks only cost time."""
    with value_checks(False):
        yield


@pytest.fixture
def auto_value_checks() -> Iterator[None]:
    """Value checks automatic (on for CPU tensors), whatever the environment or an earlier test set."""
    with value_checks(None):
        yield


def seeded(seed: int = 0) -> torch.Generator:
    """A CPU generator with this seed: the tests draw their random inputs from one, never the global one."""
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def gen() -> torch.Generator:
    """A fresh CPU generator seeded with 0."""
    return seeded(0)
