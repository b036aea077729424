r"""The region-id statistic kind: per-instance sums by one scatter-add over instance ids (blob loss).

An instance map gives each position the id of the ground-truth instance (blob) it belongs to (0: none). A blob
is the set of valid positions that share an id *and* a class: in multiclass mode the class is the target's
label at the position (so ids may be reused across classes, and an id that spans two classes is two blobs);
in binary and multilabel modes each channel has its own instance map (B, C, N) and the class is the channel.
Blob (r, c) has key ``k = r * C + c``; per (sample b, key k), in one pass over the logits::

    S[b, k] = sum_{n in blob k} m p_{c,n}        the prediction mass on the blob (differentiable)
    n[b, k] = sum_{n in blob k} m                its size (no gradient)

together with the usual (B, C) sums I = sum m p g, P = sum m p, G = sum m g, M = sum m (columns 0-3 of
``base``). Nothing is looped over the blobs: the cost is O(N) whatever their number (field_2026.md §1.3). The
prediction mass outside every blob of class c is ``P[b, c] - sum_r S[b, r * C + c]``, which is what the blob
Dice needs (:mod:`diceloss.blob`).

Backward, with K_I, K_P (B, C) the gradients of I, P and D = dL/dS (B, keys)::

    dL/dp_{c,n} = m (K_I g + K_P) + [c = class of n's blob] D[b, key(n)]

then the softmax (or sigmoid) chain rule. Three implementations (:mod:`diceloss.stats._kinds`): ``reference``
(plain autograd, scatter-add of full-size probabilities), ``fused`` (chunked, recompute in backward) and
``triton`` (:mod:`diceloss.stats.triton.regions`).
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .._layout import Prepared
from ._kinds import activate, choose_backend, chunk_positions, chunk_target, chunks
from .reference import dense_target
from .types import compute_dtype

__all__ = ["region_sums", "reference", "fused", "triton", "blob_classes", "TRITON_MAX_CLASSES"]

TRITON_MAX_CLASSES = 256


def blob_classes(target: Tensor, index: bool) -> Tensor:
    """The class of each position for the blobs of multiclass mode: the class index, or the most probable class of
    a dense target (B, N) int64."""
    return target if index else target.argmax(dim=1)


def _keys(inst: Tensor, cls: Tensor | None, valid: Tensor, C: int) -> Tensor:
    """The key ``id * C + class`` of each valid element in a blob, 0 elsewhere. Multiclass: ``inst`` (B, n) and the
    classes ``cls`` (B, n); per channel: ``inst`` (B, C, n) and ``cls`` None."""
    inst = inst.to(torch.int64)
    if cls is None:
        cls = torch.arange(C, device=inst.device)[None, :, None]
    key = inst * C + cls
    return torch.where(valid & (inst > 0), key, torch.zeros_like(key))


def _layout_sums(x: Tensor, g: Tensor, m: Tensor, activation: str):
    p, _ = activate(x, activation)
    B, C, N = x.shape
    base = torch.stack([(m * p * g).sum(-1), (m * p).sum(-1), (m * g).sum(-1), m.expand(B, C, N).sum(-1)], dim=-1)
    return p, base


def _selected(p: Tensor, cls: Tensor | None) -> Tensor:
    """The probability each element contributes to its blob: p of the position's class (multiclass), or p."""
    return p if cls is None else p.gather(1, cls[:, None, :])[:, 0]


