"""The ``triton`` backend: one Triton kernel for the statistics, one for their backward.

Forward reads the logits and the target once (softmax or sigmoid per position over the classes,
the classes walked in chunks when C > ``BLOCK_C_MAX``) and writes per-program partial sums
(B, C, programs, 6) in float32 (float64 for float64 input), summed afterwards in a fixed order: the
statistics repeat bit for bit. Backward recomputes the probabilities and writes dL/dx in one pass
from the (B, C) gradients of the statistics (DESIGN.md, "The fused backward"). Nothing of the size
of the logits is kept between the two: only references to the input, the target and the mask.

Both kernels sit behind two ``torch.library`` custom ops, ``diceloss::triton_stats`` and
``diceloss::triton_stats_backward`` (with fake-tensor and autograd registrations), so
``torch.compile(fullgraph=True)`` sees one opaque op instead of a graph break; eager calls take the
autograd.Function of :mod:`diceloss.stats.op` over the same kernels.

Where it runs: CUDA tensors when Triton is importable (``pip install diceloss[triton]``; PyTorch's
CUDA wheels ship it). CPU tensors only under ``TRITON_INTERPRET=1``, through Triton's interpreter (slow;
for tests), which interprets the kernels when the variable was set before Triton was first imported.
The kernels (:mod:`diceloss.stats.triton.kernels`) use plain ``triton.jit``; Triton is imported lazily,
on the first launch; ``status()`` and ``supports()`` only look it up.

Example (CUDA):
    >>> import torch, diceloss                                             # doctest: +SKIP
    >>> x = torch.randn(2, 14, 64, 64, 64, device="cuda", requires_grad=True)  # doctest: +SKIP
    >>> y = torch.randint(0, 14, (2, 64, 64, 64), device="cuda")            # doctest: +SKIP
    >>> diceloss.DiceCELoss(backend="triton")(x, y).backward()              # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
from types import ModuleType

import torch
from torch import Tensor

from ..._checks import is_compiling
from ..._layout import Prepared
from ..op import StatsImpl, eager_stats, register_stats_op
from ..types import ACTIVATIONS, NUM_STATS, OpOptions, OverlapStats, StatsRequest, compute_dtype, op_options

# Tile shape: BLOCK_C classes (the next power of two of C, at most BLOCK_C_MAX; larger C is walked
# in chunks) x BLOCK_N positions with BLOCK_C * BLOCK_N about TILE_ELEMS elements, 8 warps from
# WARPS_8_FROM elements on. Chosen from ptxas register counts for sm_90 (no spills at C = 14 and 256
# with cross-entropy and focal terms), not yet from timings on a GPU: tune on the device.
BLOCK_C_MAX = 256
TILE_ELEMS = 2048
WARPS_8_FROM = 2048
MIN_BLOCK_N = 16
MAX_BLOCK_N = 1024
# Forward programs per streaming multiprocessor (each walks several tiles and writes one partial per class).
PROGRAMS_PER_SM = 4
# Programs of the forward kernel on the CPU interpreter (each costs Python time there).
INTERPRETER_PROGRAMS = 2

_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ----------------------------------------------------------------------------------------------
# availability


def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreter_enabled() -> bool:
    """Whether ``TRITON_INTERPRET`` asks for Triton's CPU interpreter (read at each call)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")


def status() -> str:
    """"available" (CUDA and Triton present), or what is missing."""
    if not _triton_installed():
        return "not installed: Triton is missing (pip install 'diceloss[triton]')"
    if torch.cuda.is_available():
        return "available"
    if interpreter_enabled():
        return "available for CPU tensors in Triton's interpreter (TRITON_INTERPRET=1; slow, for testing)"
    return "no CUDA device (runs CUDA tensors; TRITON_INTERPRET=1 runs it on the CPU for testing)"


