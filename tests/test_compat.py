"""diceloss.compat against MONAI 1.6.1 and segmentation_models_pytorch 0.6.0 themselves.

Random inputs over each peer's argument grid (float64), values and input gradients to 1e-6. SMP's package
``__init__`` imports its model zoo (torchvision); its ``losses`` folder needs only torch, so it is loaded as
a stand-alone package with importlib (SMP is installed with ``pip install --no-deps``, see the Makefile).
"""

from __future__ import annotations

import importlib.util
import os
import random
import sys
import warnings
import zlib

import pytest
import torch
import torch.nn.functional as F

import diceloss
import diceloss.compat._common
from diceloss.compat import monai as cm
from diceloss.compat import smp as cs

monai_losses = pytest.importorskip("monai.losses")

TOL = 1e-6


def _load_smp_losses():
    spec = importlib.util.find_spec("segmentation_models_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    losses_dir = os.path.join(list(spec.submodule_search_locations)[0], "losses")
    name = "_smp_losses_standalone"
    if name in sys.modules:
        return sys.modules[name]
    lspec = importlib.util.spec_from_file_location(
        name, os.path.join(losses_dir, "__init__.py"), submodule_search_locations=[losses_dir]
    )
    module = importlib.util.module_from_spec(lspec)
    sys.modules[name] = module
    lspec.loader.exec_module(module)
    return module


smp_losses = _load_smp_losses()
needs_smp = pytest.mark.skipif(
    smp_losses is None,
    reason="segmentation_models_pytorch 0.6.0 is not installed (make test installs it with pip --no-deps)",
)


# tiny tensors: thread start-up dominates on a shared machine
pytestmark = pytest.mark.usefixtures("one_thread")


def _compare(peer, ours, x, t, what):
    """Values (any shape) and gradients of the summed values agree to TOL."""
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        v1 = peer(x1, t)
        v2 = ours(x2, t)
    assert tuple(v2.shape) == tuple(v1.shape), f"{what}: shape {tuple(v2.shape)} != peer {tuple(v1.shape)}"
    assert torch.allclose(v2.double(), v1.double(), atol=TOL, rtol=0, equal_nan=True), (
        f"{what}: value {v2.detach().flatten()[:6].tolist()} != peer {v1.detach().flatten()[:6].tolist()}"
    )
    v1.sum().backward()
    v2.sum().backward()
    # where the peer's gradient is NaN (SMP: 0 ** gamma, gamma < 1), diceloss may give 0 at ignored positions
    finite = torch.isfinite(x1.grad)
    assert torch.allclose(x2.grad[finite], x1.grad[finite], atol=TOL, rtol=0), (
        f"{what}: max gradient difference {float((x2.grad - x1.grad).abs().max()):.3g}"
    )


SPATIAL = [(7,), (4, 5), (3, 4, 2)]


def _monai_case(
    rng: random.Random, *, allow_ignore=True, allow_soft=True, acts=("softmax", "sigmoid", "none", "other")
):
    C = rng.choice([1, 3, 3])
    spatial = rng.choice(SPATIAL)
    B = 2
    act = rng.choice(acts)
    kw = {}
    if act == "softmax":
        kw["softmax"] = True
    elif act == "sigmoid":
        kw["sigmoid"] = True
    elif act == "other":
        kw["other_act"] = lambda z: torch.softmax(z, 1) * 0.9 + 0.05
    to_onehot_y = C > 1 and rng.random() < 0.6
    kw["to_onehot_y"] = to_onehot_y
    gen = torch.Generator().manual_seed(rng.randrange(10**6))
    x = torch.randn(B, C, *spatial, generator=gen, dtype=torch.float64) * 1.5
    if act == "none" or (act == "softmax" and C == 1):  # MONAI ignores softmax for one channel
        x = torch.softmax(x, 1) if C > 1 else torch.sigmoid(x)
    labels = torch.randint(0, max(C, 2), (B, 1, *spatial), generator=gen)
    if C > 1 and rng.random() < 0.3:
        labels[0][labels[0] == 2] = 1  # class 2 absent from sample 0
    ignore = None
    if allow_ignore and rng.random() < 0.4:
        ignore = rng.choice([1, 255] if C > 1 else [1])
    if to_onehot_y:
        t = labels.clone()
        if ignore is not None:
            t.view(-1)[::3] = ignore
    elif C == 1:
        t = labels.double()
        if allow_soft and rng.random() < 0.3 and ignore is None:
            t = torch.rand(t.shape, generator=gen, dtype=torch.float64)
    else:
        t = F.one_hot(labels[:, 0], C).movedim(-1, 1).double()
        if ignore == 255:
            t[..., 0] = 0.0  # positions with an all-zero target: MONAI's sentinel
        elif ignore is None and allow_soft and rng.random() < 0.3:
            t = torch.softmax(torch.randn(t.shape, generator=gen, dtype=torch.float64) * 2, 1)
    if ignore is not None:
        kw["ignore_index"] = ignore
    kw["include_background"] = rng.random() < 0.6
    kw["batch"] = rng.random() < 0.4
    kw["reduction"] = rng.choice(["mean", "sum", "none"])
    kw["smooth_nr"], kw["smooth_dr"] = rng.choice([(1e-5, 1e-5), (0.0, 1e-4), (1.0, 1.0)])
    return C, x, t, kw


def _weight(rng, C, include_background):
    k = C if include_background or C == 1 else C - 1
    return rng.choice([None, 2.0, [round(rng.uniform(0.1, 3), 2) for _ in range(k)]])


@pytest.mark.parametrize("case", range(40))
def test_monai_dice_loss(case):
    rng = random.Random(1000 + case)
    C, x, t, kw = _monai_case(rng)
    kw["squared_pred"] = rng.random() < 0.3
    kw["jaccard"] = rng.random() < 0.3
    kw["soft_label"] = rng.random() < 0.4
    kw["weight"] = _weight(rng, C, kw["include_background"])
    _compare(monai_losses.DiceLoss(**kw), cm.DiceLoss(**kw), x, t, f"DiceLoss {kw}")


@pytest.mark.parametrize("case", range(20))
def test_monai_generalized_dice_loss(case):
    rng = random.Random(2000 + case)
    C, x, t, kw = _monai_case(rng, allow_ignore=False)
    kw["w_type"] = rng.choice(["square", "simple", "uniform"])
    kw["soft_label"] = rng.random() < 0.4
    _compare(monai_losses.GeneralizedDiceLoss(**kw), cm.GeneralizedDiceLoss(**kw), x, t, f"GDL {kw}")


def test_monai_generalized_dice_no_class_present_is_zero():
    # MONAI's quirk, kept: a sample with no class present has all weights 0 and loss 0,
    # whatever the prediction
    x = torch.full((2, 1, 4, 4), 0.3, dtype=torch.float64)
    t = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    _compare(monai_losses.GeneralizedDiceLoss(), cm.GeneralizedDiceLoss(), x, t, "GDL empty")
    assert float(cm.GeneralizedDiceLoss()(x, t)) == 0.0


@pytest.mark.parametrize("case", range(20))
def test_monai_tversky_loss(case):
    rng = random.Random(3000 + case)
    C, x, t, kw = _monai_case(rng)
    kw["alpha"], kw["beta"] = rng.choice([(0.5, 0.5), (0.3, 0.7), (1.0, 0.2)])
    kw["soft_label"] = rng.random() < 0.4
    _compare(monai_losses.TverskyLoss(**kw), cm.TverskyLoss(**kw), x, t, f"Tversky {kw}")


@pytest.mark.parametrize("case", range(24))
def test_monai_dice_ce_loss(case):
    rng = random.Random(4000 + case)
    C, x, t, kw = _monai_case(rng, allow_ignore=False)
    if kw["reduction"] == "none":
        kw["reduction"] = "mean"
    kw["squared_pred"] = rng.random() < 0.3
    kw["jaccard"] = rng.random() < 0.3
    if rng.random() < 0.5:
        kw["weight"] = torch.tensor([rng.uniform(0.2, 3) for _ in range(C)], dtype=torch.float64)
    kw["lambda_dice"], kw["lambda_ce"] = rng.choice([(1.0, 1.0), (0.3, 2.0)])
    kw["label_smoothing"] = rng.choice([0.0, 0.0, 0.1])
    _compare(monai_losses.DiceCELoss(**kw), cm.DiceCELoss(**kw), x, t, f"DiceCE {kw}")


@pytest.mark.parametrize("case", range(24))
def test_monai_dice_focal_loss(case):
    rng = random.Random(5000 + case)
    C, x, t, kw = _monai_case(rng, allow_ignore=False, allow_soft=False)
    kw["squared_pred"] = rng.random() < 0.3
    kw["jaccard"] = rng.random() < 0.3
    kw["gamma"] = rng.choice([0.0, 2.0, 1.5])
    w = _weight(rng, C, kw["include_background"])
    kw["weight"] = w if not (C == 1 and isinstance(w, list)) else 0.5
    kw["lambda_dice"], kw["lambda_focal"] = rng.choice([(1.0, 1.0), (0.3, 2.0)])
    k = C if kw["include_background"] or C == 1 else C - 1
    kw["alpha"] = rng.choice([None, None, 0.25, [0.3] * k])
    _compare(monai_losses.DiceFocalLoss(**kw), cm.DiceFocalLoss(**kw), x, t, f"DiceFocal {kw}")


@pytest.mark.parametrize(
    "cls, C, kw",
    [
        ("DiceCELoss", 1, dict()),  # probabilities for the Dice, BCE on the same tensor as logits
        ("DiceCELoss", 1, dict(sigmoid=True)),  # one statistics pass for Dice and BCE
        ("DiceCELoss", 1, dict(sigmoid=True, weight=torch.tensor([2.5], dtype=torch.float64))),  # pos_weight
        (
            "DiceCELoss",
            3,
            dict(softmax=True, to_onehot_y=True, weight=torch.tensor([0.5, 1, 2.0], dtype=torch.float64)),
        ),
        (
            "DiceCELoss",
            3,
            dict(softmax=True, label_smoothing=0.2, reduction="sum"),
        ),  # one-hot target as probabilities
        ("DiceCELoss", 3, dict(sigmoid=True, to_onehot_y=True, include_background=False)),
        ("DiceFocalLoss", 3, dict(sigmoid=True)),  # one statistics pass for Dice and focal
        ("DiceFocalLoss", 3, dict(sigmoid=True, reduction="sum", weight=[1.0, 2.0, 0.5])),
        (
            "DiceFocalLoss",
            3,
            dict(softmax=True, to_onehot_y=True, include_background=False, weight=[2.0, 0.5]),
        ),
        ("DiceFocalLoss", 1, dict(sigmoid=True, gamma=0.5, weight=3.0)),
        ("DiceFocalLoss", 3, dict(sigmoid=True, alpha=[0.2, 0.5, 0.9], reduction="none")),
    ],
)
def test_monai_compound_paths(cls, C, kw):
    gen = torch.Generator().manual_seed(C)
    x = torch.randn(2, C, 5, 4, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, max(C, 2), (2, 1, 5, 4), generator=gen)
    if kw.get("to_onehot_y"):
        t = labels
    elif C == 1:
        t = labels.double()
        if not kw.get("sigmoid"):
            x = torch.sigmoid(x)
    else:
        t = F.one_hot(labels[:, 0], C).movedim(-1, 1).double()
    _compare(getattr(monai_losses, cls)(**kw), getattr(cm, cls)(**kw), x, t, f"{cls} C={C} {kw}")


def test_monai_dice_focal_uses_sigmoid_focal_with_softmax():
    # the quirk (peers.md E3): softmax=True still adds the sigmoid focal term
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    t = torch.randint(0, 3, (2, 1, 5, 5))
    ours = cm.DiceFocalLoss(softmax=True, to_onehot_y=True)(x, t)
    dice = cm.DiceLoss(softmax=True, to_onehot_y=True)(x, t)
    g = F.one_hot(t[:, 0], 3).movedim(-1, 1).double()
    p = torch.sigmoid(x)
    focal = -(g * (1 - p) ** 2 * torch.log(p) + (1 - g) * p**2 * torch.log(1 - p)).mean()
    assert abs(float(ours - dice - focal)) < 1e-6


def test_monai_reduction_none_shapes():
    x = torch.randn(2, 3, 4, 5, 6)
    t = torch.randint(0, 3, (2, 1, 4, 5, 6))
    args = dict(softmax=True, to_onehot_y=True, reduction="none")
    assert cm.DiceLoss(**args)(x, t).shape == (2, 3, 1, 1, 1)
    assert cm.DiceLoss(batch=True, **args)(x, t).shape == (3, 1, 1, 1)
    assert cm.DiceLoss(include_background=False, **args)(x, t).shape == (2, 2, 1, 1, 1)
    assert cm.TverskyLoss(**args)(x, t).shape == (2, 3)
    assert cm.TverskyLoss(batch=True, **args)(x, t).shape == (3,)
    assert cm.GeneralizedDiceLoss(**args)(x, t).shape == (2, 1, 1, 1, 1)
    assert cm.GeneralizedDiceLoss(batch=True, **args)(x, t).shape == (1, 1, 1, 1)


def test_monai_jaccard_differs_from_diceloss_jaccard_only_in_smoothing():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    t = torch.randint(0, 3, (2, 6, 6))
    s = 0.5
    peer = cm.DiceLoss(softmax=True, to_onehot_y=True, jaccard=True, smooth_nr=s, smooth_dr=s)(x, t[:, None])
    same = diceloss.JaccardLoss(smooth_nr=s / 2, smooth_dr=s / 2)(
        x, t
    )  # (2I + s)/(2U + s) = (I + s/2)/(U + s/2)
    other = diceloss.JaccardLoss(smooth_nr=s, smooth_dr=s)(x, t)
    assert abs(float(peer - same)) < 1e-12
    assert abs(float(peer - other)) > 1e-4


def test_monai_float16_does_not_overflow():
    # MONAI sums float16 in float16: 1.0 exactly here (peers.md E11); the compat class sums in float32
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 512, 512, generator=gen)
    t = torch.randint(0, 2, (1, 1, 512, 512), generator=gen)
    loss = cm.DiceLoss(softmax=True, to_onehot_y=True)
    exact = float(loss(x.half().double(), t))
    ours = loss(x.half(), t)
    assert torch.isfinite(ours) and abs(float(ours) - exact) < 1e-3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peer = float(monai_losses.DiceLoss(softmax=True, to_onehot_y=True)(x.half(), t))
    assert abs(peer - exact) > 1e-2  # the reason for the difference


