r"""The bins statistic kind: per (sample, class, bin of the predicted probability) sums, for calibration.

K bins of the probability p of each class (one-vs-rest). Per (sample b, class c, bin k), over the valid positions
n (``m``: ``ignore_index`` and ``mask``), with g the target probability of the class and w_k(p) the share of p in
bin k::

    SP[b,c,k] = sum_n m w_k(p) p        SG[b,c,k] = sum_n m w_k(p) g        N[b,c,k] = sum_n m w_k(p)

(the columns :data:`~diceloss.stats.types.BIN_COLUMNS`, stacked (B, C, K, 3)). Two binnings:

* **hard**: bin k holds (k/K, (k+1)/K], and 0 is in bin 0 (a probability on an inner edge belongs to the lower
  bin, as in :mod:`diceloss.metrics.calibration`, MONAI and the authors' ``torch.bucketize(..., right=False)``):
  w_k(p) = [k = clamp(ceil(p K) - 1, 0, K - 1)]. N counts positions, SP and SG sum p and g per bin.
* **soft** (Barfoot et al.'s soft binning): p splits linearly between its two nearest bin centres
  c_k = (k + 1/2) / K, w_k(p) = max(0, 1 - K |p - c_k|), and the end bins take everything beyond their centre
  (w_0 = 1 for p <= c_0, w_{K-1} = 1 for p >= c_{K-1}). The shares of a probability sum to 1; they depend on p, so
  all three sums do.

Backward, from the (B, C, K, 3) gradients (a, b, c) of (SP, SG, N), with p in bins lo <= hi at shares 1 - f, f
and f' = df/dp (K between two centres, 0 in the end bins)::

    hard:  u = m a[k(p)]
    soft:  u = m ((1 - f) a_lo + f a_hi + f' ((a_hi - a_lo) p + (b_hi - b_lo) g + (c_hi - c_lo)))

then dL/dx by the activation's Jacobian (softmax p (u - sum_c p u), sigmoid u p (1 - p)). The backends
(``reference``: plain autograd over one-hot bins, the oracle; ``fused``: chunks, recompute in backward; ``triton``)
and their choice follow :mod:`diceloss.stats.maps`.

Example:
    >>> import torch
    >>> from diceloss import _layout
    >>> p = torch.tensor([[[0.1, 0.3, 0.8, 0.9]]])                 # binary probabilities, (B=1, 1, N=4)
    >>> prep = _layout.prepare(p, torch.tensor([[[0.0, 1.0, 1.0, 1.0]]]), mode="binary", from_logits=False)
    >>> s = bin_sums(prep, bins=2)                                   # bins [0, .5] and (.5, 1]
    >>> s[0, 0].tolist()                                             # per bin: sum p, sum g, count
    [[0.4000000059604645, 1.0, 2.0], [1.7000000476837158, 2.0, 2.0]]
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .._layout import Prepared
from . import maps, reference
from .types import BIN_COLUMNS, COL_BIN_G, COL_BIN_N, COL_BIN_P, compute_dtype

__all__ = ["bin_sums", "compute", "bin_sums_reference", "hard_bin", "soft_bins", "BinOptions"]

NUM_BIN_COLUMNS = len(BIN_COLUMNS)


class BinOptions(NamedTuple):
    """What the implementations need besides the tensors."""

    mode: str
    activation: str
    ignore_index: int | None
    bins: int
    soft: bool


# ----------------------------------------------------------------------------------------------
# the binning, written once


def hard_bin(p: Tensor, bins: int) -> Tensor:
    """The bin of each probability (int64): (k/K, (k+1)/K] is bin k, 0 is in bin 0."""
    return (torch.ceil(p * bins) - 1).clamp(0, bins - 1).to(torch.int64)


def soft_bins(p: Tensor, bins: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(lo, hi, f, df/dp): p goes to bin lo with share 1 - f and to bin hi (lo or lo + 1) with share f."""
    u = p * bins - 0.5
    j = torch.floor(u)
    inside = (j >= 0) & (j < bins - 1)
    lo = j.clamp(0, bins - 1).to(torch.int64)
    hi = (j + 1).clamp(0, bins - 1).to(torch.int64)
    zero = torch.zeros_like(u)
    return lo, hi, torch.where(inside, u - j, zero), torch.where(inside, zero + bins, zero)


