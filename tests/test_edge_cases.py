"""Edge cases a careless user meets: option types from configs, NumPy scalars, weights at the limits of float32,
-inf logits, inputs the kernels cannot read. Each is a clear error before any computation, or the right number on
every backend — never a silently wrong one."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import LOSSES, value_checks

import diceloss
from diceloss import functional as DF

BOOL_OPTIONS = ["from_logits", "include_background", "batch_dice", "soft_label"]


@pytest.mark.parametrize(
    "info,name", [(info, name) for info in LOSSES for name in BOOL_OPTIONS + ["squared", "log"] if info.takes(name)]
)
@pytest.mark.parametrize("value", ["False", "false", 0, 1.0, None])
def test_boolean_options_take_bools_only(info, name, value):
    """Strings from YAML / argparse configs ("False" is truthy) and numbers are refused, naming the option."""
    if value is None and inspect.signature(info.function).parameters[name].default is None:
        # None is this option's documented default ("by mode": clDice's, Skeleton Recall's include_background);
        # it is a valid value, taken below
        assert info.make(**{name: value}) is not None
        return
    x, t = torch.randn(2, 3, 8), torch.randint(0, 3, (2, 8))
    with pytest.raises(TypeError, match=f"{name} must be True or False, got {value!r}"):
        info.make(**{name: value})
    with pytest.raises(TypeError, match=f"{name} must be True or False, got {value!r}"):
        info.call(x, t, **{name: value})


def test_distributed_takes_bools_only_and_numpy_bools_are_bools():
    with pytest.raises(TypeError, match="distributed must be True or False, got 'yes'"):
        diceloss.DiceLoss(batch_dice=True, distributed="yes")
    loss = diceloss.DiceLoss(batch_dice=np.bool_(True), from_logits=np.True_)
    assert loss.batch_dice is True and loss.from_logits is True
    x, t = torch.randn(2, 3, 8, dtype=torch.float64), torch.randint(0, 3, (2, 8))
    torch.testing.assert_close(loss(x, t), DF.dice_loss(x, t, batch_dice=True))


def test_boolean_option_set_after_construction_is_checked():
    loss = diceloss.DiceCELoss()
    with pytest.raises(TypeError, match="log must be True or False, got 'true'"):
        loss.log = "true"
    assert loss.log is False


def test_numpy_scalars_are_numbers():
    x, t = torch.randn(2, 3, 8, dtype=torch.float64), torch.randint(0, 3, (2, 8))
    t[:, :2] = 255
    want = DF.dice_ce_loss(x, t, smooth_nr=1e-5, ignore_index=255, lambda_ce=0.5, label_smoothing=0.1)
    got = diceloss.DiceCELoss(
        smooth_nr=np.float32(1e-5), ignore_index=np.int64(255), lambda_ce=np.float16(0.5),
        label_smoothing=np.float64(0.1),
    )(x, t)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-8)  # np.float32(1e-5) is not exactly 1e-5
    assert type(diceloss.TverskyLoss(alpha=np.float32(0.25)).alpha) is float
    assert type(diceloss.DiceLoss(ignore_index=np.int32(-100)).ignore_index) is int
    with pytest.raises(TypeError, match="ignore_index must be an int or None"):
        diceloss.DiceLoss(ignore_index=np.float64(255.0))


@pytest.mark.parametrize(
    "weight,message",
    [
        ([1.0, 1e39, 1.0], "weight must be finite in float32"),
        ([1e-46, 1e-46, 1e-46], "weight entries become 0 in float32"),
        ([0.0, 0.0, 0.0], "weight must have a positive entry"),
        ([1.0, float("nan"), 1.0], "weight must be finite and non-negative"),
    ],
)
def test_weights_are_checked_in_the_dtype_they_are_used_in(weight, message):
    with pytest.raises(ValueError, match=message):
        diceloss.DiceLoss(weight=weight)
    x, t = torch.randn(2, 3, 8), torch.randint(0, 3, (2, 8))
    with pytest.raises(ValueError, match=message):
        DF.dice_ce_loss(x, t, weight=weight)


def test_a_nan_weight_is_never_a_zero_loss_even_without_value_checks():
    x, t = torch.randn(2, 3, 8), torch.randint(0, 3, (2, 8))
    with value_checks(False):
        loss = diceloss.DiceLoss(weight=torch.tensor([1.0, float("nan"), 1.0]))
        assert torch.isnan(loss(x, t))


@pytest.mark.parametrize("backend", ["reference", "fused"])
@pytest.mark.parametrize("no_cpp", [False, True])
def test_minus_inf_logits_on_other_classes_keep_ce_and_focal_finite(backend, no_cpp, monkeypatch):
    """Masking classes with -inf logits: the cross-entropy is F.cross_entropy's (finite), the focal term finite,
    on every backend, and so are the gradients."""
    from diceloss.stats import cpu

    monkeypatch.setattr(cpu, "_enabled", cpu._enabled and not no_cpp)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 10, generator=g, dtype=torch.float64)
    t = torch.randint(0, 3, (2, 10), generator=g)
    t[0, 3] = 0
    x[0, 1, 3] = -float("inf")
    x[1, 2, :] = -float("inf")  # a class masked out everywhere in one sample
    t[1][t[1] == 2] = 1
    xr = x.clone().requires_grad_(True)
    ce = DF.dice_ce_loss(xr, t, backend=backend, lambda_dice=0.0)
    torch.testing.assert_close(ce, F.cross_entropy(x, t))
    ce.backward()
    assert torch.isfinite(xr.grad).all()
    xf = x.clone().requires_grad_(True)
    focal = DF.dice_focal_loss(xf, t, backend=backend, gamma=2.0)
    assert torch.isfinite(focal)
    focal.backward()
    assert torch.isfinite(xf.grad).all()
    want = DF.dice_focal_loss(x.clamp_min(-1e4), t, backend="reference", gamma=2.0)
    torch.testing.assert_close(focal.detach(), want)


@pytest.mark.parametrize("mode", ["binary", "multilabel"])
def test_minus_inf_logits_in_sigmoid_focal_stay_finite(mode):
    g = torch.Generator().manual_seed(1)
    C = 1 if mode == "binary" else 3
    x = torch.randn(2, C, 10, generator=g, dtype=torch.float64)
    t = (torch.rand(2, C, 10, generator=g) > 0.5).double()
    x[t == 0] = -float("inf")  # certain and right
    for backend in ("reference", "fused"):
        xr = x.clone().requires_grad_(True)
        loss = DF.dice_focal_loss(xr, t, mode=mode, backend=backend)
        assert torch.isfinite(loss), backend
        loss.backward()
        assert torch.isfinite(xr.grad).all(), backend


def test_float8_and_sparse_inputs_are_refused_before_computation():
    t = torch.randint(0, 3, (2, 8))
    x8 = torch.randn(2, 3, 8).to(torch.float8_e4m3fn)
    with pytest.raises(TypeError, match="input dtype torch.float8_e4m3fn is not supported.*float16, bfloat16"):
        diceloss.DiceLoss()(x8, t)
    with pytest.raises(TypeError, match="input must be a dense \\(strided\\) tensor, got layout torch.sparse_coo"):
        diceloss.DiceLoss()(torch.randn(2, 3, 8).to_sparse(), t)
    with pytest.raises(TypeError, match="target must be a dense \\(strided\\) tensor, got layout torch.sparse_coo"):
        diceloss.DiceLoss()(torch.randn(2, 3, 8), t.to_sparse())


def test_error_messages_show_the_offending_values():
    x = torch.randn(2, 1, 8)
    t = torch.zeros(2, 1, 8)
    t[0, 0, 3] = 1.0000001
    with pytest.raises(ValueError, match="1.0000001"):
        diceloss.DiceLoss(mode="binary")(x, t)
    idx = torch.zeros(2, 8)
    idx[0, 1] = float("inf")
    idx[1, 2] = 1e20
    with pytest.raises(ValueError, match=r"got \[1e\+20, inf\]"):
        diceloss.DiceLoss()(torch.randn(2, 3, 8), idx)


@pytest.mark.parametrize("dtype,ignore", [(torch.bfloat16, 257), (torch.bfloat16, -999), (torch.float16, 2049)])
@pytest.mark.parametrize("mode", ["binary", "multilabel"])
def test_half_logits_with_a_float32_target_and_an_ignore_index_half_cannot_hold(dtype, ignore, mode):
    """The fused kernel reads a float32 target as it is: 257 stays 257 (bf16 would make it 256), so those
    elements are ignored, as on the reference."""
    g = torch.Generator().manual_seed(2)
    C = 1 if mode == "binary" else 3
    x = torch.randn(2, C, 64, generator=g).to(dtype)
    t = (torch.rand(2, C, 64, generator=g) > 0.5).float()
    t[:, :, :8] = ignore
    for fn in (DF.dice_loss, DF.dice_ce_loss):
        results = []
        for backend in ("fused", "reference"):
            xr = x.clone().requires_grad_(True)
            value = fn(xr, t, mode=mode, ignore_index=ignore, backend=backend)
            value.backward()
            results.append((value.detach(), xr.grad.float()))
        (vf, gf), (vr, gr) = results
        torch.testing.assert_close(vf, vr, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gf, gr, rtol=1e-2, atol=1e-4)  # gradients are stored in the half dtype


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", ["multiclass", "multilabel"])
def test_half_logits_read_float32_soft_targets_exactly(dtype, mode):
    """Soft float32 targets are not rounded to the logits' half dtype on the kernel path: the statistics agree with
    the reference to float32 rounding (rounding the target to bf16 moved them by up to 4e-5)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 4096, generator=g).to(dtype)
    soft = torch.rand(2, 4, 4096, generator=g)
    t = soft.softmax(1) if mode == "multiclass" else soft
    fused = diceloss.compute_stats(x, t, mode=mode, cross_entropy=True, backend="fused")
    ref = diceloss.compute_stats(x, t, mode=mode, cross_entropy=True, backend="reference")
    for a, b in zip(fused[:3] + fused[4:5], ref[:3] + ref[4:5]):
        torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-4)