def test_monai_argument_errors():
    with pytest.raises(ValueError, match="Incompatible"):
        cm.DiceLoss(sigmoid=True, softmax=True)
    with pytest.raises(TypeError, match="other_act"):
        cm.DiceLoss(other_act=3)
    with pytest.raises(ValueError, match="reduction"):
        cm.DiceLoss(reduction="avg")
    with pytest.raises(ValueError, match="reduction"):
        cm.DiceCELoss(reduction="none")
    with pytest.raises(ValueError, match="w_type"):
        cm.GeneralizedDiceLoss(w_type="cube")
    with pytest.raises(ValueError, match="no less than 0"):
        cm.DiceLoss(weight=[1.0, -1.0])
    with pytest.raises(ValueError, match="lambda_ce"):
        cm.DiceCELoss(lambda_ce=-1.0)
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="different shape"):
        cm.DiceLoss(softmax=True)(x, torch.randint(0, 3, (2, 1, 4, 4)))
    with pytest.raises(ValueError, match=r"\(B, 1, \*spatial\)"):
        cm.DiceLoss(softmax=True, to_onehot_y=True)(x, torch.randint(0, 3, (2, 4, 4)))
    with pytest.raises(ValueError, match=r"class indices must be in \[0, 2\].*\[7\]"):
        cm.DiceLoss(softmax=True, to_onehot_y=True)(x, torch.full((2, 1, 4, 4), 7))
    with pytest.raises(ValueError, match="length of the `weight`"):
        cm.DiceLoss(softmax=True, to_onehot_y=True, weight=[1.0, 2.0])(x, torch.randint(0, 3, (2, 1, 4, 4)))
    with pytest.raises(ValueError, match="spatial"):
        cm.DiceLoss()(torch.rand(2, 3), torch.rand(2, 3))
    with pytest.raises(TypeError, match="floating"):
        cm.DiceLoss()(torch.ones(2, 3, 4, dtype=torch.long), torch.ones(2, 3, 4))
    with pytest.raises(ValueError, match="number of dimensions"):
        cm.DiceCELoss(softmax=True, to_onehot_y=True)(x, torch.randint(0, 3, (2, 4, 4)))


