"""An independent NumPy oracle for every diceloss loss, written from the formulas with plain loops.

It shares no code with diceloss (NumPy and ``math`` only), so an agreement to 1e-10 with the library's
reference backend checks both. ``tests/test_reference.py`` compares them over its option grid.

The formulas, per (group j, kept class k), with I, P, G the masked sums of p g (or min(p, g) with
``soft_label``), p^q and g^q (q = 2 when ``squared``), summed over the batch with ``batch_dice``:

* dice        1 - D,  D = (2 I + s_nr) / (P + G + s_dr);  with ``log``: -log D, continued below
              D = 1e-7 by its tangent line
* jaccard     1 - (I + s_nr) / (P + G - I + s_dr)
* tversky     max(1 - T, 0) ** exponent,  T = (I + s_nr) / (I + alpha (P - I) + beta (G - I) + s_dr)
* gdl         1 - (2 sum_k w_k I_k + s_nr) / (sum_k w_k (P_k + G_k) + s_dr), w_k = 1/G_k^2 (square),
              1/G_k (simple) or 1 (uniform); an absent class takes the largest finite weight of its group,
              a group without a present class uniform weights
* dice_ce     lambda_dice * dice + lambda_ce * CE (softmax CE for multiclass, BCE otherwise; label smoothing;
              the class-weighted mean of ``F.cross_entropy``)
* dice_focal  lambda_dice * dice + lambda_focal * focal (softmax or sigmoid focal term with ``gamma``)

Class weights multiply the per-class terms and the mean is a weighted mean; ``absent="exclude"`` gives
absent classes weight 0 (a group without a present class contributes 0 and is still counted).
"""

from __future__ import annotations

import math

import numpy as np

LOG_FLOOR = 1e-7


