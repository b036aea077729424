"""The fused backend: the statistics without a one-hot target and without saved probabilities.

Forward keeps references to the logits, the target and the mask only and returns the per-(sample,
class) sums; backward recomputes the probabilities and writes dL/dx directly. The only full-size
tensor it allocates is dL/dx. This module is the policy; two implementations sit behind it:

* the compiled C++ kernel (:mod:`diceloss.stats.cpu`, prebuilt with the package, one instruction-set level
  picked at load): one pass for the statistics, one for the gradient, vectorised exp, all cores; it covers
  softmax with class-index or dense targets and sigmoid with dense targets, with ``ignore_index``, masks,
  ``squared`` and the cross-entropy (with label smoothing), for float32, float64, float16 and bfloat16 input
  on the CPU (a class index out of range, possible only when value checks are off, counts as an ignored
  position there);
* the pure-PyTorch chunked path (:mod:`diceloss.stats.chunked`): everything else (probability input,
  ``soft_label``, the focal term, CUDA tensors) and every call when the kernel is off
  (``DICELOSS_NO_CPP=1``) or unavailable (no prebuilt library and no compiler).

Which one runs is decided once per call (:func:`choose`) and carried to the backward. The prebuilt kernel is
loaded when this module is imported, so that ``torch.compile`` finds it loaded when it first traces a call;
while dynamo traces, the choice reads only what is loaded (loading takes a lock and may compile). Both are
registered as ``torch.ops.diceloss.fused_stats`` (and ``fused_stats_backward``) through
:mod:`diceloss.stats.op`, so ``torch.compile(fullgraph=True)`` sees one opaque op (the op decides inside).
Double backward is not supported: it raises and names ``backend="reference"``.

:func:`debug_counters` counts, for tests and benchmarks, the full-size copies the fused path had to make
(non-contiguous logits, dense targets of another dtype than the logits) and which implementation ran.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

from .._checks import is_compiling, is_vmapped
from .._layout import Prepared
from . import chunked, cpu
from .op import StatsImpl, eager_stats, register_stats_op
from .types import OpOptions, OverlapStats, StatsRequest, compute_dtype, op_options

DOUBLE_BACKWARD_MESSAGE = (
    "the fused diceloss backend does not support double backward (create_graph=True followed by a "
    "second differentiation); pass backend=\"reference\" to the loss for higher-order gradients"
)

# Below this size of the logits, the pure-PyTorch chunked path is slower than the reference (per-chunk
# overhead dominates) while the reference's extra memory is small in absolute terms: auto takes the
# reference there when the compiled kernel cannot run. Measured: W1 (8 MiB) and W5 (4 MiB) are faster
# on the reference, W2 (21 MiB) and up on the chunked path.
AUTO_CHUNKED_MIN_BYTES = 16 << 20


# ----------------------------------------------------------------------------------------------
# debug counters (None: not counting, the hot path pays one global lookup)

_counts: dict[str, int] | None = None


@contextlib.contextmanager
def debug_counters() -> Iterator[dict[str, int]]:
    """Count, while the block runs (eager mode): ``contiguous_copies`` (strided logits copied once),
    ``target_casts`` (dense targets converted to the logits' dtype for the kernel), ``kernel_calls`` and
    ``chunked_calls`` (forward passes of each implementation). Yields the dict of counts."""
    global _counts
    previous = _counts
    counts = _counts = {"contiguous_copies": 0, "target_casts": 0, "kernel_calls": 0, "chunked_calls": 0}
    try:
        yield counts
    finally:
        _counts = previous
        if previous is not None:  # nested: the outer block sees the inner one's counts too
            for key, value in counts.items():
                previous[key] += value


def _count(key: str) -> None:
    if _counts is not None and not is_compiling():
        _counts[key] += 1


# ----------------------------------------------------------------------------------------------
# the two implementations


class _Kernel:
    """The compiled kernel as a :class:`~diceloss.stats.op.StatsImpl`."""

    double_backward_message = DOUBLE_BACKWARD_MESSAGE

    def __init__(self, module):
        self.module = module

    def forward(self, x: Tensor, target: Tensor, mask: Tensor | None, o: OpOptions) -> Tensor:
        if _counts is not None:
            _count("kernel_calls")
        return self.module.stats_forward(x, _kernel_target(x, target), mask, *o)

    def backward(self, coef: Tensor, x: Tensor, target: Tensor, mask: Tensor | None, o: OpOptions) -> Tensor:
        coef = coef.to(compute_dtype(x.dtype))
        return self.module.stats_backward(coef.contiguous(), x, _kernel_target(x, target), mask, *o)


_HALF = (torch.float16, torch.bfloat16)


def _kernel_target(x: Tensor, target: Tensor) -> Tensor:
    """The target as the kernel reads it: class indices as they are; a dense target in the logits' dtype, or in
    float32 with float16 / bfloat16 logits (the kernel reads it as it is: rounding it to half precision would move
    soft labels and could turn ignore_index into another value)."""
    if not target.is_floating_point() or target.dtype == x.dtype:
        return target
    if x.dtype in _HALF:
        if target.dtype == torch.float32:
            return target
        wanted = torch.float32
    else:
        wanted = x.dtype
    if _counts is not None:
        _count("target_casts")
    return target.to(wanted)


def _chunked_forward(x: Tensor, target: Tensor, mask: Tensor | None, o: OpOptions) -> Tensor:
    if _counts is not None:
        _count("chunked_calls")
    return chunked.forward(x, target, mask, o)


CHUNKED = StatsImpl(_chunked_forward, chunked.backward, DOUBLE_BACKWARD_MESSAGE)
_kernel_impl: _Kernel | None = None
# The prebuilt kernel, if there is one, is loaded now (milliseconds, never a compile): the first call is then fast,
# and torch.compile finds it loaded when it traces the first call
cpu.preload()


def kernel_covers(activation: str, soft_label: bool, squared: bool, focal_gamma: float | None,
                  device) -> bool:
    """Whether the compiled kernel serves these options (else the chunked PyTorch path runs)."""
    return (
        device.type == "cpu"
        and activation in ("softmax", "sigmoid")
        and (not soft_label or squared)
        and focal_gamma is None
    )


def _choose(x: Tensor, activation: str, soft_label: bool, squared: bool, focal_gamma: float | None):
    global _kernel_impl
    if kernel_covers(activation, soft_label, squared, focal_gamma, x.device):
        # while torch.compile traces, only what is loaded already counts (loading takes a lock and may compile,
        # which dynamo cannot trace); the op decides again when it runs
        module = cpu.loaded() if is_compiling() else cpu.load()
        if module is not None:
            if _kernel_impl is None or _kernel_impl.module is not module:
                _kernel_impl = _Kernel(module)
            return _kernel_impl
    return CHUNKED


def choose(prep: Prepared, request: StatsRequest):
    """The implementation that serves this call: the compiled kernel if it covers it, else the chunked path."""
    return _choose(prep.logits, prep.activation, request.soft_label, request.squared, request.focal_gamma)


def _op_forward(x: Tensor, target: Tensor, mask: Tensor | None, o: OpOptions) -> Tensor:
    return _choose(x, o.activation, o.soft_label, o.squared, o.focal_gamma).forward(x, target, mask, o)


def _op_backward(coef: Tensor, x: Tensor, target: Tensor, mask: Tensor | None, o: OpOptions) -> Tensor:
    return _choose(x, o.activation, o.soft_label, o.squared, o.focal_gamma).backward(coef, x, target, mask, o)


# torch.ops.diceloss.fused_stats / fused_stats_backward (the compiled path decides inside the op)
fused_stats = register_stats_op("fused_stats", StatsImpl(_op_forward, _op_backward, DOUBLE_BACKWARD_MESSAGE))


# ----------------------------------------------------------------------------------------------
# backend interface


def supports(prep: Prepared, request: StatsRequest) -> str | None:
    """None when the fused backend serves the call, else the reason it does not."""
    if prep.target.requires_grad:
        return "the target requires grad (the fused backward differentiates with respect to the input only)"
    if is_vmapped(prep.logits) or is_vmapped(prep.target) or is_vmapped(prep.mask):
        return "it cannot run under torch.func.vmap (its kernels take whole tensors); use backend='reference'"
    if not prep.logits.dtype.is_floating_point:
        return f"input dtype {prep.logits.dtype} is not floating"
    return None


def auto_plan(prep: Prepared, request: StatsRequest):
    """(whether ``backend="auto"`` should take the fused backend for this call, the implementation).

    It always *can*; below :data:`AUTO_CHUNKED_MIN_BYTES` on the CPU, without the kernel, the reference is faster.
    """
    impl = choose(prep, request)
    x = prep.logits
    if impl is not CHUNKED or x.device.type != "cpu":
        return True, impl
    return x.numel() * x.element_size() >= AUTO_CHUNKED_MIN_BYTES, impl


def status() -> str:
    return "available; CPU: " + cpu.status()


def eager(x: Tensor, target: Tensor, mask: Tensor | None, options: OpOptions, impl=None) -> tuple[Tensor, ...]:
    """The six statistics (I, P, G, M, E, F) through the eager autograd.Function, ``impl`` chosen if not given."""
    if impl is None:
        impl = _choose(x, options.activation, options.soft_label, options.squared, options.focal_gamma)
    return eager_stats(impl, x, target, mask, options)


def compute(prep: Prepared, request: StatsRequest, plan=None) -> OverlapStats:
    """The statistics of ``prep``; ``plan``: the implementation chosen by :func:`auto_plan`, if it ran."""
    x = prep.logits
    if not x.is_contiguous():
        # channels-last and other strided layouts: one copy of the logits, counted
        if _counts is not None:
            _count("contiguous_copies")
        x = x.contiguous()
    target = prep.target if prep.target.is_contiguous() else prep.target.contiguous()
    mask = prep.mask
    if mask is not None and not mask.is_contiguous():
        mask = mask.contiguous()
    options = op_options(prep, request)
    # dynamo sees the registered op (one (B, C, NUM_STATS) tensor); eager mode takes the lighter
    # autograd.Function with six outputs
    if is_compiling():
        out = torch.ops.diceloss.fused_stats(x, target, mask, *options)
        I, P, G, M, E, F = out.unbind(-1)
    else:
        if plan is None:
            plan = choose(prep, request)
        I, P, G, M, E, F = eager_stats(plan, x, target, mask, options)
    return OverlapStats(
        intersection=I,
        pred_volume=P,
        target_volume=G,
        count=M.detach(),
        cross_entropy=E if request.cross_entropy else None,
        focal=F if request.focal_gamma is not None else None,
    )