def test_compat_runs_on_the_statistics_layer(monkeypatch):
    calls = []
    original = diceloss.compat._common.stats_from_layout

    def spy(prep, request, backend="auto"):
        calls.append(backend)
        return original(prep, request, backend)

    monkeypatch.setattr(diceloss.compat._common, "stats_from_layout", spy)
    x = torch.randn(2, 3, 4, 4)
    cm.DiceCELoss(softmax=True, to_onehot_y=True)(x, torch.randint(0, 3, (2, 1, 4, 4)))
    cs.DiceLoss("multiclass")(x, torch.randint(0, 3, (2, 4, 4)))
    assert calls == ["auto", "auto"]  # one statistics pass each, on the fastest backend


@pytest.mark.parametrize(
    "make, target",
    [
        (lambda be: cm.DiceCELoss(softmax=True, to_onehot_y=True, label_smoothing=0.1, backend=be), "index"),
        (lambda be: cm.DiceFocalLoss(sigmoid=True, backend=be), "onehot"),
        (lambda be: cm.DiceLoss(sigmoid=True, to_onehot_y=True, squared_pred=True, backend=be), "index"),
        (lambda be: cm.TverskyLoss(softmax=True, soft_label=True, ignore_index=1, backend=be), "onehot"),
        (lambda be: cs.DiceLoss("multilabel", ignore_index=1, backend=be), "multihot"),
        (lambda be: cs.JaccardLoss("multiclass", ignore_index=255, backend=be), "flat"),
    ],
)
def test_auto_backend_matches_reference(make, target):
    # backend="auto" picks the fastest backend that serves the call (fused on the CPU)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 6, 6, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 6, 6), generator=gen)
    if target == "index":
        t = labels[:, None]
    elif target == "onehot":
        t = F.one_hot(labels, 3).movedim(-1, 1).double()
    elif target == "multihot":
        t = (torch.rand(2, 3, 6, 6, generator=gen) > 0.5).double()
    else:
        t = labels.clone()
        t[0, 0] = 255  # ignored
    _compare(make("reference"), make("auto"), x, t, f"auto vs reference {target}")


