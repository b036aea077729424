"""The reference backend: plain autograd over a one-hot target, written to be obviously right.

It is the ground truth every other backend is tested against, and the only backend that supports
double backward. It materialises the probabilities, the one-hot target and the mask at full size in
the accumulation dtype, so it is neither fast nor light.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .._layout import Prepared
from .types import LOG_CLAMP, OverlapStats, StatsRequest, compute_dtype


def supports(prep: Prepared, request: StatsRequest) -> str | None:
    return None


def status() -> str:
    return "available"


def _safe_log(p: Tensor) -> Tensor:
    """max(log p, -100) with a finite gradient: 0 where clamped.

    ``torch.log(p).clamp_min(-100)`` has the same values, but at p = 0 its backward is 0 / 0 = NaN
    (a probability of exactly 0 or 1 is an ordinary input with ``from_logits=False``).
    """
    ok = p > math.exp(LOG_CLAMP)
    return torch.where(ok, torch.log(torch.where(ok, p, torch.ones_like(p))), torch.full_like(p, LOG_CLAMP))


def _focal_pow(base: Tensor, gamma: float) -> Tensor:
    """base ** gamma with a zero, not NaN, gradient at base = 0 when gamma < 1.

    The focal factor (1 - p) ** gamma multiplies -log p, which vanishes like (1 - p) at p = 1, so the
    product's true gradient there is 0; plain pow gives inf * 0 = NaN for a saturated, correct logit.
    """
    if gamma == 0:
        return torch.ones_like(base)
    positive = base > 0
    return torch.where(
        positive, torch.where(positive, base, torch.ones_like(base)).pow(gamma), torch.zeros_like(base)
    )


def where_weighted(weight: Tensor, log: Tensor) -> Tensor:
    """``log`` where ``weight`` > 0, else 0: a term ``weight * log`` with weight 0 is 0, also where log is -inf
    (a -inf logit masks a class: F.cross_entropy stays finite there), and so is its gradient."""
    return torch.where(weight > 0, log, torch.zeros_like(log))


def dense_target(prep: Prepared, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The target as probabilities g (B, C, N) and the validity mask m (B, 1 or C, N), both in ``dtype``."""
    B, C, N = prep.logits.shape
    if prep.target_is_index:
        t = prep.target
        valid = torch.ones_like(t, dtype=torch.bool) if prep.ignore_index is None else t != prep.ignore_index
        safe = torch.where(valid, t, torch.zeros_like(t))
        g = F.one_hot(safe, C).permute(0, 2, 1).to(dtype)
        m = valid[:, None, :]
    else:
        g = prep.target.to(dtype)
        if prep.ignore_index is not None:
            valid = g != prep.ignore_index
            g = torch.where(valid, g, torch.zeros_like(g))
            m = valid
        else:
            m = torch.ones(B, 1, N, dtype=torch.bool, device=g.device)
    if prep.mask is not None:
        m = m & prep.mask[:, None, :]
    return g, m.to(dtype)


def compute(prep: Prepared, request: StatsRequest, plan: object = None) -> OverlapStats:
    """The statistics by plain autograd (``plan``: unused, the dispatch protocol's argument)."""
    dtype = compute_dtype(prep.logits.dtype)
    x = prep.logits.to(dtype)
    B, C, N = x.shape
    g, m = dense_target(prep, dtype)

    if prep.activation == "softmax":
        logp = torch.log_softmax(x, dim=1)
        p = logp.exp()
    elif prep.activation == "sigmoid":
        p = torch.sigmoid(x)
    else:
        p = x

    if request.squared:
        pred_volume = (m * p * p).sum(-1)
        target_volume = (m * g * g).sum(-1)
    else:
        pred_volume = (m * p).sum(-1)
        target_volume = (m * g).sum(-1)
    if request.soft_label and not request.squared:
        intersection = (m * torch.minimum(p, g)).sum(-1)
    else:
        intersection = (m * p * g).sum(-1)
    count = m.expand(B, C, N).sum(-1)

    cross_entropy = focal = None
    eps = request.label_smoothing
    if prep.mode == "multiclass":
        if request.cross_entropy or request.focal_gamma is not None:
            if prep.activation != "softmax":
                logp = _safe_log(p)
        if request.cross_entropy:
            g_smooth = g * (1.0 - eps) + eps / C
            cross_entropy = (m * g_smooth * -where_weighted(g_smooth, logp)).sum(-1)
        if request.focal_gamma is not None:
            focal = (m * g * _focal_pow(1.0 - p, request.focal_gamma) * -where_weighted(g, logp)).sum(-1)
    else:
        if request.cross_entropy:
            g_smooth = g * (1.0 - eps) + eps / 2
            if prep.activation == "sigmoid":
                bce = F.binary_cross_entropy_with_logits(x, g_smooth, reduction="none")
            else:
                bce = -(g_smooth * _safe_log(p) + (1 - g_smooth) * _safe_log(1 - p))
            cross_entropy = (m * bce).sum(-1)
        if request.focal_gamma is not None:
            gamma = request.focal_gamma
            if prep.activation == "sigmoid":
                log_p, log_not_p = F.logsigmoid(x), F.logsigmoid(-x)
            else:
                log_p, log_not_p = _safe_log(p), _safe_log(1 - p)
            log_p, log_not_p = where_weighted(g, log_p), where_weighted(1 - g, log_not_p)
            fl = -(g * _focal_pow(1 - p, gamma) * log_p + (1 - g) * _focal_pow(p, gamma) * log_not_p)
            focal = (m * fl).sum(-1)

    return OverlapStats(intersection, pred_volume, target_volume, count, cross_entropy, focal)
