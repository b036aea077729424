r"""The asymmetric focal statistic kind: Tversky sums and the asymmetric focal sum of the unified focal loss.

Per (sample b, class c), over the valid elements, in one pass over the logits (Yeung et al. 2022)::

    I = sum m p g     P = sum m p     G = sum m g     M = sum m          (columns 0-3)
    A = sum m a                                                           (column 4)

with the asymmetric focal term ``a`` (delta weighs the rare, foreground classes; only the background is
modulated by the focal factor):

* multiclass (softmax over C, class 0 the background)::

      a_0 = -(1 - delta) g_0 (1 - p_0)^gamma log p_0,      a_c = -delta g_c log p_c   (c >= 1)

* binary and multilabel (each channel its own foreground / background pair, the background probability
  1 - p)::

      a = -delta g log p - (1 - delta) (1 - g) p^gamma log(1 - p)

  which is the multiclass term of the two classes (1 - p, p): a binary channel equals a two-class softmax.

Logs of probabilities (``from_logits=False``) are clamped at -100 like ``binary_cross_entropy``; a focal factor
``base^gamma`` has a zero (not infinite) derivative at base = 0, so a saturated, correct prediction has a
finite gradient for gamma < 1.

Backward, from the (B, C, 5) gradients of the sums (K_I, K_P, K_A the columns that carry one)::

    u = dL/dp = m (K_I g + K_P) + K_A m da/dp
    softmax:  dL/dx = v - p sum_c v,  v = p u  (the focal terms written in log p)
    sigmoid:  dL/dx = u p (1 - p)      (the focal terms differentiated in x directly)

Three implementations (:mod:`diceloss.stats._kinds`): ``reference`` (plain autograd, one-hot), ``fused``
(chunked, recompute in backward) and ``triton`` (:mod:`diceloss.stats.triton.focal_asym`).
"""

from __future__ import annotations

import importlib
import math
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .._layout import Prepared
from ._kinds import choose_backend, chunk_positions, chunk_target, chunks
from .reference import _focal_pow, _safe_log, dense_target, where_weighted
from .types import (
    COL_FA_A,
    COL_FA_G,
    COL_FA_I,
    COL_FA_M,
    COL_FA_P,
    FOCAL_ASYM_COLUMNS,
    LOG_CLAMP,
    compute_dtype,
)

__all__ = ["asymmetric_focal_sums", "reference", "fused", "triton", "NUM_COLUMNS", "TRITON_MAX_CLASSES"]

# columns of the (B, C, NUM_COLUMNS) sums (named in stats/types.py)
COL_I, COL_P, COL_G, COL_M, COL_A = COL_FA_I, COL_FA_P, COL_FA_G, COL_FA_M, COL_FA_A
NUM_COLUMNS = len(FOCAL_ASYM_COLUMNS)
TRITON_MAX_CLASSES = 256


def _probs(x: Tensor, activation: str) -> tuple[Tensor, Tensor | None]:
    if activation == "softmax":
        logp = torch.log_softmax(x, dim=1)
        return logp.exp(), logp
    if activation == "sigmoid":
        return torch.sigmoid(x), None
    return x, None


def _sums(x: Tensor, g: Tensor, m: Tensor, activation: str, multiclass: bool, delta: float, gamma: float) -> Tensor:
    """The (B, C, 5) sums of a (chunk of a) layout from the definition; differentiable by autograd."""
    p, logp = _probs(x, activation)
    B, C, N = x.shape
    I = (m * p * g).sum(-1)
    P = (m * p).sum(-1)
    G = (m * g).sum(-1)
    M = m.expand(B, C, N).sum(-1)
    if multiclass:
        if logp is None:
            logp = _safe_log(p)
        background = torch.arange(C, device=x.device)[None, :, None] == 0
        weight = torch.where(background, (1 - delta) * _focal_pow(1 - p, gamma), torch.full_like(p, delta))
        a = -weight * g * where_weighted(g, logp)
    else:
        if activation == "sigmoid":
            log_p, log_q = F.logsigmoid(x), F.logsigmoid(-x)
        else:
            log_p, log_q = _safe_log(p), _safe_log(1 - p)
        a = -delta * g * where_weighted(g, log_p) - (1 - delta) * (1 - g) * _focal_pow(p, gamma) * where_weighted(
            1 - g, log_q
        )
    A = (m * a).sum(-1)
    return torch.stack([I, P, G, M, A], dim=-1)


