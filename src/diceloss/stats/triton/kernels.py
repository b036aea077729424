"""Triton kernels of the Dice-family statistics and of their backward (launched by :mod:`diceloss.stats.triton`).

Layout: logits ``x`` (B, C, N) with any strides; the target either class indices (B, N) or
probabilities (B, C, N); an optional position mask (B, N) as uint8. A program works on a tile of
``BLOCK_C`` classes x ``BLOCK_N`` positions of one sample; when C is larger than the tile the classes
are walked in chunks of ``BLOCK_C`` (an online log-sum-exp first for the softmax).

Forward (``stats_kernel``): grid (programs over N, B, class chunks). Each program walks
``tiles_per_prog`` consecutive tiles, reads the logits and the target once, and accumulates per class
in registers, in the accumulation dtype ``ACC`` (float32, or float64 for float64 input)::

    k = 0: I = sum m * p * g   (sum m * min(p, g) for the semimetric)     k = 1: P = sum m * p^q
    k = 2: G = sum m * g^q                                               k = 3: M = sum m
    k = 4: E = cross-entropy (softmax) or binary cross-entropy (sigmoid) with smoothed targets
    k = 5: F = focal term

then stores them to ``partials[b, c, program, k]`` (B, C, programs, NUM_STATS), k the column of
``STAT_COLUMNS`` (:mod:`diceloss.stats.types`). The caller sums the programs
in a fixed order, so the statistics repeat bit for bit (no atomics).

Backward (``grad_kernel``): grid (tiles over N, B). It recomputes p from the logits and writes
dL/dx from the (B, C, NUM_STATS) upstream gradient of the statistics ``co`` in one pass::

    u = dL/dp = m * (co_I * dI/dp + co_P * dP/dp)
    softmax:  w_c = p_c * u_c + (CE and focal terms, already multiplied by p_c)
              dL/dx_c = w_c - p_c * sum_c' w_c'
    sigmoid:  dL/dx = u * p * (1 - p) + (BCE and focal terms, differentiated in x directly)
    none:     dL/dx = u + (CE and focal terms, differentiated in p)

The kernels are plain ``triton.jit`` functions. The constants they share with Python (statistic
columns, activation codes, the log clamp) come from :mod:`diceloss.stats.types` as ``tl.constexpr``
globals (Triton reads only constexpr globals inside kernels).
"""

import triton
import triton.language as tl

from .. import types

ACT_SOFTMAX = tl.constexpr(types.ACT_SOFTMAX)
ACT_SIGMOID = tl.constexpr(types.ACT_SIGMOID)
NUM_STATS = tl.constexpr(types.NUM_STATS)
COL_I = tl.constexpr(types.COL_I)
COL_P = tl.constexpr(types.COL_P)
COL_G = tl.constexpr(types.COL_G)
COL_M = tl.constexpr(types.COL_M)
COL_E = tl.constexpr(types.COL_E)
COL_F = tl.constexpr(types.COL_F)
LOG_CLAMP = tl.constexpr(types.LOG_CLAMP)  # as torch.nn.functional.binary_cross_entropy and the reference


# ----------------------------------------------------------------------------------------------
# helpers (elementwise, tile-shaped)


@triton.jit
def _log1p(y):
    # log(1 + y) without losing small y: log(u) * y / (u - 1) with u = 1 + y rounded
    u = 1.0 + y
    d = tl.where(u == 1.0, 1.0, u - 1.0)
    return tl.where(u == 1.0, y, tl.log(u) * (y / d))


@triton.jit
def _pow(base, e):
    # base ** e for base >= 0, e >= 0 with torch's values at 0: 0 ** 0 = 1, 0 ** e = 0
    pos = base > 0
    r = tl.exp(e * tl.log(tl.where(pos, base, 1.0)))
    return tl.where(pos, r, tl.where(e == 0.0, 1.0, 0.0))


@triton.jit
def _pow_or_zero(base, e):
    # base ** e for base > 0, 0 at base <= 0 (e may be negative: the finite limit of the terms it multiplies)
    pos = base > 0
    r = tl.exp(e * tl.log(tl.where(pos, base, 1.0)))
    return tl.where(pos, r, 0.0)