def _softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def oracle(
    kind,
    x,
    t,
    mask=None,
    *,
    mode="multiclass",
    from_logits=True,
    include_background=True,
    weight=None,
    ignore_index=None,
    batch_dice=False,
    squared=False,
    log=False,
    smooth_nr=1e-5,
    smooth_dr=1e-5,
    absent="include",
    soft_label=False,
    reduction="mean",
    alpha=0.5,
    beta=0.5,
    exponent=1.0,
    weighting="square",
    lambda_dice=1.0,
    lambda_ce=1.0,
    label_smoothing=0.0,
    gamma=2.0,
    lambda_focal=1.0,
):
    """The loss ``kind`` (a registry name) straight from the formulas; x (B, C, N), t (B, N) indices or (B, C, N)."""
    x = np.asarray(x, dtype=np.float64)
    B, C, N = x.shape
    if from_logits:
        p = _softmax(x) if mode == "multiclass" else _sigmoid(x)
    else:
        p = x.copy()
    t = np.asarray(t)
    m = np.ones((B, C, N))
    if mask is not None:
        m = m * (np.asarray(mask) != 0)[:, None, :]
    if mode == "multiclass" and t.ndim == 2:
        g = np.zeros((B, C, N))
        for b in range(B):
            for n in range(N):
                if ignore_index is not None and t[b, n] == ignore_index:
                    m[b, :, n] = 0
                else:
                    g[b, t[b, n], n] = 1
    else:
        g = np.asarray(t, dtype=np.float64).copy()
        if ignore_index is not None:
            if mode == "multiclass":
                for b in range(B):
                    for n in range(N):
                        if g[b, ignore_index, n] >= 0.5:
                            m[b, :, n] = 0
            else:
                bad = g == ignore_index
                m = m * ~bad
                g[bad] = 0
    q = 2 if squared else 1
    mn = np.minimum(p, g) if (soft_label and not squared) else p * g
    I = (m * mn).sum(-1)
    P = (m * p**q).sum(-1)
    G = (m * g**q).sum(-1)
    if batch_dice:
        I, P, G = I.sum(0, keepdims=True), P.sum(0, keepdims=True), G.sum(0, keepdims=True)
    kept = list(range(C))
    if mode != "binary":
        if not include_background:
            kept.remove(0)
        if mode == "multiclass" and ignore_index is not None and ignore_index in kept:
            kept.remove(ignore_index)
    I, P, G = I[:, kept], P[:, kept], G[:, kept]
    nG, K = I.shape

    if kind == "gdl":
        out = np.zeros(nG)
        for j in range(nG):
            if weighting == "uniform":
                w = np.ones(K)
            else:
                w = np.array(
                    [
                        (1 / G[j, k] ** 2 if weighting == "square" else 1 / G[j, k])
                        if G[j, k] > 0
                        else np.nan
                        for k in range(K)
                    ]
                )
                if np.all(np.isnan(w)):
                    w = np.ones(K)
                else:
                    w[np.isnan(w)] = np.nanmax(w)
            out[j] = 1 - (2 * (w * I[j]).sum() + smooth_nr) / ((w * (P[j] + G[j])).sum() + smooth_dr)
        if reduction == "none":
            return out[0] if batch_dice else out
        return out.sum() if reduction == "sum" else out.mean()

    if kind in ("dice", "dice_ce", "dice_focal"):
        score = (2 * I + smooth_nr) / (P + G + smooth_dr)
        if log:  # -log D, continued below D = 1e-7 by its tangent line
            per = np.where(
                score >= LOG_FLOOR,
                -np.log(np.maximum(score, LOG_FLOOR)),
                (LOG_FLOOR - score) / LOG_FLOOR - math.log(LOG_FLOOR),
            )
        else:
            per = 1 - score
    elif kind == "jaccard":
        per = 1 - (I + smooth_nr) / (P + G - I + smooth_dr)
    elif kind == "tversky":
        T = (I + smooth_nr) / (I + alpha * (P - I) + beta * (G - I) + smooth_dr)
        per = np.maximum(1 - T, 0) ** exponent
    else:
        raise ValueError(kind)
    wk = np.ones(K) if weight is None else np.asarray(weight, dtype=np.float64)[kept]
    factor = np.broadcast_to(wk, per.shape).copy()
    if absent == "exclude":
        factor = factor * (G > 0)
    if reduction == "none":
        res = per * factor
        return res[0] if batch_dice else res
    if reduction == "sum":
        dice_term = (per * factor).sum()
    else:
        groups = [
            (per[j] * factor[j]).sum() / factor[j].sum() if factor[j].sum() > 0 else 0.0 for j in range(nG)
        ]
        dice_term = float(np.mean(groups))
    if kind in ("dice", "jaccard", "tversky"):
        return dice_term

    # the pixel-wise term
    wc = np.ones(C) if weight is None else np.asarray(weight, dtype=np.float64)
    logp = np.log(np.maximum(p, 1e-300)) if from_logits else np.maximum(np.log(np.maximum(p, 1e-300)), -100)
    num = den = 0.0
    if mode == "multiclass":
        eps = label_smoothing if kind == "dice_ce" else 0.0
        for b in range(B):
            for n in range(N):
                if m[b, 0, n] == 0:
                    continue
                gs = g[b, :, n] * (1 - eps) + eps / C
                if kind == "dice_ce":
                    term = -(wc * gs * logp[b, :, n]).sum()
                else:
                    term = -(wc * g[b, :, n] * (1 - p[b, :, n]) ** gamma * logp[b, :, n]).sum()
                num += term
                # the class-index weighted mean for every target format (cross_entropy's for indices)
                den += (wc * g[b, :, n]).sum() if weight is not None else 1.0
    else:
        eps = label_smoothing if kind == "dice_ce" else 0.0
        for b in range(B):
            for c in range(C):
                for n in range(N):
                    if m[b, c, n] == 0:
                        continue
                    gg, pp, xx = g[b, c, n], p[b, c, n], x[b, c, n]
                    if from_logits:
                        lp, lnp = -np.logaddexp(0, -xx), -np.logaddexp(0, xx)
                    else:
                        lp, lnp = (
                            max(math.log(max(pp, 1e-300)), -100),
                            max(math.log(max(1 - pp, 1e-300)), -100),
                        )
                    if kind == "dice_ce":
                        gs = gg * (1 - eps) + eps / 2
                        term = -(gs * lp + (1 - gs) * lnp)
                    else:
                        term = -(gg * (1 - pp) ** gamma * lp + (1 - gg) * pp**gamma * lnp)
                    num += wc[c] * term
                    den += 1.0
    other = num if reduction == "sum" else (num / den if den > 0 else 0.0)
    lam = lambda_ce if kind == "dice_ce" else lambda_focal
    return lambda_dice * dice_term + lam * other
