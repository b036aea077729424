"""The ``triton`` backend: one Triton kernel for the statistics, one for their backward.

Forward reads the logits and the target once (softmax or sigmoid per position over the classes,
the classes walked in chunks when C > ``BLOCK_C_MAX``) and writes per-program partial sums
(B, C, programs, 6) in float32 (float64 for float64 input), summed afterwards in a fixed order: the
statistics repeat bit for bit. Backward recomputes the probabilities and writes dL/dx in one pass
from the (B, C) gradients of the statistics (DESIGN.md, "The fused backward"). Nothing of the size
of the logits is kept between the two: only references to the input, the target and the mask.

Both kernels sit behind two ``torch.library`` custom ops, ``diceloss::triton_stats`` and
``diceloss::triton_stats_backward`` (with fake-tensor and autograd registrations), so
``torch.compile(fullgraph=True)`` sees one opaque op instead of a graph break.

Where it runs: CUDA tensors when Triton is importable (``pip install diceloss[triton]``; PyTorch's
CUDA wheels ship it). CPU tensors only under ``TRITON_INTERPRET=1``, through Triton's interpreter
(slow; for tests): the backend then loads a second copy of the kernel module whose kernels and
helpers are interpreted, and swaps Triton's own ``@jit`` library functions (``tl.sum``, ``tl.zeros``
...) for interpreted ones while it launches, so this works whether or not the variable was set when
Triton was first imported. Every attribute of ``triton.language`` that the interpreter patches
during the launch is put back afterwards, so compiled kernels (CUDA tests in the same process) are
not affected. This relies on internals of Triton's interpreter (checked with Triton 3.9) and is a
testing aid only; the CUDA path uses plain ``triton.jit``. Triton is imported lazily, on the first
launch; ``status()`` and ``supports()`` only look it up.

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
import threading
from types import ModuleType

import torch
from torch import Tensor

from .._layout import Prepared
from ..stats import OverlapStats, StatsRequest, compute_dtype

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

_ACTIVATIONS = {"softmax": 0, "sigmoid": 1, "none": 2}
_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_NUM_STATS = 6


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


_lock = threading.Lock()
_modules: dict[bool, ModuleType] = {}
_interp_lang_cache: dict[int, object] = {}


def _kernel_module(interpret: bool) -> ModuleType:
    """The compiled kernels (``interpret=False``), or a separate copy of the module with interpreted ones."""
    with _lock:
        mod = _modules.get(interpret)
        if mod is None:
            if not interpret:
                mod = importlib.import_module("diceloss.kernels.triton_dice")
            else:
                source = importlib.util.find_spec("diceloss.kernels.triton_dice")
                spec = importlib.util.spec_from_file_location("diceloss.kernels._triton_dice_interpreted",
                                                              source.origin)
                mod = importlib.util.module_from_spec(spec)
                mod._INTERPRET = True  # read by the module before its kernels are decorated
                spec.loader.exec_module(mod)
            _modules[interpret] = mod
        return mod


@contextlib.contextmanager
def _interpreted_language():
    """While launching on the CPU: Triton's ``@jit`` library functions interpreted, TRITON_INTERPRET=1.

    Triton decides at decoration time whether a ``@jit`` function is compiled or interpreted, so its
    own library (``tl.zeros``, ``tl.sum``, ``tl.max`` ...) is compiled-only when Triton was imported
    without ``TRITON_INTERPRET=1``. The interpreter can still run them through ``InterpretedFunction``
    wrappers of the same Python functions; they are swapped in for the launch and swapped back after.
    """
    import triton.language as tl
    import triton.language.core as tl_core
    import triton.language.math as tl_math
    import triton.language.standard as tl_standard
    import triton.runtime.interpreter as interpreter
    from triton.runtime.jit import JITFunction

    missing = object()
    originals: dict[tuple[int, str], tuple[object, str, object]] = {}

    def remember(obj, name):
        originals.setdefault((id(obj), name), (obj, name, getattr(obj, name, missing)))

    # The interpreter patches triton.language for each launch and for each call of an interpreted
    # helper, and undoes only the launch's patches (fine when the whole process is interpreted, not
    # here): record every attribute it touches and put all of them back afterwards.
    scope_cls = getattr(interpreter, "_LangPatchScope", None)
    plain_set_attr = getattr(scope_cls, "set_attr", None)

    def set_attr(self, obj, name, value):
        remember(obj, name)
        plain_set_attr(self, obj, name, value)

    with _lock:
        for module in (tl, tl_standard, tl_core, tl_math):
            for name, value in list(vars(module).items()):
                if isinstance(value, JITFunction):
                    wrapped = _interp_lang_cache.get(id(value))
                    if wrapped is None:
                        wrapped = _interp_lang_cache[id(value)] = interpreter.InterpretedFunction(value.fn)
                    remember(module, name)
                    setattr(module, name, wrapped)
        if plain_set_attr is not None:
            scope_cls.set_attr = set_attr
        previous = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1"
        try:
            yield
        finally:
            if plain_set_attr is not None:
                scope_cls.set_attr = plain_set_attr
            for obj, name, value in reversed(list(originals.values())):
                if value is missing:
                    if hasattr(obj, name):
                        delattr(obj, name)
                else:
                    setattr(obj, name, value)
            if previous is None:
                del os.environ["TRITON_INTERPRET"]
            else:
                os.environ["TRITON_INTERPRET"] = previous


def _launch_context(device: torch.device):
    if device.type == "cuda":
        return torch.cuda.device(device)
    return _interpreted_language()


# ----------------------------------------------------------------------------------------------
# launch parameters


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


class _Config:
    """Tile shape, constexpr flags and scalar arguments of one call."""

    def __init__(self, logits: Tensor, target: Tensor, mask: Tensor | None, activation: str, multiclass: bool,
                 ignore_index: int | None, squared: bool, soft_label: bool, cross_entropy: bool,
                 label_smoothing: float, focal_gamma: float | None):
        import triton.language as tl

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
            _span(logits), _span(target), 0 if mask is None else _span(mask), C * N * _NUM_STATS
        )
        self.constexprs = dict(
            ACC=tl.float64 if self.acc_dtype == torch.float64 else tl.float32,
            ACT=_ACTIVATIONS[activation],
            MULTICLASS=bool(multiclass),
            INDEX=self.index,
            HAS_MASK=mask is not None,
            HAS_IGNORE=ignore_index is not None,
            SQUARED=bool(squared),
            INTER_MIN=bool(soft_label) and not squared,
            CE=bool(cross_entropy),
            FOCAL=focal_gamma is not None,
            BLOCK_C=block_c,
            BLOCK_N=self.block_n,
            NUM_CHUNKS=self.num_chunks,
            IDX64=largest >= 2**31 - 1,
        )
        self.ignore_index = 0 if ignore_index is None else int(ignore_index)
        eps = float(label_smoothing) if cross_entropy else 0.0
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


def _stats_impl(logits: Tensor, target: Tensor, mask: Tensor | None, activation: str, multiclass: bool,
                ignore_index: int | None, squared: bool, soft_label: bool, cross_entropy: bool,
                label_smoothing: float, focal_gamma: float | None) -> Tensor:
    cfg = _Config(logits, target, mask, activation, multiclass, ignore_index, squared, soft_label,
                  cross_entropy, label_smoothing, focal_gamma)
    B, C, N = logits.shape
    if B * N == 0:
        return logits.new_zeros((B, C, _NUM_STATS), dtype=cfg.acc_dtype)
    device = logits.device
    programs, tiles_per_prog = _forward_programs(cfg, device)
    partials = torch.empty((B, C, programs, _NUM_STATS), dtype=cfg.acc_dtype, device=device)
    mask_u8 = _mask_u8(mask)
    kernels = _kernel_module(device.type != "cuda")
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
                         activation: str, multiclass: bool, ignore_index: int | None, squared: bool,
                         soft_label: bool, cross_entropy: bool, label_smoothing: float,
                         focal_gamma: float | None) -> Tensor:
    cfg = _Config(logits, target, mask, activation, multiclass, ignore_index, squared, soft_label,
                  cross_entropy, label_smoothing, focal_gamma)
    B, C, N = logits.shape
    grad_logits = torch.empty_like(logits)
    if B * N == 0:
        return grad_logits.zero_()
    grad = grad.to(cfg.acc_dtype).contiguous()
    mask_u8 = _mask_u8(mask)
    device = logits.device
    kernels = _kernel_module(device.type != "cuda")
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


triton_stats = torch.library.custom_op("diceloss::triton_stats", mutates_args=())(_stats_impl)
triton_stats_backward = torch.library.custom_op("diceloss::triton_stats_backward", mutates_args=())(
    _stats_backward_impl
)


@triton_stats.register_fake
def _stats_fake(logits, target, mask, *options):
    B, C, _ = logits.shape
    return logits.new_empty((B, C, _NUM_STATS), dtype=compute_dtype(logits.dtype))


@triton_stats_backward.register_fake
def _stats_backward_fake(grad, logits, *args):
    return torch.empty_like(logits)


def _setup_context(ctx, inputs, output):
    logits, target, mask, *options = inputs
    ctx.save_for_backward(logits, target, mask)
    ctx.options = options


def _backward(ctx, grad):
    logits, target, mask = ctx.saved_tensors
    grad_logits = None
    if ctx.needs_input_grad[0]:
        grad_logits = triton_stats_backward(grad, logits, target, mask, *ctx.options)
    return (grad_logits,) + (None,) * (2 + len(ctx.options))


def _no_double_backward(ctx, grad):
    raise RuntimeError(
        "the triton backend of diceloss computes first derivatives only (its backward is a kernel); for "
        "double backward (create_graph=True, gradient penalties) use backend='reference'"
    )


def _setup_backward_context(ctx, inputs, output):
    pass


triton_stats.register_autograd(_backward, setup_context=_setup_context)
triton_stats_backward.register_autograd(_no_double_backward, setup_context=_setup_backward_context)


# ----------------------------------------------------------------------------------------------
# the backend entry point


def compute(prep: Prepared, request: StatsRequest) -> OverlapStats:
    """Statistics of ``prep`` by the Triton kernels (differentiable with respect to the logits)."""
    multiclass = prep.mode == "multiclass"
    target = prep.target
    if not prep.target_is_index:
        target = target.detach()
    stats = triton_stats(
        prep.logits,
        target,
        prep.mask,
        prep.activation,
        multiclass,
        prep.ignore_index,
        bool(request.squared),
        bool(request.soft_label),
        bool(request.cross_entropy),
        float(request.label_smoothing),
        None if request.focal_gamma is None else float(request.focal_gamma),
    )
    I, P, G, M, E, F = stats.unbind(-1)
    return OverlapStats(
        intersection=I,
        pred_volume=P,
        target_volume=G,
        count=M,
        cross_entropy=E if request.cross_entropy else None,
        focal=F if request.focal_gamma is not None else None,
    )