@triton.jit
def _clog(p):
    # log(p) clamped at LOG_CLAMP (torch: log(p).clamp_min(-100)); no -inf, no warning at p = 0
    pos = p > 0
    return tl.where(pos, tl.maximum(tl.log(tl.where(pos, p, 1.0)), LOG_CLAMP), LOG_CLAMP)


@triton.jit
def _dclog(p):
    # derivative of _clog: 1/p where log(p) >= LOG_CLAMP (clamp_min passes the gradient there), else 0
    pos = p > 0
    safe = tl.where(pos, p, 1.0)
    return tl.where(pos & (tl.log(safe) >= LOG_CLAMP), 1.0 / safe, 0.0)


@triton.jit
def _scalar(hi, lo, ACC: tl.constexpr):
    # a float64 scalar passed as two float32 halves (Triton passes Python floats as float32)
    return tl.cast(hi, ACC) + tl.cast(lo, ACC)


@triton.jit
def _load_x(x_ptr, b64, cs, ns, c_ok, n_ok, sxb, sxc, sxn, ACC: tl.constexpr):
    ptrs = x_ptr + b64 * sxb + cs[:, None] * sxc + ns[None, :] * sxn
    return tl.load(ptrs, mask=c_ok[:, None] & n_ok[None, :], other=0.0).to(ACC)


@triton.jit
def _softmax_tile(x, c_ok):
    # softmax over the classes (axis 0) of one tile holding all classes: one exp per element
    xm = tl.where(c_ok[:, None], x, float("-inf"))
    mx = tl.max(xm, axis=0)
    e = tl.exp(xm - mx[None, :])
    s = tl.sum(e, axis=0)
    p = e * (1.0 / s)[None, :]
    logp = tl.where(c_ok[:, None], x - (mx + tl.log(s))[None, :], 0.0)
    return p, logp


@triton.jit
def _row_lse(x_ptr, b64, ns, n_ok, C, sxb, sxc, sxn,
             ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, NUM_CHUNKS: tl.constexpr):
    # online log-sum-exp over all classes, chunk by chunk (Milakov & Gimelshein)
    run_m = tl.full([BLOCK_N], float("-inf"), ACC)
    run_s = tl.zeros([BLOCK_N], ACC)
    for k in range(NUM_CHUNKS):
        cs = k * BLOCK_C + tl.arange(0, BLOCK_C)
        c_ok = cs < C
        x = _load_x(x_ptr, b64, cs, ns, c_ok, n_ok, sxb, sxc, sxn, ACC)
        xm = tl.where(c_ok[:, None], x, float("-inf"))
        new_m = tl.maximum(run_m, tl.max(xm, axis=0))
        run_s = run_s * tl.exp(run_m - new_m) + tl.sum(tl.exp(xm - new_m[None, :]), axis=0)
        run_m = new_m
    return run_m + tl.log(run_s)


@triton.jit
def _probs(x, c_ok, lse, ACT: tl.constexpr):
    # p and, for the softmax, log p; padded classes get p = 0 and log p = 0 (they are masked out)
    if ACT == ACT_SOFTMAX:
        logp = tl.where(c_ok[:, None], x - lse[None, :], 0.0)
        p = tl.where(c_ok[:, None], tl.exp(logp), 0.0)
    elif ACT == ACT_SIGMOID:
        e = tl.exp(-tl.abs(x))
        inv = 1.0 / (1.0 + e)
        p = tl.where(x >= 0, inv, e * inv)
        logp = p
    else:
        p = x
        logp = x
    return p, logp


@triton.jit
def _positions(t_ptr, m_ptr, b64, ns, n_ok, stb, stn, smb, smn, ignore_index,
               INDEX: tl.constexpr, HAS_MASK: tl.constexpr, HAS_IGNORE: tl.constexpr):
    # validity per position (bounds, mask, ignored class index) and the class indices (or a dummy)
    valid = n_ok
    if HAS_MASK:
        mv = tl.load(m_ptr + b64 * smb + ns * smn, mask=n_ok, other=0)
        valid = valid & (mv != 0)
    if INDEX:
        t = tl.load(t_ptr + b64 * stb + ns * stn, mask=n_ok, other=0)
        if HAS_IGNORE:
            valid = valid & (t != ignore_index)
    else:
        t = ns
    return valid, t


