"""Triton kernels of the region-id kind (:mod:`diceloss.stats.regions`) and their launcher.

Forward (``regions_forward_kernel``), grid (programs over N, B): each program walks ``tiles_per_prog`` tiles of
``BLOCK_C`` classes (all of them) x ``BLOCK_N`` positions of one sample. It accumulates I, P, G, M per class in
registers (one partial per program, summed afterwards in a fixed order) and adds each element's probability to
its blob with an atomic add: ``S[b, key] += p``, ``n[b, key] += 1`` for ``key = id * C + class > 0``. The blob
sums therefore depend on the order of the atomic adds at float rounding (the sizes are exact). Backward
(``regions_backward_kernel``), grid (tiles, B): recomputes p and writes dL/dx from the gradients of I, P (B, C)
and of S (B, keys), gathered at each element's key.

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

TILE_ELEMS = 4096
BLOCK_N = 256
PROGRAMS_PER_SM = 4
INTERPRETER_PROGRAMS = 2


@triton.jit
def _tile(x_ptr, t_ptr, i_ptr, m_ptr, b64, cs, ns, c_ok, n_ok, C,
          sxb, sxc, sxn, stb, stc, stn, sib, sic, sin, smb, smn, ignore_index,
          ACC: tl.constexpr, ACT: tl.constexpr, MULTICLASS: tl.constexpr, INDEX: tl.constexpr,
          HAS_MASK: tl.constexpr, HAS_IGNORE: tl.constexpr):
    # p, g, the element mask, the class of each position (multiclass: its blob's class) and the blob keys
    inside = c_ok[:, None] & n_ok[None, :]
    x = tl.load(x_ptr + b64 * sxb + cs[:, None] * sxc + ns[None, :] * sxn, mask=inside, other=0.0).to(ACC)
    valid = n_ok
    if HAS_MASK:
        mv = tl.load(m_ptr + b64 * smb + ns * smn, mask=n_ok, other=0)
        valid = valid & (mv != 0)
    if INDEX:
        t = tl.load(t_ptr + b64 * stb + ns * stn, mask=n_ok, other=0)
        if HAS_IGNORE:
            valid = valid & (t != ignore_index)
        g = (cs[:, None] == t[None, :]).to(ACC)
        mel = c_ok[:, None] & valid[None, :]
        cls = tl.where(valid, t, 0)
    else:
        mel = c_ok[:, None] & valid[None, :]
        g = tl.load(t_ptr + b64 * stb + cs[:, None] * stc + ns[None, :] * stn, mask=mel, other=0.0).to(ACC)
        if HAS_IGNORE:
            keep = g != ignore_index
            g = tl.where(keep, g, 0.0)
            mel = mel & keep
        # the most probable class (the first of equal ones, as torch.argmax)
        gm = tl.where(c_ok[:, None], g, -1.0)
        top = tl.max(gm, axis=0)
        cls = tl.min(tl.where(gm == top[None, :], cs[:, None], C), axis=0)
        cls = tl.where(valid, cls, 0)
    if ACT == ACT_SOFTMAX:
        xm = tl.where(c_ok[:, None], x, float("-inf"))
        mx = tl.max(xm, axis=0)
        e = tl.exp(xm - mx[None, :])
        p = e / tl.sum(e, axis=0)[None, :]
    elif ACT == ACT_SIGMOID:
        ex = tl.exp(-tl.abs(x))
        inv = 1.0 / (1.0 + ex)
        p = tl.where(x >= 0, inv, ex * inv)
    else:
        p = x
    p = tl.where(c_ok[:, None], p, 0.0)
    if MULTICLASS:
        ids = tl.load(i_ptr + b64 * sib + ns * sin, mask=n_ok & valid, other=0).to(tl.int64)
        key = tl.where(valid & (ids > 0), ids * C + cls, 0)
    else:
        ids = tl.load(i_ptr + b64 * sib + cs[:, None] * sic + ns[None, :] * sin, mask=mel, other=0).to(tl.int64)
        key = tl.where(mel & (ids > 0), ids * C + cs[:, None], 0)
    return p, g, mel.to(ACC), cls, key


@triton.jit
def regions_forward_kernel(
    x_ptr, t_ptr, i_ptr, m_ptr, out_ptr, s_ptr, n_ptr,
    C, N, K, tiles_per_prog,
    sxb, sxc, sxn, stb, stc, stn, sib, sic, sin, smb, smn,
    ignore_index,
    ACC: tl.constexpr, ACT: tl.constexpr, MULTICLASS: tl.constexpr, INDEX: tl.constexpr, HAS_MASK: tl.constexpr,
    HAS_IGNORE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
):
    prog = tl.program_id(0)
    b = tl.program_id(1)
    b64 = b.to(tl.int64)
    programs = tl.num_programs(0)
    cs = tl.arange(0, BLOCK_C)
    c_ok = cs < C
    acc_i = tl.zeros([BLOCK_C], ACC)
    acc_p = tl.zeros([BLOCK_C], ACC)
    acc_g = tl.zeros([BLOCK_C], ACC)
    acc_m = tl.zeros([BLOCK_C], ACC)
    for i in range(tiles_per_prog):
        ns = (prog * tiles_per_prog + i) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = ns < N
        p, g, m, cls, key = _tile(x_ptr, t_ptr, i_ptr, m_ptr, b64, cs, ns, c_ok, n_ok, C, sxb, sxc, sxn, stb, stc,
                                  stn, sib, sic, sin, smb, smn, ignore_index, ACC, ACT, MULTICLASS, INDEX, HAS_MASK,
                                  HAS_IGNORE)
        acc_i += tl.sum(m * p * g, axis=1)
        acc_p += tl.sum(m * p, axis=1)
        acc_g += tl.sum(m * g, axis=1)
        acc_m += tl.sum(m, axis=1)
        if MULTICLASS:
            sel = tl.sum(tl.where(cs[:, None] == cls[None, :], p, 0.0), axis=0)
            inb = key > 0
            tl.atomic_add(s_ptr + b64 * K + key, sel, mask=inb)
            tl.atomic_add(n_ptr + b64 * K + key, tl.where(inb, 1.0, 0.0).to(ACC), mask=inb)
        else:
            inb = key > 0
            tl.atomic_add(s_ptr + b64 * K + key, p, mask=inb)
            tl.atomic_add(n_ptr + b64 * K + key, tl.where(inb, 1.0, 0.0).to(ACC), mask=inb)
    base = out_ptr + ((b64 * programs + prog) * C + cs) * 4
    tl.store(base, acc_i, mask=c_ok)
    tl.store(base + 1, acc_p, mask=c_ok)
    tl.store(base + 2, acc_g, mask=c_ok)
    tl.store(base + 3, acc_m, mask=c_ok)


@triton.jit
def regions_backward_kernel(
    x_ptr, t_ptr, i_ptr, m_ptr, co_ptr, d_ptr, gx_ptr,
    C, N, K,
    sxb, sxc, sxn, stb, stc, stn, sib, sic, sin, smb, smn, sgb, sgc, sgn,
    ignore_index,
    ACC: tl.constexpr, ACT: tl.constexpr, MULTICLASS: tl.constexpr, INDEX: tl.constexpr, HAS_MASK: tl.constexpr,
    HAS_IGNORE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
):
    tile = tl.program_id(0)
    b = tl.program_id(1)
    b64 = b.to(tl.int64)
    cs = tl.arange(0, BLOCK_C)
    c_ok = cs < C
    ns = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = ns < N
    p, g, m, cls, key = _tile(x_ptr, t_ptr, i_ptr, m_ptr, b64, cs, ns, c_ok, n_ok, C, sxb, sxc, sxn, stb, stc, stn,
                              sib, sic, sin, smb, smn, ignore_index, ACC, ACT, MULTICLASS, INDEX, HAS_MASK, HAS_IGNORE)
    co = co_ptr + (b64 * C + cs) * 2
    k_i = tl.load(co, mask=c_ok, other=0.0)
    k_p = tl.load(co + 1, mask=c_ok, other=0.0)
    u = m * (k_i[:, None] * g + k_p[:, None])
    d = tl.load(d_ptr + b64 * K + key, mask=key > 0, other=0.0)
    if MULTICLASS:
        u += tl.where(cs[:, None] == cls[None, :], d[None, :], 0.0)
    else:
        u += d
    if ACT == ACT_SOFTMAX:
        dx = p * (u - tl.sum(p * u, axis=0)[None, :])
    elif ACT == ACT_SIGMOID:
        dx = u * p * (1.0 - p)
    else:
        dx = u
    ptrs = gx_ptr + b64 * sgb + cs[:, None] * sgc + ns[None, :] * sgn
    tl.store(ptrs, dx.to(gx_ptr.dtype.element_ty), mask=c_ok[:, None] & n_ok[None, :])


# ----------------------------------------------------------------------------------------------
# launcher


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _config(x: Tensor, target: Tensor, instances: Tensor, mask: Tensor | None, meta):
    activation, mode, ignore_index, num_keys = meta
    acc = compute_dtype(x.dtype)
    C = x.shape[1]
    block_c = max(2, _next_pow2(C))
    block_n = max(16, min(BLOCK_N, _next_pow2(max(1, TILE_ELEMS // block_c))))
    index = not target.is_floating_point()
    multiclass = mode == "multiclass"
    constexprs = dict(
        ACC=tl.float64 if acc == torch.float64 else tl.float32,
        ACT=_ACTIVATIONS[activation],
        MULTICLASS=multiclass,
        INDEX=index,
        HAS_MASK=mask is not None,
        HAS_IGNORE=ignore_index is not None,
        BLOCK_C=block_c,
        BLOCK_N=block_n,
    )
    st = (target.stride(0), 0, target.stride(1)) if index else target.stride()
    si = (instances.stride(0), 0, instances.stride(1)) if multiclass else instances.stride()
    sm = (0, 0) if mask is None else mask.stride()
    strides = (*x.stride(), *st, *si, *sm)
    return block_n, constexprs, strides, 0 if ignore_index is None else int(ignore_index), int(num_keys)


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


def forward(x: Tensor, target: Tensor, instances: Tensor, mask: Tensor | None, meta):
    B, C, N = x.shape
    acc = compute_dtype(x.dtype)
    block_n, constexprs, strides, ignore, K = _config(x, target, instances, mask, meta)
    S = torch.zeros((B, K), dtype=acc, device=x.device)
    count = torch.zeros((B, K), dtype=acc, device=x.device)
    if B * N == 0:
        return x.new_zeros((B, C, 4), dtype=acc), S, count
    programs, per = _programs(-(-N // block_n), B, x.device)
    partials = torch.empty((B, programs, C, 4), dtype=acc, device=x.device)
    m = _mask_u8(mask)
    with launch_context(x.device):
        regions_forward_kernel[(programs, B)](
            x, target, instances, x if m is None else m, partials, S, count, C, N, K, per, *strides, ignore,
            **constexprs,
        )
    return partials.sum(dim=1), S, count


def backward(grad_base: Tensor | None, grad_s: Tensor | None, x: Tensor, target: Tensor, instances: Tensor,
             mask: Tensor | None, meta) -> Tensor:
    B, C, N = x.shape
    acc = compute_dtype(x.dtype)
    grad = torch.empty_like(x)
    if B * N == 0:
        return grad.zero_()
    block_n, constexprs, strides, ignore, K = _config(x, target, instances, mask, meta)
    coef = (torch.zeros((B, C, 2), dtype=acc, device=x.device) if grad_base is None
            else grad_base[..., :2].to(acc).contiguous())
    D = torch.zeros((B, K), dtype=acc, device=x.device) if grad_s is None else grad_s.to(acc).contiguous()
    m = _mask_u8(mask)
    with launch_context(x.device):
        regions_backward_kernel[(-(-N // block_n), B)](
            x, target, instances, x if m is None else m, coef, D, grad, C, N, K, *strides, *grad.stride(), ignore,
            **constexprs,
        )
    return grad


class _RegionsTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, target, instances, mask, meta):
        base, S, count = forward(x, target, instances, mask, meta)
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
        return backward(grad_base, grad_s, x, target, instances, mask, ctx.meta), None, None, None, None


def apply(x: Tensor, target: Tensor, instances: Tensor, mask: Tensor | None, meta):
    """(base, S, n) of :mod:`diceloss.stats.regions`, differentiable with respect to ``x``."""
    return _RegionsTriton.apply(x, target, instances, mask, meta)
