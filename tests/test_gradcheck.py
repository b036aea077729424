"""torch.autograd.gradcheck in float64 for every loss over the options that change the gradient.

Shapes are tiny (2 x 3 x 5) so the finite differences are cheap. The inputs stay away from the
kinks of the losses (p = g in the semimetric's min, the log-Dice floor, absent classes switching).

A loss that is not a head gets the rows of the shared options and one row of its registry example (its own
options are checked in its own test file); one that needs 2-D inputs (clDice) gets the same positions as a
2-D image (``LossInfo.fit``: 5 -> 1 x 5, 6 -> 2 x 3).
"""

from __future__ import annotations

import zlib

import pytest
import torch
import torch.nn.functional as F
from conftest import LOSSES, MODES, seeded

from diceloss import functional as DF

BACKEND = "reference"
B, C, N = 2, 3, 5

# the inputs are valid by construction; skipping the value checks halves the time of the many forwards
pytestmark = pytest.mark.usefixtures("no_value_checks")

# the options each loss takes come from the registry (tests/conftest.py)
OPTIONS = [
    {},
    {"from_logits": False},
    {"batch_dice": True},
    {"squared": True},
    {"log": True},
    {"ignore_index": 255},
    {"ignore_index": 1},
    {"mask": True},
    {"weight": [0.5, 1.0, 2.0]},
    {"weight": [0.5, 1.0, 2.0], "include_background": False, "batch_dice": True},
    {"target": "soft"},
    {"target": "soft", "soft_label": True},
    {"target": "onehot", "ignore_index": 0, "mask": True},
    {"absent": "exclude", "sparse_target": True},
    {"reduction": "sum", "smooth_nr": 0.1, "smooth_dr": 1.0},
    {"reduction": "none"},
    {"alpha": 0.2, "beta": 0.8, "exponent": 0.75},
    {"exponent": 2.0, "batch_dice": True},
    {"weighting": "simple", "sparse_target": True},
    {"weighting": "uniform", "mask": True},
    {"label_smoothing": 0.1, "weight": [0.5, 1.0, 2.0], "ignore_index": 255},
    {"gamma": 0.5, "lambda_focal": 2.0},
    {"gamma": 2.0, "weight": [0.5, 1.0, 2.0], "mask": True},
]


def _inputs(mode, opts, seed, info=None):
    x, t, mask = _inputs_1d(mode, opts, seed)
    if info is None or info.takes_rank(1):
        return x, t, mask
    # the same positions as a 2-D image, for a loss that needs one
    S = info.fit(x.shape[-1])
    x, t = x.reshape(*x.shape[:-1], *S), t.reshape(*t.shape[:-1], *S)
    return x, t, None if mask is None else mask.reshape(mask.shape[0], *S)


def _inputs_1d(mode, opts, seed):
    g = seeded(seed)
    c = 1 if mode == "binary" else C
    x = torch.randn(B, c, N, generator=g, dtype=torch.float64)
    if not opts.get("from_logits", True):
        # probabilities away from 0 and 1, so the finite differences stay inside [0, 1]
        x = 0.1 + 0.8 * torch.rand(B, c, N, generator=g, dtype=torch.float64)
    target = opts.get("target", "index")
    if mode == "multiclass":
        t = torch.randint(0, C, (B, N), generator=g)
        if opts.get("sparse_target"):
            t = torch.tensor([[0, 0, 1, 0, 1], [2, 0, 0, 2, 0]])  # class 2 absent in sample 0, class 1 in 1
        if opts.get("ignore_index") in (255, 1) and target == "index":
            t[:, 1] = opts["ignore_index"]
        if target == "onehot":
            t = F.one_hot(t, C).permute(0, 2, 1).double()
        elif target == "soft":
            t = torch.softmax(3 * torch.randn(B, C, N, generator=g, dtype=torch.float64), 1)
    else:
        t = torch.rand(B, c, N, generator=g, dtype=torch.float64)
        if target != "soft":
            t = (t > 0.5).double()
        if opts.get("sparse_target"):
            t[0, -1] = 0
        if opts.get("ignore_index") is not None:
            t[:, :, 1] = opts["ignore_index"]
    mask = None
    if opts.get("mask"):
        mask = torch.rand(B, N, generator=g) > 0.3
    return x, t, mask


def _cases():
    out = []
    for info in LOSSES:
        # a loss that is not a head: the grid's shared options, and its own through its registry example
        rows = list(enumerate(OPTIONS)) + ([] if info.head else [("example", info.example)])
        for mode in info.modes:
            for i, opts in rows:
                keys = set(opts) - {"mask", "target", "sparse_target"}
                if not (info.takes(*keys) if i == "example" else info.speaks(*keys)):
                    continue
                if opts.get("target") == "soft" and info.hard_targets:
                    continue  # Lovász refuses soft targets
                if info.unreduced is None and opts.get("reduction") == "none":
                    continue
                if mode != "multiclass" and (opts.get("target") == "onehot" or opts.get("ignore_index") == 1):
                    continue
                out.append(pytest.param(info, mode, opts, id=f"{info.name}-{mode}-{i}"))
    return out


