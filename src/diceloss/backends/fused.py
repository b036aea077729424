"""The fused backend: the statistics without a one-hot target and without saved probabilities.

Forward keeps references to the logits, the target and the mask only, and returns the per-(sample,
class) sums ``[I, P, G, M, E, F]`` stacked in one (B, C, 6) tensor. Backward receives their
gradients from the heads (A = dL/dI, Bq = dL/dP, K = dL/dE, KF = dL/dF, each (B, C)), recomputes
the probabilities and writes dL/dx directly (DESIGN.md, "The fused backward")::

    u[b,c,n] = m (A g' + q Bq p^(q-1))             g' = g, or d min(p, g)/dp for soft_label
    softmax:  dL/dx = v - p sum_c v,  v = p u - m K g~ (+ focal terms)   (v = dL/dlog p)
    sigmoid:  dL/dx = u p (1 - p) + m K (p - g~) (+ focal terms)

The only full-size tensor it allocates is dL/dx. Two implementations sit behind the same ops:

* the compiled C++ kernel (:mod:`diceloss.backends._cpu_kernel`): one pass for the statistics, one
  for the gradient, vectorised exp, all cores; it covers softmax with class-index or dense targets and
  sigmoid with dense targets, with ``ignore_index``, masks, ``squared`` and the cross-entropy (with
  label smoothing), for float32, float64, float16 and bfloat16 input on the CPU (a class index out of
  range, possible only when value checks are off, counts as an ignored position there);
* a pure-PyTorch path that processes the positions in chunks (temporaries bounded by
  :func:`chunk_positions`): everything else (probability input, ``soft_label``, the focal term, CUDA
  tensors) and every call when the kernel is off (``DICELOSS_NO_CPP=1``) or could not be built.

Both are registered as ``torch.ops.diceloss.fused_stats`` (and ``fused_stats_backward``) with
``torch.library``, so ``torch.compile(fullgraph=True)`` sees one opaque op. Double backward is not
supported: it raises and names ``backend="reference"``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._layout import Prepared
from ..stats import OverlapStats, StatsRequest, compute_dtype
from . import _cpu_kernel, reference

NSTAT = 6  # columns of the stacked statistics: I, P, G, M, E, F
# bytes of one chunk temporary that the pure-PyTorch path aims at (about a dozen are alive at once)
_CHUNK_BYTES = 1 << 20
_MIN_CHUNK = 256

# Counts of the full-size copies the fused path had to make (non-contiguous logits, dense targets of
# another dtype than the logits), for tests and benchmarks. Counted in eager mode only.
counters = {"contiguous_copies": 0, "target_casts": 0, "kernel_calls": 0, "chunked_calls": 0}

DOUBLE_BACKWARD_MESSAGE = (
    "the fused diceloss backend does not support double backward (create_graph=True followed by a "
    "second differentiation); pass backend=\"reference\" to the loss for higher-order gradients"
)


# ----------------------------------------------------------------------------------------------
# backend interface


def supports(prep: Prepared, request: StatsRequest) -> str | None:
    """None when the fused backend serves the call, else the reason it does not."""
    if prep.target.requires_grad:
        return "the target requires grad (the fused backward differentiates with respect to the input only)"
    if not prep.logits.dtype.is_floating_point:
        return f"input dtype {prep.logits.dtype} is not floating"
    return None


# Below this size of the logits, the pure-PyTorch chunked path is slower than the reference (per-chunk
# overhead dominates) while the reference's extra memory is small in absolute terms: auto takes the
# reference there when the compiled kernel cannot run. Measured: W1 (8 MiB) and W5 (4 MiB) are faster
# on the reference, W2 (21 MiB) and up on the chunked path.
AUTO_CHUNKED_MIN_BYTES = 16 << 20


def auto_prefers(prep: Prepared, request: StatsRequest) -> bool:
    """Whether ``backend="auto"`` should take the fused backend for this call (it always *can*)."""
    x = prep.logits
    if x.device.type != "cpu" or _kernel_would_run(x, prep.activation, request):
        return True
    return x.numel() * x.element_size() >= AUTO_CHUNKED_MIN_BYTES


def _kernel_would_run(x: Tensor, activation: str, request: StatsRequest) -> bool:
    return _use_kernel(x, activation, request.soft_label, request.squared, request.focal_gamma) is not None


def status() -> str:
    return "available; CPU: " + _cpu_kernel.status()


def kernel_covers(activation: str, soft_label: bool, squared: bool, focal_gamma: float | None,
                  device: torch.device) -> bool:
    """Whether the compiled kernel serves these options (else the chunked PyTorch path runs)."""
    return (
        device.type == "cpu"
        and activation in ("softmax", "sigmoid")
        and (not soft_label or squared)
        and focal_gamma is None
    )


def compute(prep: Prepared, request: StatsRequest) -> OverlapStats:
    x = prep.logits
    if not x.is_contiguous():
        # channels-last and other strided layouts: one copy of the logits, counted
        if not _is_compiling():
            counters["contiguous_copies"] += 1
        x = x.contiguous()
    target = prep.target if prep.target.is_contiguous() else prep.target.contiguous()
    mask = prep.mask
    if mask is not None and not mask.is_contiguous():
        mask = mask.contiguous()
    # dynamo sees the registered op (one (B, C, 6) tensor); eager mode takes the lighter autograd.Function
    # with six outputs
    compiling = _is_compiling()
    op = _ops().fused_stats if compiling else _EAGER.fused_stats_split
    out = op(
        x,
        target,
        mask,
        prep.mode,
        prep.activation,
        prep.ignore_index,
        bool(request.squared),
        bool(request.soft_label),
        bool(request.cross_entropy),
        float(request.label_smoothing),
        request.focal_gamma,
    )
    I, P, G, M, E, F = out.unbind(-1) if compiling else out
    return OverlapStats(
        intersection=I,
        pred_volume=P,
        target_volume=G,
        count=M.detach(),
        cross_entropy=E if request.cross_entropy else None,
        focal=F if request.focal_gamma is not None else None,
    )


def _is_compiling() -> bool:
    try:
        return bool(torch.compiler.is_compiling())
    except AttributeError:
        return False


# ----------------------------------------------------------------------------------------------
# the two implementations


def chunk_positions(B: int, C: int, N: int, itemsize: int = 4, device_type: str = "cpu") -> int:
    """Positions per chunk of the pure-PyTorch path: about 1 MiB per temporary, never above 1/64 of
    the logits (so a dozen temporaries stay under a fifth of the logits), at least 256 positions.
    On a GPU (no Triton) the 1 MiB cap is dropped: there, fewer and larger launches are what is fast."""
    by_fraction = N // 64
    if device_type != "cpu":
        return max(_MIN_CHUNK, by_fraction)
    per_position = max(1, B * C * max(itemsize, 4))
    by_budget = _CHUNK_BYTES // per_position
    return max(_MIN_CHUNK, min(by_budget, by_fraction))


def _chunk_prep(x: Tensor, target: Tensor, mask: Tensor | None, mode: str, activation: str,
                ignore_index: int | None, index_target: bool) -> Prepared:
    return Prepared(
        logits=x,
        target=target,
        target_is_index=index_target,
        mask=mask,
        ignore_index=ignore_index,
        activation=activation,
        num_classes=x.shape[1],
        mode=mode,
        kept_classes=None,
        spatial_shape=(x.shape[-1],),
    )


def _chunks(N: int, step: int):
    for n0 in range(0, N, step):
        yield n0, min(N, n0 + step)


def _slice(target: Tensor, mask: Tensor | None, n0: int, n1: int):
    return target[..., n0:n1], (None if mask is None else mask[:, n0:n1])


def _kernel_args(activation: str, index_target: bool, ignore_index: int | None, squared: bool,
                 cross_entropy: bool, label_smoothing: float):
    has_ignore = ignore_index is not None
    return (
        0 if activation == "softmax" else 1,
        index_target,
        has_ignore,
        int(ignore_index) if has_ignore else 0,
        squared,
        cross_entropy,
        float(label_smoothing),
    )


def _kernel_target(x: Tensor, target: Tensor, index_target: bool) -> Tensor:
    if index_target or target.dtype == x.dtype:
        return target
    counters["target_casts"] += 1
    return target.to(x.dtype)


def _use_kernel(x: Tensor, activation: str, soft_label: bool, squared: bool, focal_gamma: float | None):
    if not kernel_covers(activation, soft_label, squared, focal_gamma, x.device):
        return None
    return _cpu_kernel.load()


def _stats_impl(x: Tensor, target: Tensor, mask: Tensor | None, mode: str, activation: str,
                ignore_index: int | None, squared: bool, soft_label: bool, cross_entropy: bool,
                label_smoothing: float, focal_gamma: float | None) -> Tensor:
    index_target = not target.is_floating_point()
    kernel = _use_kernel(x, activation, soft_label, squared, focal_gamma)
    if kernel is not None:
        counters["kernel_calls"] += 1
        args = _kernel_args(activation, index_target, ignore_index, squared, cross_entropy, label_smoothing)
        return kernel.stats_forward(x, _kernel_target(x, target, index_target), mask, *args)
    counters["chunked_calls"] += 1
    B, C, N = x.shape
    request = StatsRequest(squared=squared, soft_label=soft_label, cross_entropy=cross_entropy,
                           label_smoothing=label_smoothing, focal_gamma=focal_gamma)
    out = torch.zeros(B, C, NSTAT, dtype=compute_dtype(x.dtype), device=x.device)
    with torch.no_grad():
        for n0, n1 in _chunks(N, chunk_positions(B, C, N, x.element_size(), x.device.type)):
            tc, mc = _slice(target, mask, n0, n1)
            s = reference.compute(
                _chunk_prep(x[..., n0:n1], tc, mc, mode, activation, ignore_index, index_target), request
            )
            out[..., 0] += s.intersection
            out[..., 1] += s.pred_volume
            out[..., 2] += s.target_volume
            out[..., 3] += s.count
            if s.cross_entropy is not None:
                out[..., 4] += s.cross_entropy
            if s.focal is not None:
                out[..., 5] += s.focal
    return out


def _safe_log_and_mask(p: Tensor) -> tuple[Tensor, Tensor]:
    """log(p) clamped at the reference's floor, and where the clamp lets the gradient through."""
    logp = torch.log(p)
    return logp.clamp_min(reference.LOG_CLAMP), logp >= reference.LOG_CLAMP


