"""The fused backend against the reference: statistics, gradients, losses, memory, compile.

Every test runs twice, on the compiled C++ kernel and on the pure-PyTorch chunked path (kernel
disabled), through the ``path`` fixture.
"""

from __future__ import annotations

import pytest
import torch

import diceloss
from diceloss import backends, compute_stats
from diceloss._checks import env_flag
from diceloss.stats import cpu, fused
from diceloss.stats.types import OpOptions

PATHS = ["kernel", "fallback"]


@pytest.fixture(params=PATHS)
def path(request):
    if request.param == "kernel":
        if env_flag("DICELOSS_NO_CPP"):
            pytest.skip("DICELOSS_NO_CPP is set: the compiled kernel is off by request")
        previous = cpu.set_enabled(True)
        assert cpu.load() is not None, cpu.status()
    else:
        previous = cpu.set_enabled(False)
    yield request.param
    cpu.set_enabled(previous)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# input makers: (input, target, stats kwargs)


def _logits(shape, dtype, g, scale=2.0):
    return (scale * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype)


def make_case(kind: str, B: int, C: int, spatial: tuple[int, ...], dtype, seed: int = 0):
    g = _gen(seed)
    shape = (B, C, *spatial)
    if kind == "index":
        return _logits(shape, dtype, g), torch.randint(0, C, (B, *spatial), generator=g), dict(mode="multiclass")
    if kind == "index_ignore":
        t = torch.randint(0, C, (B, *spatial), generator=g)
        t[torch.rand(t.shape, generator=g) < 0.2] = -100
        return _logits(shape, dtype, g), t, dict(mode="multiclass", ignore_index=-100)
    if kind == "index_ignore_real":  # ignore_index names a real class
        return _logits(shape, dtype, g), torch.randint(0, C, (B, *spatial), generator=g), dict(
            mode="multiclass", ignore_index=1
        )
    if kind == "onehot":
        t = torch.nn.functional.one_hot(torch.randint(0, C, (B, *spatial), generator=g), C)
        return _logits(shape, dtype, g), t.movedim(-1, 1).to(dtype), dict(mode="multiclass")
    if kind == "soft":
        t = torch.randn(shape, generator=g, dtype=torch.float64).softmax(1).to(dtype)
        return _logits(shape, dtype, g), t, dict(mode="multiclass")
    if kind == "probs":  # from_logits=False, index targets
        x = torch.randn(shape, generator=g, dtype=torch.float64).softmax(1).to(dtype)
        return x, torch.randint(0, C, (B, *spatial), generator=g), dict(mode="multiclass", from_logits=False)
    if kind == "binary":
        t = torch.randint(0, 2, (B, 1, *spatial), generator=g).to(dtype)
        return _logits((B, 1, *spatial), dtype, g), t, dict(mode="binary")
    if kind == "binary_probs":
        x = torch.rand((B, 1, *spatial), generator=g, dtype=torch.float64).clamp(0.01, 0.99).to(dtype)
        t = torch.randint(0, 2, (B, 1, *spatial), generator=g).to(dtype)
        return x, t, dict(mode="binary", from_logits=False)
    if kind == "multilabel_ignore":
        t = torch.randint(0, 2, shape, generator=g).to(dtype)
        t[torch.rand(shape, generator=g) < 0.2] = 255
        return _logits(shape, dtype, g), t, dict(mode="multilabel", ignore_index=255)
    if kind == "multilabel_soft":
        return _logits(shape, dtype, g), torch.rand(shape, generator=g, dtype=torch.float64).to(dtype), dict(
            mode="multilabel"
        )
    raise AssertionError(kind)


def make_mask(B, spatial, seed=1):
    return torch.rand((B, *spatial), generator=_gen(seed)) > 0.3


FIELDS = ("intersection", "pred_volume", "cross_entropy", "focal")


def stats_and_grad(backend, x, t, kwargs, seed=7):
    """All statistics and the gradient of a random (non-unit) combination of them."""
    xx = x.detach().clone().requires_grad_()
    s = compute_stats(xx, t, backend=backend, **kwargs)
    g = _gen(seed)
    total = 0
    for name in FIELDS:
        v = getattr(s, name)
        if v is not None:
            total = total + (torch.randn(v.shape, generator=g, dtype=torch.float64).to(v.dtype) * v).sum()
    (grad,) = torch.autograd.grad(total, xx)
    return s, grad


def assert_close(a, b, dtype):
    if dtype == torch.float64:
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    else:  # 1e-5 relative to the scale of the values
        scale = max(float(b.detach().abs().max()), 1e-30)
        assert float((a.detach().double() - b.detach().double()).abs().max()) <= 1e-5 * scale, (a, b)