# ----------------------------------------------------------------------------------------------
# reference: plain autograd, one-hot bins


def _shares_reference(p: Tensor, bins: int, soft: bool) -> Tensor:
    """w_k(p), (..., K), straight from the definitions (a hat function per bin centre for soft bins)."""
    if not soft:
        return F.one_hot(hard_bin(p.detach(), bins), bins).to(p.dtype)
    centres = (torch.arange(bins, dtype=p.dtype, device=p.device) + 0.5) / bins
    w = torch.relu(1 - bins * (p[..., None] - centres).abs())
    first = torch.where(p <= centres[0], torch.ones_like(p), w[..., 0])
    last = torch.where(p >= centres[-1], torch.ones_like(p), w[..., -1])
    return torch.cat([first[..., None], w[..., 1:-1], last[..., None]], dim=-1) if bins > 1 else torch.ones_like(w)


def bin_sums_reference(prep: Prepared, bins: int, soft: bool) -> Tensor:
    """(B, C, K, 3) bin sums by plain autograd over the one-hot target and the (B, C, N, K) shares (the oracle)."""
    dtype = compute_dtype(prep.logits.dtype)
    x = prep.logits.to(dtype)
    B, C, N = x.shape
    p = maps._probabilities(x, prep.activation)
    g, m = reference.dense_target(prep, dtype)
    w = _shares_reference(p, bins, soft) * m.expand(B, C, N)[..., None]
    return torch.stack([(w * p[..., None]).sum(2), (w * g[..., None]).sum(2), w.sum(2)], dim=-1)


# ----------------------------------------------------------------------------------------------
# fused: chunks of positions, recompute in backward


def _dense_g(target: Tensor, C: int, dtype: torch.dtype) -> Tensor:
    """The target probabilities of a chunk (B, C, n): a one-hot of the chunk's indices (a chunk-sized temporary) or
    the dense target with ignored elements at 0."""
    if target.ndim == 2:
        return (target[:, None] == torch.arange(C, device=target.device)[:, None]).to(dtype)
    return target.to(dtype)


def _valid(target: Tensor, mask: Tensor | None, o: BinOptions) -> Tensor | None:
    return maps._valid(target, mask, o)


def _chunk_bins(p: Tensor, K: int, soft: bool) -> tuple[Tensor, Tensor | None]:
    """(flat index, f) of a chunk's probabilities (B, C, n). Hard: the index of (sample, class, bin) in a
    (B C K) table, f None. Soft: the index of (sample, class, j + 1) in a (B C (K + 1)) table, with p between
    the centres of bins j and j + 1 (j = -1 and j = K - 1 at the ends) and f its share in bin j + 1; bin lo =
    clamp(j) takes 1 - f, bin hi = clamp(j + 1) takes f. At the ends lo = hi: the shares add up to 1 in one bin."""
    B, C, _ = p.shape
    if not soft:
        k = (p * K).ceil_().sub_(1).clamp_(0, K - 1).long()
        return torch.arange(0, B * C * K, K, device=p.device).view(B, C, 1).add(k), None
    u = (p * K).sub_(0.5)
    j = torch.floor(u)
    f = u.sub_(j)
    e = j.add_(1).clamp_(0, K).long()
    return torch.arange(0, B * C * (K + 1), K + 1, device=p.device).view(B, C, 1).add(e), f


def _scatter(total: int, index: Tensor, values: Tensor) -> Tensor:
    return torch.zeros(total, dtype=values.dtype, device=values.device).scatter_add_(0, index, values.reshape(-1))