def reference(prep: Prepared, delta: float, gamma: float) -> Tensor:
    """The (B, C, 5) sums by plain autograd over the one-hot target, from the definition."""
    dtype = compute_dtype(prep.logits.dtype)
    g, m = dense_target(prep, dtype)
    return _sums(prep.logits.to(dtype), g, m, prep.activation, prep.mode == "multiclass", delta, gamma)


# ----------------------------------------------------------------------------------------------
# fused: chunks, recompute in backward


def _chunk_layout(x: Tensor, target: Tensor, mask: Tensor | None, n0: int, n1: int, meta, dtype) -> tuple:
    """(x, g, m) of positions n0:n1 in ``dtype``: the target as probabilities, the validity mask."""
    g, m = chunk_target(target, mask, n0, n1, x.shape[1], meta[2], dtype)
    return x[..., n0:n1].to(dtype), g, m


def _forward(x: Tensor, target: Tensor, mask: Tensor | None, meta) -> Tensor:
    activation, mode, _, delta, gamma = meta
    dtype = compute_dtype(x.dtype)
    B, C, N = x.shape
    out = torch.zeros(B, C, NUM_COLUMNS, dtype=dtype, device=x.device)
    for n0, n1 in chunks(N, chunk_positions(B, C, N, x.element_size(), x.device.type)):
        xc, g, m = _chunk_layout(x, target, mask, n0, n1, meta, dtype)
        out += _sums(xc, g, m, activation, mode == "multiclass", delta, gamma)
    return out


def _dpow(base: Tensor, gamma: float) -> Tensor:
    """d base^gamma / d base with the reference's convention: 0 where base <= 0, and 0 for gamma = 0."""
    if gamma == 0:
        return torch.zeros_like(base)
    positive = base > 0
    return torch.where(positive, gamma * torch.where(positive, base, torch.ones_like(base)).pow(gamma - 1),
                       torch.zeros_like(base))


def _dlog(p: Tensor) -> Tensor:
    """The derivative of the clamped log of :func:`diceloss.stats.reference._safe_log`: 1/p, 0 where clamped."""
    ok = p > math.exp(LOG_CLAMP)  # the reference's threshold, compared the same way
    return torch.where(ok, 1 / torch.where(ok, p, torch.ones_like(p)), torch.zeros_like(p))


def _chunk_grad(coef: Tensor, xc: Tensor, g: Tensor, m: Tensor, activation: str, multiclass: bool, delta: float,
                gamma: float) -> Tensor:
    KI, KP, KA = (coef[..., k : k + 1] for k in (COL_I, COL_P, COL_A))
    p, logp = _probs(xc, activation)
    C = xc.shape[1]
    u = m * (KI * g + KP)
    h = KA * m
    if multiclass:
        background = torch.arange(C, device=xc.device)[None, :, None] == 0
        if activation == "softmax":
            lw = where_weighted(g, logp)
            # d a / d log p: foreground -delta g;
            # background -(1 - delta) g ((1 - p)^gamma - gamma p (1 - p)^(gamma - 1) log p)
            q = 1 - p
            bg = -(1 - delta) * g * (_focal_pow(q, gamma) - p * _dpow(q, gamma) * lw)
            v = p * u + h * torch.where(background, bg, -delta * g)
            return v - p * v.sum(dim=1, keepdim=True)
        lw = where_weighted(g, _safe_log(p))
        q = 1 - p
        bg = -(1 - delta) * g * (-_dpow(q, gamma) * lw + _focal_pow(q, gamma) * _dlog(p))
        fg = -delta * g * _dlog(p)
        return u + h * torch.where(background, bg, fg)
    if activation == "sigmoid":
        log_q = where_weighted(1 - g, F.logsigmoid(-xc))
        q = 1 - p
        # d a / d x = -delta g (1 - p) + (1 - delta) (1 - g) (p^gamma p - (p^gamma)' p (1 - p) log(1 - p))
        da = -delta * g * q + (1 - delta) * (1 - g) * (_focal_pow(p, gamma) * p - _dpow(p, gamma) * p * q * log_q)
        return u * (p * q) + h * da
    log_q = where_weighted(1 - g, _safe_log(1 - p))
    da = -delta * g * _dlog(p) - (1 - delta) * (1 - g) * (
        _dpow(p, gamma) * log_q - _focal_pow(p, gamma) * _dlog(1 - p)
    )
    return u + h * da