def supports(prep: Prepared, request: StatsRequest) -> str | None:
    """None when the Triton kernels can serve this call, else the reason."""
    if not _triton_installed():
        return "Triton is not installed (pip install 'diceloss[triton]')"
    device = prep.logits.device.type
    if device == "cpu":
        if not interpreter_enabled():
            return (
                "it runs CUDA tensors and the input is on the CPU (no CUDA here: torch.cuda.is_available() "
                f"is {torch.cuda.is_available()}); set TRITON_INTERPRET=1 to run the kernels in Triton's CPU "
                "interpreter (slow, for testing), or use backend='fused' or 'reference'"
            )
    elif device != "cuda":
        return f"it runs CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), got a tensor on {device}"
    if prep.logits.dtype not in _SUPPORTED_DTYPES:
        return f"input dtype must be float16, bfloat16, float32 or float64, got {prep.logits.dtype}"
    if not prep.target_is_index and prep.target.requires_grad:
        return "it gives no gradient with respect to the target; use backend='reference' for that"
    return None


# ----------------------------------------------------------------------------------------------
# loading the kernels


_kernel_module: ModuleType | None = None


def _kernels() -> ModuleType:
    """The module of ``@triton.jit`` kernels, imported (with Triton) on the first launch."""
    global _kernel_module
    if _kernel_module is None:
        _kernel_module = importlib.import_module("diceloss.stats.triton.kernels")
    return _kernel_module


def _launch_context(device: torch.device):
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------------------------
# launch parameters


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