@triton.jit
def _target(t_ptr, b64, cs, ns, c_ok, valid, t, stb, stc, stn, ignore_index,
            ACC: tl.constexpr, INDEX: tl.constexpr, HAS_IGNORE: tl.constexpr):
    # the target probabilities g of a tile and the element mask (position valid, class real, not ignored)
    inside = c_ok[:, None] & valid[None, :]
    if INDEX:
        g = (cs[:, None] == t[None, :]).to(ACC)
        mel = inside
    else:
        ptrs = t_ptr + b64 * stb + cs[:, None] * stc + ns[None, :] * stn
        g = tl.load(ptrs, mask=inside, other=0.0).to(ACC)
        mel = inside
        if HAS_IGNORE:
            keep = g != ignore_index
            g = tl.where(keep, g, 0.0)
            mel = inside & keep
    return g, mel


# ----------------------------------------------------------------------------------------------
# forward: statistics


@triton.jit
def stats_kernel(
    x_ptr, t_ptr, m_ptr, out_ptr,
    C, N, tiles_per_prog,
    sxb, sxc, sxn, stb, stc, stn, smb, smn,
    ignore_index,
    keep_hi, keep_lo, share_hi, share_lo, gamma_hi, gamma_lo,
    ACC: tl.constexpr, ACT: tl.constexpr, MULTICLASS: tl.constexpr, INDEX: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_IGNORE: tl.constexpr, SQUARED: tl.constexpr, INTER_MIN: tl.constexpr,
    CE: tl.constexpr, FOCAL: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, NUM_CHUNKS: tl.constexpr, IDX64: tl.constexpr,
):
    pid = tl.program_id(0)
    b64 = tl.program_id(1).to(tl.int64)
    chunk = tl.program_id(2)
    nprog = tl.num_programs(0)
    cs = chunk * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = cs < C
    if IDX64:
        cs = cs.to(tl.int64)

    keep = _scalar(keep_hi, keep_lo, ACC)     # 1 - label_smoothing
    share = _scalar(share_hi, share_lo, ACC)  # label_smoothing / C (softmax) or / 2 (sigmoid)
    gamma = _scalar(gamma_hi, gamma_lo, ACC)

    acc_i = tl.zeros([BLOCK_C], ACC)
    acc_p = tl.zeros([BLOCK_C], ACC)
    acc_g = tl.zeros([BLOCK_C], ACC)
    acc_m = tl.zeros([BLOCK_C], ACC)
    acc_e = tl.zeros([BLOCK_C], ACC)
    acc_f = tl.zeros([BLOCK_C], ACC)

    for i in range(tiles_per_prog):
        ns = (pid * tiles_per_prog + i) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = ns < N
        if IDX64:
            ns = ns.to(tl.int64)
        valid, t = _positions(t_ptr, m_ptr, b64, ns, n_ok, stb, stn, smb, smn, ignore_index,
                              INDEX, HAS_MASK, HAS_IGNORE)
        if ACT == ACT_SOFTMAX and NUM_CHUNKS == 1:
            x = _load_x(x_ptr, b64, cs, ns, c_ok, n_ok, sxb, sxc, sxn, ACC)
            p, logp = _softmax_tile(x, c_ok)
        else:
            if ACT == ACT_SOFTMAX:
                lse = _row_lse(x_ptr, b64, ns, n_ok, C, sxb, sxc, sxn, ACC, BLOCK_C, BLOCK_N, NUM_CHUNKS)
            else:
                lse = tl.zeros([BLOCK_N], ACC)
            x = _load_x(x_ptr, b64, cs, ns, c_ok, n_ok, sxb, sxc, sxn, ACC)
            p, logp = _probs(x, c_ok, lse, ACT)
        g, mel = _target(t_ptr, b64, cs, ns, c_ok, valid, t, stb, stc, stn, ignore_index,
                         ACC, INDEX, HAS_IGNORE)

        if SQUARED:
            pq = p * p
            gq = g * g
        else:
            pq = p
            gq = g
        if INTER_MIN:
            inter = tl.minimum(p, g)
        else:
            inter = p * g
        acc_i += tl.sum(tl.where(mel, inter, 0.0), axis=1)
        acc_p += tl.sum(tl.where(mel, pq, 0.0), axis=1)
        acc_g += tl.sum(tl.where(mel, gq, 0.0), axis=1)
        acc_m += tl.sum(tl.where(mel, 1.0, 0.0).to(ACC), axis=1)

        if MULTICLASS:
            if ACT == ACT_SOFTMAX:
                nl = -logp
            else:
                nl = -_clog(p)
            # a weight of 0 times -log p = inf (a -inf logit masks a class) is 0, as in F.cross_entropy
            if CE:
                gs = g * keep + share
                acc_e += tl.sum(tl.where(mel & (gs > 0), gs * nl, 0.0), axis=1)
            if FOCAL:
                acc_f += tl.sum(tl.where(mel & (g > 0), g * _pow(1.0 - p, gamma) * nl, 0.0), axis=1)
        else:
            if ACT == ACT_SIGMOID:
                sp = _log1p(tl.exp(-tl.abs(x)))  # log(1 + exp(-|x|))
                if CE:
                    gs = g * keep + share
                    bce = tl.maximum(x, 0.0) - x * gs + sp
                    acc_e += tl.sum(tl.where(mel, bce, 0.0), axis=1)
                if FOCAL:
                    # log sigmoid(x), log sigmoid(-x); 0 where their weight is 0 (they are -inf at infinite logits)
                    lp = tl.where(g > 0, tl.minimum(x, 0.0) - sp, 0.0)
                    lnp = tl.where(g < 1, tl.minimum(-x, 0.0) - sp, 0.0)
                    fl = -(g * _pow(1.0 - p, gamma) * lp + (1.0 - g) * _pow(p, gamma) * lnp)
                    acc_f += tl.sum(tl.where(mel, fl, 0.0), axis=1)
            else:
                if CE:
                    gs = g * keep + share
                    bce = -(gs * _clog(p) + (1.0 - gs) * _clog(1.0 - p))
                    acc_e += tl.sum(tl.where(mel, bce, 0.0), axis=1)
                if FOCAL:
                    fl = -(g * _pow(1.0 - p, gamma) * _clog(p) + (1.0 - g) * _pow(p, gamma) * _clog(1.0 - p))
                    acc_f += tl.sum(tl.where(mel, fl, 0.0), axis=1)

    base = ((b64 * C + cs) * nprog + pid) * NUM_STATS
    tl.store(out_ptr + base + COL_I, acc_i, mask=c_ok)
    tl.store(out_ptr + base + COL_P, acc_p, mask=c_ok)
    tl.store(out_ptr + base + COL_G, acc_g, mask=c_ok)
    tl.store(out_ptr + base + COL_M, acc_m, mask=c_ok)
    tl.store(out_ptr + base + COL_E, acc_e, mask=c_ok)
    tl.store(out_ptr + base + COL_F, acc_f, mask=c_ok)


