"""torch.compile(loss, fullgraph=True) for every loss module: no graph break, and the eager numbers.

Compiling is slow on a small CPU (a few seconds a graph), so there is one case per loss of the registry
(``tests/conftest.py``), each chosen to go through the options that touch Python control flow (weight,
ignore_index, masks, absent, log, exponent). ``fullgraph=True`` turns any graph break (``.item()``,
``.tolist()``, a value check that reads the data) into an error. The value checks are skipped while compiling.

Every test compiles through ``CompileCounterWithBackend``, which counts the graphs Dynamo hands to the real
backend: a test cannot pass without compiling, and one graph per loss shows that nothing was split. The
compile time is printed (``-s`` / ``-rA``), not asserted; timings belong in ``benchmarks/`` (or ``--durations``).

A loss whose registry row has ``fullgraph=False`` builds a target-side map from the data on the host (SciPy /
scikit-image: Hausdorff-DT's distance transforms, Skeleton Recall's skeleton, the boundary loss's signed distance,
blob's components) when the map is not given: it compiles with graph breaks there, and the test checks the same
numbers and that a second batch of the same shapes compiles nothing new.
"""

from __future__ import annotations

import time

import pytest
import torch
from conftest import LOSS, LOSSES

import diceloss

torch_compile = pytest.importorskip("torch._dynamo")
from torch._dynamo.testing import CompileCounterWithBackend  # noqa: E402

# Per loss of the registry: (options, mode, mask, compiler backend), chosen to go through the options that touch
# Python control flow. Inductor (the default, generated C++ code) for two losses; "aot_eager" for the others: the
# same Dynamo trace with fullgraph=True and the same AOTAutograd backward graph, without the C++ compilation
# that costs tens of seconds per graph here. A loss without a row is compiled with its registry example.
CASES = {
    "dice": (dict(weight=[0.5, 1.0, 2.0], ignore_index=255, log=True), "multiclass", True, "inductor"),
    "jaccard": (dict(include_background=False, absent="exclude"), "multiclass", False, "aot_eager"),
    "tversky": (dict(alpha=0.3, beta=0.7, exponent=0.75, batch_dice=True), "multilabel", True, "aot_eager"),
    "gdl": (dict(weighting="square"), "multiclass", False, "aot_eager"),
    "dice_ce": (dict(weight=[0.5, 1.0, 2.0], ignore_index=1, label_smoothing=0.1), "multiclass", True, "inductor"),
    "dice_focal": (dict(gamma=2.0, squared=True), "binary", False, "aot_eager"),
}


def _case(info):
    return CASES.get(info.name, (info.example, "multiclass", False, "aot_eager"))


def test_cases_name_registered_losses():
    # a row for a loss that is not in the registry would never run
    assert set(CASES) <= set(LOSS)


def _data(mode, seed=0):
    g = torch.Generator().manual_seed(seed)
    C = 1 if mode == "binary" else 3
    x = torch.randn(2, C, 8, 8, generator=g)
    if mode == "multiclass":
        t = torch.randint(0, C, (2, 8, 8), generator=g)
        t[:, 0, :3] = 255
    else:
        t = (torch.rand(2, C, 8, 8, generator=g) > 0.5).float()
    return x, t


@pytest.mark.parametrize("info", LOSSES)
def test_compile_fullgraph_matches_eager(info):
    kw, mode, use_mask, compiler = _case(info)
    torch._dynamo.reset()
    loss = info.make(mode=mode, backend="reference", **kw)
    x, t = _data(mode)
    t = torch.where(t == 255, torch.full_like(t, kw.get("ignore_index", 0)), t)
    mask = (torch.arange(64).reshape(8, 8) % 5 != 0).expand(2, 8, 8) if use_mask else None
    # the counting backend hands each Dynamo graph to the real one: no graph, no pass
    counter = CompileCounterWithBackend(compiler)
    start = time.perf_counter()
    compiled = torch.compile(loss, fullgraph=info.fullgraph, backend=counter)
    xc = x.clone().requires_grad_(True)
    out_c = compiled(xc, t, mask)
    out_c.backward()
    print(f"{info.name}: compile ({compiler}) + first forward/backward {time.perf_counter() - start:.1f} s")
    if info.fullgraph:
        assert counter.frame_count == 1, "fullgraph=True compiles the whole forward as one graph"
    else:  # graph breaks at the host-side map: several graphs, at least one
        assert counter.frame_count >= 1
    frames = counter.frame_count
    assert counter.op_count > 0
    xe = x.clone().requires_grad_(True)
    out_e = loss(xe, t, mask)
    out_e.backward()
    torch.testing.assert_close(out_c, out_e, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-4, atol=1e-6)
    # a second batch of the same shapes reuses the graph and still matches
    x2, t2 = _data(mode, seed=1)
    t2 = torch.where(t2 == 255, torch.full_like(t2, kw.get("ignore_index", 0)), t2)
    x2c, x2e = x2.clone().requires_grad_(True), x2.clone().requires_grad_(True)
    torch.testing.assert_close(compiled(x2c, t2, mask), loss(x2e, t2, mask), rtol=1e-5, atol=1e-6)
    assert counter.frame_count == frames, "the second batch recompiled"


def test_value_checks_off_while_compiling_on_in_eager():
    # a bad probability is caught in eager mode; the compiled graph does not read values (no sync, no break)
    torch._dynamo.reset()
    loss = diceloss.DiceLoss(from_logits=False, backend="reference")
    p = torch.softmax(torch.randn(1, 3, 4, 4), 1)
    t = torch.randint(0, 3, (1, 4, 4))
    counter = CompileCounterWithBackend("eager")
    compiled = torch.compile(loss, fullgraph=True, backend=counter)
    torch.testing.assert_close(compiled(p, t), loss(p, t))
    assert counter.frame_count == 1 and counter.op_count > 0
    bad = p.clone()
    bad[0, 0, 0, 0] = 1.5
    with pytest.raises(ValueError, match="probabilities in"):
        loss(bad, t)
    assert torch.isfinite(compiled(bad, t))
    assert counter.frame_count == 1  # the bad value did not make Dynamo recompile (no guard on values)
    # shape checks run while tracing, so they still fail in compiled code
    with pytest.raises(Exception, match="batch size"):
        compiled(p, torch.randint(0, 3, (2, 4, 4)))