class _Config:
    """Tile shape, constexpr flags and scalar arguments of one call."""

    def __init__(self, logits: Tensor, target: Tensor, mask: Tensor | None, o: OpOptions):
        import triton.language as tl

        multiclass = o.mode == "multiclass"
        squared, focal_gamma, cross_entropy = o.squared, o.focal_gamma, o.cross_entropy

        B, C, N = logits.shape
        self.B, self.C, self.N = B, C, N
        self.acc_dtype = compute_dtype(logits.dtype)
        self.index = not target.is_floating_point()
        block_c = min(_next_pow2(max(C, 2)), _next_pow2(max(BLOCK_C_MAX, 2)))
        self.block_c = block_c
        self.num_chunks = -(-C // block_c)
        block_n = max(MIN_BLOCK_N, min(MAX_BLOCK_N, _next_pow2(max(TILE_ELEMS // block_c, 1))))
        self.block_n = min(block_n, max(MIN_BLOCK_N, _next_pow2(N)))
        self.num_warps = 8 if block_c * self.block_n >= WARPS_8_FROM else 4
        largest = max(
            _span(logits), _span(target), 0 if mask is None else _span(mask), C * N * NUM_STATS
        )
        self.constexprs = dict(
            ACC=tl.float64 if self.acc_dtype == torch.float64 else tl.float32,
            ACT=ACTIVATIONS[o.activation],
            MULTICLASS=bool(multiclass),
            INDEX=self.index,
            HAS_MASK=mask is not None,
            HAS_IGNORE=o.ignore_index is not None,
            SQUARED=bool(squared),
            INTER_MIN=bool(o.soft_label) and not squared,
            CE=bool(cross_entropy),
            FOCAL=focal_gamma is not None,
            BLOCK_C=block_c,
            BLOCK_N=self.block_n,
            NUM_CHUNKS=self.num_chunks,
            IDX64=largest >= 2**31 - 1,
        )
        self.ignore_index = 0 if o.ignore_index is None else int(o.ignore_index)
        eps = float(o.label_smoothing) if cross_entropy else 0.0
        share = eps / C if multiclass else eps / 2
        gamma = 0.0 if focal_gamma is None else float(focal_gamma)
        # float64 scalars as two float32 halves (the kernels add them up in the accumulation dtype)
        self.scalars = (*_split(1.0 - eps), *_split(share), *_split(gamma))

    def strides(self, logits: Tensor, target: Tensor, mask: Tensor | None):
        sx = logits.stride()
        if self.index:
            st = (target.stride(0), 0, target.stride(1))
        else:
            st = target.stride()
        sm = (0, 0) if mask is None else mask.stride()
        return (*sx, *st, *sm)


def _span(t: Tensor) -> int:
    """The largest element offset a kernel computes into ``t``."""
    return sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride()) if s > 0) + 1


def _split(value: float) -> tuple[float, float]:
    hi = float(torch.tensor(value, dtype=torch.float32))
    return hi, float(value - hi)


def _mask_u8(mask: Tensor | None) -> Tensor | None:
    if mask is None:
        return None
    return mask.view(torch.uint8) if mask.dtype == torch.bool else (mask != 0).view(torch.uint8)


def _forward_programs(cfg: _Config, device: torch.device) -> tuple[int, int]:
    """(programs over N, tiles per program) of the forward kernel."""
    num_tiles = -(-cfg.N // cfg.block_n)
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        target = max(1, -(-PROGRAMS_PER_SM * sms // (cfg.B * cfg.num_chunks)))
    else:
        target = INTERPRETER_PROGRAMS
    programs = max(1, min(num_tiles, target))
    tiles_per_prog = -(-num_tiles // programs)
    programs = -(-num_tiles // tiles_per_prog)
    return programs, tiles_per_prog


# ----------------------------------------------------------------------------------------------
# the ops


def _stats_impl(logits: Tensor, target: Tensor, mask: Tensor | None, o: OpOptions) -> Tensor:
    cfg = _Config(logits, target, mask, o)
    B, C, N = logits.shape
    if B * N == 0:
        return logits.new_zeros((B, C, NUM_STATS), dtype=cfg.acc_dtype)
    device = logits.device
    programs, tiles_per_prog = _forward_programs(cfg, device)
    partials = torch.empty((B, C, programs, NUM_STATS), dtype=cfg.acc_dtype, device=device)
    mask_u8 = _mask_u8(mask)
    kernels = _kernels()
    with _launch_context(device):
        kernels.stats_kernel[(programs, B, cfg.num_chunks)](
            logits, target, logits if mask_u8 is None else mask_u8, partials,
            C, N, tiles_per_prog,
            *cfg.strides(logits, target, mask_u8),
            cfg.ignore_index,
            *cfg.scalars,
            **cfg.constexprs,
            num_warps=cfg.num_warps,
            enable_fp_fusion=True,  # explicit: Triton 3.9 warns when it is left to the default
        )
    # a fixed-order sum over the programs: deterministic, unlike atomics
    return partials.sum(dim=2)


def _stats_backward_impl(grad: Tensor, logits: Tensor, target: Tensor, mask: Tensor | None,
                         o: OpOptions) -> Tensor:
    cfg = _Config(logits, target, mask, o)
    B, C, N = logits.shape
    grad_logits = torch.empty_like(logits)
    if B * N == 0:
        return grad_logits.zero_()
    grad = grad.to(cfg.acc_dtype).contiguous()
    mask_u8 = _mask_u8(mask)
    device = logits.device
    kernels = _kernels()
    with _launch_context(device):
        kernels.grad_kernel[(-(-N // cfg.block_n), B)](
            logits, target, logits if mask_u8 is None else mask_u8, grad, grad_logits,
            C, N,
            *cfg.strides(logits, target, mask_u8),
            *grad_logits.stride(),
            cfg.ignore_index,
            *cfg.scalars,
            **cfg.constexprs,
            num_warps=cfg.num_warps,
            enable_fp_fusion=True,  # explicit: Triton 3.9 warns when it is left to the default
        )
    return grad_logits


DOUBLE_BACKWARD_MESSAGE = (
    "the triton backend of diceloss computes first derivatives only (its backward is a kernel); for "
    "double backward (create_graph=True, gradient penalties) use backend='reference'"
)
IMPL = StatsImpl(_stats_impl, _stats_backward_impl, DOUBLE_BACKWARD_MESSAGE)
# torch.ops.diceloss.triton_stats / triton_stats_backward
triton_stats = register_stats_op("triton_stats", IMPL)


# ----------------------------------------------------------------------------------------------
# the backend entry point


def compute(prep: Prepared, request: StatsRequest, plan: object = None) -> OverlapStats:
    """Statistics of ``prep`` by the Triton kernels (differentiable with respect to the logits)."""
    target = prep.target
    if not prep.target_is_index:
        target = target.detach()
    options = op_options(prep, request)
    # dynamo sees the registered op; eager mode takes the lighter autograd.Function with six outputs
    if is_compiling():
        out = torch.ops.diceloss.triton_stats(prep.logits, target, prep.mask, *options)
        I, P, G, M, E, F = out.unbind(-1)
    else:
        I, P, G, M, E, F = eager_stats(IMPL, prep.logits, target, prep.mask, options)
    return OverlapStats(
        intersection=I,
        pred_volume=P,
        target_volume=G,
        count=M,
        cross_entropy=E if request.cross_entropy else None,
        focal=F if request.focal_gamma is not None else None,
    )