# ----------------------------------------------------------------------------------------------
# backward: dL/dx


@triton.jit
def _chunk_grad(x, p, logp, g, mel, co_ptr, b64, cs, c_ok, C, keep, share, gamma,
                ACC: tl.constexpr, ACT: tl.constexpr, MULTICLASS: tl.constexpr, SQUARED: tl.constexpr,
                INTER_MIN: tl.constexpr, CE: tl.constexpr, FOCAL: tl.constexpr):
    # softmax: w with dL/dx = w - p * sum_c w; otherwise dL/dx itself (masked)
    co = co_ptr + (b64 * C + cs) * NUM_STATS
    a_i = tl.load(co + COL_I, mask=c_ok, other=0.0).to(ACC)[:, None]
    a_p = tl.load(co + COL_P, mask=c_ok, other=0.0).to(ACC)[:, None]
    if INTER_MIN:
        # d min(p, g)/dp: 1 below g, 1/2 at a tie (as torch.minimum), 0 above
        d_i = tl.where(p < g, 1.0, tl.where(p == g, 0.5, 0.0))
    else:
        d_i = g
    if SQUARED:
        u = a_i * d_i + a_p * (2.0 * p)
    else:
        u = a_i * d_i + a_p
    if CE:
        a_e = tl.load(co + COL_E, mask=c_ok, other=0.0).to(ACC)[:, None]
    if FOCAL:
        a_f = tl.load(co + COL_F, mask=c_ok, other=0.0).to(ACC)[:, None]

    if ACT == ACT_SOFTMAX:
        w = p * u
        if CE:
            w += -a_e * (g * keep + share)
        if FOCAL:
            omp = 1.0 - p
            # d/dx_k of g_c (1 - p_c)^gamma (-log p_c)
            #   = g_c [gamma (1 - p_c)^(gamma - 1) p_c log p_c - (1 - p_c)^gamma] (delta_ck - p_k)
            t1 = gamma * _pow_or_zero(omp, gamma - 1.0) * tl.where(p > 0, p * logp, 0.0)  # p log p -> 0 at p = 0
            w += a_f * g * (t1 - _pow(omp, gamma))
        out = tl.where(mel, w, 0.0)
    elif ACT == ACT_SIGMOID:
        omp = 1.0 - p
        d = u * p * omp
        if CE:
            d += a_e * (p - (g * keep + share))
        if FOCAL:
            sp = _log1p(tl.exp(-tl.abs(x)))
            lp = tl.minimum(x, 0.0) - sp
            lnp = tl.minimum(-x, 0.0) - sp
            # d/dx of -(g (1-p)^gamma log p + (1-g) p^gamma log(1-p)), with dp/dx = p (1 - p)
            # p log p and (1 - p) log(1 - p) are 0 where p (or 1 - p) is 0, also at infinite logits
            fl_x = (g * _pow(omp, gamma) * (omp - gamma * tl.where(p > 0, p * lp, 0.0))
                    + (1.0 - g) * _pow(p, gamma) * (gamma * tl.where(omp > 0, omp * lnp, 0.0) - p))
            d += -a_f * fl_x
        out = tl.where(mel, d, 0.0)
    else:
        # unused terms are dropped by the compiler
        d = u
        omp = 1.0 - p
        dl_p = _dclog(p)
        dl_np = _dclog(omp)
        if MULTICLASS:
            if CE:
                d += -a_e * (g * keep + share) * dl_p
            if FOCAL:
                t1 = gamma * _pow_or_zero(omp, gamma - 1.0) * _clog(p)
                d += a_f * g * (t1 - _pow(omp, gamma) * dl_p)
        else:
            if CE:
                gs = g * keep + share
                d += a_e * (-(gs * dl_p) + (1.0 - gs) * dl_np)
            if FOCAL:
                pos_t = -gamma * _pow_or_zero(omp, gamma - 1.0) * _clog(p) + _pow(omp, gamma) * dl_p
                neg_t = gamma * _pow_or_zero(p, gamma - 1.0) * _clog(omp) - _pow(p, gamma) * dl_np
                d += -a_f * (g * pos_t + (1.0 - g) * neg_t)
        out = tl.where(mel, d, 0.0)
    return out