def compare(x, t, kwargs, dtype):
    ref, gref = stats_and_grad("reference", x, t, kwargs)
    fus, gfus = stats_and_grad("fused", x, t, kwargs)
    for name in ("intersection", "pred_volume", "target_volume", "count", "cross_entropy", "focal"):
        r, f = getattr(ref, name), getattr(fus, name)
        assert (r is None) == (f is None), name
        if r is not None:
            assert f.dtype == r.dtype and f.shape == r.shape, name
            if name == "count":  # integer counts: exactly
                torch.testing.assert_close(f, r, rtol=0, atol=0)
            else:
                assert_close(f, r, dtype)
    assert gfus.dtype == gref.dtype and gfus.shape == gref.shape
    assert_close(gfus, gref, dtype)


OPTION_SETS = [
    dict(),
    dict(squared=True),
    dict(cross_entropy=True, label_smoothing=0.1),
    dict(cross_entropy=True, squared=True),
    dict(focal_gamma=2.0),
    dict(focal_gamma=0.0, cross_entropy=True),
    dict(soft_label=True),
    dict(soft_label=True, squared=True, cross_entropy=True, label_smoothing=0.2),
]
KINDS = ["index", "index_ignore", "index_ignore_real", "onehot", "soft", "probs", "binary", "binary_probs",
         "multilabel_ignore", "multilabel_soft"]


@pytest.mark.parametrize("kind", KINDS)
def test_option_grid_float64(path, kind):
    # N = 4500: more than one kernel task (4096) and not a multiple of the tile (64) or the chunk
    B, C, spatial = 2, 3, (4500,)
    x, t, kw = make_case(kind, B, C, spatial, torch.float64)
    for i, options in enumerate(OPTION_SETS):
        for with_mask in (False, True) if i < 3 else (i % 2 == 1,):
            kwargs = dict(kw, **options)
            if with_mask:
                kwargs["mask"] = make_mask(B, spatial)
            compare(x, t, kwargs, torch.float64)


@pytest.mark.parametrize(
    "kind,C,spatial",
    [
        ("index", 2, (7, 9)),
        ("index_ignore", 32, (5, 6, 7)),
        ("onehot", 3, (33,)),
        ("binary", 1, (17, 19)),
        ("multilabel_ignore", 2, (3, 5, 7)),
        ("index", 3, (110, 110)),  # above the kernel's serial threshold: parallel tasks
    ],
)
@pytest.mark.parametrize("options", [dict(), dict(squared=True, cross_entropy=True, label_smoothing=0.05),
                                     dict(focal_gamma=1.5, soft_label=True)])
def test_shapes_float32(path, kind, C, spatial, options):
    B = 3
    x, t, kw = make_case(kind, B, C, spatial, torch.float32, seed=C)
    compare(x, t, dict(kw, mask=make_mask(B, spatial), **options), torch.float32)


@pytest.mark.parametrize("N", [2**18, 2**18 + 3])
@pytest.mark.parametrize("options", [dict(), dict(squared=True, cross_entropy=True, label_smoothing=0.1)])
def test_large_input_kernel_paths(N, options):
    # 9 MiB of float32 logits: the kernel writes the gradient with non-temporal stores when the rows are
    # 64-byte aligned (N a multiple of 16) and with plain stores when not; C = 9 rows are staged per tile
    assert cpu.load() is not None or env_flag("DICELOSS_NO_CPP"), cpu.status()
    x, t, kw = make_case("index_ignore", 1, 9, (N,), torch.float32, seed=3)
    compare(x, t, dict(kw, mask=make_mask(1, (N,)), **options), torch.float32)


def test_float64_more_classes_and_3d(path):
    x, t, kw = make_case("index_ignore", 2, 32, (9, 10, 11), torch.float64)
    compare(x, t, dict(kw, cross_entropy=True, label_smoothing=0.3), torch.float64)
    x, t, kw = make_case("soft", 1, 32, (13, 17), torch.float64)
    compare(x, t, dict(kw, squared=True, cross_entropy=True), torch.float64)


def test_soft_label_ties_match_minimum_gradient(path):
    # p == g exactly: torch.minimum splits the gradient, the fused path must too
    x = torch.tensor([[[0.25, 0.5, 0.75, 0.5]]], dtype=torch.float64)
    t = torch.tensor([[[0.25, 0.5, 1.0, 0.0]]], dtype=torch.float64)
    compare(x, t, dict(mode="binary", from_logits=False, soft_label=True), torch.float64)