def _scatter(S: Tensor, count: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
    B = key.shape[0]
    inside = (key > 0).to(value.dtype)
    S = S.scatter_add(1, key.reshape(B, -1), (value * inside).reshape(B, -1))
    count = count.scatter_add(1, key.reshape(B, -1), inside.reshape(B, -1))
    return S, count


def reference(prep: Prepared, instances: Tensor, num_keys: int) -> tuple[Tensor, Tensor, Tensor]:
    """(base (B, C, 4), S (B, keys), n (B, keys)) by plain autograd from the definition."""
    dtype = compute_dtype(prep.logits.dtype)
    x = prep.logits.to(dtype)
    g, m = dense_target(prep, dtype)
    B, C, N = x.shape
    p, base = _layout_sums(x, g, m, prep.activation)
    if prep.mode == "multiclass":
        cls = blob_classes(prep.target, prep.target_is_index)
        cls = torch.where(m[:, 0] > 0, cls, torch.zeros_like(cls))  # ignored indices may be out of range
        key = _keys(instances, cls, m[:, 0] > 0, C)
    else:
        cls = None
        key = _keys(instances, None, m.expand(B, C, N) > 0, C)
    zeros = torch.zeros(B, num_keys, dtype=dtype, device=x.device)
    S, count = _scatter(zeros, zeros, key, _selected(p, cls))
    return base, S, count


# ----------------------------------------------------------------------------------------------
# fused: chunks, recompute in backward


def _chunk(x, target, instances, mask, n0, n1, meta, dtype):
    mode, ignore_index = meta[1:3]
    C = x.shape[1]
    index = not target.is_floating_point()
    tc = target[..., n0:n1]
    g, m = chunk_target(target, mask, n0, n1, C, ignore_index, dtype)
    ic = instances[..., n0:n1]
    if mode == "multiclass":
        valid = m[:, 0] > 0
        cls = blob_classes(tc, index)
        cls = torch.where(valid, cls, torch.zeros_like(cls))
        key = _keys(ic, cls, valid, C)
    else:
        cls = None
        key = _keys(ic, None, m.expand(x.shape[0], C, n1 - n0) > 0, C)
    return x[..., n0:n1].to(dtype), g, m, cls, key


def _forward(x, target, instances, mask, meta):
    num_keys = meta[3]
    dtype = compute_dtype(x.dtype)
    B, C, N = x.shape
    base = torch.zeros(B, C, 4, dtype=dtype, device=x.device)
    S = torch.zeros(B, num_keys, dtype=dtype, device=x.device)
    count = torch.zeros(B, num_keys, dtype=dtype, device=x.device)
    for n0, n1 in chunks(N, chunk_positions(B, C, N, x.element_size(), x.device.type)):
        xc, g, m, cls, key = _chunk(x, target, instances, mask, n0, n1, meta, dtype)
        p, b = _layout_sums(xc, g, m, meta[0])
        base += b
        inside = (key > 0).to(dtype).reshape(B, -1)
        flat = key.reshape(B, -1)
        S.scatter_add_(1, flat, _selected(p, cls).reshape(B, -1) * inside)
        count.scatter_add_(1, flat, inside)
    return base, S, count


def _backward(grad_base, grad_s, x, target, instances, mask, meta):
    activation = meta[0]
    dtype = compute_dtype(x.dtype)
    B, C, N = x.shape
    KI = KP = None
    if grad_base is not None:
        grad_base = grad_base.to(dtype)
        KI, KP = grad_base[..., 0:1], grad_base[..., 1:2]
    D = None if grad_s is None else grad_s.to(dtype)
    grad = torch.empty_like(x)
    for n0, n1 in chunks(N, chunk_positions(B, C, N, x.element_size(), x.device.type)):
        xc, g, m, cls, key = _chunk(x, target, instances, mask, n0, n1, meta, dtype)
        p, _ = activate(xc, activation)
        u = m * (KI * g + KP) if KI is not None else torch.zeros_like(p)
        if D is not None:
            blob = D.gather(1, key.reshape(B, -1)).reshape(key.shape) * (key > 0).to(dtype)
            if cls is None:
                u = u + blob
            else:
                u = u.scatter_add(1, cls[:, None, :], blob[:, None, :])
        if activation == "softmax":
            out = p * (u - (p * u).sum(dim=1, keepdim=True))
        elif activation == "sigmoid":
            out = u * (p * (1 - p))
        else:
            out = u
        grad[..., n0:n1] = out.to(x.dtype)
    return grad


class _Regions(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, target, instances, mask, meta):
        with torch.no_grad():
            base, S, count = _forward(x, target, instances, mask, meta)
        ctx.save_for_backward(x, target, instances, mask)
        ctx.meta = meta
        ctx.mark_non_differentiable(count)
        ctx.set_materialize_grads(False)
        return base, S, count

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_base, grad_s, grad_count):
        x, target, instances, mask = ctx.saved_tensors
        if not ctx.needs_input_grad[0] or (grad_base is None and grad_s is None):
            return None, None, None, None, None
        return _backward(grad_base, grad_s, x, target, instances, mask, ctx.meta), None, None, None, None


def _op_tensors(prep: Prepared, instances: Tensor, num_keys: int):
    x = prep.logits  # any strides: the chunks are views, the kernels take strides
    meta = (prep.activation, prep.mode, prep.ignore_index, int(num_keys))
    return x, prep.target.detach(), instances.contiguous(), prep.mask, meta


def fused(prep: Prepared, instances: Tensor, num_keys: int) -> tuple[Tensor, Tensor, Tensor]:
    """(base, S, n) by the chunked autograd.Function: nothing of the logits' size is kept for the backward."""
    return _Regions.apply(*_op_tensors(prep, instances, num_keys))


# ----------------------------------------------------------------------------------------------
# triton


def _triton() -> ModuleType:
    """The Triton launcher and kernels of this kind (imported, with Triton, on the first launch)."""
    return importlib.import_module("diceloss.stats.triton.regions")


def triton_kind_reason(prep: Prepared) -> str | None:
    if prep.num_classes > TRITON_MAX_CLASSES:
        return f"its kernels hold at most {TRITON_MAX_CLASSES} classes, got {prep.num_classes}"
    return None


def triton(prep: Prepared, instances: Tensor, num_keys: int) -> tuple[Tensor, Tensor, Tensor]:
    """(base, S, n) by the Triton kernels (differentiable with respect to the logits)."""
    return _triton().apply(*_op_tensors(prep, instances, num_keys))


def region_sums(prep: Prepared, instances: Tensor, num_keys: int, backend: str = "auto"):
    """(base (B, C, 4) = I, P, G, M; S (B, keys); n (B, keys)) by ``backend``. ``instances``: (B, N) in multiclass
    mode, (B, C, N) otherwise, non-negative ids, with ``num_keys > max id * C + C - 1``."""
    name = choose_backend(backend, prep.logits, prep.target, triton_kind_reason(prep))
    if name == "reference":
        return reference(prep, instances, num_keys)
    if name == "triton":
        return triton(prep, instances, num_keys)
    return fused(prep, instances, num_keys)
