r"""The map statistic kinds: the probabilities summed against a target-side map, per (sample, class).

Per (sample b, class c), over the valid positions n (``m``: ``ignore_index`` and ``mask``, as for the overlap
statistics), with p the probabilities and w the map::

    PW[b, c] = sum_n m p[b,c,n] w[b,c,n]       W[b, c] = sum_n m w[b,c,n]       M[b, c] = sum_n m

(the columns :data:`~diceloss.stats.types.MAP_COLUMNS`). The map comes in two forms:

* **a second label map** s (B, N) of class indices (the "gather" kind): w[b,c,n] = [s[b,n] == c], a value
  outside [0, C) belongs to no class. Skeleton Recall's tubed skeleton is one (c on the tube of class c, 0
  elsewhere). No one-hot tensor is made: PW is a scatter-add of p[b, s, n] over s, W a bincount of s.
* **a dense map** w (B, C, N) of floats (the "weighted map" kind): the boundary loss's signed distance map,
  a multilabel skeleton.

Only PW depends on the input. Its backward, from A = dL/dPW (B, C)::

    u[b,c,n] = m A[b,c] w[b,c,n]                         (dL/dp)
    softmax:  dL/dx = p (u - sum_c' p u)                 label map: m A[b,s] p_s ([c = s] - p_c)
    sigmoid:  dL/dx = u p (1 - p)
    none:     dL/dx = u

Backends, chosen once per call through :func:`diceloss.stats.resolve` (the choice the overlap statistics
would make for the same call: ``auto`` is Triton on CUDA, the fused path elsewhere, the reference for small
CPU inputs):

* ``reference``: plain autograd over a one-hot of the label map and the dense target: the oracle.
* ``fused``: an ``autograd.Function`` whose forward sums the positions chunk by chunk without a graph and
  whose backward recomputes p chunk by chunk from the logits: it keeps only references to the logits, the
  target, the mask and the map; the only full-size tensor it allocates is dL/dx. Sums in float32 for
  half-precision input (float64 for float64).
* ``triton``: the same Function over the kernels of :mod:`diceloss.stats.triton.maps` (CUDA, or the CPU under
  Triton's interpreter for the tests).

The two sums that depend on the map are the overlap statistics I and G with the map in the place of the target
(I = sum m p g, G = sum m g): where the validity is a position mask (every case but an ``ignore_index`` per
element in binary and multilabel modes), ``fused`` and ``triton`` hand the call to the overlap engine's backend
of that name, whose compiled CPU kernel and Triton kernels then compute them in one pass, forward and backward;
the implementations above serve the remaining case.

Example:
    >>> import torch
    >>> from diceloss import _layout
    >>> x = torch.zeros(1, 2, 4)                                  # both classes at p = 1/2
    >>> prep = _layout.prepare(x, torch.tensor([[0, 1, 1, 0]]), mode="multiclass", from_logits=True)
    >>> s = map_sums(prep, torch.tensor([[0, 1, 1, 1]]))          # class 1 on three positions
    >>> s.weighted.tolist(), s.weight.tolist()
    ([[0.5, 1.5]], [[1.0, 3.0]])
"""

from __future__ import annotations

import contextlib
import importlib
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .._layout import Prepared
from . import chunked, reference
from .types import COL_MAP_M, COL_MAP_PW, COL_MAP_W, MAP_COLUMNS, StatsRequest, compute_dtype

__all__ = ["MapSums", "map_sums", "map_sums_reference", "select_backend", "compute"]

DOUBLE_BACKWARD_MESSAGE = (
    "the {backend} backend of the map statistics computes first derivatives only; for double backward "
    "(create_graph=True) use backend='reference'"
)


class MapSums(NamedTuple):
    """The map statistics, each (B, C) in the accumulation dtype: ``weighted`` = sum m p w (differentiable),
    ``weight`` = sum m w and ``count`` = sum m (constants)."""

    weighted: Tensor
    weight: Tensor
    count: Tensor


class MapOptions(NamedTuple):
    """What the implementations need besides the tensors."""

    mode: str
    activation: str
    ignore_index: int | None
    label_map: bool