def _pow_grad(base: Tensor, gamma: float) -> Tensor:
    """d base^gamma / d base as autograd computes it (0 for gamma = 0)."""
    if gamma == 0:
        return torch.zeros_like(base)
    return gamma * base.pow(gamma - 1)


def _chunk_grad(coef: Tensor, x: Tensor, target: Tensor, mask: Tensor | None, mode: str, activation: str,
                ignore_index: int | None, squared: bool, soft_label: bool, cross_entropy: bool,
                label_smoothing: float, focal_gamma: float | None) -> Tensor:
    """dL/dx of one chunk (B, C, n) in the accumulation dtype, from the (B, C, 6) coefficients."""
    dtype = coef.dtype
    x = x.to(dtype)
    C = x.shape[1]
    g, m = reference.dense_target(
        _chunk_prep(x, target, mask, mode, activation, ignore_index, not target.is_floating_point()), dtype
    )
    A, Bq, K, KF = (coef[..., k : k + 1] for k in (0, 1, 4, 5))
    if activation == "softmax":
        logp = torch.log_softmax(x, dim=1)
        p = logp.exp()
    elif activation == "sigmoid":
        p = torch.sigmoid(x)
    else:
        p = x

    # u = dL/dp from the overlap statistics
    if soft_label and not squared:
        d_min = (p < g).to(dtype) + 0.5 * (p == g).to(dtype)  # torch.minimum's gradient, ties split
        u = A * d_min
    else:
        u = A * g
    u = u + (2 * Bq * p if squared else Bq)
    u = m * u
    eps = label_smoothing
    multiclass = mode == "multiclass"

    if multiclass:
        # v = dL/dlog p (softmax) collects the CE and focal terms, which are functions of log p
        v = None
        if cross_entropy:
            g_smooth = g * (1.0 - eps) + eps / C
            if activation == "softmax":
                v = -K * m * g_smooth
            else:
                _, ok = _safe_log_and_mask(p)
                u = u - torch.where(ok, K * m * g_smooth / p, torch.zeros_like(p))
        if focal_gamma is not None:
            h = KF * m * g
            if activation == "softmax":
                u = u + h * logp * _pow_grad(1 - p, focal_gamma)
                vf = -h * (1 - p).pow(focal_gamma)
                v = vf if v is None else v + vf
            else:
                slog, ok = _safe_log_and_mask(p)
                u = u + h * slog * _pow_grad(1 - p, focal_gamma)
                u = u - torch.where(ok, h * (1 - p).pow(focal_gamma) / p, torch.zeros_like(p))
        if activation == "softmax":
            v = p * u if v is None else p * u + v
            return v - p * v.sum(dim=1, keepdim=True)
        return u

    # binary and multilabel
    direct = None
    if cross_entropy:
        g_smooth = g * (1.0 - eps) + eps / 2
        if activation == "sigmoid":
            direct = K * m * (p - g_smooth)
        else:
            _, ok1 = _safe_log_and_mask(p)
            _, ok2 = _safe_log_and_mask(1 - p)
            zero = torch.zeros_like(p)
            u = u + K * m * (torch.where(ok2, (1 - g_smooth) / (1 - p), zero) - torch.where(ok1, g_smooth / p, zero))
    if focal_gamma is not None:
        gamma = focal_gamma
        h = KF * m
        if activation == "sigmoid":
            log_p, log_not_p = torch.nn.functional.logsigmoid(x), torch.nn.functional.logsigmoid(-x)
            u = u + h * (g * log_p * _pow_grad(1 - p, gamma) - (1 - g) * log_not_p * _pow_grad(p, gamma))
            df = h * (-(g * (1 - p).pow(gamma)) * (1 - p) + (1 - g) * p.pow(gamma) * p)
            direct = df if direct is None else direct + df
        else:
            log_p, ok1 = _safe_log_and_mask(p)
            log_not_p, ok2 = _safe_log_and_mask(1 - p)
            zero = torch.zeros_like(p)
            dfp = g * (-_pow_grad(1 - p, gamma) * log_p + torch.where(ok1, (1 - p).pow(gamma) / p, zero)) + (
                1 - g
            ) * (_pow_grad(p, gamma) * log_not_p - torch.where(ok2, p.pow(gamma) / (1 - p), zero))
            u = u - h * dfp
    if activation == "sigmoid":
        out = u * (p * (1 - p))
        return out if direct is None else out + direct
    return u


