"""The pure-PyTorch recompute path of the fused backend: the positions in chunks, nothing of full size kept.

Forward sums the statistics chunk by chunk through :func:`diceloss.stats.reference.compute` (without
autograd) into one (B, C, NUM_STATS) tensor; backward recomputes the probabilities chunk by chunk and
writes dL/dx from the gradients of the statistics (A = dL/dI, Bq = dL/dP, K = dL/dE, KF = dL/dF, each
(B, C))::

    u[b,c,n] = m (A g' + q Bq p^(q-1))             g' = g, or d min(p, g)/dp for soft_label
    softmax:  dL/dx = v - p sum_c v,  v = p u - m K g~ (+ focal terms)   (v = dL/dlog p)
    sigmoid:  dL/dx = u p (1 - p) + m K (p - g~) (+ focal terms)

Temporaries are bounded by :func:`chunk_positions`; the only full-size tensor it allocates is dL/dx.
It serves every option, every dtype and every device.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._layout import Prepared
from . import reference
from .types import COL_E, COL_F, COL_G, COL_I, COL_M, COL_P, NUM_STATS, OpOptions, StatsRequest, compute_dtype

# bytes of one chunk temporary that the pure-PyTorch path aims at (about a dozen are alive at once)
_CHUNK_BYTES = 1 << 20
_MIN_CHUNK = 256


def chunk_positions(B: int, C: int, N: int, itemsize: int = 4, device_type: str = "cpu") -> int:
    """Positions per chunk of the pure-PyTorch path: about 1 MiB per temporary, never above 1/64 of
    the logits (so a dozen temporaries stay under a fifth of the logits), at least 256 positions.
    On a GPU (no Triton) the 1 MiB cap is dropped: there, fewer and larger launches are what is fast."""
    by_fraction = N // 64
    if device_type != "cpu":
        return max(_MIN_CHUNK, by_fraction)
    per_position = max(1, B * C * max(itemsize, 4))
    by_budget = _CHUNK_BYTES // per_position
    return max(_MIN_CHUNK, min(by_budget, by_fraction))


def _chunk_prep(x: Tensor, target: Tensor, mask: Tensor | None, o: OpOptions, index_target: bool) -> Prepared:
    return Prepared(
        logits=x,
        target=target,
        target_is_index=index_target,
        mask=mask,
        ignore_index=o.ignore_index,
        activation=o.activation,
        num_classes=x.shape[1],
        mode=o.mode,
        kept_classes=None,
        spatial_shape=(x.shape[-1],),
    )


def _chunks(N: int, step: int):
    for n0 in range(0, N, step):
        yield n0, min(N, n0 + step)


def _slice(target: Tensor, mask: Tensor | None, n0: int, n1: int):
    return target[..., n0:n1], (None if mask is None else mask[:, n0:n1])


def forward(x: Tensor, target: Tensor, mask: Tensor | None, o: OpOptions) -> Tensor:
    """The statistics (B, C, NUM_STATS) in the accumulation dtype, chunk by chunk, without autograd."""
    index_target = not target.is_floating_point()
    B, C, N = x.shape
    request = StatsRequest(squared=o.squared, soft_label=o.soft_label, cross_entropy=o.cross_entropy,
                           label_smoothing=o.label_smoothing, focal_gamma=o.focal_gamma)
    out = torch.zeros(B, C, NUM_STATS, dtype=compute_dtype(x.dtype), device=x.device)
    with torch.no_grad():
        for n0, n1 in _chunks(N, chunk_positions(B, C, N, x.element_size(), x.device.type)):
            tc, mc = _slice(target, mask, n0, n1)
            s = reference.compute(_chunk_prep(x[..., n0:n1], tc, mc, o, index_target), request)
            out[..., COL_I] += s.intersection
            out[..., COL_P] += s.pred_volume
            out[..., COL_G] += s.target_volume
            out[..., COL_M] += s.count
            if s.cross_entropy is not None:
                out[..., COL_E] += s.cross_entropy
            if s.focal is not None:
                out[..., COL_F] += s.focal
    return out


def backward(coef: Tensor, x: Tensor, target: Tensor, mask: Tensor | None, o: OpOptions) -> Tensor:
    """dL/dx (the input's dtype) from the (B, C, NUM_STATS) gradients of the statistics, chunk by chunk."""
    coef = coef.to(compute_dtype(x.dtype))
    B, C, N = x.shape
    grad = torch.empty_like(x)
    for n0, n1 in _chunks(N, chunk_positions(B, C, N, x.element_size(), x.device.type)):
        tc, mc = _slice(target, mask, n0, n1)
        grad[..., n0:n1] = _chunk_grad(coef, x[..., n0:n1], tc, mc, o)
    return grad


def _safe_log_and_mask(p: Tensor) -> tuple[Tensor, Tensor]:
    """log(p) clamped at the reference's floor, and where the clamp lets the gradient through."""
    logp = torch.log(p)
    return logp.clamp_min(reference.LOG_CLAMP), logp >= reference.LOG_CLAMP


def _pow_grad(base: Tensor, gamma: float) -> Tensor:
    """d base^gamma / d base as autograd computes it (0 for gamma = 0)."""
    if gamma == 0:
        return torch.zeros_like(base)
    return gamma * base.pow(gamma - 1)



def _chunk_grad(coef: Tensor, x: Tensor, target: Tensor, mask: Tensor | None, o: OpOptions) -> Tensor:
    """dL/dx of one chunk (B, C, n) in the accumulation dtype, from the (B, C, NUM_STATS) coefficients."""
    activation, squared, soft_label, focal_gamma = o.activation, o.squared, o.soft_label, o.focal_gamma
    dtype = coef.dtype
    x = x.to(dtype)
    C = x.shape[1]
    g, m = reference.dense_target(
        _chunk_prep(x, target, mask, o, not target.is_floating_point()), dtype
    )
    A, Bq, K, KF = (coef[..., k : k + 1] for k in (COL_I, COL_P, COL_E, COL_F))
    if activation == "softmax":
        logp = torch.log_softmax(x, dim=1)
        p = logp.exp()
    elif activation == "sigmoid":
        p = torch.sigmoid(x)
    else:
        p = x

    # u = dL/dp from the overlap statistics
    if soft_label and not squared:
        d_min = (p < g).to(dtype) + 0.5 * (p == g).to(dtype)  # torch.minimum's gradient, ties split
        u = A * d_min
    else:
        u = A * g
    u = u + (2 * Bq * p if squared else Bq)
    u = m * u
    eps = o.label_smoothing
    cross_entropy = o.cross_entropy
    multiclass = o.mode == "multiclass"

    if multiclass:
        # v = dL/dlog p (softmax) collects the CE and focal terms, which are functions of log p
        v = None
        if cross_entropy:
            g_smooth = g * (1.0 - eps) + eps / C
            if activation == "softmax":
                v = -K * m * g_smooth
            else:
                _, ok = _safe_log_and_mask(p)
                u = u - torch.where(ok, K * m * g_smooth / p, torch.zeros_like(p))
        if focal_gamma is not None:
            h = KF * m * g
            if activation == "softmax":
                u = u + h * reference.where_weighted(g, logp) * _pow_grad(1 - p, focal_gamma)
                vf = -h * (1 - p).pow(focal_gamma)
                v = vf if v is None else v + vf
            else:
                slog, ok = _safe_log_and_mask(p)
                u = u + h * slog * _pow_grad(1 - p, focal_gamma)
                u = u - torch.where(ok, h * (1 - p).pow(focal_gamma) / p, torch.zeros_like(p))
        if activation == "softmax":
            v = p * u if v is None else p * u + v
            return v - p * v.sum(dim=1, keepdim=True)
        return u

    # binary and multilabel
    direct = None
    if cross_entropy:
        g_smooth = g * (1.0 - eps) + eps / 2
        if activation == "sigmoid":
            direct = K * m * (p - g_smooth)
        else:
            _, ok1 = _safe_log_and_mask(p)
            _, ok2 = _safe_log_and_mask(1 - p)
            zero = torch.zeros_like(p)
            u = u + K * m * (torch.where(ok2, (1 - g_smooth) / (1 - p), zero) - torch.where(ok1, g_smooth / p, zero))
    if focal_gamma is not None:
        gamma = focal_gamma
        h = KF * m
        if activation == "sigmoid":
            log_p, log_not_p = torch.nn.functional.logsigmoid(x), torch.nn.functional.logsigmoid(-x)
            log_p, log_not_p = reference.where_weighted(g, log_p), reference.where_weighted(1 - g, log_not_p)
            u = u + h * (g * log_p * _pow_grad(1 - p, gamma) - (1 - g) * log_not_p * _pow_grad(p, gamma))
            df = h * (-(g * (1 - p).pow(gamma)) * (1 - p) + (1 - g) * p.pow(gamma) * p)
            direct = df if direct is None else direct + df
        else:
            log_p, ok1 = _safe_log_and_mask(p)
            log_not_p, ok2 = _safe_log_and_mask(1 - p)
            zero = torch.zeros_like(p)
            dfp = g * (-_pow_grad(1 - p, gamma) * log_p + torch.where(ok1, (1 - p).pow(gamma) / p, zero)) + (
                1 - g
            ) * (_pow_grad(p, gamma) * log_not_p - torch.where(ok2, p.pow(gamma) / (1 - p), zero))
            u = u - h * dfp
    if activation == "sigmoid":
        out = u * (p * (1 - p))
        return out if direct is None else out + direct
    return u
