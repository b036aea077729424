r"""The class-pair statistic kind: the Wasserstein mass of each target class, for the Generalized Wasserstein Dice.

With M a K x K matrix of distances between classes, p_n the predicted distribution over the K classes at
position n and g_n the target's (one-hot for class indices), per (sample b, target class k)::

    V[b, k] = sum_n m_n g_kn sum_c M[k, c] p_cn      the transport cost of the positions of class k
    N[b, k] = sum_n m_n g_kn                         their number (no gradient)

For a hard label t_n, ``sum_k g_kn sum_c M[k, c] p_cn = sum_c M[t_n, c] p_cn`` is the Wasserstein distance W_n
between p_n and the Dirac of t_n (Fidon et al. 2017, eq. 6); for soft targets it is the cost of the independent
coupling (an upper bound of the Wasserstein distance). Every sum of the Generalized Wasserstein Dice is a
function of V and N (:mod:`diceloss.wasserstein`): so the (B, K, K) soft confusion matrix
``S[b, k, c] = sum_n m g_k p_c`` is never formed; M is contracted inside the pass, and the statistics are
(B, K) like I, P, G. Binary mode compares the two-class distributions (1 - p, p) and (1 - g, g) (K = 2).

Backward, with A = dL/dV (B, K)::

    dL/dp_cn = m_n sum_k g_kn A[b, k] M[k, c]          (class indices: m_n A[b, t_n] M[t_n, c])

then the softmax (or sigmoid) chain rule. Three implementations (:mod:`diceloss.stats._kinds`): ``reference``
(plain autograd, one-hot), ``fused`` (chunked, recompute in backward) and ``triton``
(:mod:`diceloss.stats.triton.pairs`).
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .._layout import Prepared
from ._kinds import activate, choose_backend, chunk_positions, chunks
from .reference import dense_target
from .types import compute_dtype

__all__ = ["wasserstein_sums", "reference", "fused", "triton", "TRITON_MAX_CLASSES"]

# The Triton kernels hold a (classes x positions) tile and loop over the classes for dense targets.
TRITON_MAX_CLASSES = 64


def _binary(prep: Prepared) -> bool:
    return prep.mode == "binary"


def reference(prep: Prepared, dist: Tensor) -> tuple[Tensor, Tensor]:
    """(V, N) by plain autograd over the one-hot target, from the definition."""
    dtype = compute_dtype(prep.logits.dtype)
    x = prep.logits.to(dtype)
    g, m = dense_target(prep, dtype)
    p, _ = activate(x, prep.activation)
    if _binary(prep):
        p = torch.cat([1 - p, p], dim=1)
        g = torch.cat([1 - g, g], dim=1)
    cost = torch.einsum("kc,bcn->bkn", dist.to(dtype), p)  # sum_c M[k, c] p_cn
    return (m * g * cost).sum(-1), (m * g).sum(-1)


# ----------------------------------------------------------------------------------------------
# fused: chunks, recompute in backward


def _chunk_target(target: Tensor, mask: Tensor | None, n0: int, n1: int, ignore_index: int | None, binary: bool,
                  dtype: torch.dtype):
    """("index", t, valid) with t (B, n) in [0, K) and valid (B, n) in ``dtype``; or ("dense", g, m) with g (B, K, n)
    and m (B, 1, n)."""
    mc = None if mask is None else mask[:, n0:n1]
    if not target.is_floating_point():
        t = target[:, n0:n1]
        valid = torch.ones_like(t, dtype=torch.bool) if ignore_index is None else t != ignore_index
        if mc is not None:
            valid = valid & mc
        return "index", torch.where(valid, t, torch.zeros_like(t)), valid.to(dtype)
    g = target[..., n0:n1].to(dtype)
    valid = torch.ones(g.shape[0], 1, g.shape[-1], dtype=torch.bool, device=g.device)
    if ignore_index is not None:
        keep = g != ignore_index  # binary: one channel, so a per-position mask
        g = torch.where(keep, g, torch.zeros_like(g))
        valid = valid & keep.all(dim=1, keepdim=True)
    if mc is not None:
        valid = valid & mc[:, None, :]
    if binary:
        g = torch.cat([1 - g, g], dim=1)
    return "dense", g, valid.to(dtype)


def _probs(x: Tensor, activation: str, binary: bool) -> tuple[Tensor, Tensor]:
    """(p over the K classes of M, the activation's own output) of a chunk."""
    p, _ = activate(x, activation)
    return (torch.cat([1 - p, p], dim=1) if binary else p), p


def _forward(x: Tensor, target: Tensor, mask: Tensor | None, dist: Tensor, meta) -> tuple[Tensor, Tensor]:
    activation, ignore_index, binary = meta
    dtype = dist.dtype
    B, C, N = x.shape
    K = dist.shape[0]
    V = torch.zeros(B, K, dtype=dtype, device=x.device)
    count = torch.zeros(B, K, dtype=dtype, device=x.device)
    for n0, n1 in chunks(N, chunk_positions(B, K, N, x.element_size(), x.device.type)):
        p, _ = _probs(x[..., n0:n1].to(dtype), activation, binary)
        cost = torch.matmul(dist, p)  # (B, K, n): sum_c M[k, c] p_cn for every k
        kind, a, b = _chunk_target(target, mask, n0, n1, ignore_index, binary, dtype)
        if kind == "index":
            w = cost.gather(1, a[:, None, :])[:, 0] * b
            V.scatter_add_(1, a, w)
            count.scatter_add_(1, a, b)
        else:
            V += (a * b * cost).sum(-1)
            count += (a * b).sum(-1)
    return V, count


def _backward(grad_v: Tensor, x: Tensor, target: Tensor, mask: Tensor | None, dist: Tensor, meta) -> Tensor:
    activation, ignore_index, binary = meta
    dtype = dist.dtype
    B, C, N = x.shape
    K = dist.shape[0]
    A = grad_v.to(dtype)
    grad = torch.empty_like(x)
    for n0, n1 in chunks(N, chunk_positions(B, K, N, x.element_size(), x.device.type)):
        xc = x[..., n0:n1].to(dtype)
        p, act = _probs(xc, activation, binary)
        kind, a, b = _chunk_target(target, mask, n0, n1, ignore_index, binary, dtype)
        if kind == "index":
            # u[b, c, n] = m_n A[b, t_n] M[t_n, c] = R[b, c, t_n] with R[b, c, k] = A[b, k] M[k, c]: one gather,
            # contiguous (an index of M's rows would give a transposed, strided u)
            R = (A[:, :, None] * dist[None]).transpose(1, 2)
            u = R.gather(2, a[:, None, :].expand(-1, K, -1)) * b[:, None, :]
        else:
            u = torch.matmul(dist.t(), A[:, :, None] * a * b)
        if binary:
            du = u[:, 1:] - u[:, :1]  # p = (1 - q, q): dL/dq
            grad[..., n0:n1] = (du * (act * (1 - act)) if activation == "sigmoid" else du).to(x.dtype)
        elif activation == "softmax":
            grad[..., n0:n1] = (p * (u - (p * u).sum(dim=1, keepdim=True))).to(x.dtype)
        else:
            grad[..., n0:n1] = u.to(x.dtype)
    return grad


class _Pairs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, target, mask, dist, meta):
        with torch.no_grad():
            V, count = _forward(x, target, mask, dist, meta)
        ctx.save_for_backward(x, target, mask, dist)
        ctx.meta = meta
        ctx.mark_non_differentiable(count)
        return V, count

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_v, grad_count):
        x, target, mask, dist = ctx.saved_tensors
        if grad_v is None or not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        return _backward(grad_v, x, target, mask, dist, ctx.meta), None, None, None, None