def _options(prep: Prepared, weights: Tensor) -> MapOptions:
    return MapOptions(prep.mode, prep.activation, prep.ignore_index, not weights.is_floating_point())


# ----------------------------------------------------------------------------------------------
# reference: plain autograd, one-hot


def _probabilities(x: Tensor, activation: str) -> Tensor:
    if activation == "softmax":
        return torch.softmax(x, dim=1)
    if activation == "sigmoid":
        return torch.sigmoid(x)
    return x


def _one_hot_map(s: Tensor, C: int, dtype: torch.dtype) -> Tensor:
    """w (B, C, N) of a label map (B, N): [s == c], 0 where s is outside [0, C)."""
    inside = (s >= 0) & (s < C)
    w = F.one_hot(torch.where(inside, s, torch.zeros_like(s)), C).permute(0, 2, 1).to(dtype)
    return w * inside[:, None, :].to(dtype)


def map_sums_reference(prep: Prepared, weights: Tensor) -> MapSums:
    """The map statistics by plain autograd over the one-hot map and the dense target (the oracle)."""
    dtype = compute_dtype(prep.logits.dtype)
    x = prep.logits.to(dtype)
    B, C, N = x.shape
    p = _probabilities(x, prep.activation)
    _, m = reference.dense_target(prep, dtype)
    w = _one_hot_map(weights, C, dtype) if not weights.is_floating_point() else weights.detach().to(dtype)
    mw = m * w
    return MapSums((p * mw).sum(-1), mw.sum(-1), m.expand(B, C, N).sum(-1))


# ----------------------------------------------------------------------------------------------
# fused: chunks of positions, recompute in backward


def _valid(target: Tensor, mask: Tensor | None, o: MapOptions) -> Tensor | None:
    """The validity of a chunk as bool (B, 1, n) (per position) or (B, C, n) (per element), None if all valid."""
    valid = None
    if o.ignore_index is not None:
        valid = (target != o.ignore_index)[:, None] if target.ndim == 2 else target != o.ignore_index
    if mask is not None:
        valid = mask[:, None] if valid is None else valid & mask[:, None]
    return valid


def _chunk_sums(x: Tensor, target: Tensor, mask: Tensor | None, weights: Tensor, o: MapOptions) -> Tensor:
    """(B, C, 3) sums of one chunk, in the accumulation dtype of ``x`` (already cast)."""
    B, C, n = x.shape
    dtype = x.dtype
    valid = _valid(target, mask, o)
    out = x.new_zeros(B, C, len(MAP_COLUMNS))
    if o.label_map:
        # valid is per position here: a label map goes with a multiclass layout (an element mask would be dense)
        hit = (weights >= 0) & (weights < C)
        if valid is not None:
            hit = hit & valid.all(dim=1)
        s = torch.where(hit, weights, torch.zeros_like(weights))
        p_s = _probabilities(x, o.activation).gather(1, s[:, None])[:, 0]
        h = hit.to(dtype)
        out[..., COL_MAP_PW] = torch.zeros(B, C, dtype=dtype, device=x.device).scatter_add_(1, s, p_s * h)
        out[..., COL_MAP_W] = torch.zeros(B, C, dtype=dtype, device=x.device).scatter_add_(1, s, h)
    else:
        p = _probabilities(x, o.activation)
        w = weights.to(dtype)
        mw = w if valid is None else w * valid
        out[..., COL_MAP_PW] = (p * mw).sum(-1)
        out[..., COL_MAP_W] = mw.sum(-1)
    if valid is None:
        out[..., COL_MAP_M] = n
    else:
        out[..., COL_MAP_M] = valid.expand(B, C, n).sum(-1, dtype=dtype)
    return out