@pytest.mark.parametrize("layout", ["channels_last", "channels_last_3d", "permuted", "sliced"])
def test_non_contiguous_inputs(path, layout):
    g = _gen(3)
    if layout == "channels_last":
        x = torch.randn(2, 5, 9, 11, generator=g).to(memory_format=torch.channels_last)
    elif layout == "channels_last_3d":
        x = torch.randn(2, 4, 5, 6, 7, generator=g).to(memory_format=torch.channels_last_3d)
    elif layout == "permuted":  # (C, B, H, W) storage seen as (B, C, H, W): reshape keeps a strided view
        x = torch.randn(5, 2, 9, 11, generator=g).transpose(0, 1)
    else:
        x = torch.randn(2, 5, 9, 22, generator=g)[..., ::2]
    assert not x.is_contiguous()
    t = torch.randint(0, x.shape[1], (x.shape[0], *x.shape[2:]), generator=g)
    compare(x, t, dict(mode="multiclass", cross_entropy=True), torch.float32)
    with fused.debug_counters() as counters:
        stats_and_grad("fused", x, t, dict(mode="multiclass"))
    if layout == "permuted":  # the only layout that reaches the backend as a strided (B, C, N) view
        assert counters["contiguous_copies"] == 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["index_ignore", "binary", "soft"])
