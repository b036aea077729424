"""Calibration errors of probabilistic segmentations: ECE, ACE and MCE per class, and an accumulating metric.

Each class c is scored one-vs-rest: its probabilities p (the class's channel of the input) against
y = [target == c] (class-index targets) or the target's channel c (one-hot, binary and multilabel dense
targets; a soft target enters as its value). The positions are split into R bins; bin r holds n_r positions
with mean probability conf_r = sum p / n_r and mean target acc_r = sum y / n_r, and

    ECE = sum_r n_r |acc_r - conf_r| / sum_r n_r        (equal-width bins, Guo et al. 2017)
    ACE = 1/R' sum_r |acc_r - conf_r|                  (equal-mass bins, Nixon et al. 2019)
    MCE = max_r |acc_r - conf_r|                        (equal-width bins, Naeini et al. 2015)

where sums, means and the max run over the R' non-empty bins only (an empty bin is skipped, never
counted as an error of 0). A class with no valid position has no calibration error: NaN, left out of the
NaN-ignoring means.

**Bins.** ``binning="width"`` (ECE and MCE by default): R bins of width 1/R, (k/R, (k+1)/R], the first
also holding 0 (a probability on an inner edge belongs to the lower bin). ``binning="mass"`` (ACE by
default): the valid positions sorted by probability (a stable sort) and cut into R runs of
floor or ceil of N/R consecutive positions, bin = rank * R // N; ties on a cut may fall in two bins, and
with fewer than R positions some bins are empty (skipped). Any ``kind`` takes either ``binning``.

**Against MONAI** (``monai.metrics.CalibrationErrorMetric`` and ``calibration_binning``, 1.6.1), checked by
``tests/test_calibration.py`` on random 2D and 3D inputs to ~1e-7 (float32 rounding of MONAI):

* MONAI computes one value per (sample, class): ``aggregation="sample"`` here (the default); its ``"mean"``
  reduction is the NaN-ignoring mean over every (sample, class), its ``"mean_batch"`` the mean per class
  over samples, which is this function's ``reduction="none"`` averaged over the batch with ``torch.nanmean``.
  ``aggregation="global"`` (one value per class over all positions of the batch) has no MONAI counterpart.
* MONAI's ``"expected"`` is ECE and its ``"maximum"`` MCE, same bins. Its ``"average"`` is the unweighted
  mean over non-empty *equal-width* bins, which is ``kind="ace", binning="width"`` here; ``kind="ace"``
  alone uses equal-mass bins (the adaptive calibration error of Nixon et al.), which MONAI does not have.
* MONAI's bin edges are k(1 + eps)/R with eps the float32 epsilon and its default ``right=False`` puts a
  value on an edge in the lower bin (despite its docstring's "[left, right)"); the edges here are k/R in
  float64. Only a probability within ~1e-7 of an inner edge can land in another bin.
* MONAI works in float32 and needs one-hot targets of the input's shape; here the sums are float64, and
  class-index targets, ``ignore_index``, ``mask``, ``from_logits`` and the binary layouts follow the losses'
  input rules (:func:`diceloss._layout.prepare`). MONAI's ``num_bins`` defaults to 20, ``bins`` here to 10.

Example:
    >>> import torch
    >>> probs = torch.tensor([[[0.9, 0.8, 0.3, 0.1]]])          # binary, (B, 1, N)
    >>> target = torch.tensor([[[1, 0, 0, 0]]])
    >>> calibration_error(probs, target, mode="binary", bins=2)  # bins (0, .5]: |0 - .2|; (.5, 1]: |.5 - .85|
    tensor([[0.2750]], dtype=torch.float64)
    >>> calibration_error(probs, target, mode="binary", bins=2, kind="mce")
    tensor([[0.3500]], dtype=torch.float64)
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _checks, _layout, distributed

KINDS = ("ece", "ace", "mce")
"""The calibration errors of :func:`calibration_error`: expected, adaptive (average) and maximum."""

BINNINGS = ("width", "mass")


def _default_binning(kind: str, binning: str | None) -> str:
    _checks.check_choice("kind", kind, KINDS)
    if binning is None:
        return "mass" if kind == "ace" else "width"
    _checks.check_choice("binning", binning, BINNINGS)
    return binning


def _check_bins(bins: object) -> int:
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    return bins


def _class_columns(
    probs: Tensor,
    target: Tensor,
    *,
    mode: str,
    from_logits: bool,
    include_background: bool,
    ignore_index: int | None,
    mask: Tensor | None,
):
    """Yield (class, p (B, N) float64, y (B, N) float64, valid (B, N) bool) for every scored class."""
    prep = _layout.prepare(
        probs,
        target,
        mode=mode,
        from_logits=from_logits,
        ignore_index=ignore_index,
        mask=mask,
        include_background=include_background,
    )
    x = prep.logits.detach().double()
    if prep.activation == "softmax":
        x = x.softmax(dim=1)
    elif prep.activation == "sigmoid":
        x = x.sigmoid()
    kept = prep.kept_classes if prep.kept_classes is not None else tuple(range(prep.num_classes))
    tgt = prep.target.detach()
    base = prep.mask if prep.mask is not None else torch.ones(x.shape[0], x.shape[2], dtype=torch.bool,
                                                              device=x.device)
    if prep.target_is_index and prep.ignore_index is not None:
        base = base & (tgt != prep.ignore_index)
    for c in kept:
        if prep.target_is_index:
            y, valid = (tgt == c).double(), base
        else:
            y, valid = tgt[:, c].double(), base
            if prep.ignore_index is not None:  # binary / multilabel: elements equal to ignore_index
                valid = valid & (tgt[:, c] != prep.ignore_index)
        yield c, x[:, c], y, valid


def _bin_sums(p: Tensor, y: Tensor, valid: Tensor, bins: int, binning: str) -> Tensor:
    """Per-row bin sums (rows, bins, 3) of count, probability and target, over the valid positions of each row."""
    rows, n = p.shape
    if binning == "width":
        edges = torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64, device=p.device)[1:-1]
        idx = torch.bucketize(p.contiguous(), edges, right=False)  # (k/R, (k+1)/R]: an inner edge goes to the lower bin
    else:
        order = torch.sort(torch.where(valid, p, torch.full_like(p, torch.inf)), dim=1, stable=True).indices
        p, y = p.gather(1, order), y.gather(1, order)
        count = valid.sum(1, keepdim=True)
        rank = torch.arange(n, device=p.device).expand(rows, n)
        valid = rank < count
        idx = torch.div(rank * bins, count.clamp_min(1), rounding_mode="floor").clamp_max(bins - 1)
    flat = (torch.arange(rows, device=p.device)[:, None] * bins + idx)[valid]
    size = rows * bins
    out = torch.stack(
        [
            torch.bincount(flat, minlength=size).double(),
            torch.bincount(flat, weights=p[valid], minlength=size),
            torch.bincount(flat, weights=y[valid], minlength=size),
        ],
        dim=-1,
    )
    return out.reshape(rows, bins, 3)


def _errors(sums: Tensor, kind: str) -> Tensor:
    """The calibration error of bin sums (..., bins, 3); NaN where every bin is empty."""
    n, sp, sy = sums.unbind(-1)
    filled = n > 0
    gap = (sp - sy).abs() / n.clamp_min(1)  # |conf - acc|, 0 in empty bins
    total = n.sum(-1)
    nan = torch.full_like(total, torch.nan)
    if kind == "ece":
        out = (gap * n).sum(-1) / total.clamp_min(1)
    elif kind == "ace":
        out = gap.sum(-1) / filled.sum(-1).clamp_min(1)
    else:
        out = torch.where(filled, gap, torch.full_like(gap, -1.0)).amax(-1)
    return torch.where(total > 0, out, nan)


def calibration_bin_sums(
    probs: Tensor,
    target: Tensor,
    *,
    mode: str = "multiclass",
    bins: int = 10,
    binning: str = "width",
    aggregation: str = "sample",
    from_logits: bool = False,
    include_background: bool = True,
    ignore_index: int | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """Bin sums (B, K, bins, 3) (``aggregation="sample"``) or (K, bins, 3) (``"global"``), float64: per bin the
    count of valid positions, the sum of the class's probabilities and the sum of its target; K the scored
    classes as in :func:`calibration_error`. A reliability diagram is sums[..., 2] / sums[..., 0] against
    sums[..., 1] / sums[..., 0]. The arguments are :func:`calibration_error`'s."""
    _check_bins(bins)
    _checks.check_choice("binning", binning, BINNINGS)
    _checks.check_choice("aggregation", aggregation, ("sample", "global"))
    per_class = []
    for _, p, y, valid in _class_columns(
        probs, target, mode=mode, from_logits=from_logits, include_background=include_background,
        ignore_index=ignore_index, mask=mask,
    ):
        if aggregation == "global":
            p, y, valid = p.reshape(1, -1), y.reshape(1, -1), valid.reshape(1, -1)
        per_class.append(_bin_sums(p, y, valid, bins, binning))
    out = torch.stack(per_class, dim=1)  # (rows, K, bins, 3)
    return out[0] if aggregation == "global" else out