def _backward(coef: Tensor, x: Tensor, target: Tensor, mask: Tensor | None, meta) -> Tensor:
    activation, mode, _, delta, gamma = meta
    dtype = compute_dtype(x.dtype)
    coef = coef.to(dtype)
    B, C, N = x.shape
    grad = torch.empty_like(x)
    for n0, n1 in chunks(N, chunk_positions(B, C, N, x.element_size(), x.device.type)):
        xc, g, m = _chunk_layout(x, target, mask, n0, n1, meta, dtype)
        grad[..., n0:n1] = _chunk_grad(coef, xc, g, m, activation, mode == "multiclass", delta, gamma).to(x.dtype)
    return grad


class _AsymmetricFocal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, target, mask, meta):
        with torch.no_grad():
            out = _forward(x, target, mask, meta)
        ctx.save_for_backward(x, target, mask)
        ctx.meta = meta
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, target, mask = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        return _backward(grad, x, target, mask, ctx.meta), None, None, None


def _op_tensors(prep: Prepared, delta: float, gamma: float):
    x = prep.logits  # any strides: the chunks are views, the kernels take strides
    meta = (prep.activation, prep.mode, prep.ignore_index, float(delta), float(gamma))
    return x, prep.target.detach(), prep.mask, meta


def fused(prep: Prepared, delta: float, gamma: float) -> Tensor:
    """The (B, C, 5) sums by the chunked autograd.Function: nothing of the logits' size is kept for the backward."""
    x, target, mask, meta = _op_tensors(prep, delta, gamma)
    return _AsymmetricFocal.apply(x, target, mask, meta)


# ----------------------------------------------------------------------------------------------
# triton


def _triton() -> ModuleType:
    """The Triton launcher and kernels of this kind (imported, with Triton, on the first launch)."""
    return importlib.import_module("diceloss.stats.triton.focal_asym")


def triton_kind_reason(prep: Prepared) -> str | None:
    if prep.num_classes > TRITON_MAX_CLASSES:
        return f"its kernels hold at most {TRITON_MAX_CLASSES} classes, got {prep.num_classes}"
    return None


def triton(prep: Prepared, delta: float, gamma: float) -> Tensor:
    """The (B, C, 5) sums by the Triton kernels (differentiable with respect to the logits)."""
    x, target, mask, meta = _op_tensors(prep, delta, gamma)
    return _triton().apply(x, target, mask, meta)


def asymmetric_focal_sums(prep: Prepared, delta: float, gamma: float, backend: str = "auto") -> Tensor:
    """(B, C, 5) sums I, P, G, M, A by ``backend`` ("auto" | "reference" | "fused" | "triton")."""
    name = choose_backend(backend, prep.logits, prep.target, triton_kind_reason(prep))
    if name == "reference":
        return reference(prep, delta, gamma)
    if name == "triton":
        return triton(prep, delta, gamma)
    return fused(prep, delta, gamma)
