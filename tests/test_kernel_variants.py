"""The AVX2 and portable builds of the C++ kernel against the native one (AVX-512 on the CI machine).

Each variant is compiled once (cached beside the native build) and must give the statistics and the
gradient of the native kernel, on softmax with index and dense targets and on sigmoid, with masks,
ignore_index, squared and the cross-entropy term.
"""

from __future__ import annotations

import platform

import pytest
import torch

from diceloss.stats import cpu
from diceloss.stats.types import OpOptions

pytestmark = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 instruction-set variants")

# (target: "index" | "soft" | "multilabel", the op's arguments after x, target, mask)
CONFIGS = [
    ("index", OpOptions("multiclass", "softmax", -100, False, False, True, 0.1, None)),
    ("index", OpOptions("multiclass", "softmax", -100, True, False, False, 0.0, None)),
    ("index", OpOptions("multiclass", "softmax", None, False, False, False, 0.0, None)),
    ("soft", OpOptions("multiclass", "softmax", None, True, False, True, 0.2, None)),
    ("soft", OpOptions("multilabel", "sigmoid", None, False, False, True, 0.05, None)),
    ("multilabel", OpOptions("multilabel", "sigmoid", 255, True, False, False, 0.0, None)),
]


@pytest.fixture(scope="module")
def native():
    module = cpu.load()
    if module is None:
        pytest.skip(f"no compiled kernel on this machine: {cpu.status()}")
    return module


# one test per variant (each build in one pytest-xdist worker), both dtypes inside
@pytest.mark.parametrize("variant", sorted(cpu.VARIANTS))
def test_variant_matches_native(native, variant):
    other = cpu.build_variant(variant)
    for dtype in (torch.float32, torch.float64):
        _compare(native, other, variant, dtype)


def _compare(native, other, variant, dtype):
    g = torch.Generator().manual_seed(0)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    for B, C, N in [(2, 14, 5000), (3, 3, 70000), (1, 21, 4099)]:
        x = (torch.randn(B, C, N, generator=g, dtype=torch.float64) * 3).to(dtype)
        index = torch.randint(0, C, (B, N), generator=g)
        index[:, ::7] = -100
        soft = torch.rand(B, C, N, generator=g, dtype=torch.float64).softmax(1).to(dtype)
        multilabel = (torch.rand(B, C, N, generator=g) > 0.5).to(dtype)
        multilabel[:, :, ::5] = 255
        mask = torch.rand(B, N, generator=g) > 0.2
        coef = torch.randn(B, C, 6, generator=g, dtype=torch.float64).to(torch.float64 if dtype == torch.float64
                                                                       else torch.float32)
        targets = {"index": index, "soft": soft, "multilabel": multilabel}
        for kind, args in CONFIGS:
            target = targets[kind]
            for m in (None, mask):
                a = other.stats_forward(x, target, m, *args)
                b = native.stats_forward(x, target, m, *args)
                assert float(((a - b).abs() / (b.abs() + 1)).max()) <= tol, (variant, args)
                ga = other.stats_backward(coef, x, target, m, *args)
                gb = native.stats_backward(coef, x, target, m, *args)
                assert float((ga - gb).abs().max()) <= tol * float(gb.abs().max()), (variant, args)