# --------------------------------------------------------------------------------------------- SMP


def _smp_case(rng: random.Random):
    mode = rng.choice(["binary", "multiclass", "multilabel"])
    spatial = rng.choice(SPATIAL)
    B, C = 2, (1 if mode == "binary" else 3)
    gen = torch.Generator().manual_seed(rng.randrange(10**6))
    x = torch.randn(B, C, *spatial, generator=gen, dtype=torch.float64) * 1.5
    kw = dict(mode=mode)
    kw["from_logits"] = rng.random() < 0.7
    if not kw["from_logits"]:
        x = torch.softmax(x, 1) if mode == "multiclass" else torch.sigmoid(x)
    kw["smooth"] = rng.choice([0.0, 0.5, 1.0])
    kw["eps"] = rng.choice([1e-7, 1e-7, 5.0])
    kw["log_loss"] = rng.random() < 0.3
    ignore = rng.choice([None, None, -1, 255, 1])
    if mode == "multiclass":
        t = torch.randint(0, C, (B, *spatial), generator=gen)
        if rng.random() < 0.4:
            t[t == 2] = 0  # class 2 absent from the whole batch: SMP zeroes it
        if ignore is not None:
            t.view(-1)[::4] = ignore
    else:
        t = (torch.rand(B, C, *spatial, generator=gen) > 0.6).double()
        if rng.random() < 0.3:
            t = torch.rand(B, C, *spatial, generator=gen, dtype=torch.float64)  # soft targets
        if rng.random() < 0.3:
            t[:, -1] = 0.0  # last channel absent
        if ignore is not None:
            t.view(-1)[::5] = float(ignore)
        if mode == "binary" and rng.random() < 0.5:
            t = t[:, 0]  # (N, *S) target
    if ignore is not None:
        kw["ignore_index"] = ignore
    if mode != "binary":
        if rng.random() < 0.3:
            kw["classes"] = rng.choice([[0, 2], [1]])
        if rng.random() < 0.3:
            kw["class_weights"] = [round(rng.uniform(0.1, 3), 2) for _ in range(C)]
    return x, t, kw