def _chunk_sums(x: Tensor, target: Tensor, mask: Tensor | None, o: BinOptions) -> Tensor:
    B, C, n = x.shape
    dtype = x.dtype
    K = o.bins
    p = maps._probabilities(x, o.activation)
    g = _dense_g(target, C, dtype)
    valid = _valid(target, mask, o)
    m = torch.ones_like(p) if valid is None else valid.expand(B, C, n).to(dtype)
    if o.ignore_index is not None and target.ndim == 3:
        g = g * m  # an ignored element holds ignore_index in the target
    flat, f = _chunk_bins(p, K, o.soft)
    flat = flat.view(-1)
    # flat scatters into one vector per column: far faster on the CPU than a scatter along a dimension
    if f is None:
        sums = [_scatter(B * C * K, flat, v) for v in (m * p, m * g, m)]
        return torch.stack(sums, dim=-1).view(B, C, K, NUM_BIN_COLUMNS)
    # soft: per slot e = j + 1 the sums of m v and of m f v; slot e gives its 1 - f share to bin e - 1 and its
    # f share to bin e (each clamped to [0, K - 1])
    mf = m * f
    out = []
    for v in (p, g, None):
        whole = _scatter(B * C * (K + 1), flat, m if v is None else m * v).view(B, C, K + 1)
        part = _scatter(B * C * (K + 1), flat, mf if v is None else mf * v).view(B, C, K + 1)
        rest = whole - part  # the 1 - f shares
        col = rest[..., 1:] + part[..., :-1]  # bin k: slot k + 1's (1 - f) and slot k's f
        col[..., 0] += rest[..., 0]  # slot 0 (p below the first centre): all into bin 0
        col[..., -1] += part[..., -1]  # slot K (p above the last centre): all into bin K - 1
        out.append(col)
    return torch.stack(out, dim=-1)


def _slot_table(coef: Tensor) -> Tensor:
    """Per slot e = j + 1 of the soft binning, (B C (K + 1), 4): a_lo, a_hi - a_lo, b_hi - b_lo, c_hi - c_lo with
    lo = clamp(e - 1), hi = clamp(e) (0 differences in the end slots, where lo = hi)."""
    B, C, K, _ = coef.shape
    lo = torch.cat([coef[:, :, :1], coef], dim=2)  # slot e -> bin clamp(e - 1)
    hi = torch.cat([coef, coef[:, :, -1:]], dim=2)  # slot e -> bin clamp(e)
    d = hi - lo
    return torch.stack([lo[..., COL_BIN_P], d[..., COL_BIN_P], d[..., COL_BIN_G], d[..., COL_BIN_N]],
                       dim=-1).reshape(-1, 4)


def _chunk_grad(coef: Tensor, x: Tensor, target: Tensor, mask: Tensor | None, o: BinOptions,
                slots: Tensor | None = None) -> Tensor:
    B, C, n = x.shape
    dtype = x.dtype
    K = o.bins
    p = maps._probabilities(x, o.activation)
    valid = _valid(target, mask, o)
    flat, f = _chunk_bins(p, K, o.soft)
    if f is None:
        u = coef[..., COL_BIN_P].reshape(-1).gather(0, flat.view(-1)).view(B, C, n)
    else:
        # u = a_lo + (a_hi - a_lo)(f + K p) + K ((b_hi - b_lo) g + (c_hi - c_lo)): one row of 4 per element
        if slots is None:
            slots = _slot_table(coef)
        a_lo, da, db, dc = slots.index_select(0, flat.view(-1)).view(B, C, n, 4).unbind(-1)
        g = _dense_g(target, C, dtype)
        u = (p * K).add_(f).mul_(da)
        u += a_lo
        u += db.mul(g).add_(dc).mul_(K)
    if valid is not None:
        u = u * valid
    if o.activation == "softmax":
        pu = p * u
        return pu.sub_(p * pu.sum(dim=1, keepdim=True))
    if o.activation == "sigmoid":
        return u.mul_(p).mul_(1 - p)
    return u


def fused_forward(x: Tensor, target: Tensor, mask: Tensor | None, o: BinOptions) -> Tensor:
    """(B, C, K, 3) bin sums, chunk by chunk over the positions, without a graph."""
    B, C, N = x.shape
    dtype = compute_dtype(x.dtype)
    out = torch.zeros(B, C, o.bins, NUM_BIN_COLUMNS, dtype=dtype, device=x.device)
    with torch.no_grad():
        for n0, n1 in maps._chunks(B, C, N, x):
            out += _chunk_sums(x[..., n0:n1].to(dtype), target[..., n0:n1],
                               None if mask is None else mask[:, n0:n1], o)
    return out