@pytest.mark.parametrize("info,mode,opts", _cases())
def test_gradcheck(info, mode, opts):
    kind = info.name
    x, t, mask = _inputs(mode, opts, zlib.crc32(f"{kind}{mode}{sorted(opts.items())}".encode()) % 1000, info)
    kw = {k: v for k, v in opts.items() if k not in ("mask", "target", "sparse_target")}
    if mode == "binary" and "weight" in kw:
        kw["weight"] = kw["weight"][:1]
    if mode == "binary" and "dist_matrix" in kw:  # GWDL's matrix is 2 x 2 in binary mode
        kw["dist_matrix"] = [row[:2] for row in kw["dist_matrix"][:2]]
    x.requires_grad_(True)
    fn = info.call

    def f(inp):
        return fn(inp, t, mask, mode=mode, backend=BACKEND, **kw)

    # fast mode compares the Jacobian along random directions: one backward and two forwards per check
    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


def _with_modes(rows=LOSSES):
    return [pytest.param(info, mode, id=f"{mode}-{info.name}") for mode in MODES for info in rows if mode in info.modes]


@pytest.mark.parametrize("info,mode", _with_modes())
def test_gradcheck_full_jacobian(info, mode):
    # the full Jacobian, element by element, for the default options (per value where the loss has them)
    x, t, mask = _inputs(mode, {"mask": True}, 17, info)
    x.requires_grad_(True)
    kw = {"reduction": "none"} if info.unreduced is not None else {}
    assert torch.autograd.gradcheck(
        lambda inp: info.call(inp, t, mask, mode=mode, backend=BACKEND, **kw), (x,)
    )


@pytest.mark.parametrize("info", LOSSES)
def test_gradcheck_spatial_2d_and_batch_dice_multilabel(info):
    g = seeded(3)
    x = torch.randn(2, 2, 3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    t = (torch.rand(2, 2, 3, 2, generator=g) > 0.5).double()
    # batch Dice where the loss has it; multilabel where it takes it (else binary: the first channel)
    kw = {"batch_dice": True} if info.takes("batch_dice") else {}
    mode = "multilabel" if "multilabel" in info.modes else "binary"
    if mode == "binary":
        t = t[:, :1]
        x = x[:, :1].detach().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda inp: info.call(inp, t, mode=mode, backend=BACKEND, **kw), (x,))


def test_gradgradcheck_reference_dice():
    # the reference backend is plain autograd, so it also has second derivatives
    g = seeded(4)
    x = torch.randn(1, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 3, (1, 4), generator=g)
    assert torch.autograd.gradgradcheck(lambda inp: DF.dice_loss(inp, t, backend=BACKEND), (x,))


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("mode", MODES)
def test_focal_gradient_finite_at_saturated_logits(gamma, mode):
    # confident, correct logits make p == 1 exactly; (1 - p) ** gamma with gamma < 1 must not give NaN there
    c = 1 if mode == "binary" else 2
    x = torch.full((1, c, 4), -200.0, dtype=torch.float32)
    if mode == "multiclass":
        x[0, 0, :2] = 200.0
        x[0, 1, 2:] = 200.0
        t = torch.tensor([[0, 0, 1, 1]])
    else:
        x[:, :, :2] = 200.0
        t = torch.tensor([1.0, 1.0, 0.0, 0.0]).expand(1, c, 4).clone()
    x.requires_grad_(True)
    loss = DF.dice_focal_loss(x, t, mode=mode, gamma=gamma, backend=BACKEND)
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert float(loss.detach()) < 1e-6


@pytest.mark.parametrize("info,mode", _with_modes())
def test_gradient_finite_at_probabilities_zero_and_one(info, mode):
    # from_logits=False with exact 0 / 1 probabilities (hard maps, clamped outputs): finite values, gradients
    c = 1 if mode == "binary" else 2
    p = torch.tensor([1.0, 0.0, 0.5, 0.0, 1.0, 0.25], dtype=torch.float64).expand(2, c, 6).clone()
    if mode == "multiclass":
        p[:, 1] = 1 - p[:, 0]
        t = torch.tensor([[0, 1, 0, 0, 1, 1]]).expand(2, 6)
    else:
        t = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0], dtype=torch.float64).expand(2, c, 6)
    S = info.fit(6)  # 2 x 3 for a loss that needs a 2-D image
    p, t = p.reshape(*p.shape[:-1], *S).clone(), t.reshape(*t.shape[:-1], *S)
    p.requires_grad_(True)
    loss = info.call(p, t, mode=mode, from_logits=False, backend=BACKEND)
    (grad,) = torch.autograd.grad(loss, p)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