@needs_smp
@pytest.mark.parametrize("name", ["DiceLoss", "JaccardLoss", "TverskyLoss"])
@pytest.mark.parametrize("case", range(20))
def test_smp_losses(name, case):
    rng = random.Random(zlib.crc32(name.encode()) + case)
    x, t, kw = _smp_case(rng)
    if name == "TverskyLoss":
        kw["alpha"], kw["beta"] = rng.choice([(0.5, 0.5), (0.3, 0.7)])
        kw["gamma"] = rng.choice([1.0, 0.75, 2.0])
    _compare(getattr(smp_losses, name)(**kw), getattr(cs, name)(**kw), x, t, f"SMP {name} {kw}")


def test_smp_formula_by_hand():
    # independent of SMP: batch-level Dice with 2s smoothing, absent class zeroed but counted in the mean
    x = torch.tensor(
        [[[2.0, -1.0, 0.5, 0.0], [-2.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]]], dtype=torch.float64
    )
    t = torch.tensor([[0, 1, 1, 0]])
    s = 0.5
    p = torch.softmax(x, 1)[0]
    g = F.one_hot(t[0], 3).T.double()
    I, P, G = (p * g).sum(1), p.sum(1), g.sum(1)
    per_class = (1 - (2 * I + 2 * s) / (P + G + 2 * s)) * (G > 0)
    assert per_class[2] == 0
    expected = per_class.mean()
    assert abs(float(cs.DiceLoss("multiclass", smooth=s)(x, t)) - float(expected)) < 1e-12
    tv = ((1 - (I + s) / (I + 0.3 * (P - I) + 0.7 * (G - I) + s)) * (G > 0)).mean() ** 0.75
    assert (
        abs(float(cs.TverskyLoss("multiclass", smooth=s, alpha=0.3, beta=0.7, gamma=0.75)(x, t)) - float(tv))
        < 1e-12
    )