def fused_backward(coef: Tensor, x: Tensor, target: Tensor, mask: Tensor | None, o: BinOptions) -> Tensor:
    """dL/dx (the input's dtype) from the (B, C, K, 3) gradients of the bin sums, recomputing p chunk by chunk."""
    B, C, N = x.shape
    dtype = compute_dtype(x.dtype)
    coef = coef.to(dtype)
    grad = torch.empty_like(x)
    with torch.no_grad():
        slots = _slot_table(coef) if o.soft else None
        for n0, n1 in maps._chunks(B, C, N, x):
            grad[..., n0:n1] = _chunk_grad(coef, x[..., n0:n1].to(dtype), target[..., n0:n1],
                                           None if mask is None else mask[:, n0:n1], o, slots)
    return grad


class _Impl(NamedTuple):
    name: str
    forward: object
    backward: object


FUSED = _Impl("fused", fused_forward, fused_backward)


class _BinSumsFunction(torch.autograd.Function):
    """(B, C, K, 3) bin sums of an implementation; saves references to its inputs only, recomputes in backward."""

    @staticmethod
    def forward(ctx, x, target, mask, impl, o):
        ctx.save_for_backward(x, target, mask)
        ctx.impl, ctx.o = impl, o
        return impl.forward(x, target, mask, o)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        x, target, mask = ctx.saved_tensors
        return ctx.impl.backward(grad, x, target, mask, ctx.o), None, None, None, None


# ----------------------------------------------------------------------------------------------
# triton


def _triton_module():
    """:mod:`diceloss.stats.triton.bins`, imported (with Triton) on the first launch."""
    import importlib

    return importlib.import_module("diceloss.stats.triton.bins")


def _triton_forward(x, target, mask, o):
    with maps._launch_context(x.device):
        return _triton_module().bin_forward(x, target, mask, o)


def _triton_backward(coef, x, target, mask, o):
    with maps._launch_context(x.device):
        return _triton_module().bin_backward(coef, x, target, mask, o)


TRITON = _Impl("triton", _triton_forward, _triton_backward)
# the largest class tile x bin tile the Triton kernels hold (larger runs on the fused path)
TRITON_MAX_CLASS_BINS = 4096


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _triton_supports(prep: Prepared, bins: int) -> str | None:
    tile = _next_pow2(max(prep.num_classes, 2)) * _next_pow2(max(bins, 2))
    if tile > TRITON_MAX_CLASS_BINS:
        return (f"the Triton bin kernels hold at most {TRITON_MAX_CLASS_BINS} (classes x bins, each rounded up to a "
                f"power of two) in a tile, got C = {prep.num_classes}, bins = {bins}")
    return None


# ----------------------------------------------------------------------------------------------
# entry point


def select_backend(backend: str, prep: Prepared, bins: int) -> str:
    """The backend that computes the bin sums of this call (as :func:`diceloss.stats.maps.select_backend`)."""
    from .. import stats as package  # at call time: tests replace package.resolve to catch late input checks
    from .types import StatsRequest

    module, _ = package.resolve(backend, prep, StatsRequest())
    name = module.__name__.rsplit(".", 1)[-1]
    if name == "reference" and backend == "auto":
        # auto takes the overlap reference for small CPU inputs, where it is the faster; this reference keeps
        # (B, C, N, K) shares: K times the logits (the tests' oracle), so the chunked path serves auto
        name = "fused"
    if name == "triton":
        reason = _triton_supports(prep, bins)
        if reason is not None:
            if backend == "triton":
                raise ValueError(f"backend 'triton' cannot serve this call: {reason}")
            name = "fused"
    return name


def bin_sums(prep: Prepared, bins: int = 20, soft: bool = False, backend: str = "auto") -> Tensor:
    """The (B, C, K, 3) bin sums (SP, SG, N) of a prepared call, differentiable with respect to the input."""
    return compute(prep, bins, soft, select_backend(backend, prep, bins))


def compute(prep: Prepared, bins: int, soft: bool, name: str) -> Tensor:
    """The bin sums by the backend ``name`` that :func:`select_backend` returned."""
    if not isinstance(bins, int) or isinstance(bins, bool) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    if name == "reference":
        return bin_sums_reference(prep, bins, soft)
    impl = TRITON if name == "triton" else FUSED
    o = BinOptions(prep.mode, prep.activation, prep.ignore_index, int(bins), bool(soft))
    c = maps._contiguous
    return _BinSumsFunction.apply(c(prep.logits), c(prep.target.detach()), c(prep.mask), impl, o)

