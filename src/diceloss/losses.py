"""Dice-family losses as ``nn.Module`` classes: an options object, a head and a weight buffer each.

Options are checked in the constructor, so a wrong option fails where it is written, not at the
first batch; an option set later (``loss.batch_dice = True``) is checked again, the same way.
``forward(input, target, mask=None)``; shapes as in :mod:`diceloss.functional`. Every module here
calls the same pipeline as its function in :mod:`diceloss.functional`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from torch import Tensor, nn

from ._checks import check_weight
from ._pipeline import LossOptions, run
from .heads import CompoundHead, DiceHead, GeneralizedDiceHead, Head, JaccardHead, TverskyHead

_COMMON_DOC = """
    Args:
        mode: "binary" | "multiclass" | "multilabel" (see :mod:`diceloss.functional` for the shapes).
        from_logits: ``True``: ``input`` holds logits (softmax over C in multiclass mode, sigmoid
            otherwise); ``False``: probabilities in [0, 1].
        include_background: keep class 0 (multiclass, multilabel); ignored in binary mode.
        weight: one non-negative weight per class, length C (also without background; its weight is then
            unused). Per-class losses are multiplied by it; "mean" divides by the sum of the weights of the
            classes averaged.
        ignore_index: multiclass: a class index marking positions to skip (any integer; a real class is
            also dropped from the class mean); binary, multilabel: a target value marking elements to skip.
        batch_dice: sum the statistics over the batch before the head (one Dice per class).
        smooth_nr, smooth_dr: added to numerator and denominator; ``smooth_nr <= smooth_dr``.
        absent: "include" every class in the mean, or "exclude" the classes absent from a group's target
            (a true mean over present classes; a group with none contributes 0 and is still counted).
            "exclude" hides false positives on absent classes.
        soft_label: intersection sum(min(p, g)) (Dice semimetric): with soft targets the loss is 0
            exactly at p = g; with hard targets it equals the ordinary loss.
        reduction: "mean" | "sum" | "none" ((B, K), or (K,) with ``batch_dice``).
        backend: "auto" | "reference" | "fused" | "triton".
        distributed: with ``batch_dice``, sum the statistics over the ranks of ``process_group``
            (torch.distributed) before the head, differentiably.