def _backward_impl(coef: Tensor, x: Tensor, target: Tensor, mask: Tensor | None, mode: str, activation: str,
                   ignore_index: int | None, squared: bool, soft_label: bool, cross_entropy: bool,
                   label_smoothing: float, focal_gamma: float | None) -> Tensor:
    index_target = not target.is_floating_point()
    coef = coef.to(compute_dtype(x.dtype))
    kernel = _use_kernel(x, activation, soft_label, squared, focal_gamma)
    if kernel is not None:
        args = _kernel_args(activation, index_target, ignore_index, squared, cross_entropy, label_smoothing)
        return kernel.stats_backward(coef.contiguous(), x, _kernel_target(x, target, index_target), mask, *args)
    B, C, N = x.shape
    grad = torch.empty_like(x)
    for n0, n1 in _chunks(N, chunk_positions(B, C, N, x.element_size(), x.device.type)):
        tc, mc = _slice(target, mask, n0, n1)
        grad[..., n0:n1] = _chunk_grad(coef, x[..., n0:n1], tc, mc, mode, activation, ignore_index, squared,
                                       soft_label, cross_entropy, label_smoothing, focal_gamma)
    return grad


# ----------------------------------------------------------------------------------------------
# registration with torch.library (one op for dynamo; autograd through register_autograd)