def calibration_error(
    probs: Tensor,
    target: Tensor,
    *,
    mode: str = "multiclass",
    bins: int = 10,
    kind: str = "ece",
    binning: str | None = None,
    aggregation: str = "sample",
    reduction: str = "none",
    from_logits: bool = False,
    include_background: bool = True,
    ignore_index: int | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """Calibration error per class (one-vs-rest): ECE, ACE or MCE; the formulas are in :mod:`this module's
    <diceloss.metrics.calibration>` docstring.

    Args:
        probs: probabilities (B, C, *S) in multiclass (softmax over C) and multilabel modes, (B, *S) or
            (B, 1, *S) in binary mode; logits with ``from_logits=True`` (softmax or sigmoid applied here).
        target: class indices (B, *S) / (B, 1, *S) or one-hot (B, C, *S) in multiclass mode; values in [0, 1]
            of the input's shape otherwise.
        bins: the number of bins R.
        kind: "ece" | "ace" | "mce".
        binning: "width" (R equal-width bins) | "mass" (R equal-mass bins); default "mass" for ACE and
            "width" for ECE and MCE. ``kind="ace", binning="width"`` is MONAI's "average".
        aggregation: "sample" -> one value per (sample, class), (B, K), as MONAI; "global" -> one value per
            class over every position of the batch, (K,).
        reduction: "none" -> the values above, float64; "mean" -> their NaN-ignoring mean, ().
        include_background, ignore_index, mask: as in the losses: K is C less the background without
            ``include_background`` (not in binary mode) and less the class ``ignore_index`` names in multiclass
            mode; positions with that index (elements equal to it in binary and multilabel modes) and positions
            where ``mask`` is 0 are skipped.

    Example:
        >>> probs = torch.tensor([[[0.7, 0.2], [0.3, 0.8]]])   # (B=1, C=2, N=2)
        >>> calibration_error(probs, torch.tensor([[0, 0]]), bins=5)
        tensor([[0.5500, 0.5500]], dtype=torch.float64)
    """
    binning = _default_binning(kind, binning)
    _checks.check_choice("reduction", reduction, ("none", "mean"))
    sums = calibration_bin_sums(
        probs, target, mode=mode, bins=bins, binning=binning, aggregation=aggregation, from_logits=from_logits,
        include_background=include_background, ignore_index=ignore_index, mask=mask,
    )
    out = _errors(sums, kind)
    return torch.nanmean(out) if reduction == "mean" else out


class CalibrationErrorMetric:
    """Accumulates a calibration error over batches: ``update(probs, target)``, ``compute()``, ``reset()``.

    ``aggregation="global"``: the bin sums (K, bins, 3) of every position seen, summed over the batches, then
    one error per class, exactly :func:`calibration_error` with ``aggregation="global"`` on all batches at
    once (equal-width bins only: equal-mass bins need every probability at once). ``aggregation="sample"``:
    the mean over samples of the per-sample errors per class (NaN ones left out), MONAI's ``"mean_batch"``.
    ``compute()`` returns (K,) with ``reduction="none"`` or the NaN-ignoring mean over classes. The state is
    sums only; under ``torch.distributed`` ``compute()`` sums it over the ranks first (a rank that saw no
    batch contributes zeros, so pass ``num_classes`` outside binary mode).

    Example:
        >>> metric = CalibrationErrorMetric(mode="binary", bins=2, aggregation="global")
        >>> metric.update(torch.tensor([[0.9, 0.8]]), torch.tensor([[1, 0]]))
        >>> metric.update(torch.tensor([[0.3, 0.1]]), torch.tensor([[0, 0]]))
        >>> metric.compute()
        tensor(0.2750, dtype=torch.float64)
    """

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        bins: int = 10,
        kind: str = "ece",
        binning: str | None = None,
        aggregation: str = "global",
        num_classes: int | None = None,
        include_background: bool = True,
        from_logits: bool = False,
        ignore_index: int | None = None,
        process_group=None,
    ) -> None:
        _checks.check_choice("mode", mode, _checks.MODES)
        _checks.check_choice("aggregation", aggregation, ("sample", "global"))
        self.binning = _default_binning(kind, binning)
        if aggregation == "global" and self.binning == "mass":
            raise ValueError(
                "aggregation='global' accumulates per-bin sums and needs binning='width'; got binning='mass' "
                "(equal-mass bins depend on every probability at once): pass binning='width' (kind='ace' is then "
                "MONAI's 'average') or aggregation='sample'"
            )
        self.mode, self.bins, self.kind, self.aggregation = mode, _check_bins(bins), kind, aggregation
        self.num_classes = num_classes
        self.include_background = include_background
        self.from_logits = from_logits
        self.ignore_index = ignore_index
        self.process_group = process_group
        self.reset()

    def _options(self) -> dict:
        return dict(mode=self.mode, bins=self.bins, binning=self.binning, aggregation=self.aggregation,
                    from_logits=self.from_logits, include_background=self.include_background,
                    ignore_index=self.ignore_index)

    def reset(self) -> None:
        self._state: Tensor | None = None  # global: (K, bins, 3) bin sums; sample: (2, K) sum of errors, counted

    def _zeros(self, device: torch.device) -> Tensor:
        if self.num_classes is None and self.mode != "binary":
            raise RuntimeError(
                "CalibrationErrorMetric.compute() called before any update(); pass num_classes to the constructor "
                "so that a rank without data can contribute zeros"
            )
        C = 1 if self.mode == "binary" else self.num_classes
        kept = _layout._kept_classes(self.mode, C, self.include_background, self.ignore_index)
        K = C if kept is None else len(kept)
        shape = (K, self.bins, 3) if self.aggregation == "global" else (2, K)
        return torch.zeros(shape, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, probs: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        state = batch_state(probs, target, kind=self.kind, mask=mask, **self._options())
        if self._state is not None and self._state.shape != state.shape:
            raise ValueError(f"update with state of shape {tuple(state.shape)} after {tuple(self._state.shape)}: "
                             "the number of classes changed")
        self._state = state if self._state is None else self._state + state

    def compute(self, reduction: str = "mean") -> Tensor:
        _checks.check_choice("reduction", reduction, ("none", "mean"))
        state = distributed.sum_state_over_ranks(self._state, self._zeros, self.process_group)
        return errors_of_state(state, self.kind, self.aggregation, reduction)


def batch_state(probs: Tensor, target: Tensor, *, kind: str, aggregation: str, **options) -> Tensor:
    """The summable state of one batch: bin sums (K, bins, 3) (``"global"``) or (2, K) sum of per-sample errors
    and samples counted (``"sample"``)."""
    sums = calibration_bin_sums(probs, target, aggregation=aggregation, **options)
    if aggregation == "global":
        return sums
    err = _errors(sums, kind)  # (B, K)
    counted = ~torch.isnan(err)
    return torch.stack([torch.where(counted, err, torch.zeros_like(err)).sum(0), counted.double().sum(0)])


def errors_of_state(state: Tensor, kind: str, aggregation: str, reduction: str) -> Tensor:
    """The per-class errors (K,) (``reduction="none"``) or their NaN-ignoring mean of a summed state."""
    if aggregation == "global":
        out = _errors(state, kind)
    else:
        out = torch.where(state[1] > 0, state[0] / state[1].clamp_min(1), torch.full_like(state[0], torch.nan))
    return torch.nanmean(out) if reduction == "mean" else out


__all__ = ["KINDS", "calibration_error", "calibration_bin_sums", "CalibrationErrorMetric"]
