"""Triton kernels of the map statistics (:mod:`diceloss.stats.maps`) and their launchers.

Layout: logits ``x`` (B, C, N) with any strides, C <= 256 (all classes in one tile); the target either class
indices (B, N) or probabilities (B, C, N) (read only for ``ignore_index``); an optional position mask (B, N)
as uint8; the map either a label map (B, N) of integers (``LABEL_MAP``: w = [s == c]) or a dense map
(B, C, N).

Forward (``map_forward_kernel``): grid (programs over N, B). Each program walks ``tiles_per_prog`` tiles of
``BLOCK_C`` classes x ``BLOCK_N`` positions, computes p (softmax over the classes, sigmoid, or the input),
and accumulates per class in registers, in ``ACC`` (float32, or float64 for float64 input)::

    k = 0: PW = sum m p w        k = 1: W = sum m w        k = 2: M = sum m

then stores them to ``partials[b, c, program, k]``; the launcher sums the programs in a fixed order, so the
sums repeat bit for bit (no atomics).

Backward (``map_backward_kernel``): grid (tiles over N, B). It recomputes p and writes dL/dx from
A = dL/dPW (B, C): u = m A w; softmax p (u - sum_c p u), sigmoid u p (1 - p), none u.

Self-contained (no helpers shared with :mod:`diceloss.stats.triton.kernels`), so that the tests can run an
interpreted copy of this one module.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import types

ACT_SOFTMAX = tl.constexpr(types.ACT_SOFTMAX)
ACT_SIGMOID = tl.constexpr(types.ACT_SIGMOID)
NUM_COLUMNS = tl.constexpr(len(types.MAP_COLUMNS))

# tile: BLOCK_C (next power of two of C) x BLOCK_N positions, about TILE_ELEMS elements
TILE_ELEMS = 2048
MIN_BLOCK_N = 16
MAX_BLOCK_N = 1024
PROGRAMS_PER_SM = 4
INTERPRETER_PROGRAMS = 2


@triton.jit
def _tile_probs(x, c_ok, ACT: tl.constexpr):
    # p of one tile holding every class (axis 0); padded classes get p = 0
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
def _tile_inputs(x_ptr, t_ptr, m_ptr, w_ptr, b64, cs, ns, c_ok, n_ok,
                 sxb, sxc, sxn, stb, stc, stn, smb, smn, swb, swc, swn, ignore_index,
                 ACC: tl.constexpr, INDEX: tl.constexpr, HAS_MASK: tl.constexpr, HAS_IGNORE: tl.constexpr,
                 LABEL_MAP: tl.constexpr):
    # the logits, the validity of each element (as ACC 0 / 1) and the map of one tile
    full = c_ok[:, None] & n_ok[None, :]
    x = tl.load(x_ptr + b64 * sxb + cs[:, None] * sxc + ns[None, :] * sxn, mask=full, other=0.0).to(ACC)
    valid = full
    if HAS_MASK:
        mv = tl.load(m_ptr + b64 * smb + ns * smn, mask=n_ok, other=0)
        valid = valid & (mv != 0)[None, :]
    if HAS_IGNORE:
        if INDEX:
            t = tl.load(t_ptr + b64 * stb + ns * stn, mask=n_ok, other=0)
            valid = valid & (t != ignore_index)[None, :]
        else:
            g = tl.load(t_ptr + b64 * stb + cs[:, None] * stc + ns[None, :] * stn, mask=full, other=0.0)
            valid = valid & (g != ignore_index)
    if LABEL_MAP:
        s = tl.load(w_ptr + b64 * swb + ns * swn, mask=n_ok, other=-1)
        w = (cs[:, None] == s[None, :]).to(ACC)
    else:
        w = tl.load(w_ptr + b64 * swb + cs[:, None] * swc + ns[None, :] * swn, mask=full, other=0.0).to(ACC)
    return x, valid.to(ACC), w


@triton.jit
def map_forward_kernel(
    x_ptr, t_ptr, m_ptr, w_ptr, out_ptr,
    C, N, tiles_per_prog,
    sxb, sxc, sxn, stb, stc, stn, smb, smn, swb, swc, swn,
    ignore_index,
    ACC: tl.constexpr, ACT: tl.constexpr, INDEX: tl.constexpr, HAS_MASK: tl.constexpr,
    HAS_IGNORE: tl.constexpr, LABEL_MAP: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    b64 = tl.program_id(1).to(tl.int64)
    programs = tl.num_programs(0)
    cs = tl.arange(0, BLOCK_C)
    c_ok = cs < C
    acc_pw = tl.zeros([BLOCK_C], ACC)
    acc_w = tl.zeros([BLOCK_C], ACC)
    acc_m = tl.zeros([BLOCK_C], ACC)
    for i in range(tiles_per_prog):
        ns = (pid * tiles_per_prog + i).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = ns < N
        x, v, w = _tile_inputs(x_ptr, t_ptr, m_ptr, w_ptr, b64, cs, ns, c_ok, n_ok,
                               sxb, sxc, sxn, stb, stc, stn, smb, smn, swb, swc, swn, ignore_index,
                               ACC, INDEX, HAS_MASK, HAS_IGNORE, LABEL_MAP)
        p = _tile_probs(x, c_ok, ACT)
        vw = v * w
        acc_pw += tl.sum(p * vw, axis=1)
        acc_w += tl.sum(vw, axis=1)
        acc_m += tl.sum(v, axis=1)
    base = out_ptr + (b64 * C + cs) * (programs * NUM_COLUMNS) + pid * NUM_COLUMNS
    tl.store(base, acc_pw, mask=c_ok)
    tl.store(base + 1, acc_w, mask=c_ok)
    tl.store(base + 2, acc_m, mask=c_ok)


@triton.jit
def map_backward_kernel(
    x_ptr, t_ptr, m_ptr, w_ptr, a_ptr, g_ptr,
    C, N,
    sxb, sxc, sxn, stb, stc, stn, smb, smn, swb, swc, swn, sgb, sgc, sgn,
    ignore_index,
    ACC: tl.constexpr, ACT: tl.constexpr, INDEX: tl.constexpr, HAS_MASK: tl.constexpr,
    HAS_IGNORE: tl.constexpr, LABEL_MAP: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
):
    b64 = tl.program_id(1).to(tl.int64)
    cs = tl.arange(0, BLOCK_C)
    c_ok = cs < C
    ns = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = ns < N
    x, v, w = _tile_inputs(x_ptr, t_ptr, m_ptr, w_ptr, b64, cs, ns, c_ok, n_ok,
                           sxb, sxc, sxn, stb, stc, stn, smb, smn, swb, swc, swn, ignore_index,
                           ACC, INDEX, HAS_MASK, HAS_IGNORE, LABEL_MAP)
    p = _tile_probs(x, c_ok, ACT)
    a = tl.load(a_ptr + b64 * C + cs, mask=c_ok, other=0.0).to(ACC)
    u = v * w * a[:, None]
    if ACT == ACT_SOFTMAX:
        d = p * (u - tl.sum(p * u, axis=0)[None, :])
    elif ACT == ACT_SIGMOID:
        d = u * p * (1.0 - p)
    else:
        d = u
    ptrs = g_ptr + b64 * sgb + cs[:, None] * sgc + ns[None, :] * sgn
    tl.store(ptrs, d.to(g_ptr.dtype.element_ty), mask=c_ok[:, None] & n_ok[None, :])


# ----------------------------------------------------------------------------------------------
# launchers


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _span(t: torch.Tensor) -> int:
    return sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride()) if s > 0) + 1


def _config(x: torch.Tensor, target: torch.Tensor, mask, weights: torch.Tensor, o) -> dict:
    B, C, N = x.shape
    acc = types.compute_dtype(x.dtype)
    block_c = _next_pow2(max(C, 2))
    block_n = max(MIN_BLOCK_N, min(MAX_BLOCK_N, _next_pow2(max(TILE_ELEMS // block_c, 1))))
    block_n = min(block_n, max(MIN_BLOCK_N, _next_pow2(N)))
    for t in (x, target, weights) + (() if mask is None else (mask,)):
        if _span(t) >= 2**31 - 1:
            raise ValueError("the Triton map kernels index with 32-bit strides; a tensor spans more than 2^31 elements")
    return dict(
        ACC=tl.float64 if acc == torch.float64 else tl.float32,
        ACT=types.ACTIVATIONS[o.activation],
        INDEX=not target.is_floating_point(),
        HAS_MASK=mask is not None,
        HAS_IGNORE=o.ignore_index is not None,
        LABEL_MAP=bool(o.label_map),
        BLOCK_C=block_c,
        BLOCK_N=block_n,
    )


def _strides(x, target, mask, weights):
    st = (target.stride(0), 0, target.stride(1)) if target.ndim == 2 else target.stride()
    sm = (0, 0) if mask is None else mask.stride()
    sw = (weights.stride(0), 0, weights.stride(1)) if weights.ndim == 2 else weights.stride()
    return (*x.stride(), *st, *sm, *sw)


def _mask_u8(mask):
    if mask is None:
        return None
    return mask.view(torch.uint8) if mask.dtype == torch.bool else (mask != 0).view(torch.uint8)


def _programs(num_tiles: int, B: int, device: torch.device) -> tuple[int, int]:
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        want = max(1, -(-PROGRAMS_PER_SM * sms // B))
    else:
        want = INTERPRETER_PROGRAMS
    programs = max(1, min(num_tiles, want))
    per = -(-num_tiles // programs)
    return -(-num_tiles // per), per


def map_forward(x, target, mask, weights, o) -> torch.Tensor:
    """(B, C, 3) map statistics (PW, W, M) in the accumulation dtype."""
    B, C, N = x.shape
    acc = types.compute_dtype(x.dtype)
    if B * N == 0:
        return x.new_zeros((B, C, len(types.MAP_COLUMNS)), dtype=acc)
    cfg = _config(x, target, mask, weights, o)
    programs, per = _programs(-(-N // cfg["BLOCK_N"]), B, x.device)
    partials = torch.empty((B, C, programs, len(types.MAP_COLUMNS)), dtype=acc, device=x.device)
    m = _mask_u8(mask)
    map_forward_kernel[(programs, B)](
        x, target, x if m is None else m, weights, partials,
        C, N, per,
        *_strides(x, target, m, weights),
        0 if o.ignore_index is None else int(o.ignore_index),
        **cfg,
    )
    return partials.sum(dim=2)  # a fixed order: deterministic


def map_backward(A, x, target, mask, weights, o) -> torch.Tensor:
    """dL/dx (the input's dtype) from A = dL/dPW (B, C)."""
    B, C, N = x.shape
    grad = torch.empty_like(x)
    if B * N == 0:
        return grad.zero_()
    cfg = _config(x, target, mask, weights, o)
    A = A.to(types.compute_dtype(x.dtype)).contiguous()
    m = _mask_u8(mask)
    map_backward_kernel[(-(-N // cfg["BLOCK_N"]), B)](
        x, target, x if m is None else m, weights, A, grad,
        C, N,
        *_strides(x, target, m, weights), *grad.stride(),
        0 if o.ignore_index is None else int(o.ignore_index),
        **cfg,
    )
    return grad