def test_smp_absent_class_has_no_gradient():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 2, (2, 4, 4))  # class 2 absent from the batch
    loss = cs.DiceLoss("multiclass", from_logits=False)
    p = torch.softmax(x, 1)
    (g,) = torch.autograd.grad(loss(p, t), p)
    assert float(g[:, 2].abs().max()) == 0.0


def test_smp_argument_errors():
    with pytest.raises(ValueError, match="mode"):
        cs.DiceLoss("multi")
    with pytest.raises(ValueError, match="class_weights"):
        cs.DiceLoss("binary", class_weights=[1.0])
    with pytest.raises(ValueError, match="classes"):
        cs.JaccardLoss("binary", classes=[0])
    with pytest.raises(ValueError, match="class indices"):
        cs.DiceLoss("multiclass")(torch.randn(2, 3, 4), torch.randint(0, 3, (2, 3, 4)))
    with pytest.raises(ValueError, match=r"class indices must be in \[0, 2\]"):
        cs.DiceLoss("multiclass")(torch.randn(2, 3, 4), torch.full((2, 4), 5))
    with pytest.raises(ValueError, match="shape"):
        cs.DiceLoss("multilabel")(torch.randn(2, 3, 4), torch.rand(2, 2, 4))
    with pytest.raises(ValueError, match="batch"):
        cs.DiceLoss("binary")(torch.randn(2, 1, 4), torch.rand(3, 1, 4))