def _chunk_grad(A: Tensor, x: Tensor, target: Tensor, mask: Tensor | None, weights: Tensor, o: MapOptions) -> Tensor:
    """dL/dx of one chunk (B, C, n) in the accumulation dtype from A = dL/dPW (B, C)."""
    B, C, n = x.shape
    dtype = x.dtype
    valid = _valid(target, mask, o)
    p = _probabilities(x, o.activation)
    if o.label_map:
        hit = (weights >= 0) & (weights < C)
        if valid is not None:
            hit = hit & valid.all(dim=1)
        s = torch.where(hit, weights, torch.zeros_like(weights))[:, None]  # (B, 1, n)
        r = A.gather(1, s[:, 0]) * hit.to(dtype)  # m A[b, s], the only non-zero u of the position
        if o.activation == "softmax":
            r = r * p.gather(1, s)[:, 0]
            return (-p * r[:, None]).scatter_add_(1, s, r[:, None])
        if o.activation == "sigmoid":
            p_s = p.gather(1, s)[:, 0]
            r = r * p_s * (1 - p_s)
        return torch.zeros_like(x).scatter_add_(1, s, r[:, None])
    u = A[..., None] * weights.to(dtype)
    if valid is not None:
        u = u * valid
    if o.activation == "softmax":
        return p * (u - (p * u).sum(dim=1, keepdim=True))
    if o.activation == "sigmoid":
        return u * p * (1 - p)
    return u


def _chunks(B: int, C: int, N: int, x: Tensor):
    step = chunked.chunk_positions(B, C, N, x.element_size(), x.device.type)
    for n0 in range(0, N, step):
        yield n0, min(N, n0 + step)


def _slice_map(weights: Tensor, n0: int, n1: int) -> Tensor:
    return weights[..., n0:n1]


def fused_forward(x: Tensor, target: Tensor, mask: Tensor | None, weights: Tensor, o: MapOptions) -> Tensor:
    """(B, C, 3) map statistics, chunk by chunk over the positions, without a graph."""
    B, C, N = x.shape
    dtype = compute_dtype(x.dtype)
    out = torch.zeros(B, C, len(MAP_COLUMNS), dtype=dtype, device=x.device)
    with torch.no_grad():
        for n0, n1 in _chunks(B, C, N, x):
            out += _chunk_sums(
                x[..., n0:n1].to(dtype), target[..., n0:n1], None if mask is None else mask[:, n0:n1],
                _slice_map(weights, n0, n1), o,
            )
    return out


def fused_backward(A: Tensor, x: Tensor, target: Tensor, mask: Tensor | None, weights: Tensor,
                   o: MapOptions) -> Tensor:
    """dL/dx (the input's dtype) from A = dL/dPW (B, C), recomputing p chunk by chunk."""
    B, C, N = x.shape
    dtype = compute_dtype(x.dtype)
    A = A.to(dtype)
    grad = torch.empty_like(x)
    with torch.no_grad():
        for n0, n1 in _chunks(B, C, N, x):
            grad[..., n0:n1] = _chunk_grad(
                A, x[..., n0:n1].to(dtype), target[..., n0:n1], None if mask is None else mask[:, n0:n1],
                _slice_map(weights, n0, n1), o,
            )
    return grad


class _Impl(NamedTuple):
    name: str
    forward: object
    backward: object


FUSED = _Impl("fused", fused_forward, fused_backward)


class _MapSumsFunction(torch.autograd.Function):
    """(PW, W, M) of an implementation; saves references to its inputs only, recomputes in backward."""

    @staticmethod
    def forward(ctx, x, target, mask, weights, impl, o):
        out = impl.forward(x, target, mask, weights, o)
        ctx.save_for_backward(x, target, mask, weights)
        ctx.impl, ctx.o = impl, o
        pw, w, m = out.unbind(-1)
        ctx.mark_non_differentiable(w, m)
        return pw, w, m

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_pw, grad_w, grad_m):
        if grad_pw is None or not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        x, target, mask, weights = ctx.saved_tensors
        return ctx.impl.backward(grad_pw, x, target, mask, weights, ctx.o), None, None, None, None, None


# ----------------------------------------------------------------------------------------------
# triton


def _triton_module():
    """:mod:`diceloss.stats.triton.maps`, imported (with Triton) on the first launch."""
    return importlib.import_module("diceloss.stats.triton.maps")


def _launch_context(device: torch.device):
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def _triton_forward(x, target, mask, weights, o):
    with _launch_context(x.device):
        return _triton_module().map_forward(x, target, mask, weights, o)