"""


class _Option:
    """A module attribute that lives in the module's options object or head (``path``: "_options", "_head" or
    "_head.dice"; a loss without a head keeps every option in a frozen dataclass ``_options``). Reading it
    reads that field; setting it makes a new options object or head with the field replaced, which validates
    it again, and the module checks the pair before keeping it."""

    def __init__(self, path: str = "_options") -> None:
        self.path = path.split(".")

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj, objtype=None):
        if obj is None:
            return self
        holder = obj
        for part in self.path:
            holder = getattr(holder, part)
        return getattr(holder, self.name)

    def __set__(self, obj, value) -> None:
        root, *inner = self.path
        chain = [getattr(obj, root)]
        for part in inner:
            chain.append(getattr(chain[-1], part))
        new = dataclasses.replace(chain[-1], **{self.name: value})
        for parent, part in zip(reversed(chain[:-1]), reversed(inner)):
            new = dataclasses.replace(parent, **{part: new})
        if not hasattr(obj, "_head"):  # a loss that is not a head on the statistics: its options object alone
            obj._options = new
            return
        options, head = (new, obj._head) if root == "_options" else (obj._options, new)
        head.check_reduction(options.reduction)
        obj._options, obj._head = options, head


class _OptionsModule(nn.Module):
    """A loss module whose options live in one frozen dataclass ``_options``, read and set through
    :class:`_Option` attributes."""

    _options: object

    @property
    def options(self):
        """The options object (immutable; set an attribute of the module to change one)."""
        return self._options


class _StatLoss(_OptionsModule):
    """A loss that is a head on the statistics: its options (one :class:`~diceloss._pipeline.LossOptions`), its
    head and its class weights (a buffer, so it follows ``.to(device)``).

    ``mode``, ``ignore_index`` and every other option are declared properties, so wrappers such as
    :class:`~diceloss.DeepSupervisionLoss` read them the same way from every loss.
    """

    weight: Tensor | None

    mode = _Option()
    from_logits = _Option()
    include_background = _Option()
    ignore_index = _Option()
    batch_dice = _Option()
    soft_label = _Option()
    reduction = _Option()
    backend = _Option()
    distributed = _Option()
    process_group = _Option()

    def __init__(self, options: LossOptions, head: Head, weight: Sequence[float] | Tensor | None = None) -> None:
        super().__init__()
        head.check_reduction(options.reduction)
        self._options = options
        self._head = head
        self.register_buffer("weight", check_weight(weight))

    @property
    def head(self) -> Head:
        """The head object (immutable; set an attribute of the module to change one)."""
        return self._head

    def forward(self, input: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        return run(input, target, mask, self.weight, self._options, self._head)[0]

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, reduction={self.reduction!r}, batch_dice={self.batch_dice}"


def _options(
    mode: str,
    *,
    from_logits: bool = True,
    include_background: bool = True,
    ignore_index: int | None = None,
    batch_dice: bool = False,
    squared: bool = False,
    soft_label: bool = False,
    reduction: str = "mean",
    backend: str = "auto",
    distributed: bool = False,
    process_group=None,
) -> LossOptions:
    return LossOptions(
        mode, from_logits, include_background, ignore_index, batch_dice, squared, soft_label, reduction, backend,
        distributed, process_group,
    )


class DiceLoss(_StatLoss):
    __doc__ = (
        r"""Dice loss, per class ``1 - D`` (``-log D`` with ``log=True``)::

        D = (2 I + s_nr) / (P + G + s_dr),   I = sum p g,  P = sum p^q,  G = sum g^q

    with q = 2 for ``squared=True`` (V-Net), sums over the valid positions of a sample (or of the
    batch with ``batch_dice``). Range: [0, 1]; [0, 17.12] with ``log=True``
    (``-log D`` down to D = 1e-7, continued by its tangent line, so the gradient never vanishes).
    """
        + _COMMON_DOC
        + """        squared: V-Net denominator sum p^2 + sum g^2.
        log: ``-log D`` per class instead of ``1 - D``.

    Shape:
        input (B, C, *S), target (B, *S) / (B, 1, *S) / (B, C, *S), mask (B, *S) or (B, 1, *S);
        output () for "mean" / "sum", (B, K) or (K,) for "none".

    Example:
        >>> loss = DiceLoss()
        >>> x = torch.randn(2, 3, 8, 8, requires_grad=True)
        >>> t = torch.randint(0, 3, (2, 8, 8))
        >>> loss(x, t).backward()
    """
    )

    squared = _Option()
    log = _Option("_head")
    smooth_nr = _Option("_head")
    smooth_dr = _Option("_head")
    absent = _Option("_head")

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        squared: bool = False,
        log: bool = False,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        absent: str = "include",
        weight: Sequence[float] | Tensor | None = None,
        **options,
    ) -> None:
        opts = _options(mode, squared=squared, **options)
        super().__init__(opts, DiceHead(smooth_nr, smooth_dr, absent, log=log), weight)


class JaccardLoss(_StatLoss):
    __doc__ = (
        r"""Jaccard (soft IoU) loss, per class ``1 - J``, ``J = (I + s_nr) / (P + G - I + s_dr)``.
    Range: [0, 1].

    MONAI's ``DiceLoss(jaccard=True)`` computes ``(2I + s) / (2(P + G - I) + s)`` instead: the same
    value up to how the smoothing enters.
    """
        + _COMMON_DOC
        + """
    Example:
        >>> loss = JaccardLoss(mode="multilabel")
        >>> x = torch.randn(2, 3, 16)
        >>> t = (torch.rand(2, 3, 16) > 0.5).float()
        >>> 0 <= float(loss(x, t)) <= 1
        True
    """
    )

    smooth_nr = _Option("_head")
    smooth_dr = _Option("_head")
    absent = _Option("_head")

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        absent: str = "include",
        weight: Sequence[float] | Tensor | None = None,
        **options,
    ) -> None:
        super().__init__(_options(mode, **options), JaccardHead(smooth_nr, smooth_dr, absent), weight)


class TverskyLoss(_StatLoss):
    __doc__ = (
        r"""Tversky loss, per class ``(1 - T) ** exponent`` (focal Tversky for exponent != 1)::

        T = (I + s_nr) / (I + alpha (P - I) + beta (G - I) + s_dr)

    ``alpha`` weighs false positives, ``beta`` false negatives; alpha = beta = 0.5 gives Dice,
    alpha = beta = 1 Jaccard. The exponent applies per class, before the class mean (Abraham & Khan,
    2019). Range: [0, 1].
    """
        + _COMMON_DOC
        + """        alpha, beta: >= 0, not both 0.
        exponent: > 0; 0.75 is the focal Tversky of the paper.

    Example:
        >>> loss = TverskyLoss(alpha=0.3, beta=0.7, exponent=0.75)
        >>> x = torch.randn(2, 4, 8, 8, 8)
        >>> t = torch.randint(0, 4, (2, 8, 8, 8))
        >>> float(loss(x, t)) > 0
        True
    """
    )

    alpha = _Option("_head")
    beta = _Option("_head")
    exponent = _Option("_head")
    smooth_nr = _Option("_head")
    smooth_dr = _Option("_head")
    absent = _Option("_head")

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        alpha: float = 0.5,
        beta: float = 0.5,
        exponent: float = 1.0,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        absent: str = "include",
        weight: Sequence[float] | Tensor | None = None,
        **options,
    ) -> None:
        head = TverskyHead(smooth_nr, smooth_dr, absent, alpha=alpha, beta=beta, exponent=exponent)
        super().__init__(_options(mode, **options), head, weight)


class GeneralizedDiceLoss(_StatLoss):
    r"""Generalized Dice loss (Sudre et al., 2017), per group (sample, or the batch with ``batch_dice``)::

        1 - (2 sum_c w_c I_c + s_nr) / (sum_c w_c (P_c + G_c) + s_dr),   w_c = 1/G_c^2 | 1/G_c | 1

    ``weighting``: "square" | "simple" | "uniform". A class absent from the group's target takes the
    group's largest finite weight (MONAI's rule); a group with no present class takes uniform weights,
    so false positives are still penalised (MONAI returns 0 there). Takes no ``weight``: the weights
    are its own. Range: [0, 1].

    Shape: output () for "mean" / "sum"; (B,), or () with ``batch_dice``, for "none".

    Example:
        >>> loss = GeneralizedDiceLoss(weighting="simple")
        >>> x = torch.randn(2, 3, 8, 8)
        >>> t = torch.randint(0, 3, (2, 8, 8))
        >>> tuple(GeneralizedDiceLoss(reduction="none")(x, t).shape)
        (2,)
    """

    weighting = _Option("_head")
    smooth_nr = _Option("_head")
    smooth_dr = _Option("_head")

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        from_logits: bool = True,
        include_background: bool = True,
        ignore_index: int | None = None,
        batch_dice: bool = False,
        weighting: str = "square",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        soft_label: bool = False,
        reduction: str = "mean",
        backend: str = "auto",
        distributed: bool = False,
        process_group=None,
    ) -> None:
        options = LossOptions(
            mode, from_logits, include_background, ignore_index, batch_dice, False, soft_label, reduction, backend,
            distributed, process_group,
        )
        super().__init__(options, GeneralizedDiceHead(weighting, smooth_nr, smooth_dr))


class _CompoundLoss(_StatLoss):
    """A Dice loss plus a pixel-wise term; ``components`` holds the detached terms of the last call."""

    squared = _Option()
    log = _Option("_head.dice")
    smooth_nr = _Option("_head.dice")
    smooth_dr = _Option("_head.dice")
    absent = _Option("_head.dice")
    lambda_dice = _Option("_head")

    def __init__(self, head: CompoundHead, mode: str, squared: bool, reduction: str, weight, options: dict) -> None:
        head.check_reduction(reduction)
        super().__init__(_options(mode, squared=squared, reduction=reduction, **options), head, weight)
        self.components: dict[str, Tensor] = {}

    def forward(self, input: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        total, self.components = run(input, target, mask, self.weight, self._options, self._head)
        return total


class _HeadAlias(_Option):
    """A module attribute stored on the head under another name (``lambda_ce`` is the head's ``lambda_other``)."""

    def __init__(self, field: str) -> None:
        super().__init__("_head")
        self.field = field

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = self.field


class DiceCELoss(_CompoundLoss):
    __doc__ = (
        r"""``lambda_dice * DiceLoss + lambda_ce * cross-entropy``.

    The cross-entropy is ``torch.nn.functional.cross_entropy`` in multiclass mode (same ``weight``,
    ``ignore_index`` and ``label_smoothing`` semantics; with a ``weight``, one-hot and soft targets
    take the weighted mean of class indices, ``sum_n sum_c w_c g_c``, so every target format of the
    same labels gives the same loss) and ``binary_cross_entropy_with_logits`` in binary and
    multilabel modes, with ``weight`` a per-channel factor. ``mask`` removes positions from both.
    ``reduction``: "mean" or "sum" only. ``components`` holds the detached ``dice`` and ``ce`` terms
    of the last call, for logging. Range: [0, inf).
    """
        + _COMMON_DOC
        + """        squared, log: as in :class:`DiceLoss`.
        lambda_dice, lambda_ce: non-negative factors of the two terms.
        label_smoothing: in [0, 1], as in ``cross_entropy`` (binary: targets move towards 1/2).

    Example:
        >>> loss = DiceCELoss(include_background=False)
        >>> x = torch.randn(2, 3, 8, 8, requires_grad=True)
        >>> t = torch.randint(0, 3, (2, 8, 8))
        >>> loss(x, t).backward()
        >>> sorted(loss.components)
        ['ce', 'dice']
    """
    )

    lambda_ce = _HeadAlias("lambda_other")
    label_smoothing = _Option("_head")

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        squared: bool = False,
        log: bool = False,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        absent: str = "include",
        reduction: str = "mean",
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        label_smoothing: float = 0.0,
        weight: Sequence[float] | Tensor | None = None,
        **options,
    ) -> None:
        dice = DiceHead(smooth_nr, smooth_dr, absent, log=log)
        head = CompoundHead(dice, "ce", lambda_dice, lambda_ce, label_smoothing=label_smoothing)
        super().__init__(head, mode, squared, reduction, weight, options)


