"""The one path of every statistics loss: layout -> statistics -> grouping (batch, ranks) -> head.

:class:`LossOptions` holds the options that decide which statistics are computed and how they are
grouped; it is validated once, when it is made (in a module's constructor, or at the start of a
functional call), and is immutable: a module that changes an option makes a new one, validated again.
:func:`run` is called by :mod:`diceloss.functional` and :mod:`diceloss.losses` alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ._checks import check_option_fields
from ._layout import Prepared, prepare
from .distributed import all_reduce_stats, all_reduce_sum
from .heads import Head, Selection
from .stats import OverlapStats, StatsRequest, compute_dtype, stats_from_layout


@dataclass(frozen=True)
class LossOptions:
    """Which statistics, over which positions, grouped how: everything of a loss but its head.

    mode, from_logits, include_background, ignore_index: the input convention (see :mod:`diceloss.functional`).
    batch_dice: sum the statistics over the batch before the head; distributed: and over the ranks of
    ``process_group``. squared, soft_label: which statistics (see :class:`~diceloss.stats.StatsRequest`).
    reduction: "mean" | "sum" | "none". backend: "auto" | "reference" | "fused" | "triton".
    """

    mode: str = "multiclass"
    from_logits: bool = True
    include_background: bool = True
    ignore_index: int | None = None
    batch_dice: bool = False
    squared: bool = False
    soft_label: bool = False
    reduction: str = "mean"
    backend: str = "auto"
    distributed: bool = False
    process_group: object = None
    # derived once from the fields above
    request: StatsRequest = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_option_fields(
            self, bools=("from_logits", "include_background", "batch_dice", "squared", "soft_label", "distributed")
        )
        if self.distributed and not self.batch_dice:
            raise ValueError(
                "distributed=True sums the statistics over the ranks, which only batch Dice needs; per-sample Dice "
                "(batch_dice=False) needs no synchronisation"
            )
        object.__setattr__(self, "request", StatsRequest(squared=self.squared, soft_label=self.soft_label))


def _sum_groups(stats: OverlapStats) -> OverlapStats:
    return OverlapStats(*(None if f is None else f.sum(dim=0, keepdim=True) for f in stats))


def run(
    input: Tensor,
    target: Tensor,
    mask: Tensor | None,
    weight: Tensor | None,
    options: LossOptions,
    head: Head,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss of ``head`` and its detached terms; ``weight`` is already checked, on the input's device."""
    prep = prepare(
        input,
        target,
        mode=options.mode,
        from_logits=options.from_logits,
        ignore_index=options.ignore_index,
        mask=mask,
        include_background=options.include_background,
        weight=weight,
    )
    request = head.request(options.request)
    stats = stats_from_layout(prep, request, options.backend)
    linear = None
    if (
        request.squared
        and weight is not None
        and not prep.target_is_index
        and prep.mode == "multiclass"
        and (request.cross_entropy or request.focal_gamma is not None)
    ):
        # G holds sum g^2; the weighted mean of the pixel term divides by sum w_c g_c (soft targets differ)
        linear = _linear_target_volume(prep, stats.target_volume.dtype)
    if options.batch_dice:
        stats = _sum_groups(stats)
        linear = None if linear is None else linear.sum(dim=0, keepdim=True)
        if options.distributed:
            stats = all_reduce_stats(stats, options.process_group)
            linear = None if linear is None else all_reduce_sum(linear, options.process_group)
    if weight is not None:
        weight = weight.to(compute_dtype(input.dtype))
    selection = Selection(prep.kept_classes, weight, prep.mode == "multiclass", prep.target_is_index, linear)
    return head.terms(stats, selection, options.reduction, options.batch_dice)


def _linear_target_volume(prep: Prepared, dtype) -> Tensor:
    """sum_n m g per (sample, class) of a dense target (B, C, N), without a full-size temporary."""
    with torch.no_grad():
        g = prep.target.to(dtype)
        if prep.mask is None:
            return g.sum(dim=-1)
        return torch.bmm(g, prep.mask.to(dtype)[..., None])[..., 0]
