"""Half-precision inputs, float32 accumulation, and the accuracy of the intersection.

The statistics are accumulated in float32 (float64 for float64 input) whatever the input dtype, so a
float16 input neither overflows (its largest value is 65504; a 512 x 512 class volume is 262144) nor
loses the small classes, and the intersection is a sum of products, accurate for a small object in a
large volume where the L1 identity (P + G - sum |p - g|) / 2 cancels catastrophically.
"""

from __future__ import annotations

import pytest
import torch
from conftest import LOSSES, MODES, seeded, value_checks

import diceloss
from diceloss import functional as DF

BACKEND = "reference"


@pytest.fixture(scope="module")
def large_case():
    g = seeded(0)
    x = (torch.randn(1, 2, 512, 512, generator=g) * 3).to(torch.float16)
    t = torch.zeros(1, 512, 512, dtype=torch.long)
    t[:, 100:300, 150:400] = 1
    return x, t


@pytest.mark.parametrize("info", LOSSES)
def test_float16_large_input_matches_float64(large_case, info):
    x, t = large_case
    got = info.call(x, t, backend=BACKEND)
    assert got.dtype == torch.float32  # the statistics, and so the loss, are float32
    want = info.call(x.double(), t, backend=BACKEND)
    assert torch.isfinite(got)
    # relative to the loss where it exceeds 1 (Hausdorff-DT: squared errors times distances of hundreds of
    # pixels); an absolute error for the losses in [0, 1], as always
    scale = max(1.0, abs(float(want)))
    assert abs(float(got) - float(want)) < 1e-3 * scale
    # far better than required: float32 sums of 262144 terms
    assert abs(float(got) - float(want)) < 1e-5 * scale


def test_float16_large_input_gradient(large_case):
    x, t = large_case
    xh = x.clone().requires_grad_(True)
    xd = x.double().requires_grad_(True)
    DF.dice_ce_loss(xh, t, backend=BACKEND).backward()
    DF.dice_ce_loss(xd, t, backend=BACKEND).backward()
    assert xh.grad.dtype == torch.float16
    assert torch.isfinite(xh.grad).all()
    torch.testing.assert_close(xh.grad.double(), xd.grad, rtol=1e-2, atol=1e-7)


def test_float16_sums_would_overflow_in_float16(large_case):
    # the volumes exceed float16's range: summing them in float16 gives inf, diceloss gives the right number
    x, t = large_case
    p = torch.softmax(x.float(), 1).half()
    assert torch.isinf(p[:, 0].sum(dtype=torch.float16))
    s = diceloss.compute_stats(x, t, backend=BACKEND)
    assert s.pred_volume.dtype == torch.float32
    torch.testing.assert_close(s.pred_volume.sum(), torch.tensor(512.0 * 512.0), rtol=1e-6, atol=0)
    torch.testing.assert_close(s.target_volume, torch.tensor([[512.0 * 512 - 200 * 250, 200.0 * 250]]))


@pytest.mark.parametrize(
    "info,dtype,mode",
    [
        pytest.param(info, dtype, mode, id=f"{mode}-dtype{i}-{info.name}")
        for mode in MODES
        for i, dtype in enumerate([torch.float16, torch.bfloat16, torch.float32])
        for info in LOSSES
        if mode in info.modes
    ],
)
def test_half_inputs_every_loss(info, dtype, mode):
    g = seeded(1)
    C = 1 if mode == "binary" else 3
    x64 = torch.randn(2, C, 16, 16, generator=g, dtype=torch.float64) * 2
    x = x64.to(dtype)
    if mode == "multiclass":
        t = torch.randint(0, C, (2, 16, 16), generator=g)
    else:
        t = (torch.rand(2, C, 16, 16, generator=g) > 0.5).to(dtype)
    fn = info.call
    xi = x.clone().requires_grad_(True)
    got = fn(xi, t, mode=mode, backend=BACKEND)
    assert got.dtype == torch.float32
    # the same numbers in float64: only the rounding of the float32 sums differs
    want = fn(x.double(), t.double() if t.is_floating_point() else t, mode=mode, backend=BACKEND)
    assert abs(float(got.detach()) - float(want)) < 1e-5 * max(1.0, abs(float(want)))  # relative above 1
    got.backward()
    assert xi.grad.dtype == dtype and torch.isfinite(xi.grad).all()


