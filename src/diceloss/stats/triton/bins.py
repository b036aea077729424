"""Triton kernels of the bin statistics (:mod:`diceloss.stats.bins`) and their launchers.

Layout: logits ``x`` (B, C, N) with any strides; the target class indices (B, N) or probabilities (B, C, N); an
optional position mask (B, N) as uint8. All C classes and all K bins sit in one tile (``BLOCK_C`` x ``BLOCK_K``,
each the next power of two, at most :data:`diceloss.stats.bins.TRITON_MAX_CLASS_BINS` together).

Forward (``bin_forward_kernel``): grid (programs over N, B). Each program walks ``tiles_per_prog`` tiles of
``BLOCK_N`` positions; per tile it computes p (softmax over the classes, sigmoid, or the input), the bins of p
(hard: ceil(p K) - 1 clamped; soft: the two nearest bin centres and the share f) and adds, through a
(BLOCK_C, BLOCK_N, BLOCK_K) one-hot of the bins reduced over the positions, into (BLOCK_C, BLOCK_K) registers::

    k = 0: SP = sum m w_k p        k = 1: SG = sum m w_k g        k = 2: N = sum m w_k

then stores them to ``partials[b, c, program, bin, k]``; the launcher sums the programs in a fixed order
(deterministic, no atomics).

Backward (``bin_backward_kernel``): grid (tiles over N, B). It recomputes p and its bins, gathers the gradients
(a, b, c) of (SP, SG, N) at the bins of each element from the (B, C, K, 3) table and writes dL/dx (formulas in
:mod:`diceloss.stats.bins`). Self-contained, so that the tests can run an interpreted copy of this one module.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import types

ACT_SOFTMAX = tl.constexpr(types.ACT_SOFTMAX)
ACT_SIGMOID = tl.constexpr(types.ACT_SIGMOID)
NCOL = tl.constexpr(len(types.BIN_COLUMNS))

# tile: BLOCK_C x BLOCK_N x BLOCK_K about TILE_ELEMS elements in the forward's one-hot
TILE_ELEMS = 8192
MIN_BLOCK_N = 16
MAX_BLOCK_N = 256
PROGRAMS_PER_SM = 4
INTERPRETER_PROGRAMS = 2


@triton.jit
def _tile_probs(x, c_ok, ACT: tl.constexpr):
    if ACT == ACT_SOFTMAX:
        xm = tl.where(c_ok[:, None], x, float("-inf"))
        mx = tl.max(xm, axis=0)
        e = tl.exp(xm - mx[None, :])
        p = e * (1.0 / tl.sum(e, axis=0))[None, :]
    elif ACT == ACT_SIGMOID:
        e = tl.exp(-tl.abs(x))
        inv = 1.0 / (1.0 + e)
        p = tl.where(x >= 0, inv, e * inv)
    else:
        p = x
    return tl.where(c_ok[:, None], p, 0.0)


@triton.jit
def _tile(x_ptr, t_ptr, m_ptr, b64, cs, ns, c_ok, n_ok, sxb, sxc, sxn, stb, stc, stn, smb, smn, ignore_index,
          ACC: tl.constexpr, ACT: tl.constexpr, INDEX: tl.constexpr, HAS_MASK: tl.constexpr,
          HAS_IGNORE: tl.constexpr):
    # p, g and the validity (ACC 0 / 1) of one tile
    full = c_ok[:, None] & n_ok[None, :]
    x = tl.load(x_ptr + b64 * sxb + cs[:, None] * sxc + ns[None, :] * sxn, mask=full, other=0.0).to(ACC)
    p = _tile_probs(x, c_ok, ACT)
    valid = full
    if HAS_MASK:
        mv = tl.load(m_ptr + b64 * smb + ns * smn, mask=n_ok, other=0)
        valid = valid & (mv != 0)[None, :]
    if INDEX:
        t = tl.load(t_ptr + b64 * stb + ns * stn, mask=n_ok, other=-1)
        if HAS_IGNORE:
            valid = valid & (t != ignore_index)[None, :]
        g = (cs[:, None] == t[None, :]).to(ACC)
    else:
        g = tl.load(t_ptr + b64 * stb + cs[:, None] * stc + ns[None, :] * stn, mask=full, other=0.0).to(ACC)
        if HAS_IGNORE:
            keep = g != ignore_index
            valid = valid & keep
            g = tl.where(keep, g, 0.0)
    return p, g, valid.to(ACC)


@triton.jit
def _bins_of(p, K, SOFT: tl.constexpr):
    # (lo, hi, f, df/dp) as in diceloss.stats.bins (hard: lo = hi, f = 0)
    if SOFT:
        u = p * K - 0.5
        j = tl.floor(u)
        inside = (j >= 0) & (j < K - 1)
        lo = tl.minimum(tl.maximum(j, 0.0), K - 1.0).to(tl.int32)
        hi = tl.minimum(tl.maximum(j + 1.0, 0.0), K - 1.0).to(tl.int32)
        f = tl.where(inside, u - j, 0.0)
        df = tl.where(inside, K + 0.0 * u, 0.0)
    else:
        k = tl.ceil(p * K) - 1.0
        lo = tl.minimum(tl.maximum(k, 0.0), K - 1.0).to(tl.int32)
        hi = lo
        f = 0.0 * p
        df = f
    return lo, hi, f, df


@triton.jit
def bin_forward_kernel(
    x_ptr, t_ptr, m_ptr, out_ptr,
    C, N, K, tiles_per_prog,
    sxb, sxc, sxn, stb, stc, stn, smb, smn,
    ignore_index,
    ACC: tl.constexpr, ACT: tl.constexpr, INDEX: tl.constexpr, HAS_MASK: tl.constexpr, HAS_IGNORE: tl.constexpr,
    SOFT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    b64 = tl.program_id(1).to(tl.int64)
    programs = tl.num_programs(0)
    cs = tl.arange(0, BLOCK_C)
    c_ok = cs < C
    ks = tl.arange(0, BLOCK_K)
    acc_p = tl.zeros([BLOCK_C, BLOCK_K], ACC)
    acc_g = tl.zeros([BLOCK_C, BLOCK_K], ACC)
    acc_n = tl.zeros([BLOCK_C, BLOCK_K], ACC)
    for i in range(tiles_per_prog):
        ns = (pid * tiles_per_prog + i).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = ns < N
        p, g, v = _tile(x_ptr, t_ptr, m_ptr, b64, cs, ns, c_ok, n_ok, sxb, sxc, sxn, stb, stc, stn, smb, smn,
                        ignore_index, ACC, ACT, INDEX, HAS_MASK, HAS_IGNORE)
        lo, hi, f, df = _bins_of(p, K, SOFT)
        k3 = ks[None, None, :]
        w = tl.where(lo[:, :, None] == k3, (v * (1.0 - f))[:, :, None], 0.0)
        if SOFT:
            w += tl.where(hi[:, :, None] == k3, (v * f)[:, :, None], 0.0)
        acc_p += tl.sum(w * p[:, :, None], axis=1)
        acc_g += tl.sum(w * g[:, :, None], axis=1)
        acc_n += tl.sum(w, axis=1)
    off = ((b64 * C + cs[:, None]) * programs + pid) * (K * NCOL) + ks[None, :] * NCOL
    ok = c_ok[:, None] & (ks < K)[None, :]
    tl.store(out_ptr + off, acc_p, mask=ok)
    tl.store(out_ptr + off + 1, acc_g, mask=ok)
    tl.store(out_ptr + off + 2, acc_n, mask=ok)


@triton.jit
def bin_backward_kernel(
    x_ptr, t_ptr, m_ptr, co_ptr, g_ptr,
    C, N, K,
    sxb, sxc, sxn, stb, stc, stn, smb, smn, sgb, sgc, sgn,
    ignore_index,
    ACC: tl.constexpr, ACT: tl.constexpr, INDEX: tl.constexpr, HAS_MASK: tl.constexpr, HAS_IGNORE: tl.constexpr,
    SOFT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
):
    b64 = tl.program_id(1).to(tl.int64)
    cs = tl.arange(0, BLOCK_C)
    c_ok = cs < C
    ns = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = ns < N
    full = c_ok[:, None] & n_ok[None, :]
    p, g, v = _tile(x_ptr, t_ptr, m_ptr, b64, cs, ns, c_ok, n_ok, sxb, sxc, sxn, stb, stc, stn, smb, smn,
                    ignore_index, ACC, ACT, INDEX, HAS_MASK, HAS_IGNORE)
    lo, hi, f, df = _bins_of(p, K, SOFT)
    row = co_ptr + (b64 * C + cs[:, None]) * (K * NCOL)
    a_lo = tl.load(row + lo * NCOL, mask=full, other=0.0).to(ACC)
    if SOFT:
        a_hi = tl.load(row + hi * NCOL, mask=full, other=0.0).to(ACC)
        b_lo = tl.load(row + lo * NCOL + 1, mask=full, other=0.0).to(ACC)
        b_hi = tl.load(row + hi * NCOL + 1, mask=full, other=0.0).to(ACC)
        c_lo = tl.load(row + lo * NCOL + 2, mask=full, other=0.0).to(ACC)
        c_hi = tl.load(row + hi * NCOL + 2, mask=full, other=0.0).to(ACC)
        u = (1.0 - f) * a_lo + f * a_hi + df * ((a_hi - a_lo) * p + (b_hi - b_lo) * g + (c_hi - c_lo))
    else:
        u = a_lo
    u = u * v
    if ACT == ACT_SOFTMAX:
        d = p * (u - tl.sum(p * u, axis=0)[None, :])
    elif ACT == ACT_SIGMOID:
        d = u * p * (1.0 - p)
    else:
        d = u
    ptrs = g_ptr + b64 * sgb + cs[:, None] * sgc + ns[None, :] * sgn
    tl.store(ptrs, d.to(g_ptr.dtype.element_ty), mask=full)


# ----------------------------------------------------------------------------------------------
# launchers


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _span(t: torch.Tensor) -> int:
    return sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride()) if s > 0) + 1


def _config(x, target, mask, o, block_elems: int) -> dict:
    B, C, N = x.shape
    for t in (x, target) + (() if mask is None else (mask,)):
        if _span(t) >= 2**31 - 1:
            raise ValueError("the Triton bin kernels index with 32-bit strides; a tensor spans more than 2^31 elements")
    block_c = _next_pow2(max(C, 2))
    block_n = max(MIN_BLOCK_N, min(MAX_BLOCK_N, _next_pow2(max(block_elems // block_c, 1))))
    return dict(
        ACC=tl.float64 if types.compute_dtype(x.dtype) == torch.float64 else tl.float32,
        ACT=types.ACTIVATIONS[o.activation],
        INDEX=not target.is_floating_point(),
        HAS_MASK=mask is not None,
        HAS_IGNORE=o.ignore_index is not None,
        SOFT=bool(o.soft),
        BLOCK_C=block_c,
        BLOCK_N=min(block_n, max(MIN_BLOCK_N, _next_pow2(N))),
    )


def _strides(x, target, mask):
    st = (target.stride(0), 0, target.stride(1)) if target.ndim == 2 else target.stride()
    sm = (0, 0) if mask is None else mask.stride()
    return (*x.stride(), *st, *sm)


def _mask_u8(mask):
    if mask is None:
        return None
    return mask.view(torch.uint8) if mask.dtype == torch.bool else (mask != 0).view(torch.uint8)


def bin_forward(x, target, mask, o) -> torch.Tensor:
    """(B, C, K, 3) bin sums (SP, SG, N) in the accumulation dtype."""
    B, C, N = x.shape
    K = o.bins
    acc = types.compute_dtype(x.dtype)
    if B * N == 0:
        return x.new_zeros((B, C, K, len(types.BIN_COLUMNS)), dtype=acc)
    block_k = _next_pow2(max(K, 2))
    cfg = _config(x, target, mask, o, TILE_ELEMS // block_k)
    num_tiles = -(-N // cfg["BLOCK_N"])
    if x.device.type == "cuda":
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count
        want = max(1, -(-PROGRAMS_PER_SM * sms // B))
    else:
        want = INTERPRETER_PROGRAMS
    programs = max(1, min(num_tiles, want))
    per = -(-num_tiles // programs)
    programs = -(-num_tiles // per)
    partials = torch.empty((B, C, programs, K, len(types.BIN_COLUMNS)), dtype=acc, device=x.device)
    m = _mask_u8(mask)
    bin_forward_kernel[(programs, B)](
        x, target, x if m is None else m, partials,
        C, N, K, per,
        *_strides(x, target, m),
        0 if o.ignore_index is None else int(o.ignore_index),
        BLOCK_K=block_k,
        **cfg,
    )
    return partials.sum(dim=2)  # a fixed order: deterministic


def bin_backward(coef, x, target, mask, o) -> torch.Tensor:
    """dL/dx (the input's dtype) from the (B, C, K, 3) gradients of the bin sums."""
    B, C, N = x.shape
    grad = torch.empty_like(x)
    if B * N == 0:
        return grad.zero_()
    cfg = _config(x, target, mask, o, TILE_ELEMS // 16)
    coef = coef.to(types.compute_dtype(x.dtype)).contiguous()
    m = _mask_u8(mask)
    bin_backward_kernel[(-(-N // cfg["BLOCK_N"]), B)](
        x, target, x if m is None else m, coef, grad,
        C, N, o.bins,
        *_strides(x, target, m), *grad.stride(),
        0 if o.ignore_index is None else int(o.ignore_index),
        **cfg,
    )
    return grad
