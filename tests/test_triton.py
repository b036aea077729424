"""The ``triton`` backend against the ``reference`` backend.

Without a GPU the kernels run on CPU tensors in Triton's interpreter: the ``interpreter`` fixture sets
``TRITON_INTERPRET=1`` for one test only (monkeypatch) and installs the shim of
``tests/_triton_interpreter.py``, which interprets the kernels and Triton's library functions while the
backend launches them, so no other test file sees a change. Shapes are
tiny (the interpreter runs the kernels in Python) and the tile sizes are shrunk so that a few
positions already take several tiles, several programs and, with ``BLOCK_C_MAX`` lowered, several
class chunks.

The tests marked ``cuda`` repeat the checks at full size on a GPU (compiled kernels), with gradcheck,
determinism and ``torch.compile``; they are skipped where there is no CUDA device.
"""

from __future__ import annotations

import importlib.util
import itertools

import _triton_interpreter
import pytest
import torch

import diceloss
from diceloss import _layout, functional
from diceloss.backends import select_backend
from diceloss.stats import StatsRequest
from diceloss.stats import triton as tk

HAS_TRITON = importlib.util.find_spec("triton") is not None
HAS_CUDA = torch.cuda.is_available()

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="needs triton (pip install diceloss[triton])")
cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (kernels run in the interpreter here)")

# the production tile sizes, before the interpreter fixture shrinks them
DEFAULT_TILE_ELEMS, DEFAULT_MIN_BLOCK_N = tk.TILE_ELEMS, tk.MIN_BLOCK_N

STATS = ("intersection", "pred_volume", "target_volume", "count", "cross_entropy", "focal")


@pytest.fixture
def interpreter(monkeypatch):
    """TRITON_INTERPRET=1 for this test; small tiles so that tiny shapes use several tiles and programs."""
    import triton  # noqa: F401  (imported before the variable is set: the process keeps compiled Triton)

    _triton_interpreter.install(monkeypatch)
    monkeypatch.setattr(tk, "TILE_ELEMS", 32)
    monkeypatch.setattr(tk, "MIN_BLOCK_N", 4)


# ----------------------------------------------------------------------------------------------
# cases