@pytest.mark.parametrize(
    "dtype,acc",
    [
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.float32, torch.float32),
        (torch.float64, torch.float64),
    ],
)
def test_statistics_dtype(dtype, acc):
    x = torch.randn(2, 3, 8, 8).to(dtype)
    t = torch.randint(0, 3, (2, 8, 8))
    s = diceloss.compute_stats(x, t, cross_entropy=True, focal_gamma=2.0, backend=BACKEND)
    for field in s:
        assert field.dtype == acc


def test_half_one_hot_and_soft_targets():
    # float16 one-hot / soft targets: rows sum to 1 up to float16 rounding, accepted
    g = seeded(2)
    x = torch.randn(2, 3, 32, generator=g)
    soft = torch.softmax(torch.randn(2, 3, 32, generator=g) * 2, 1)
    a = DF.dice_loss(x.half(), soft.half(), soft_label=True, backend=BACKEND)
    # the float16-rounded rows sum to 1 only to float16 precision: compare without the float64 row check
    with value_checks(False):
        b = DF.dice_loss(x.half().double(), soft.half().double(), soft_label=True, backend=BACKEND)
    assert abs(float(a) - float(b)) < 1e-6


def test_autocast_cpu_bfloat16():
    # under autocast the network's output is bfloat16; the loss still sums in float32
    torch.manual_seed(3)
    conv = torch.nn.Conv2d(1, 3, 3, padding=1)
    img = torch.randn(2, 1, 32, 32)
    t = torch.randint(0, 3, (2, 32, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(img)
        loss = diceloss.DiceCELoss(backend=BACKEND)(logits, t)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    want = diceloss.DiceCELoss(backend=BACKEND)(logits.detach().double(), t)
    assert abs(float(loss.detach()) - float(want)) < 1e-5
    loss.backward()
    assert torch.isfinite(conv.weight.grad).all()


# ----------------------------------------------------------------------------------------------
# the intersection: a sum of products, accurate for a small object in a large volume


@pytest.fixture(scope="module")
def small_object():
    # 1 x 1 x 64 x 128 x 128 = 1M voxels, a 5 x 5 x 5 object; background predictions U(0, 0.02)
    g = seeded(4)
    p = torch.rand(1, 1, 64, 128, 128, generator=g) * 0.02
    t = torch.zeros(1, 1, 64, 128, 128)
    t[..., 30:35, 60:65, 60:65] = 1
    p[..., 30:35, 60:65, 60:65] = 0.7 + 0.3 * torch.rand(5, 5, 5, generator=g)
    return p, t


@pytest.mark.parametrize("soft_label", [False, True])
def test_small_object_in_large_volume(small_object, soft_label):
    p, t = small_object
    got = DF.dice_loss(p, t, mode="binary", from_logits=False, soft_label=soft_label, backend=BACKEND)
    exact = DF.dice_loss(
        p.double(), t.double(), mode="binary", from_logits=False, soft_label=soft_label, backend=BACKEND
    )
    err = abs(float(got) - float(exact))
    assert err < 1e-6 * float(1 - exact) + 1e-7
    # the intersection itself, to float32 rounding
    s = diceloss.compute_stats(p, t, mode="binary", from_logits=False, soft_label=soft_label, backend=BACKEND)
    s64 = diceloss.compute_stats(
        p.double(), t.double(), mode="binary", from_logits=False, soft_label=soft_label, backend=BACKEND
    )
    assert abs(float(s.intersection) - float(s64.intersection)) <= 1e-6 * float(s64.intersection)


def test_l1_identity_would_lose_the_intersection(small_object):
    # why the product form: (P + G - sum |p - g|) / 2 in float32 is off by orders of magnitude more
    p, t = small_object
    I64 = float((p.double() * t.double()).sum())
    l1 = float((p.sum() + t.sum() - (p - t).abs().sum()) / 2)
    ours = float(diceloss.compute_stats(p, t, mode="binary", from_logits=False, backend=BACKEND).intersection)
    assert abs(ours - I64) * 20 < abs(l1 - I64)