def _triton_backward(A, x, target, mask, weights, o):
    with _launch_context(x.device):
        return _triton_module().map_backward(A, x, target, mask, weights, o)


TRITON = _Impl("triton", _triton_forward, _triton_backward)
# the largest C the Triton kernels hold in one tile (larger C runs on the fused path)
TRITON_MAX_CLASSES = 256


def _triton_supports(prep: Prepared) -> str | None:
    if prep.num_classes > TRITON_MAX_CLASSES:
        return f"the Triton map kernels hold at most {TRITON_MAX_CLASSES} classes in a tile, got C = {prep.num_classes}"
    return None


# ----------------------------------------------------------------------------------------------
# entry point


def select_backend(backend: str, prep: Prepared) -> str:
    """The backend that computes the map statistics of this call: "reference" | "fused" | "triton".

    The choice of :func:`diceloss.stats.resolve` for the overlap statistics of the same call (a forced backend
    that cannot serve it raises there, with its reason); ``auto`` leaves Triton for the fused path where the
    Triton map kernels cannot serve the call."""
    from .. import stats as package  # at call time: tests replace package.resolve to catch late input checks

    module, _ = package.resolve(backend, prep, StatsRequest())
    name = module.__name__.rsplit(".", 1)[-1]
    if name == "triton":
        reason = _triton_supports(prep)
        if reason is not None:
            if backend == "triton":
                raise ValueError(f"backend 'triton' cannot serve this call: {reason}")
            name = "fused"
    return name


def _contiguous(t: Tensor | None) -> Tensor | None:
    return t if t is None or t.is_contiguous() else t.contiguous()


def map_sums(prep: Prepared, weights: Tensor, backend: str = "auto") -> MapSums:
    """The map statistics of a prepared call and a map (see the module docstring).

    ``weights``: a label map (B, N) of integers or a dense map (B, C, N) of floats, on the input's device,
    already checked against ``prep`` by the caller (a target-side map: no gradient flows into it).
    ``backend``: "auto" | "reference" | "fused" | "triton" (chosen by :func:`select_backend`).
    """
    return compute(prep, weights, select_backend(backend, prep))


def _as_overlap_layout(prep: Prepared, weights: Tensor) -> Prepared | None:
    """The map statistics are the overlap statistics I, G, M with the map in the place of the target: PW = I =
    sum m p w, W = G = sum m w (q = 1), M the count. The layout that asks the overlap engine for them (its compiled
    CPU kernel, one pass forward and one backward), or None where its validity cannot be a position mask (an
    ignore_index per element, binary and multilabel modes)."""
    mask = prep.mask
    if prep.ignore_index is not None:
        if not prep.target_is_index:
            return None
        keep = prep.target != prep.ignore_index
        mask = keep if mask is None else mask & keep
    return prep._replace(target=weights, target_is_index=not weights.is_floating_point(), mask=mask,
                         ignore_index=None, kept_classes=None)


def compute(prep: Prepared, weights: Tensor, name: str) -> MapSums:
    """The map statistics by the backend ``name`` that :func:`select_backend` returned.

    ``"fused"`` and ``"triton"`` take the overlap engine's backend of that name (the compiled CPU kernel where it
    covers the call, else the chunked path of :mod:`diceloss.stats.chunked`; the Triton statistics kernels) when
    the validity is a position mask, and this module's own implementations otherwise. ``"chunked"`` and
    ``"triton_maps"`` force this module's own chunked path and Triton kernels (for the tests)."""
    weights = weights.detach()
    if name == "reference":
        return map_sums_reference(prep, weights)
    if name in ("fused", "triton"):
        overlap = _as_overlap_layout(prep, weights)
        if overlap is not None:
            from .. import stats as package

            s = package.stats_from_layout(overlap, StatsRequest(), name)
            return MapSums(s.intersection, s.target_volume, s.count)
    impl = TRITON if name in ("triton", "triton_maps") else FUSED
    pw, w, m = _MapSumsFunction.apply(
        _contiguous(prep.logits), _contiguous(prep.target.detach()), _contiguous(prep.mask), _contiguous(weights),
        impl, _options(prep, weights),
    )
    return MapSums(pw, w, m)