def test_half_inputs(path, dtype, kind):
    x, t, kw = make_case(kind, 2, 4 if kind != "binary" else 1, (40, 41), dtype)
    kwargs = dict(kw, cross_entropy=True, mask=make_mask(2, (40, 41)))
    ref, gref = stats_and_grad("reference", x, t, kwargs)
    fus, gfus = stats_and_grad("fused", x, t, kwargs)
    assert fus.intersection.dtype == torch.float32  # accumulated in float32
    assert gfus.dtype == dtype
    for name in ("intersection", "pred_volume", "target_volume", "cross_entropy"):
        torch.testing.assert_close(getattr(fus, name), getattr(ref, name), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(fus.count, ref.count, rtol=0, atol=0)  # integer counts: exactly
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-3
    torch.testing.assert_close(gfus.float(), gref.float(), rtol=tol, atol=tol * float(gref.abs().max()))


LOSSES = [
    (diceloss.DiceLoss, dict()),
    (diceloss.DiceLoss, dict(log=True, squared=True, batch_dice=True, weight=[0.5, 1.0, 2.0])),
    (diceloss.JaccardLoss, dict(include_background=False, absent="exclude")),
    (diceloss.TverskyLoss, dict(alpha=0.3, beta=0.7, exponent=1.5)),
    (diceloss.GeneralizedDiceLoss, dict(batch_dice=True)),
    (diceloss.DiceCELoss, dict(label_smoothing=0.1, weight=[1.0, 2.0, 0.5], lambda_ce=0.7)),
    (diceloss.DiceFocalLoss, dict(gamma=2.0, soft_label=True)),
]


@pytest.mark.parametrize("loss_cls,options", LOSSES)
@pytest.mark.parametrize("kind", ["index_ignore", "multilabel_soft"])
def test_losses_match_reference(path, loss_cls, options, kind):
    x, t, kw = make_case(kind, 2, 3, (23, 29), torch.float64)
    if kind == "index_ignore":
        kw = dict(kw)
    else:
        options = {k: v for k, v in options.items() if k != "label_smoothing"}
    mode = kw.pop("mode")
    values, grads = [], []
    for backend in ("reference", "fused"):
        loss = loss_cls(mode=mode, backend=backend, **kw, **options)
        xx = x.clone().requires_grad_()
        value = loss(xx, t, make_mask(2, (23, 29)))
        (value * 3.7).backward()  # non-unit upstream gradient
        values.append(value.detach())
        grads.append(xx.grad)
    torch.testing.assert_close(values[1], values[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# the Function itself


OP_CONFIGS = [
    ("index", dict(cross_entropy=True, label_smoothing=0.1, squared=False)),
    ("index_ignore", dict(squared=True)),
    ("soft", dict(cross_entropy=True)),
    ("binary", dict(cross_entropy=True, focal_gamma=2.0)),
    ("multilabel_soft", dict(soft_label=True)),
]


@pytest.mark.parametrize("kind,options", OP_CONFIGS)
def test_gradcheck_through_op(path, kind, options):
    x, t, kw = make_case(kind, 2, 3 if kind != "binary" else 1, (4, 3), torch.float64, seed=11)
    prep = diceloss._layout.prepare(x, t, mode=kw["mode"], from_logits=True, ignore_index=kw.get("ignore_index"))
    args = (prep.target, None, prep.mode, prep.activation, prep.ignore_index, options.get("squared", False),
            options.get("soft_label", False), options.get("cross_entropy", False),
            options.get("label_smoothing", 0.0), options.get("focal_gamma"))

    def fn(logits):
        out = torch.ops.diceloss.fused_stats(logits, *args)
        return out[..., [0, 1, 4, 5]]

    assert torch.autograd.gradcheck(fn, (prep.logits.clone().requires_grad_(),), eps=1e-6, atol=1e-7)


def test_double_backward_names_reference(path):
    x, t, kw = make_case("index", 2, 3, (8, 8), torch.float64)
    x.requires_grad_()
    loss = diceloss.DiceCELoss(backend="fused")(x, t)
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    with pytest.raises(RuntimeError, match='backend="reference"'):
        g.pow(2).sum().backward()
    # the reference backend does support it
    loss = diceloss.DiceCELoss(backend="reference")(x, t)
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    g.pow(2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_target_requiring_grad_goes_to_reference():
    x, t, kw = make_case("soft", 2, 3, (8, 8), torch.float64)
    t.requires_grad_()
    prep = diceloss._layout.prepare(x, t, mode="multiclass", from_logits=True)
    request = diceloss.stats.StatsRequest()
    assert "requires grad" in fused.supports(prep, request)
    assert backends.select_backend("auto", prep, request).__name__.endswith("reference")


def test_auto_picks_fused_where_it_is_fastest(path):
    request_ce = diceloss.stats.StatsRequest(cross_entropy=True)
    request_focal = diceloss.stats.StatsRequest(focal_gamma=2.0)
    small = diceloss._layout.prepare(*make_case("index", 2, 3, (8, 8), torch.float32)[:2], mode="multiclass",
                                     from_logits=True)
    big_x = torch.zeros(1, 4, 1 << 20)  # 16 MiB of logits: the chunked path beats the reference there
    big = diceloss._layout.prepare(big_x, torch.zeros(1, 1 << 20, dtype=torch.long), mode="multiclass",
                                   from_logits=True)
    reference = backends.select_backend("reference", small, request_ce)
    # the kernel serves Dice + CE at any size; the chunked PyTorch path only from AUTO_CHUNKED_MIN_BYTES on
    assert backends.select_backend("auto", small, request_ce) is (fused if path == "kernel" else reference)
    assert backends.select_backend("auto", small, request_focal) is reference
    assert backends.select_backend("auto", big, request_focal) is fused
    assert backends.select_backend("auto", big, request_ce) is fused
    # forcing the fused backend still works everywhere
    assert backends.select_backend("fused", small, request_focal) is fused


def test_status_says_which_path(path):
    state = backends.available()["fused"]
    if path == "kernel":
        assert "compiled C++ kernel" in state and "AVX2" in state or "vector width" in state
    else:
        assert "pure-PyTorch chunked path" in state and "DICELOSS_NO_CPP" in state


def test_kernel_used_for_covered_options_only(path):
    x, t, kw = make_case("index", 2, 3, (8, 8), torch.float32)
    with fused.debug_counters() as counters:
        compute_stats(x, t, mode="multiclass", cross_entropy=True, label_smoothing=0.1, backend="fused")
        compute_stats(x, t, mode="multiclass", focal_gamma=2.0, backend="fused")
    used = counters["kernel_calls"]
    chunked = counters["chunked_calls"]
    assert (used, chunked) == ((1, 1) if path == "kernel" else (0, 2))


def test_kernel_is_deterministic_across_thread_counts(path):
    x, t, kw = make_case("index_ignore", 2, 5, (96, 80), torch.float32)  # above the serial threshold
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one, g1 = stats_and_grad("fused", x, t, dict(kw, cross_entropy=True))
        torch.set_num_threads(2)
        two, g2 = stats_and_grad("fused", x, t, dict(kw, cross_entropy=True))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one.intersection, two.intersection) and torch.equal(one.cross_entropy, two.cross_entropy)
    assert torch.equal(g1, g2)


# ----------------------------------------------------------------------------------------------
# memory, through torch's allocator accounting (allocation and free events of the profiler)


def peak_extra_bytes(fn) -> int:
    """Peak of the running sum of bytes allocated minus freed by torch while ``fn`` runs."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak


@pytest.mark.parametrize(
    "loss_fn,kind",
    [
        (diceloss.functional.dice_loss, "index_ignore"),
        (diceloss.functional.dice_ce_loss, "index"),
        (diceloss.functional.dice_focal_loss, "index"),
        (diceloss.functional.dice_ce_loss, "binary"),
    ],
)
def test_peak_memory_at_most_1_25_logits(path, loss_fn, kind):
    C = 1 if kind == "binary" else 14
    x, t, kw = make_case(kind, 2, C, (16, 32, 32), torch.float32)
    x.requires_grad_()
    kw.pop("mode")
    mode = "binary" if kind == "binary" else "multiclass"

    def step():
        loss_fn(x, t, mode=mode, backend="fused", **kw).backward()

    step()  # warm-up: kernel loaded, lazy initialisations done
    x.grad = None
    peak = peak_extra_bytes(step)
    logits = x.numel() * x.element_size()
    assert logits <= peak <= 1.25 * logits, peak / logits  # the gradient itself is 1 x logits
    if loss_fn is not diceloss.functional.dice_loss:
        return
    # the reference needs several times the logits: the accounting does see temporaries
    x.grad = None
    ref_peak = peak_extra_bytes(lambda: loss_fn(x, t, mode=mode, backend="reference", **kw).backward())
    assert ref_peak > 2 * logits


# ----------------------------------------------------------------------------------------------
# torch.compile sees one op


def test_compile_fullgraph_sees_one_op(path):
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    x, t, kw = make_case("index_ignore", 2, 4, (8, 9), torch.float32)
    # auto takes the fused backend with the kernel; without it, so small an input goes to the reference
    backend = "auto" if path == "kernel" else "fused"
    loss = diceloss.DiceCELoss(ignore_index=-100, label_smoothing=0.1, backend=backend)
    compiled = torch.compile(loss, fullgraph=True, backend=capture)
    torch._dynamo.reset()
    xx = x.clone().requires_grad_()
    value = compiled(xx, t)
    assert len(graphs) == 1
    code = graphs[0].code
    assert code.count("fused_stats") == 1 and "one_hot" not in code

    # and through AOT autograd: values and gradients as in eager mode
    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    xx = x.clone().requires_grad_()
    value = compiled(xx, t)
    value.backward()
    xe = x.clone().requires_grad_()
    expected = loss(xe, t)
    expected.backward()
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(xx.grad, xe.grad)
    torch._dynamo.reset()


def test_registered_op_matches_eager_function(path):
    # eager mode runs the autograd.Function, torch.compile the registered op: same numbers both ways
    x, t, kw = make_case("index_ignore", 2, 3, (9, 7), torch.float64)
    prep = diceloss._layout.prepare(x, t, mode="multiclass", from_logits=True, ignore_index=-100)
    args = (prep.target, None, prep.mode, prep.activation, prep.ignore_index, True, False, True, 0.1, None)
    outs, grads = [], []
    def eager(x, target, mask, *options):  # the six outputs of the eager autograd.Function, stacked
        return torch.stack(fused.eager(x, target, mask, OpOptions(*options)), dim=-1)

    for op in (torch.ops.diceloss.fused_stats, eager):
        xx = prep.logits.clone().requires_grad_()
        out = op(xx, *args)
        (out * torch.arange(out.numel(), dtype=out.dtype).reshape(out.shape)).sum().backward()
        outs.append(out.detach())
        grads.append(xx.grad)
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
    # double backward through the registered op raises with the same message
    xx = prep.logits.clone().requires_grad_()
    (g,) = torch.autograd.grad(torch.ops.diceloss.fused_stats(xx, *args)[..., 0].sum(), xx, create_graph=True)
    with pytest.raises(RuntimeError, match='backend="reference"'):
        g.sum().backward()


@pytest.mark.parametrize("huge_pages", [True, False])
def test_gradient_of_32_mib_and_more(huge_pages):
    # 34 MiB of float32 logits: the kernel advises the gradient's pages to transparent huge pages (or not,
    # DICELOSS_NO_HUGEPAGES=1); the numbers must not depend on it
    kernel = cpu.load()
    assert kernel is not None or env_flag("DICELOSS_NO_CPP"), cpu.status()
    if kernel is None:
        pytest.skip(f"no compiled kernel (DICELOSS_NO_CPP is set): {cpu.status()}")
    previous = kernel.set_huge_pages(huge_pages)
    try:
        x, t, kw = make_case("index_ignore", 1, 2, (2**22 + 2**18,), torch.float32, seed=5)
        compare(x, t, dict(kw, cross_entropy=True), torch.float32)
    finally:
        kernel.set_huge_pages(previous)