def make_case(kind: str, B: int, C: int, spatial: tuple[int, ...], dtype: torch.dtype, seed: int,
              with_mask: bool = False, device: str = "cpu"):
    """(input, target, keyword arguments of compute_stats) for one kind of call."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return (2 * torch.randn(*shape, generator=gen, dtype=torch.float64)).to(device)

    kw: dict = {}
    if kind.startswith("binary"):
        x = randn(B, 1, *spatial)
        t = (torch.rand(B, 1, *spatial, generator=gen) < 0.4).to(torch.float64).to(device)
        kw["mode"] = "binary"
        C = 1
    elif kind.startswith("multilabel"):
        x = randn(B, C, *spatial)
        t = (torch.rand(B, C, *spatial, generator=gen) < 0.4).to(torch.float64).to(device)
        kw["mode"] = "multilabel"
    else:
        x = randn(B, C, *spatial)
        t = torch.randint(0, C, (B, *spatial), generator=gen).to(device)
        kw["mode"] = "multiclass"
    if kind.endswith("_soft"):
        if kw["mode"] == "multiclass":
            t = torch.softmax(randn(B, C, *spatial), dim=1)
        else:
            t = torch.rand(t.shape, generator=gen, dtype=torch.float64).to(device)
    if kind.endswith("_onehot"):
        t = torch.nn.functional.one_hot(t, C).movedim(-1, 1).to(torch.float64)
    if "_ignore" in kind:
        drop = torch.rand(t.shape, generator=gen).to(device) < 0.3
        if kw["mode"] == "multiclass" and t.dtype == torch.int64:
            kw["ignore_index"] = 1 if kind.endswith("_ignore_class") else -100
            t = torch.where(drop, torch.full_like(t, kw["ignore_index"]), t)
        elif kw["mode"] == "multiclass":  # one-hot target: ignore_index names a channel
            kw["ignore_index"] = 0
        else:
            kw["ignore_index"] = 255
            t = torch.where(drop, torch.full_like(t, 255.0), t)
    if "_probs" in kind:
        x = torch.softmax(x, dim=1) if kw["mode"] == "multiclass" else torch.sigmoid(x)
        kw["from_logits"] = False
    if with_mask:
        kw["mask"] = torch.rand(B, *spatial, generator=gen).to(device) < 0.75
    if t.is_floating_point():
        t = t.to(dtype)
    return x.to(dtype), t, kw


KINDS = (
    "multiclass", "multiclass_ignore", "multiclass_ignore_class",
    "multiclass_onehot", "multiclass_onehot_ignore", "multiclass_soft",
    "multiclass_probs", "multiclass_probs_soft",
    "binary", "binary_soft", "binary_ignore", "binary_probs",
    "multilabel", "multilabel_ignore", "multilabel_probs_soft",
)
REQUESTS = (
    {},
    {"squared": True},
    {"soft_label": True},
    {"cross_entropy": True},
    {"cross_entropy": True, "label_smoothing": 0.1},
    {"focal_gamma": 2.0},
    {"focal_gamma": 0.5},
    {"focal_gamma": 0.0},
    {"squared": True, "cross_entropy": True, "label_smoothing": 0.2, "focal_gamma": 1.5},
    {"soft_label": True, "cross_entropy": True, "focal_gamma": 3.0},
)
SPATIAL = ((7,), (3, 5), (2, 3, 3))


def compare(x, t, kw, request: dict, *, rtol: float, grad_rtol: float, seed: int = 0, **backend_kw):
    """Statistics and gradients (non-unit upstream on every statistic) of triton against reference."""
    results = {}
    for backend in ("triton", "reference"):
        xi = x.detach().clone().requires_grad_(True)
        stats = diceloss.compute_stats(xi, t, backend=backend, **kw, **request, **backend_kw)
        gen = torch.Generator().manual_seed(seed)
        loss = 0
        for name in STATS:
            value = getattr(stats, name)
            if value is not None:
                upstream = torch.rand(value.shape, generator=gen, dtype=torch.float64).to(value)
                loss = loss + (value * upstream).sum()
        (grad,) = torch.autograd.grad(loss, xi)
        results[backend] = (stats, grad)
    (s_t, g_t), (s_r, g_r) = results["triton"], results["reference"]
    for name in STATS:
        a, b = getattr(s_t, name), getattr(s_r, name)
        assert (a is None) == (b is None), name
        if a is None:
            continue
        assert a.dtype == b.dtype and a.shape == b.shape, name
        scale = b.abs().max().item() + 1e-30
        err = (a - b).abs().max().item()
        assert err <= rtol * scale, f"{name}: max error {err:.3g} (scale {scale:.3g}): {a} vs {b}"
    assert g_t.dtype == x.dtype and g_t.shape == x.shape
    scale = g_r.abs().max().item() + 1e-30
    err = (g_t.double() - g_r.double()).abs().max().item()
    assert err <= grad_rtol * scale, f"gradient: max error {err:.3g} (scale {scale:.3g})"
    return results


# ----------------------------------------------------------------------------------------------
# interpreter tests (CPU): the whole option grid


@pytest.mark.parametrize("kind", KINDS)
def test_option_grid_float64(interpreter, kind):
    """Every kind of call x every statistics request, float64, to 1e-10 (values and gradients)."""
    for r, request in enumerate(REQUESTS):
        spatial = SPATIAL[r % len(SPATIAL)]
        x, t, kw = make_case(kind, 2, 3, spatial, torch.float64, seed=r, with_mask=r % 2 == 1)
        compare(x, t, kw, request, rtol=1e-10, grad_rtol=1e-10, seed=r)


@pytest.mark.parametrize("kind", KINDS)
def test_option_grid_float32(interpreter, kind):
    for r, request in enumerate((REQUESTS[0], REQUESTS[8], REQUESTS[9])):
        x, t, kw = make_case(kind, 2, 4, (5, 3), torch.float32, seed=10 + r, with_mask=r == 1)
        compare(x, t, kw, request, rtol=1e-5, grad_rtol=1e-5, seed=r)


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("kind", ("multiclass_ignore", "multiclass_soft", "binary", "multilabel_ignore"))
def test_half_precision(interpreter, kind, dtype):
    """float16 / bfloat16 input: statistics in float32 (as the reference), gradient in the input dtype."""
    x, t, kw = make_case(kind, 2, 3, (4, 5), dtype, seed=3, with_mask=True)
    stats, _ = compare(x, t, kw, REQUESTS[8], rtol=1e-5, grad_rtol=1e-2)["triton"]
    assert stats.intersection.dtype == torch.float32


@pytest.mark.parametrize("kind, C", (("multiclass_ignore", 5), ("multiclass_soft", 9), ("multilabel", 5)))
def test_class_chunks(interpreter, monkeypatch, kind, C):
    """C larger than the class tile: online log-sum-exp over chunks, three passes in the backward."""
    monkeypatch.setattr(tk, "BLOCK_C_MAX", 2)
    x, t, kw = make_case(kind, 2, C, (9,), torch.float64, seed=C, with_mask=True)
    compare(x, t, kw, REQUESTS[8], rtol=1e-10, grad_rtol=1e-10)
    compare(x, t, kw, REQUESTS[9], rtol=1e-10, grad_rtol=1e-10)


@pytest.mark.parametrize("kind", ("multiclass", "multilabel"))
def test_many_classes(interpreter, kind):
    """C = 256 in one tile (and 300 in two chunks) at a tiny spatial size."""
    for C in (256, 300):
        x, t, kw = make_case(kind, 1, C, (3,), torch.float32, seed=C)
        compare(x, t, kw, REQUESTS[8], rtol=1e-5, grad_rtol=1e-5)


def test_default_tiles_and_odd_sizes(interpreter, monkeypatch):
    """The production tile sizes (undo the fixture's) on odd sizes, 1-D to 3-D, B = 1 and 3."""
    monkeypatch.setattr(tk, "TILE_ELEMS", DEFAULT_TILE_ELEMS)
    monkeypatch.setattr(tk, "MIN_BLOCK_N", DEFAULT_MIN_BLOCK_N)
    for B, C, spatial in ((1, 3, (37,)), (3, 2, (5, 7)), (2, 7, (3, 5, 7))):
        x, t, kw = make_case("multiclass_ignore", B, C, spatial, torch.float32, seed=B * C, with_mask=True)
        compare(x, t, kw, REQUESTS[8], rtol=1e-5, grad_rtol=1e-5)


def test_non_contiguous_and_channels_last(interpreter):
    x, t, kw = make_case("multiclass", 2, 4, (5, 6), torch.float32, seed=1)
    compare(x.contiguous(memory_format=torch.channels_last), t, kw, REQUESTS[8], rtol=1e-5, grad_rtol=1e-5)
    wide = torch.randn(2, 4, 5, 12, generator=torch.Generator().manual_seed(2))
    compare(wide[..., ::2], t, kw, REQUESTS[3], rtol=1e-5, grad_rtol=1e-5)
    xm, tm, kwm = make_case("multilabel", 2, 3, (4, 4), torch.float32, seed=3)
    tm = tm.transpose(-1, -2).contiguous().transpose(-1, -2)
    compare(xm, tm, kwm, REQUESTS[1], rtol=1e-5, grad_rtol=1e-5)


def test_deterministic(interpreter):
    x, t, kw = make_case("multiclass_ignore", 2, 5, (6, 7), torch.float32, seed=4, with_mask=True)
    runs = [compare(x, t, kw, REQUESTS[8], rtol=1e-5, grad_rtol=1e-5)["triton"] for _ in range(2)]
    for name in STATS:
        assert torch.equal(getattr(runs[0][0], name), getattr(runs[1][0], name)), name
    assert torch.equal(runs[0][1], runs[1][1])


def test_fully_masked_and_empty(interpreter):
    x, t, kw = make_case("multiclass", 2, 3, (5,), torch.float64, seed=5)
    kw["mask"] = torch.zeros(2, 5, dtype=torch.bool)
    (stats, grad), _ = compare(x, t, kw, REQUESTS[8], rtol=1e-10, grad_rtol=1e-10).values()
    assert float(stats.count.detach().abs().sum()) == 0 and float(grad.abs().sum()) == 0
    x0, t0 = torch.zeros(2, 3, 0), torch.zeros(2, 0, dtype=torch.long)
    empty = diceloss.compute_stats(x0, t0, backend="triton")
    assert empty.intersection.shape == (2, 3) and float(empty.pred_volume.abs().sum()) == 0


@pytest.mark.parametrize(
    "loss",
    [
        lambda x, t, b: functional.dice_loss(x, t, backend=b, ignore_index=-100, include_background=False),
        lambda x, t, b: functional.dice_loss(x, t, backend=b, batch_dice=True, squared=True, log=True,
                                             ignore_index=-100),
        lambda x, t, b: functional.generalized_dice_loss(x, t, backend=b, batch_dice=True, ignore_index=-100),
        lambda x, t, b: functional.tversky_loss(x, t, backend=b, alpha=0.3, beta=0.7, ignore_index=-100),
        lambda x, t, b: functional.dice_ce_loss(x, t, backend=b, label_smoothing=0.1, ignore_index=-100),
        lambda x, t, b: functional.dice_focal_loss(x, t, backend=b, gamma=2.0, batch_dice=True,
                                                   ignore_index=-100),
    ],
)
def test_losses(interpreter, loss):
    """The heads on top of the kernels: loss values and gradients equal the reference backend's."""
    x, t, _ = make_case("multiclass_ignore", 2, 4, (3, 5), torch.float64, seed=6)
    out = {}
    for backend in ("triton", "reference"):
        xi = x.clone().requires_grad_(True)
        value = loss(xi, t, backend)
        (grad,) = torch.autograd.grad(value * 1.7, xi)
        out[backend] = value, grad
    torch.testing.assert_close(out["triton"][0], out["reference"][0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out["triton"][1], out["reference"][1], rtol=1e-10, atol=1e-12)


def test_dice_loss_module(interpreter):
    x, t, _ = make_case("binary_ignore", 2, 1, (4, 6), torch.float32, seed=7)
    for cls in (diceloss.DiceLoss, diceloss.DiceCELoss, diceloss.DiceFocalLoss):
        a = cls("binary", ignore_index=255, backend="triton")(x, t)
        b = cls("binary", ignore_index=255, backend="reference")(x, t)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_gradcheck_interpreter(interpreter):
    x, t, kw = make_case("multiclass_ignore", 1, 3, (4,), torch.float64, seed=8, with_mask=True)
    kw.pop("mode")

    def f(x):
        s = diceloss.compute_stats(x, t, backend="triton", cross_entropy=True, focal_gamma=2.0, squared=True,
                                   **kw)
        return s.intersection, s.pred_volume, s.cross_entropy, s.focal

    assert torch.autograd.gradcheck(f, (x.clone().requires_grad_(True),))


def test_double_backward_raises(interpreter):
    x, t, _ = make_case("multiclass", 1, 3, (4,), torch.float64, seed=9)
    x.requires_grad_(True)
    loss = functional.dice_loss(x, t, backend="triton")
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    with pytest.raises(RuntimeError, match="backend='reference'"):
        g.sum().backward()


def test_opcheck(interpreter):
    """The torch.library registration: schema, fake tensors, autograd, AOT dispatch."""
    x, t, _ = make_case("multiclass", 2, 3, (4,), torch.float32, seed=10)
    x = x.reshape(2, 3, 4).requires_grad_(True)
    mask = torch.tensor([[True, False, True, True], [True, True, True, False]])
    args = (x, t.reshape(2, 4), mask, "multiclass", "softmax", 255, False, False, True, 0.1, 2.0)
    torch.library.opcheck(tk.triton_stats, args)


def test_compile_fullgraph_interpreter(interpreter):
    """torch.compile(fullgraph=True) traces the loss without a graph break: the kernels are one opaque op."""
    x, t, _ = make_case("multiclass", 2, 3, (4, 3), torch.float32, seed=11)

    def f(x, t):
        return functional.dice_ce_loss(x, t, backend="triton")

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    xi = x.clone().requires_grad_(True)
    value = compiled(xi, t)
    value.backward()
    xr = x.clone().requires_grad_(True)
    expected = functional.dice_ce_loss(xr, t, backend="reference")
    expected.backward()
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(xi.grad, xr.grad, rtol=1e-5, atol=1e-6)


def test_launch_leaves_triton_as_it_was(interpreter):
    """The interpreter's stand-ins for Triton's library are put back after each launch."""
    import os

    import triton.language as tl
    import triton.language.core as tl_core
    import triton.language.math as tl_math
    import triton.language.standard as tl_standard

    spaces = (tl, tl_core, tl_math, tl_standard, tl.tensor, tl_core.tensor_descriptor_base)

    def snapshot():
        return [dict(vars(space)) for space in spaces]

    x, t, kw = make_case("multiclass", 1, 3, (4,), torch.float32, seed=0)
    diceloss.compute_stats(x, t, backend="triton", **kw)  # first launch: imports Triton's submodules
    before = snapshot()
    x.requires_grad_(True)
    stats = diceloss.compute_stats(x, t, backend="triton", cross_entropy=True, focal_gamma=2.0, **kw)
    stats.cross_entropy.sum().backward()
    after = snapshot()
    for space, old, new in zip(spaces, before, after):
        changed = sorted(k for k in old.keys() | new.keys() if old.get(k, None) is not new.get(k, None))
        assert not changed, f"{space.__name__}: {changed[:10]}"
    assert os.environ["TRITON_INTERPRET"] == "1"  # the fixture's value, restored


@pytest.mark.slow
def test_kernels_compile_for_h100(monkeypatch):
    """No GPU needed: the compiled path (Triton front end, LLVM, ptxas) for sm_90, constexprs of a launch."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    from diceloss.stats.triton import kernels as triton_dice
    from diceloss.stats.types import OpOptions

    if not isinstance(triton_dice.stats_kernel, JITFunction):
        pytest.skip("Triton was imported with TRITON_INTERPRET=1: its kernels are interpreted here")
    x = torch.randn(2, 14, 4096)
    t = torch.randint(0, 14, (2, 4096))
    mask = torch.ones(2, 4096, dtype=torch.uint8)
    for chunks in (False, True):
        monkeypatch.setattr(tk, "BLOCK_C_MAX", 8 if chunks else 256)
        cfg = tk._Config(x, t, mask, OpOptions("multiclass", "softmax", 255, False, False, True, 0.1, 2.0))
        assert cfg.num_chunks == (2 if chunks else 1)
        pointers = {"x_ptr": "*fp32", "t_ptr": "*i64", "m_ptr": "*u8", "out_ptr": "*fp32", "co_ptr": "*fp32",
                    "dx_ptr": "*fp32"}
        for kernel in (triton_dice.stats_kernel, triton_dice.grad_kernel):
            signature = {
                name: pointers.get(name) or ("constexpr" if name in cfg.constexprs else
                                             "fp32" if name.endswith(("_hi", "_lo")) else "i32")
                for name in kernel.arg_names
            }
            compiled = triton.compile(ASTSource(kernel, signature, constexprs=cfg.constexprs),
                                      target=GPUTarget("cuda", 90, 32),
                                      options={"num_warps": cfg.num_warps, "enable_fp_fusion": True})
            assert "cubin" in compiled.asm and len(compiled.asm["cubin"]) > 0


# ----------------------------------------------------------------------------------------------
# selection and errors


def test_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, t, _ = make_case("multiclass", 1, 3, (4,), torch.float32, seed=0)
    if HAS_CUDA:
        pytest.skip("the message is about CPU tensors; with CUDA the CPU case still raises, checked below")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        diceloss.compute_stats(x, t, backend="triton")
    assert not tk.status().startswith("available") and "TRITON_INTERPRET=1" in tk.status()


def test_auto_never_picks_triton_on_cpu(interpreter):
    x, t, _ = make_case("multiclass", 1, 3, (4,), torch.float32, seed=0)
    prep = _layout.prepare(x, t, mode="multiclass", from_logits=True)
    assert tk.supports(prep, StatsRequest()) is None
    assert select_backend("auto", prep, StatsRequest()) is not tk
    assert tk.status().startswith("available")


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")
def test_target_requiring_grad_is_refused(interpreter):
    x, t, kw = make_case("multilabel_soft", 1, 3, (4,), torch.float32, seed=0)
    prep = _layout.prepare(x, t.requires_grad_(True), mode="multilabel", from_logits=True)
    assert "target" in tk.supports(prep, StatsRequest())


def test_import_does_not_load_triton():
    """diceloss and its backend table import without Triton; the kernels module is loaded on first launch."""
    import subprocess
    import sys

    code = (
        "import sys, diceloss; from diceloss.stats import triton as tk; tk.status(); "
        "assert 'triton' not in sys.modules, 'triton imported'; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


# ----------------------------------------------------------------------------------------------
# GPU tests (compiled kernels)


def _cuda_case(kind, dtype, B=2, C=14, spatial=(32, 32, 32), seed=0, with_mask=False):
    x, t, kw = make_case(kind, B, C, spatial, dtype, seed, with_mask=with_mask, device="cuda")
    return x, t, kw


@cuda
@pytest.mark.cuda
def test_cuda_option_grid():
    """The interpreter's grid on the GPU, compiled kernels, at sizes that take many tiles and programs."""
    for kind, (r, request) in itertools.product(KINDS, enumerate(REQUESTS)):
        x, t, kw = _cuda_case(kind, torch.float32, C=5, spatial=(17, 33, 9), seed=r, with_mask=r % 2 == 1)
        compare(x, t, kw, request, rtol=1e-5, grad_rtol=1e-5, seed=r)
        x, t, kw = _cuda_case(kind, torch.float64, C=5, spatial=(17, 33), seed=r, with_mask=r % 2 == 0)
        compare(x, t, kw, request, rtol=1e-10, grad_rtol=1e-10, seed=r)


@cuda
@pytest.mark.cuda
def test_cuda_full_size():
    """B=2, C=14, 64^3 and many classes, float32 / float16 / bfloat16 (half: gradient to its rounding)."""
    for dtype, C in itertools.product((torch.float16, torch.bfloat16, torch.float32), (2, 14, 64, 256, 300)):
        spatial = (64, 64, 64) if C <= 14 else (16, 16, 16)
        x, t, kw = _cuda_case("multiclass_ignore", dtype, C=C, spatial=spatial, seed=C, with_mask=True)
        half = dtype != torch.float32
        compare(x, t, kw, REQUESTS[8], rtol=1e-4 if half else 1e-5, grad_rtol=1e-2 if half else 1e-5)


@cuda
@pytest.mark.cuda
def test_cuda_gradcheck():
    x, t, kw = _cuda_case("multiclass_ignore", torch.float64, C=5, spatial=(7, 9), seed=1, with_mask=True)
    kw.pop("mode")

    def f(x):
        s = diceloss.compute_stats(x, t, backend="triton", cross_entropy=True, focal_gamma=2.0, squared=True,
                                   **kw)
        return s.intersection, s.pred_volume, s.cross_entropy, s.focal

    assert torch.autograd.gradcheck(f, (x.clone().requires_grad_(True),))


@cuda
@pytest.mark.cuda
def test_cuda_deterministic():
    x, t, kw = _cuda_case("multiclass_ignore", torch.float32, spatial=(64, 64, 64), seed=2, with_mask=True)
    out = []
    for _ in range(2):
        xi = x.clone().requires_grad_(True)
        s = diceloss.compute_stats(xi, t, backend="triton", cross_entropy=True, **kw)
        (g,) = torch.autograd.grad((s.intersection * 3 + s.pred_volume + s.cross_entropy).sum(), xi)
        out.append((s, g))
    for name in ("intersection", "pred_volume", "cross_entropy"):
        assert torch.equal(getattr(out[0][0], name), getattr(out[1][0], name))
    assert torch.equal(out[0][1], out[1][1])


@cuda
@pytest.mark.cuda
def test_cuda_auto_picks_triton():
    x, t, _ = _cuda_case("multiclass", torch.float32, C=4, spatial=(8, 8), seed=3)
    prep = _layout.prepare(x, t, mode="multiclass", from_logits=True)
    assert select_backend("auto", prep, StatsRequest()) is tk
    assert tk.status() == "available"


@cuda
@pytest.mark.cuda
def test_cuda_compile_fullgraph():
    x, t, _ = _cuda_case("multiclass", torch.float32, C=4, spatial=(16, 16, 16), seed=4)

    def f(x, t):
        return functional.dice_ce_loss(x, t, backend="triton")

    compiled = torch.compile(f, fullgraph=True)
    xi = x.clone().requires_grad_(True)
    value = compiled(xi, t)
    value.backward()
    xr = x.clone().requires_grad_(True)
    expected = functional.dice_ce_loss(xr, t, backend="reference")
    expected.backward()
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(xi.grad, xr.grad, rtol=1e-5, atol=1e-6)


@cuda
@pytest.mark.cuda
def test_cuda_peak_memory():
    """Peak extra memory of forward + backward: the gradient plus the small partial sums."""
    x, t, _ = _cuda_case("multiclass", torch.float32, C=14, spatial=(64, 64, 64), seed=5)
    x.requires_grad_(True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    functional.dice_ce_loss(x, t, backend="triton").backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert extra <= 1.1 * x.numel() * x.element_size(), extra


def test_kinds_cover_every_mode():
    modes = {make_case(k, 1, 3, (2,), torch.float32, 0)[2]["mode"] for k in KINDS}
    assert modes == {"binary", "multiclass", "multilabel"}
    assert len(set(itertools.product(KINDS, range(len(REQUESTS))))) == len(KINDS) * len(REQUESTS)


@pytest.mark.parametrize("mode", ["multiclass", "binary"])
def test_minus_inf_logits_keep_ce_and_focal_finite(interpreter, mode):
    """A -inf logit (a masked class, or a certain and right element): CE and focal terms and their gradients are
    finite and equal to the reference's."""
    g = torch.Generator().manual_seed(7)
    C = 3 if mode == "multiclass" else 1
    x = torch.randn(2, C, 24, generator=g, dtype=torch.float64)
    if mode == "multiclass":
        t = torch.randint(0, 2, (2, 24), generator=g)
        x[:, 2] = -float("inf")  # class 2 masked
        fns = [(functional.dice_ce_loss, {}), (functional.dice_focal_loss, {"gamma": 2.0})]
    else:
        t = (torch.rand(2, 1, 24, generator=g) > 0.5).double()
        x[t == 0] = -float("inf")
        fns = [(functional.dice_focal_loss, {"gamma": 2.0})]
    for fn, kw in fns:
        results = []
        for backend in ("triton", "reference"):
            xr = x.clone().requires_grad_(True)
            value = fn(xr, t, mode=mode, backend=backend, **kw)
            value.backward()
            results.append((value.detach(), xr.grad))
        (vt, gt), (vr, gr) = results
        assert torch.isfinite(vt) and torch.isfinite(gt).all()
        torch.testing.assert_close(vt, vr, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(gt, gr, rtol=1e-10, atol=1e-12)
