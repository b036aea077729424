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
    hard_targets: it refuses soft (probability) targets with a ValueError (Lovász: the extension is of a set).
    head:         the loss is a head on the statistics (``diceloss.compute_stats``); False for Lovász, clDice,
                  Hausdorff-DT...: the NumPy oracle of ``tests/_oracle.py`` knows only the heads (a loss that is
                  not a head has its own oracle in its own test file), and the generic option grids give it only
                  the shared options (``speaks``) plus its ``example``.
    shared:       the subset of ``SHARED_OPTIONS`` the loss takes (all of them for a head; a loss that is not a
                  head takes only those it can honour, and refuses ``batch_dice`` and the like by signature).
    example:      non-default options for a multiclass input with C = 3 (module == function, smoke tests).
    modes:        the modes it takes; the Generalized Wasserstein Dice compares distributions over exclusive
                  classes and refuses ``"multilabel"``.
    min_spatial_dims, max_spatial_dims:
                  the spatial ranks it takes with its default options (``None``: any). clDice's skeleton pools
                  over a cross and a box, meaningless along a line (2 or 3); the losses that compute a target-side
                  map with SciPy / scikit-image (skeleton, signed distance) take 1 to 3. Generic tests that use a
                  1-D shape fold it with ``fit``.
    geometric:    the value depends on where the positions are (neighbours, distances, connected components),
                  not only on the multiset of (p, g) pairs: reshaping the spatial dimensions changes it.
    range01:      every value it returns (each per-class / per-group value with ``reduction="none"``) lies in
                  [0, 1], as 1 - a score in [0, 1]. False for the Hausdorff-DT and Lovász-hinge losses
                  ([0, inf)), the boundary loss (negative inside the target), the focal and CE terms, blob (up
                  to lambda_global + lambda_blob).
    zero_minimum: its minimum is 0, reached at ``p = g`` (for soft targets too where ``soft_targets``). False for the
                  boundary loss, sum p phi with phi < 0 inside the target: minimal at ``p = g``, and negative there.
    empty_table:  the values of the empty-case table of ``tests/test_empty.py`` hold, with the default
                  smoothing s = 1e-5: 0 when target and prediction are both empty or agree exactly,
                  1 - s / (P + s) for a prediction of volume P on an empty target, > 0.99 for a missed target
                  (the Dice family and the losses whose value there is a Dice-like ratio with that smoothing).
                  False: only the signs hold: the loss is >= 0, 0 for both empty and for an exact prediction, and
                  its gradient never raises a prediction where the target is empty nor lowers one where it is.
    compute_hooks: dotted names of the functions where a loss that does not ask ``diceloss.stats.resolve`` for a
                  backend starts computing; ``tests/test_inputs.py``'s ``no_compute`` replaces them too, so that
                  "the error comes before any computation" is tested for it as well.
    class_symmetric: permuting the classes (and their weights) permutes its per-class values and leaves its value
                  unchanged (with ``include_background=True``). False where class 0 is the background by
                  definition: Unified Focal's asymmetric terms, GWDL's default weighting (the background has no
                  weight), blob (the multiclass background has no blobs).
    mask_local:   positions excluded by ``mask`` / ``ignore_index`` change nothing: the loss and its gradient are
                  those of the other positions alone, whatever the input and target there. False where, as
                  documented, the excluded positions still shape a map: clDice's soft skeleton pools over every
                  position, the boundary loss's signed distance is of the whole target (the mask takes them out of
                  the sums only).
    per_sample:   the options under which ``reduction="none"`` gives one value per sample where its default scores
                  the batch as one group (Lovász: ``per_image=True``; its default is like ``batch_dice=True``).
    fullgraph:    ``torch.compile(fullgraph=True)`` traces it as one graph. False for the losses that build a
                  target-side map from the data on the host with SciPy / scikit-image (distance transforms,
                  skeletons, connected components) when the map is not given: they compile with graph breaks.
    """

    name: str
    function: Callable
    module: type
    options: frozenset
    unreduced: str | None = "class"
    pixel_term: str | None = None
    soft_targets: bool = True
    hard_targets: bool = False
    head: bool = True
    example: dict = dataclasses.field(default_factory=dict)
    shared: frozenset = SHARED_OPTIONS
    modes: tuple = MODES
    min_spatial_dims: int = 1
    max_spatial_dims: int | None = None
    geometric: bool = False
    range01: bool = True
    zero_minimum: bool = True
    empty_table: bool = True
    compute_hooks: tuple = ()
    class_symmetric: bool = True
    mask_local: bool = True
    per_sample: dict = dataclasses.field(default_factory=dict)
    fullgraph: bool = True

    @property
    def compound(self) -> bool:
        return self.pixel_term is not None

    def takes(self, *options: str) -> bool:
        """Whether the loss accepts every one of ``options``."""
        return set(options) <= self.shared | self.options

    def speaks(self, *options: str) -> bool:
        """Whether the loss takes every one of ``options`` with the meaning the generic option grids give them.

        The grids' own options (weight, squared, log, absent, alpha / beta / exponent, weighting, gamma, the
        lambdas) are the Dice family's: a head takes them with that meaning; a loss that is not a head may share
        a name (Unified Focal's ``gamma`` and ``lambda_focal``, GWDL's ``weighting``, Hausdorff-DT's ``alpha``,
        the calibration loss's ``absent``) but not its meaning or range, so it speaks only the shared options;
        its own options run through its ``example`` and its own test file.
        """
        own = set(options) - SHARED_OPTIONS
        return self.takes(*options) and (self.head or not own)

    def accepted(self, opts: dict) -> dict:
        """``opts`` without the options this loss does not take."""
        return {k: v for k, v in opts.items() if self.takes(k)}

    def plumbs(self, keyword: str) -> bool:
        """Whether the module and the function take the plumbing keyword (``backend``, ``distributed`` ...)."""
        return all(_takes_keyword(f, keyword) for f in (self.function, self.module))

    def default_background(self, mode: str) -> bool:
        """``include_background`` by default in ``mode``: the signature's default; ``None`` (clDice, Skeleton
        Recall, boundary) means False in multiclass mode, where channel 0 is the background, True otherwise."""
        params = inspect.signature(self.function).parameters
        if "include_background" not in params:
            return True  # every channel is scored (GWDL)
        default = params["include_background"].default
        return mode != "multiclass" if default is None else bool(default)

    def takes_rank(self, d: int) -> bool:
        """Whether the loss takes ``d`` spatial dimensions with its default options."""
        return self.min_spatial_dims <= d and (self.max_spatial_dims is None or d <= self.max_spatial_dims)

    def fit(self, *spatial: int) -> tuple[int, ...]:
        """A spatial shape with the positions of ``spatial`` that the loss takes: ``spatial`` itself when its rank
        is taken, else a 1-D ``(n,)`` folded to ``(a, n // a)``, ``a`` the largest divisor of n up to sqrt(n)
        (``(1, n)`` for a prime): the same positions in the row-major order, so ``x.reshape(B, C, *fit(n))``."""
        if self.takes_rank(len(spatial)):
            return tuple(spatial)
        if len(spatial) != 1 or self.min_spatial_dims != 2:
            raise ValueError(f"{self.name}: no fold of the spatial shape {spatial} is implemented")
        (n,) = spatial
        a = max(d for d in range(1, int(n**0.5) + 1) if n % d == 0)
        return (a, n // a)

    def call(self, *args, **kw):
        """``function(*args, **kw)`` without the plumbing keywords (``backend`` ...) the function does not take."""
        return self.function(*args, **_plumbed(self.function, kw))

    def make(self, **kw):
        """``module(**kw)`` without the plumbing keywords the module does not take."""
        return self.module(**_plumbed(self.module, kw))

    def __repr__(self) -> str:
        return f"LossInfo({self.name})"


def _takes_keyword(f: Callable, keyword: str) -> bool:
    # a head's module passes its shared options and plumbing through **options: it takes them all
    params = inspect.signature(f).parameters
    return keyword in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _plumbed(f: Callable, kw: dict) -> dict:
    # a loss that is not a head has no backend / distributed keywords: the generic tests' plumbing drops out
    return {k: v for k, v in kw.items() if k not in PLUMBING or _takes_keyword(f, k)}


_DICE_OPTIONS = frozenset({"weight", "squared", "log", "absent"})

# the shared options of the losses on a target-side map (stats/maps.py, stats/bins.py): no soft_label
_MAP_SHARED = SHARED_OPTIONS - {"soft_label"}

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
    LossInfo(
        "hausdorff",
        DF.hausdorff_dt_loss,
        diceloss.HausdorffDTLoss,
        frozenset({"alpha", "spacing", "empty", "target_distance"}),
        head=False,
        shared=frozenset({"mode", "from_logits", "include_background", "ignore_index", "reduction"}),
        example=dict(alpha=1.5, spacing=0.5, empty="zero"),
        geometric=True,
        range01=False,
        empty_table=False,
        compute_hooks=("diceloss.hausdorff._fields_and_loss",),
        fullgraph=False,
    ),
    LossInfo(
        "cldice",
        DF.cldice_loss,
        diceloss.ClDiceLoss,
        frozenset({"iterations", "target_skeleton"}),
        soft_targets=False,
        head=False,
        shared=frozenset(
            {"mode", "from_logits", "include_background", "ignore_index", "batch_dice", "smooth_nr", "smooth_dr",
             "reduction"}
        ),
        example=dict(iterations=2, include_background=True, smooth_nr=0.5),
        mask_local=False,
        min_spatial_dims=2,
        max_spatial_dims=3,
        geometric=True,
        empty_table=False,
        compute_hooks=("diceloss.cldice._class_losses",),
    ),
    LossInfo(
        "dice_cldice",
        DF.dice_cldice_loss,
        diceloss.DiceClDiceLoss,
        frozenset({"iterations", "target_skeleton", "lambda_dice", "lambda_cldice"}),
        soft_targets=False,
        head=False,
        shared=frozenset(
            {"mode", "from_logits", "include_background", "ignore_index", "batch_dice", "smooth_nr", "smooth_dr",
             "reduction"}
        ),
        example=dict(iterations=4, lambda_dice=0.3, lambda_cldice=0.7, batch_dice=True),
        mask_local=False,
        min_spatial_dims=2,
        max_spatial_dims=3,
        geometric=True,
        empty_table=False,
        compute_hooks=("diceloss.cldice._class_losses",),
    ),
    LossInfo(
        "lovasz",
        DF.lovasz_loss,
        diceloss.LovaszLoss,
        frozenset({"per_image", "classes"}),
        unreduced="group",  # (B,) with per_image=True; () with the default per_image=False (one group: the batch)
        soft_targets=False,
        head=False,
        shared=frozenset({"mode", "from_logits", "include_background", "ignore_index", "reduction"}),
        example=dict(per_image=True, classes="all"),
        hard_targets=True,
        range01=False,
        empty_table=False,
        compute_hooks=("diceloss.lovasz._compute",),
        per_sample=dict(per_image=True),
    ),
    # issue 13 (sums once a target-side map is known): Skeleton Recall, boundary, calibration
    LossInfo(
        "skeleton_recall",
        DF.skeleton_recall_loss,
        diceloss.SkeletonRecallLoss,
        frozenset({"skeleton"}),
        soft_targets=False,
        head=False,
        shared=_MAP_SHARED,
        example=dict(include_background=True, smooth_nr=0.5, smooth_dr=0.5, batch_dice=True),
        max_spatial_dims=3,
        geometric=True,
        empty_table=False,
        compute_hooks=("diceloss.transforms.tubed_skeleton",),
        fullgraph=False,
    ),
    LossInfo(
        "dice_ce_skeleton_recall",
        DF.dice_ce_skeleton_recall_loss,
        diceloss.DiceCESkeletonRecallLoss,
        frozenset({"skeleton", "lambda_dice", "lambda_ce", "lambda_skeleton"}),
        unreduced=None,
        pixel_term="ce",
        soft_targets=False,
        head=False,
        shared=_MAP_SHARED,
        example=dict(lambda_dice=0.5, lambda_skeleton=2.0),
        max_spatial_dims=3,
        geometric=True,
        range01=False,
        empty_table=False,
        compute_hooks=("diceloss.transforms.tubed_skeleton",),
        fullgraph=False,
    ),
    LossInfo(
        "boundary",
        DF.boundary_loss,
        diceloss.BoundaryLoss,
        frozenset({"distance_map", "spacing"}),
        soft_targets=False,
        head=False,
        shared=_MAP_SHARED - {"smooth_nr", "smooth_dr"},
        example=dict(include_background=True, spacing=0.5, batch_dice=True),
        mask_local=False,
        max_spatial_dims=3,
        geometric=True,
        range01=False,
        zero_minimum=False,
        empty_table=False,
        compute_hooks=("diceloss.transforms.signed_distance",),
        fullgraph=False,
    ),
    LossInfo(
        "calibration",
        DF.calibration_loss,
        diceloss.CalibrationLoss,
        frozenset({"bins", "soft", "empty_weight", "absent"}),
        soft_targets=False,
        head=False,
        shared=_MAP_SHARED - {"smooth_nr", "smooth_dr"},
        example=dict(bins=7, soft=True, absent="include", include_background=False),
        empty_table=False,
    ),
    # issue 13: blob loss (region ids), unified focal (asymmetric focal sums), GWDL (class pairs)
    LossInfo(
        "blob",
        DF.blob_loss,
        diceloss.BlobLoss,
        frozenset({"instances", "lambda_global", "lambda_blob", "connectivity"}),
        unreduced=None,
        soft_targets=False,
        head=False,
        shared=SHARED_OPTIONS - {"soft_label"},
        example=dict(lambda_blob=2.0, connectivity=1, include_background=False),
        class_symmetric=False,
        geometric=True,
        range01=False,
        compute_hooks=("diceloss.blob._computed_instances", "diceloss.blob.region_sums"),
        fullgraph=False,
    ),
    LossInfo(
        "unified_focal",
        DF.unified_focal_loss,
        diceloss.UnifiedFocalLoss,
        frozenset({"lambda_focal", "delta", "gamma"}),
        unreduced=None,
        soft_targets=False,
        head=False,
        shared=SHARED_OPTIONS - {"soft_label"},
        example=dict(lambda_focal=0.3, delta=0.7, gamma=0.25, batch_dice=True),
        class_symmetric=False,
        range01=False,
        empty_table=False,
        compute_hooks=("diceloss.unified_focal.asymmetric_focal_sums",),
    ),
    LossInfo(
        "wasserstein",
        DF.generalized_wasserstein_dice_loss,
        diceloss.GeneralizedWassersteinDiceLoss,
        frozenset({"dist_matrix", "weighting"}),
        unreduced="group",
        soft_targets=False,
        head=False,
        shared=SHARED_OPTIONS - {"soft_label", "include_background"},
        example=dict(dist_matrix=[[0.0, 1.0, 1.0], [1.0, 0.0, 0.5], [1.0, 0.5, 0.0]], weighting="GDL"),
        class_symmetric=False,
        modes=("multiclass", "binary"),
        compute_hooks=("diceloss.wasserstein.wasserstein_sums",),
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
