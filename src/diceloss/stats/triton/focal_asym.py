"""Triton kernels of the asymmetric focal kind (:mod:`diceloss.stats.focal_asym`) and their launcher.

Forward (``focal_asym_forward_kernel``), grid (programs over N, B): each program walks ``tiles_per_prog`` tiles of
``BLOCK_C`` classes (all of them) x ``BLOCK_N`` positions of one sample and accumulates, per class, in
registers: I = sum m p g, P = sum m p, G = sum m g, M = sum m and the asymmetric focal sum A (multiclass: the
background ``-(1 - delta) g (1 - p)^gamma log p``, the other classes ``-delta g log p``; sigmoid channels:
``-delta g log p - (1 - delta) (1 - g) p^gamma log(1 - p)``). One partial per program,
``partials[b, program, c, 0:5]``, summed afterwards in a fixed order (deterministic). Backward
(``focal_asym_backward_kernel``), grid (tiles, B): recomputes p and writes dL/dx from the (B, C, 5) gradients of
the sums, with the closed forms of :func:`diceloss.stats.focal_asym._chunk_grad`.

Every ``@triton.jit`` helper the kernels use is in this file, so that the tests can run an interpreted copy of
it (``tests/_triton_interpreter.py``).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from .._kinds import launch_context
from ..types import LOG_CLAMP as _LOG_CLAMP
from ..types import compute_dtype

ACT_SOFTMAX = tl.constexpr(0)
ACT_SIGMOID = tl.constexpr(1)
LOG_CLAMP = tl.constexpr(_LOG_CLAMP)
# the reference's clamp test for the gradient of log p: p > exp(-100)
LOG_CLAMP_P = tl.constexpr(math.exp(_LOG_CLAMP))
_ACTIVATIONS = {"softmax": 0, "sigmoid": 1, "none": 2}

TILE_ELEMS = 4096
BLOCK_N = 256
PROGRAMS_PER_SM = 4
INTERPRETER_PROGRAMS = 2


@triton.jit
def _log1p(y):
    u = 1.0 + y
    d = tl.where(u == 1.0, 1.0, u - 1.0)
    return tl.where(u == 1.0, y, tl.log(u) * (y / d))


@triton.jit
def _fpow(base, e):
    # base ** e with the reference's convention: 1 for e = 0, 0 for base <= 0
    pos = base > 0
    r = tl.exp(e * tl.log(tl.where(pos, base, 1.0)))
    return tl.where(e == 0.0, 1.0, tl.where(pos, r, 0.0))


@triton.jit
def _dpow(base, e):
    # d base^e / d base: 0 for e = 0 and for base <= 0 (a zero, not infinite, slope at a saturated prediction)
    pos = base > 0
    r = e * tl.exp((e - 1.0) * tl.log(tl.where(pos, base, 1.0)))
    return tl.where(e == 0.0, 0.0, tl.where(pos, r, 0.0))


@triton.jit
def _clog(p):
    pos = p > LOG_CLAMP_P
    return tl.where(pos, tl.log(tl.where(pos, p, 1.0)), LOG_CLAMP)


@triton.jit
def _dlog(p):
    pos = p > LOG_CLAMP_P
    return tl.where(pos, 1.0 / tl.where(pos, p, 1.0), 0.0)


@triton.jit
def _tile(x_ptr, t_ptr, m_ptr, b64, cs, ns, c_ok, n_ok, sxb, sxc, sxn, stb, stc, stn, smb, smn, ignore_index,
          ACC: tl.constexpr, ACT: tl.constexpr, MULTICLASS: tl.constexpr, INDEX: tl.constexpr,
          HAS_MASK: tl.constexpr, HAS_IGNORE: tl.constexpr):
    # x, p, log p (softmax), log(1 - p) (sigmoid), g and the element mask of one tile
    ptrs = x_ptr + b64 * sxb + cs[:, None] * sxc + ns[None, :] * sxn
    inside = c_ok[:, None] & n_ok[None, :]
    x = tl.load(ptrs, mask=inside, other=0.0).to(ACC)
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
    else:
        mel = c_ok[:, None] & valid[None, :]
        g = tl.load(t_ptr + b64 * stb + cs[:, None] * stc + ns[None, :] * stn, mask=mel, other=0.0).to(ACC)
        if HAS_IGNORE:
            keep = g != ignore_index
            g = tl.where(keep, g, 0.0)
            mel = mel & keep
    if ACT == ACT_SOFTMAX:
        xm = tl.where(c_ok[:, None], x, float("-inf"))
        mx = tl.max(xm, axis=0)
        e = tl.exp(xm - mx[None, :])
        s = tl.sum(e, axis=0)
        logp = tl.where(c_ok[:, None], x - (mx + tl.log(s))[None, :], 0.0)
        p = tl.where(c_ok[:, None], tl.exp(logp), 0.0)
        logq = logp
    elif ACT == ACT_SIGMOID:
        ex = tl.exp(-tl.abs(x))
        inv = 1.0 / (1.0 + ex)
        p = tl.where(x >= 0, inv, ex * inv)
        soft = _log1p(ex)
        logp = tl.minimum(x, 0.0) - soft  # logsigmoid(x)
        logq = tl.minimum(-x, 0.0) - soft  # logsigmoid(-x)
    else:
        p = x
        if MULTICLASS:
            logp = _clog(p)
            logq = logp
        else:
            logp = _clog(p)
            logq = _clog(1.0 - p)
    mel_f = mel.to(ACC)
    return x, p, logp, logq, g, mel_f


@triton.jit
def _focal_term(p, logp, logq, g, cs, delta, gamma, MULTICLASS: tl.constexpr):
    if MULTICLASS:
        lw = tl.where(g > 0, logp, 0.0)
        bg = -(1.0 - delta) * _fpow(1.0 - p, gamma) * g * lw
        a = tl.where(cs[:, None] == 0, bg, -delta * g * lw)
    else:
        lp = tl.where(g > 0, logp, 0.0)
        lq = tl.where(1.0 - g > 0, logq, 0.0)
        a = -delta * g * lp - (1.0 - delta) * (1.0 - g) * _fpow(p, gamma) * lq
    return a


@triton.jit
def _scalar(hi, lo, ACC: tl.constexpr):
    return tl.cast(hi, ACC) + tl.cast(lo, ACC)


@triton.jit
def focal_asym_forward_kernel(
    x_ptr, t_ptr, m_ptr, out_ptr,
    C, N, tiles_per_prog,
    sxb, sxc, sxn, stb, stc, stn, smb, smn,
    ignore_index, delta_hi, delta_lo, gamma_hi, gamma_lo,
    ACC: tl.constexpr, ACT: tl.constexpr, MULTICLASS: tl.constexpr, INDEX: tl.constexpr, HAS_MASK: tl.constexpr,
    HAS_IGNORE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
):
    prog = tl.program_id(0)
    b = tl.program_id(1)
    b64 = b.to(tl.int64)
    programs = tl.num_programs(0)
    delta = _scalar(delta_hi, delta_lo, ACC)
    gamma = _scalar(gamma_hi, gamma_lo, ACC)
    cs = tl.arange(0, BLOCK_C)
    c_ok = cs < C
    acc_i = tl.zeros([BLOCK_C], ACC)
    acc_p = tl.zeros([BLOCK_C], ACC)
    acc_g = tl.zeros([BLOCK_C], ACC)
    acc_m = tl.zeros([BLOCK_C], ACC)
    acc_a = tl.zeros([BLOCK_C], ACC)
    for i in range(tiles_per_prog):
        ns = (prog * tiles_per_prog + i) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = ns < N
        x, p, logp, logq, g, m = _tile(x_ptr, t_ptr, m_ptr, b64, cs, ns, c_ok, n_ok, sxb, sxc, sxn, stb, stc, stn,
                                       smb, smn, ignore_index, ACC, ACT, MULTICLASS, INDEX, HAS_MASK, HAS_IGNORE)
        a = _focal_term(p, logp, logq, g, cs, delta, gamma, MULTICLASS)
        acc_i += tl.sum(m * p * g, axis=1)
        acc_p += tl.sum(m * p, axis=1)
        acc_g += tl.sum(m * g, axis=1)
        acc_m += tl.sum(m, axis=1)
        acc_a += tl.sum(m * a, axis=1)
    base = out_ptr + ((b64 * programs + prog) * C + cs) * 5
    tl.store(base, acc_i, mask=c_ok)
    tl.store(base + 1, acc_p, mask=c_ok)
    tl.store(base + 2, acc_g, mask=c_ok)
    tl.store(base + 3, acc_m, mask=c_ok)
    tl.store(base + 4, acc_a, mask=c_ok)


@triton.jit
def focal_asym_backward_kernel(
    x_ptr, t_ptr, m_ptr, co_ptr, gx_ptr,
    C, N,
    sxb, sxc, sxn, stb, stc, stn, smb, smn, sgb, sgc, sgn,
    ignore_index, delta_hi, delta_lo, gamma_hi, gamma_lo,
    ACC: tl.constexpr, ACT: tl.constexpr, MULTICLASS: tl.constexpr, INDEX: tl.constexpr, HAS_MASK: tl.constexpr,
    HAS_IGNORE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
):
    tile = tl.program_id(0)
    b = tl.program_id(1)
    b64 = b.to(tl.int64)
    delta = _scalar(delta_hi, delta_lo, ACC)
    gamma = _scalar(gamma_hi, gamma_lo, ACC)
    cs = tl.arange(0, BLOCK_C)
    c_ok = cs < C
    ns = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = ns < N
    x, p, logp, logq, g, m = _tile(x_ptr, t_ptr, m_ptr, b64, cs, ns, c_ok, n_ok, sxb, sxc, sxn, stb, stc, stn,
                                   smb, smn, ignore_index, ACC, ACT, MULTICLASS, INDEX, HAS_MASK, HAS_IGNORE)
    co = co_ptr + (b64 * C + cs) * 5
    k_i = tl.load(co, mask=c_ok, other=0.0)
    k_p = tl.load(co + 1, mask=c_ok, other=0.0)
    k_a = tl.load(co + 4, mask=c_ok, other=0.0)
    u = m * (k_i[:, None] * g + k_p[:, None])
    h = m * k_a[:, None]
    q = 1.0 - p
    if MULTICLASS:
        lw = tl.where(g > 0, logp, 0.0)
        is_bg = cs[:, None] == 0
        if ACT == ACT_SOFTMAX:
            # d a / d log p
            bg = -(1.0 - delta) * g * (_fpow(q, gamma) - p * _dpow(q, gamma) * lw)
            v = p * u + h * tl.where(is_bg, bg, -delta * g)
            dx = v - p * tl.sum(v, axis=0)[None, :]
        else:
            bg = -(1.0 - delta) * g * (-_dpow(q, gamma) * lw + _fpow(q, gamma) * _dlog(p))
            dx = u + h * tl.where(is_bg, bg, -delta * g * _dlog(p))
    else:
        lq = tl.where(1.0 - g > 0, logq, 0.0)
        if ACT == ACT_SIGMOID:
            da = -delta * g * q + (1.0 - delta) * (1.0 - g) * (_fpow(p, gamma) * p - _dpow(p, gamma) * p * q * lq)
            dx = u * (p * q) + h * da
        else:
            da = -delta * g * _dlog(p) - (1.0 - delta) * (1.0 - g) * (_dpow(p, gamma) * lq - _fpow(p, gamma) * _dlog(q))
            dx = u + h * da
    ptrs = gx_ptr + b64 * sgb + cs[:, None] * sgc + ns[None, :] * sgn
    tl.store(ptrs, dx.to(gx_ptr.dtype.element_ty), mask=c_ok[:, None] & n_ok[None, :])


# ----------------------------------------------------------------------------------------------
# launcher


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _split(value: float) -> tuple[float, float]:
    # a float64 scalar as two float32 halves (Triton passes Python floats as float32)
    hi = float(torch.tensor(value, dtype=torch.float32))
    return hi, float(value - hi)


def _config(x: Tensor, target: Tensor, mask: Tensor | None, meta):
    activation, mode, ignore_index, delta, gamma = meta
    acc = compute_dtype(x.dtype)
    C = x.shape[1]
    block_c = max(2, _next_pow2(C))
    block_n = max(16, min(BLOCK_N, _next_pow2(max(1, TILE_ELEMS // block_c))))
    index = not target.is_floating_point()
    constexprs = dict(
        ACC=tl.float64 if acc == torch.float64 else tl.float32,
        ACT=_ACTIVATIONS[activation],
        MULTICLASS=mode == "multiclass",
        INDEX=index,
        HAS_MASK=mask is not None,
        HAS_IGNORE=ignore_index is not None,
        BLOCK_C=block_c,
        BLOCK_N=block_n,
    )
    st = (target.stride(0), 0, target.stride(1)) if index else target.stride()
    sm = (0, 0) if mask is None else mask.stride()
    scalars = (0 if ignore_index is None else int(ignore_index), *_split(delta), *_split(gamma))
    return block_n, constexprs, (*x.stride(), *st, *sm), scalars


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


def forward(x: Tensor, target: Tensor, mask: Tensor | None, meta) -> Tensor:
    B, C, N = x.shape
    acc = compute_dtype(x.dtype)
    if B * N == 0:
        return x.new_zeros((B, C, 5), dtype=acc)
    block_n, constexprs, strides, scalars = _config(x, target, mask, meta)
    programs, per = _programs(-(-N // block_n), B, x.device)
    partials = torch.empty((B, programs, C, 5), dtype=acc, device=x.device)
    m = _mask_u8(mask)
    with launch_context(x.device):
        focal_asym_forward_kernel[(programs, B)](
            x, target, x if m is None else m, partials, C, N, per, *strides, *scalars, **constexprs
        )
    return partials.sum(dim=1)


def backward(coef: Tensor, x: Tensor, target: Tensor, mask: Tensor | None, meta) -> Tensor:
    B, C, N = x.shape
    grad = torch.empty_like(x)
    if B * N == 0:
        return grad.zero_()
    block_n, constexprs, strides, scalars = _config(x, target, mask, meta)
    coef = coef.to(compute_dtype(x.dtype)).contiguous()
    m = _mask_u8(mask)
    with launch_context(x.device):
        focal_asym_backward_kernel[(-(-N // block_n), B)](
            x, target, x if m is None else m, coef, grad, C, N, *strides, *grad.stride(), *scalars,
            **constexprs,
        )
    return grad


class _FocalAsymTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, target, mask, meta):
        out = forward(x, target, mask, meta)
        ctx.save_for_backward(x, target, mask)
        ctx.meta = meta
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, target, mask = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        return backward(grad, x, target, mask, ctx.meta), None, None, None


def apply(x: Tensor, target: Tensor, mask: Tensor | None, meta) -> Tensor:
    """The (B, C, 5) sums of :mod:`diceloss.stats.focal_asym`, differentiable with respect to ``x``."""
    return _FocalAsymTriton.apply(x, target, mask, meta)