class DiceFocalLoss(_CompoundLoss):
    __doc__ = (
        r"""``lambda_dice * DiceLoss + lambda_focal * focal loss``.

    The focal term is a softmax focal loss in multiclass mode,
    ``-sum_c w_c g_c (1 - p_c)^gamma log p_c`` per position, and a sigmoid one per element otherwise,
    reduced like the cross-entropy of :class:`DiceCELoss` (which it equals at ``gamma=0``).
    ``reduction``: "mean" or "sum" only. ``components`` holds the detached ``dice`` and ``focal``
    terms of the last call. Range: [0, inf).
    """
        + _COMMON_DOC
        + """        squared, log: as in :class:`DiceLoss`.
        gamma: focusing parameter, >= 0.
        lambda_dice, lambda_focal: non-negative factors of the two terms.

    Example:
        >>> loss = DiceFocalLoss(mode="multilabel", gamma=2.0)
        >>> x = torch.randn(2, 3, 8, 8)
        >>> t = (torch.rand(2, 3, 8, 8) > 0.7).float()
        >>> float(loss(x, t)) > 0
        True
    """
    )

    lambda_focal = _HeadAlias("lambda_other")
    gamma = _Option("_head")

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        squared: bool = False,
        log: bool = False,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        absent: str = "include",
        reduction: str = "mean",
        gamma: float = 2.0,
        lambda_dice: float = 1.0,
        lambda_focal: float = 1.0,
        weight: Sequence[float] | Tensor | None = None,
        **options,
    ) -> None:
        dice = DiceHead(smooth_nr, smooth_dr, absent, log=log)
        head = CompoundHead(dice, "focal", lambda_dice, lambda_focal, gamma=gamma)
        super().__init__(head, mode, squared, reduction, weight, options)


__all__ = ["DiceLoss", "JaccardLoss", "TverskyLoss", "GeneralizedDiceLoss", "DiceCELoss", "DiceFocalLoss"]