@pytest.mark.parametrize("loss_cls,term", [(diceloss.DiceCELoss, "ce"), (diceloss.DiceFocalLoss, "focal")])
@pytest.mark.parametrize("batch_dice", [False, True])
def test_the_pixel_term_does_not_depend_on_squared(loss_cls, term, batch_dice):
    """With a weight and soft targets the CE / focal term divides by sum_n sum_c w_c g_c whatever ``squared`` (the
    Dice term's option) is: turning on squared must not move it (it divided by sum w g^2: 1.389 became 2.160)."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 4, 50, generator=g, dtype=torch.float64)
    t = torch.randn(3, 4, 50, generator=g, dtype=torch.float64).softmax(1)
    w = [1.0, 0.5, 2.0, 3.0]
    plain, squared = loss_cls(weight=w, batch_dice=batch_dice), loss_cls(weight=w, squared=True, batch_dice=batch_dice)
    plain(x, t)
    squared(x, t)
    torch.testing.assert_close(squared.components[term], plain.components[term], rtol=1e-12, atol=0)
    if term == "ce":
        wt = torch.tensor(w, dtype=torch.float64)[None, :, None]
        want = -(wt * t * x.log_softmax(1)).sum() / (wt * t).sum()
        torch.testing.assert_close(squared.components["ce"], want, rtol=1e-12, atol=0)


def test_torch_func_grad_runs_on_the_default_backend():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    t = torch.randint(0, 3, (2, 8, 8), generator=g)
    got = torch.func.grad(lambda z: diceloss.DiceCELoss()(z, t))(x)
    xr = x.clone().requires_grad_(True)
    diceloss.DiceCELoss(backend="reference")(xr, t).backward()
    torch.testing.assert_close(got, xr.grad, rtol=1e-10, atol=1e-12)


def test_vmap_takes_the_reference_backend_or_says_what_to_do():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(4, 1, 3, 16, generator=g, dtype=torch.float64)  # 4 problems of (B=1, C=3, N=16)
    t = torch.randint(0, 3, (4, 1, 16), generator=g)
    loss = diceloss.DiceLoss()
    want = torch.stack([loss(xi, ti) for xi, ti in zip(x, t)])
    with pytest.raises(RuntimeError, match="set_value_checks\\(False\\)"):
        torch.func.vmap(loss)(x, t)
    with value_checks(False):
        torch.testing.assert_close(torch.func.vmap(loss)(x, t), want)
        with pytest.raises(ValueError, match="torch.func.vmap.*backend='reference'"):
            torch.func.vmap(diceloss.DiceLoss(backend="fused"))(x, t)


def test_numpy_scalars_in_metrics_and_compat():
    a = np.zeros((8, 8), int)
    a[2:5, 2:5] = 1
    b = np.roll(a, 1, axis=0)
    from diceloss.metrics import hausdorff_distance

    assert hausdorff_distance(a, b, percentile=np.float32(95)) == hausdorff_distance(a, b, percentile=95.0)
    from diceloss.compat import monai as cm

    x, t = torch.randn(2, 3, 8, dtype=torch.float64), torch.randint(0, 3, (2, 1, 8))
    torch.testing.assert_close(
        cm.DiceLoss(softmax=True, to_onehot_y=True, smooth_nr=np.float32(1e-5))(x, t),
        cm.DiceLoss(softmax=True, to_onehot_y=True, smooth_nr=float(np.float32(1e-5)))(x, t),
    )


DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.mark.parametrize("x_dtype", DTYPES)
@pytest.mark.parametrize("t_dtype", DTYPES + [torch.bool])
def test_fused_agrees_with_the_reference_for_every_input_target_dtype_pair(x_dtype, t_dtype):
    """The statistics of the kernel path equal the reference's to the rounding of the accumulation dtype (float32,
    or float64 for float64 input) whatever the dtypes of the logits and of the dense target."""
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 3, 2048, generator=g).to(x_dtype)
    soft = torch.rand(2, 3, 2048, generator=g, dtype=torch.float64)
    t = (soft > 0.5) if t_dtype == torch.bool else soft.to(t_dtype)
    fused = diceloss.compute_stats(x, t, mode="multilabel", cross_entropy=True, backend="fused")
    ref = diceloss.compute_stats(x, t, mode="multilabel", cross_entropy=True, backend="reference")
    tol = dict(rtol=1e-10, atol=1e-8) if x_dtype == torch.float64 else dict(rtol=2e-6, atol=1e-4)
    for a, b in zip(fused[:3] + fused[4:5], ref[:3] + ref[4:5]):
        torch.testing.assert_close(a, b, **tol)
