"""Triton kernels of the class-pair kind (:mod:`diceloss.stats.pairs`) and their launcher.

Forward (``pairs_forward_kernel``), grid (programs over N, B): each program walks ``tiles_per_prog`` tiles of
``BLOCK_K`` classes x ``BLOCK_N`` positions of one sample, computes p (softmax over the K classes; (1 - q, q) in
binary mode) and accumulates, per target class k, in registers::

    V[k] += sum_n m_n g_kn sum_c M[k, c] p_cn        N[k] += sum_n m_n g_kn

(class indices: the row M[t_n, :] is gathered, W_n = sum_c M[t_n, c] p_cn added to class t_n). It writes one
partial per program, ``partials[b, program, k, 0:2]``, summed afterwards in a fixed order (no atomics: the
statistics repeat bit for bit). Backward (``pairs_backward_kernel``), grid (tiles, B): recomputes p and writes
``dL/dx`` from A = dL/dV (B, K): ``u_c = m sum_k g_k A_k M[k, c]``, then the softmax (or sigmoid) chain rule.

Every ``@triton.jit`` helper the kernels use is in this file, so that the tests can run an interpreted copy of
it (``tests/_triton_interpreter.py``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from .._kinds import launch_context
from ..types import compute_dtype

ACT_SOFTMAX = tl.constexpr(0)
ACT_SIGMOID = tl.constexpr(1)
_ACTIVATIONS = {"softmax": 0, "sigmoid": 1, "none": 2}

BLOCK_N = 256  # positions per tile (classes x positions about 2-4k elements for K <= 16)
PROGRAMS_PER_SM = 4
INTERPRETER_PROGRAMS = 2


@triton.jit
def _tile_probs(x_ptr, b64, ks, ns, k_ok, n_ok, K, sxb, sxc, sxn,
                ACC: tl.constexpr, ACT: tl.constexpr, BINARY: tl.constexpr):
    # p (BLOCK_K, BLOCK_N) over the K classes of M, and q (BLOCK_N,): the sigmoid (binary) or 0
    if BINARY:
        xv = tl.load(x_ptr + b64 * sxb + ns * sxn, mask=n_ok, other=0.0).to(ACC)
        if ACT == ACT_SIGMOID:
            e = tl.exp(-tl.abs(xv))
            inv = 1.0 / (1.0 + e)
            q = tl.where(xv >= 0, inv, e * inv)
        else:
            q = xv
        p = tl.where(ks[:, None] == 0, 1.0 - q[None, :], q[None, :])
    else:
        ptrs = x_ptr + b64 * sxb + ks[:, None] * sxc + ns[None, :] * sxn
        xv = tl.load(ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0).to(ACC)
        if ACT == ACT_SOFTMAX:
            xm = tl.where(k_ok[:, None], xv, float("-inf"))
            mx = tl.max(xm, axis=0)
            e = tl.exp(xm - mx[None, :])
            p = e / tl.sum(e, axis=0)[None, :]
        else:
            p = tl.where(k_ok[:, None], xv, 0.0)
        q = tl.sum(p, axis=0) * 0.0
    return p, q


@triton.jit
def _tile_target(t_ptr, m_ptr, b64, ks, ns, k_ok, n_ok, stb, stc, stn, smb, smn, ignore_index,
                 ACC: tl.constexpr, INDEX: tl.constexpr, BINARY: tl.constexpr, HAS_MASK: tl.constexpr,
                 HAS_IGNORE: tl.constexpr):
    # (valid (BLOCK_N,), t (BLOCK_N,) class indices or 0, g (BLOCK_K, BLOCK_N) dense target or 0)
    valid = n_ok
    if HAS_MASK:
        mv = tl.load(m_ptr + b64 * smb + ns * smn, mask=n_ok, other=0)
        valid = valid & (mv != 0)
    if INDEX:
        t = tl.load(t_ptr + b64 * stb + ns * stn, mask=n_ok, other=0)
        if HAS_IGNORE:
            valid = valid & (t != ignore_index)
        t = tl.where(valid, t, 0)
        g = (ks[:, None] == t[None, :]).to(ACC)
    else:
        t = ns * 0
        if BINARY:
            gb = tl.load(t_ptr + b64 * stb + ns * stn, mask=n_ok, other=0.0).to(ACC)
            if HAS_IGNORE:
                keep = gb != ignore_index
                valid = valid & keep
                gb = tl.where(keep, gb, 0.0)
            g = tl.where(ks[:, None] == 0, 1.0 - gb[None, :], gb[None, :])
        else:
            ptrs = t_ptr + b64 * stb + ks[:, None] * stc + ns[None, :] * stn
            g = tl.load(ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0).to(ACC)
    g = tl.where(k_ok[:, None] & valid[None, :], g, 0.0)
    return valid, t, g


@triton.jit
def pairs_forward_kernel(
    x_ptr, t_ptr, m_ptr, d_ptr, out_ptr,
    K, N, tiles_per_prog,
    sxb, sxc, sxn, stb, stc, stn, smb, smn,
    ignore_index,
    ACC: tl.constexpr, ACT: tl.constexpr, INDEX: tl.constexpr, BINARY: tl.constexpr, HAS_MASK: tl.constexpr,
    HAS_IGNORE: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
):
    prog = tl.program_id(0)
    b = tl.program_id(1)
    b64 = b.to(tl.int64)
    programs = tl.num_programs(0)
    ks = tl.arange(0, BLOCK_K)
    k_ok = ks < K
    v_acc = tl.zeros([BLOCK_K], ACC)
    n_acc = tl.zeros([BLOCK_K], ACC)
    for i in range(tiles_per_prog):
        ns = (prog * tiles_per_prog + i) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = ns < N
        p, q = _tile_probs(x_ptr, b64, ks, ns, k_ok, n_ok, K, sxb, sxc, sxn, ACC, ACT, BINARY)
        valid, t, g = _tile_target(t_ptr, m_ptr, b64, ks, ns, k_ok, n_ok, stb, stc, stn, smb, smn, ignore_index,
                                   ACC, INDEX, BINARY, HAS_MASK, HAS_IGNORE)
        if INDEX:
            # the row M[t_n, :] of each position: W_n = sum_c M[t_n, c] p_cn, added to class t_n
            rows = tl.load(d_ptr + t[None, :] * K + ks[:, None], mask=k_ok[:, None] & valid[None, :], other=0.0)
            w = tl.sum(rows * p, axis=0)
            v_acc += tl.sum(g * w[None, :], axis=1)
        else:
            for k in range(0, K):
                mk = tl.load(d_ptr + k * K + ks, mask=k_ok, other=0.0)
                cost = tl.sum(mk[:, None] * p, axis=0)  # sum_c M[k, c] p_cn
                gk = tl.sum(tl.where(ks[:, None] == k, g, 0.0), axis=0)
                v_acc = tl.where(ks == k, v_acc + tl.sum(gk * cost, axis=0), v_acc)
        n_acc += tl.sum(g, axis=1)
    base = out_ptr + ((b64 * programs + prog) * K + ks) * 2
    tl.store(base, v_acc, mask=k_ok)
    tl.store(base + 1, n_acc, mask=k_ok)


@triton.jit
def pairs_backward_kernel(
    x_ptr, t_ptr, m_ptr, d_ptr, a_ptr, gx_ptr,
    K, N,
    sxb, sxc, sxn, stb, stc, stn, smb, smn, sgb, sgc, sgn,
    ignore_index,
    ACC: tl.constexpr, ACT: tl.constexpr, INDEX: tl.constexpr, BINARY: tl.constexpr, HAS_MASK: tl.constexpr,
    HAS_IGNORE: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
):
    tile = tl.program_id(0)
    b = tl.program_id(1)
    b64 = b.to(tl.int64)
    ks = tl.arange(0, BLOCK_K)
    k_ok = ks < K
    ns = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = ns < N
    p, q = _tile_probs(x_ptr, b64, ks, ns, k_ok, n_ok, K, sxb, sxc, sxn, ACC, ACT, BINARY)
    valid, t, g = _tile_target(t_ptr, m_ptr, b64, ks, ns, k_ok, n_ok, stb, stc, stn, smb, smn, ignore_index,
                               ACC, INDEX, BINARY, HAS_MASK, HAS_IGNORE)
    if INDEX:
        r = tl.load(a_ptr + b64 * K + t, mask=valid, other=0.0)
        rows = tl.load(d_ptr + t[None, :] * K + ks[:, None], mask=k_ok[:, None] & valid[None, :], other=0.0)
        u = rows * r[None, :]
    else:
        u = p * 0.0
        for k in range(0, K):
            mk = tl.load(d_ptr + k * K + ks, mask=k_ok, other=0.0)
            ak = tl.load(a_ptr + b64 * K + k)
            gk = tl.sum(tl.where(ks[:, None] == k, g, 0.0), axis=0)
            u += mk[:, None] * (gk * ak)[None, :]
    if BINARY:
        du = tl.sum(tl.where(ks[:, None] == 1, u, -u), axis=0)  # p = (1 - q, q): dL/dq
        if ACT == ACT_SIGMOID:
            du = du * q * (1.0 - q)
        tl.store(gx_ptr + b64 * sgb + ns * sgn, du.to(gx_ptr.dtype.element_ty), mask=n_ok)
    else:
        if ACT == ACT_SOFTMAX:
            dx = p * (u - tl.sum(p * u, axis=0)[None, :])
        else:
            dx = u
        ptrs = gx_ptr + b64 * sgb + ks[:, None] * sgc + ns[None, :] * sgn
        tl.store(ptrs, dx.to(gx_ptr.dtype.element_ty), mask=k_ok[:, None] & n_ok[None, :])


# ----------------------------------------------------------------------------------------------
# launcher


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _config(x: Tensor, target: Tensor, mask: Tensor | None, dist: Tensor, meta):
    activation, ignore_index, binary = meta
    acc = compute_dtype(x.dtype)
    K = dist.shape[0]
    block_k = max(2, _next_pow2(K))
    block_n = max(16, min(BLOCK_N, _next_pow2(max(1, 4096 // block_k))))
    index = not target.is_floating_point()
    constexprs = dict(
        ACC=tl.float64 if acc == torch.float64 else tl.float32,
        ACT=_ACTIVATIONS[activation],
        INDEX=index,
        BINARY=bool(binary),
        HAS_MASK=mask is not None,
        HAS_IGNORE=ignore_index is not None,
        BLOCK_K=block_k,
        BLOCK_N=block_n,
    )
    st = (target.stride(0), 0, target.stride(1)) if index else target.stride()
    sm = (0, 0) if mask is None else mask.stride()
    strides = (*x.stride(), *st, *sm)
    return K, block_n, constexprs, strides, 0 if ignore_index is None else int(ignore_index)


def _mask_u8(mask: Tensor | None) -> Tensor | None:
    if mask is None:
        return None
    return mask.view(torch.uint8) if mask.dtype == torch.bool else (mask != 0).view(torch.uint8)


def _programs(num_tiles: int, B: int, device: torch.device) -> tuple[int, int]:
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        target = max(1, -(-PROGRAMS_PER_SM * sms // B))
    else:
        target = INTERPRETER_PROGRAMS
    programs = max(1, min(num_tiles, target))
    per = -(-num_tiles // programs)
    return -(-num_tiles // per), per


def forward(x: Tensor, target: Tensor, mask: Tensor | None, dist: Tensor, meta) -> tuple[Tensor, Tensor]:
    B, _, N = x.shape
    K, block_n, constexprs, strides, ignore = _config(x, target, mask, dist, meta)
    acc = compute_dtype(x.dtype)
    if B * N == 0:
        zeros = x.new_zeros((B, K), dtype=acc)
        return zeros, zeros.clone()
    programs, per = _programs(-(-N // block_n), B, x.device)
    partials = torch.empty((B, programs, K, 2), dtype=acc, device=x.device)
    m = _mask_u8(mask)
    with launch_context(x.device):
        pairs_forward_kernel[(programs, B)](
            x, target, x if m is None else m, dist, partials, K, N, per, *strides, ignore, **constexprs
        )
    out = partials.sum(dim=1)  # fixed order: deterministic
    return out[..., 0], out[..., 1]


def backward(grad_v: Tensor, x: Tensor, target: Tensor, mask: Tensor | None, dist: Tensor, meta) -> Tensor:
    B, _, N = x.shape
    K, block_n, constexprs, strides, ignore = _config(x, target, mask, dist, meta)
    grad = torch.empty_like(x)
    if B * N == 0:
        return grad.zero_()
    A = grad_v.to(compute_dtype(x.dtype)).contiguous()
    m = _mask_u8(mask)
    with launch_context(x.device):
        pairs_backward_kernel[(-(-N // block_n), B)](
            x, target, x if m is None else m, dist, A, grad, K, N, *strides, *grad.stride(), ignore, **constexprs
        )
    return grad


class _PairsTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, target, mask, dist, meta):
        V, count = forward(x, target, mask, dist, meta)
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
        return backward(grad_v, x, target, mask, dist, ctx.meta), None, None, None, None


def apply(x: Tensor, target: Tensor, mask: Tensor | None, dist: Tensor, meta) -> tuple[Tensor, Tensor]:
    """(V, N) of :mod:`diceloss.stats.pairs`, differentiable with respect to ``x``."""
    return _PairsTriton.apply(x, target, mask, dist, meta)