_OPS = None


def _register():
    lib = "diceloss"

    @torch.library.custom_op(f"{lib}::fused_stats", mutates_args=())
    def fused_stats(x: Tensor, target: Tensor, mask: Tensor | None, mode: str, activation: str,
                    ignore_index: int | None, squared: bool, soft_label: bool, cross_entropy: bool,
                    label_smoothing: float, focal_gamma: float | None) -> Tensor:
        return _stats_impl(x, target, mask, mode, activation, ignore_index, squared, soft_label, cross_entropy,
                           label_smoothing, focal_gamma)

    @fused_stats.register_fake
    def _(x, target, mask, mode, activation, ignore_index, squared, soft_label, cross_entropy, label_smoothing,
          focal_gamma):
        return x.new_empty((x.shape[0], x.shape[1], NSTAT), dtype=compute_dtype(x.dtype))

    @torch.library.custom_op(f"{lib}::fused_stats_backward", mutates_args=())
    def fused_stats_backward(coef: Tensor, x: Tensor, target: Tensor, mask: Tensor | None, mode: str,
                             activation: str, ignore_index: int | None, squared: bool, soft_label: bool,
                             cross_entropy: bool, label_smoothing: float, focal_gamma: float | None) -> Tensor:
        return _backward_impl(coef, x, target, mask, mode, activation, ignore_index, squared, soft_label,
                              cross_entropy, label_smoothing, focal_gamma)

    @fused_stats_backward.register_fake
    def _(coef, x, target, mask, mode, activation, ignore_index, squared, soft_label, cross_entropy,
          label_smoothing, focal_gamma):
        return torch.empty_like(x)

    def setup_context(ctx, inputs, output):
        x, target, mask, *options = inputs
        ctx.save_for_backward(x, target, mask)
        ctx.options = options

    def backward(ctx, grad):
        x, target, mask = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.diceloss.fused_stats_backward(grad, x, target, mask, *ctx.options)
        return (grad_x,) + (None,) * 10

    fused_stats.register_autograd(backward, setup_context=setup_context)

    def setup_double(ctx, inputs, output):
        pass

    def double_backward(ctx, grad):
        raise RuntimeError(DOUBLE_BACKWARD_MESSAGE)

    fused_stats_backward.register_autograd(double_backward, setup_context=setup_double)
    return torch.ops.diceloss