@triton.jit
def grad_kernel(
    x_ptr, t_ptr, m_ptr, co_ptr, dx_ptr,
    C, N,
    sxb, sxc, sxn, stb, stc, stn, smb, smn, sdb, sdc, sdn,
    ignore_index,
    keep_hi, keep_lo, share_hi, share_lo, gamma_hi, gamma_lo,
    ACC: tl.constexpr, ACT: tl.constexpr, MULTICLASS: tl.constexpr, INDEX: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_IGNORE: tl.constexpr, SQUARED: tl.constexpr, INTER_MIN: tl.constexpr,
    CE: tl.constexpr, FOCAL: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, NUM_CHUNKS: tl.constexpr, IDX64: tl.constexpr,
):
    pid = tl.program_id(0)
    b64 = tl.program_id(1).to(tl.int64)
    ns = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = ns < N
    if IDX64:
        ns = ns.to(tl.int64)
    keep = _scalar(keep_hi, keep_lo, ACC)
    share = _scalar(share_hi, share_lo, ACC)
    gamma = _scalar(gamma_hi, gamma_lo, ACC)
    valid, t = _positions(t_ptr, m_ptr, b64, ns, n_ok, stb, stn, smb, smn, ignore_index,
                          INDEX, HAS_MASK, HAS_IGNORE)

    if NUM_CHUNKS == 1:
        # everything in registers: one read of the logits and the target, one write of the gradient
        cs = tl.arange(0, BLOCK_C)
        c_ok = cs < C
        if IDX64:
            cs = cs.to(tl.int64)
        x = _load_x(x_ptr, b64, cs, ns, c_ok, n_ok, sxb, sxc, sxn, ACC)
        if ACT == ACT_SOFTMAX:
            p, logp = _softmax_tile(x, c_ok)
        else:
            p, logp = _probs(x, c_ok, tl.zeros([BLOCK_N], ACC), ACT)
        g, mel = _target(t_ptr, b64, cs, ns, c_ok, valid, t, stb, stc, stn, ignore_index,
                         ACC, INDEX, HAS_IGNORE)
        out = _chunk_grad(x, p, logp, g, mel, co_ptr, b64, cs, c_ok, C, keep, share, gamma,
                          ACC, ACT, MULTICLASS, SQUARED, INTER_MIN, CE, FOCAL)
        if ACT == ACT_SOFTMAX:
            out = out - p * tl.sum(out, axis=0)[None, :]
        ptrs = dx_ptr + b64 * sdb + cs[:, None] * sdc + ns[None, :] * sdn
        tl.store(ptrs, out, mask=c_ok[:, None] & n_ok[None, :])
    else:
        # classes in chunks: log-sum-exp, then sum_c w_c, then the gradient (softmax); one pass otherwise
        if ACT == ACT_SOFTMAX:
            lse = _row_lse(x_ptr, b64, ns, n_ok, C, sxb, sxc, sxn, ACC, BLOCK_C, BLOCK_N, NUM_CHUNKS)
            wsum = tl.zeros([BLOCK_N], ACC)
            for k in range(NUM_CHUNKS):
                cs1 = k * BLOCK_C + tl.arange(0, BLOCK_C)
                c_ok1 = cs1 < C
                if IDX64:
                    cs1 = cs1.to(tl.int64)
                x1 = _load_x(x_ptr, b64, cs1, ns, c_ok1, n_ok, sxb, sxc, sxn, ACC)
                p1, logp1 = _probs(x1, c_ok1, lse, ACT)
                g1, mel1 = _target(t_ptr, b64, cs1, ns, c_ok1, valid, t, stb, stc, stn, ignore_index,
                                   ACC, INDEX, HAS_IGNORE)
                w1 = _chunk_grad(x1, p1, logp1, g1, mel1, co_ptr, b64, cs1, c_ok1, C, keep, share, gamma,
                                 ACC, ACT, MULTICLASS, SQUARED, INTER_MIN, CE, FOCAL)
                wsum += tl.sum(w1, axis=0)
        else:
            lse = tl.zeros([BLOCK_N], ACC)
            wsum = tl.zeros([BLOCK_N], ACC)
        for k in range(NUM_CHUNKS):
            cs = k * BLOCK_C + tl.arange(0, BLOCK_C)
            c_ok = cs < C
            if IDX64:
                cs = cs.to(tl.int64)
            x = _load_x(x_ptr, b64, cs, ns, c_ok, n_ok, sxb, sxc, sxn, ACC)
            p, logp = _probs(x, c_ok, lse, ACT)
            g, mel = _target(t_ptr, b64, cs, ns, c_ok, valid, t, stb, stc, stn, ignore_index,
                             ACC, INDEX, HAS_IGNORE)
            out = _chunk_grad(x, p, logp, g, mel, co_ptr, b64, cs, c_ok, C, keep, share, gamma,
                              ACC, ACT, MULTICLASS, SQUARED, INTER_MIN, CE, FOCAL)
            if ACT == ACT_SOFTMAX:
                out = out - p * wsum[None, :]
            ptrs = dx_ptr + b64 * sdb + cs[:, None] * sdc + ns[None, :] * sdn
            tl.store(ptrs, out, mask=c_ok[:, None] & n_ok[None, :])