# ------------------------------------------------------------- MONAI's own tests (make peer-tests)

MONAI_CLASSES = ["DiceLoss", "GeneralizedDiceLoss", "TverskyLoss", "DiceCELoss", "DiceFocalLoss"]


@pytest.mark.parametrize("cls", MONAI_CLASSES)
def test_monai_shape_mismatch_is_assertion_and_value_error(cls):
    # MONAI raises AssertionError (its test_ill_shape, users' `except AssertionError`); diceloss ValueError
    with pytest.raises(AssertionError, match="different shape") as info:
        getattr(cm, cls)()(torch.ones(1, 2, 3), torch.ones(1, 2, 5))
    assert isinstance(info.value, ValueError) and isinstance(info.value, cm.ShapeMismatchError)
    with pytest.raises(ValueError, match="different shape"):
        getattr(cm, cls)()(torch.ones(2, 2, 3), torch.ones(2, 2, 4))


@pytest.mark.parametrize("cls", MONAI_CLASSES)
@pytest.mark.parametrize("option", ["include_background=False", "softmax=True", "to_onehot_y=True"])
def test_monai_single_channel_warnings(cls, option):
    # MONAI warns that each of these is ignored for a single channel (its test_input_warnings)
    name, value = option.split("=")
    loss = getattr(cm, cls)(**{name: value == "True"})
    with pytest.warns(UserWarning, match=rf"single channel prediction, `{option}` ignored"):
        loss(torch.ones(1, 1, 3), torch.ones(1, 1, 3))


@pytest.mark.parametrize("weight", [None, 2.0, (1.0, 1.0, 2.0)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_monai_dice_focal_float32_is_monais_arithmetic(reduction, weight):
    # MONAI's test_dice_focal_loss compares DiceFocalLoss with DiceLoss + FocalLoss at rtol 1e-7, below one
    # float32 ulp: the float32 focal term must be MONAI's own arithmetic, and the Dice term the compat DiceLoss's
    for seed in range(12):
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(3, 3, 5, 5, generator=gen)
        t = torch.randint(0, 2, (3, 3, 5, 5), generator=gen)
        kw = dict(reduction=reduction, weight=weight)
        focal = monai_losses.FocalLoss(gamma=1.0, **kw)(x, t)
        dice = cm.DiceLoss(**kw)(x, t)
        ours = cm.DiceFocalLoss(gamma=1.0, lambda_focal=1.5, **kw)(x, t)
        assert torch.equal(cm.DiceFocalLoss(gamma=1.0, lambda_dice=0.0, **kw)(x, t), focal), seed
        assert torch.equal(ours, dice + 1.5 * focal), seed