def _op_tensors(prep: Prepared):
    x = prep.logits  # any strides: the chunks are views, the kernels take strides
    target = prep.target.detach()
    return x, target, prep.mask


def fused(prep: Prepared, dist: Tensor) -> tuple[Tensor, Tensor]:
    """(V, N) by the chunked autograd.Function: nothing of the logits' size is kept for the backward."""
    x, target, mask = _op_tensors(prep)
    meta = (prep.activation, prep.ignore_index, _binary(prep))
    return _Pairs.apply(x, target, mask, dist.to(compute_dtype(x.dtype)).contiguous(), meta)


# ----------------------------------------------------------------------------------------------
# triton


def _triton() -> ModuleType:
    """The Triton launcher and kernels of this kind (imported, with Triton, on the first launch)."""
    return importlib.import_module("diceloss.stats.triton.pairs")


def triton_kind_reason(prep: Prepared, dist: Tensor) -> str | None:
    if dist.shape[0] > TRITON_MAX_CLASSES:
        return f"its kernels hold at most {TRITON_MAX_CLASSES} classes, got {dist.shape[0]}"
    return None


def triton(prep: Prepared, dist: Tensor) -> tuple[Tensor, Tensor]:
    """(V, N) by the Triton kernels (differentiable with respect to the logits)."""
    x, target, mask = _op_tensors(prep)
    meta = (prep.activation, prep.ignore_index, _binary(prep))
    return _triton().apply(x, target, mask, dist.to(compute_dtype(x.dtype)).contiguous(), meta)


def wasserstein_sums(prep: Prepared, dist: Tensor, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """(V, N), each (B, K), by ``backend`` ("auto" | "reference" | "fused" | "triton"); ``dist`` (K, K) with
    K = C (2 in binary mode), on the input's device."""
    name = choose_backend(backend, prep.logits, prep.target, triton_kind_reason(prep, dist))
    if name == "reference":
        return reference(prep, dist)
    if name == "triton":
        return triton(prep, dist)
    return fused(prep, dist)