class _EagerOps:
    """The same implementation as plain autograd.Functions, for eager mode (a custom op costs tens of
    microseconds more per call) and for torch < 2.4, which has no ``torch.library.custom_op``."""

    class _Stats(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, target, mask, *options):
            ctx.save_for_backward(x, target, mask)
            ctx.options = options
            return _stats_impl(x, target, mask, *options)

        @staticmethod
        def backward(ctx, grad):
            return (_EagerOps.grad_input(ctx, grad),) + (None,) * 10

    class _Backward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, coef, x, target, mask, *options):
            return _backward_impl(coef, x, target, mask, *options)

        @staticmethod
        def backward(ctx, grad):
            raise RuntimeError(DOUBLE_BACKWARD_MESSAGE)

    class _StatsSplit(torch.autograd.Function):
        """The statistics as six outputs (I, P, G, M, E, F): eager calls need no unbind node between the
        op and the heads, and the backward stacks only the gradients that arrive."""

        @staticmethod
        def forward(ctx, x, target, mask, options):
            # options as one tuple: apply() inspects every argument, a cost per argument and call
            ctx.save_for_backward(x, target, mask)
            ctx.options = options
            ctx.set_materialize_grads(False)
            outs = _stats_impl(x, target, mask, *options).unbind(-1)
            ctx.mark_non_differentiable(outs[3])  # the count of valid positions
            return outs

        @staticmethod
        def backward(ctx, *grads):
            arrived = [g for g in grads if g is not None]
            if not arrived:
                return None, None, None, None
            zero = arrived[0].new_zeros(())
            coef = torch.stack([zero.expand_as(arrived[0]) if g is None else g for g in grads], dim=-1)
            return _EagerOps.grad_input(ctx, coef), None, None, None

    @staticmethod
    def grad_input(ctx, coef: Tensor) -> Tensor | None:
        """dL/dx of either Function from the (B, C, 6) coefficients and what its forward saved."""
        if not ctx.needs_input_grad[0]:
            return None
        x, target, mask = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a node whose own backward raises
            return _EagerOps._Backward.apply(coef, x, target, mask, *ctx.options)
        return _backward_impl(coef, x, target, mask, *ctx.options)

    @staticmethod
    def fused_stats(*args):
        return _EagerOps._Stats.apply(*args)

    @staticmethod
    def fused_stats_split(x, target, mask, *options):
        return _EagerOps._StatsSplit.apply(x, target, mask, options)


_EAGER = _EagerOps()


def _ops():
    global _OPS
    if _OPS is None:
        _OPS = _register() if hasattr(torch.library, "custom_op") else _EAGER
    return _OPS


_ops()
