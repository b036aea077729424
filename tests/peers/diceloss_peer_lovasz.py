"""diceloss.lovasz against the authors' own file: bermanmaxim/LovaszSoftmax ``pytorch/lovasz_losses.py``.

Not collected by the main suite (CI cannot fetch GitHub): ``make peer-tests LOVASZ_SRC=/path/to/LovaszSoftmax``
runs it, ``LOVASZ_SRC`` being the root of a checkout of https://github.com/bermanmaxim/LovaszSoftmax. The file is
loaded from that tree with importlib; the project never copies it in.

The authors' code runs in float32 only (see ``test_authors_code_fails_in_float64``), so the comparisons are in
float32, to float32 rounding. Each bug of the file found on the way is shown by a test that documents it.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import warnings
from pathlib import Path

import pytest
import torch

from diceloss.functional import lovasz_loss

SRC = os.environ.get("LOVASZ_SRC", "")
FILE = Path(SRC) / "pytorch" / "lovasz_losses.py"
if not SRC or not FILE.is_file():
    raise RuntimeError(
        f"LOVASZ_SRC must be the root of a LovaszSoftmax checkout (with pytorch/lovasz_losses.py), got {SRC!r}: "
        "git clone https://github.com/bermanmaxim/LovaszSoftmax /tmp/LovaszSoftmax && "
        "make peer-tests LOVASZ_SRC=/tmp/LovaszSoftmax"
    )


def _load():
    spec = importlib.util.spec_from_file_location("_lovasz_authors", FILE)
    module = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escapes in docstrings, `is` with a literal (py3.8+)
        spec.loader.exec_module(module)
    return module


A = _load()
TOL = dict(rtol=0, atol=2e-6)  # float32: the authors' weights are differences of float32 Jaccard values


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _grads(fn_a, fn_b, x):
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    v1, v2 = fn_a(x1), fn_b(x2)
    v1.backward()
    v2.backward()
    return v1.detach(), v2.detach(), x1.grad, x2.grad


@pytest.mark.parametrize(
    "per_image,classes,ignore", list(itertools.product([False, True], ["present", "all"], [None, 255]))
)
def test_lovasz_softmax_equals_the_authors(per_image, classes, ignore):
    g = _gen(1)
    probas = torch.softmax(2 * torch.randn(3, 4, 6, 7, generator=g), 1)
    labels = torch.randint(0, 4, (3, 6, 7), generator=g)
    labels[0] = labels[0] % 2  # classes absent from an image
    if ignore is not None:
        labels[torch.rand(labels.shape, generator=g) > 0.8] = ignore
    # the literal "present" is the interned string the authors' `classes is 'present'` needs
    cls = "present" if classes == "present" else "all"
    v1, v2, g1, g2 = _grads(
        lambda p: A.lovasz_softmax(p, labels, classes=cls, per_image=per_image, ignore=ignore),
        lambda p: lovasz_loss(p, labels, from_logits=False, per_image=per_image, classes=classes, ignore_index=ignore),
        probas,
    )
    torch.testing.assert_close(v2, v1, **TOL)
    torch.testing.assert_close(g2, g1, **TOL)


@pytest.mark.parametrize("per_image,ignore", list(itertools.product([False, True], [None, 255])))
def test_lovasz_hinge_equals_the_authors(per_image, ignore):
    g = _gen(2)
    logits = torch.randn(3, 6, 7, generator=g)
    labels = (torch.rand(3, 6, 7, generator=g) > 0.6).long()
    labels[2] = 0  # an image without foreground
    if ignore is not None:
        labels[torch.rand(labels.shape, generator=g) > 0.8] = ignore
    v1, v2, g1, g2 = _grads(
        lambda z: A.lovasz_hinge(z, labels, per_image=per_image, ignore=ignore),
        lambda z: lovasz_loss(z, labels, mode="binary", per_image=per_image, ignore_index=ignore),
        logits,
    )
    torch.testing.assert_close(v2, v1, **TOL)
    torch.testing.assert_close(g2, g1, **TOL)


def test_lovasz_sigmoid_is_binary_mode_on_probabilities():
    # the authors' Lovász-Sigmoid (demo_binary.ipynb): lovasz_softmax(sigmoid(logits), labels, classes=[1])
    g = _gen(3)
    logits = torch.randn(2, 6, 7, generator=g)
    labels = (torch.rand(2, 6, 7, generator=g) > 0.6).long()
    labels[0, 0] = 255
    v1, v2, g1, g2 = _grads(
        lambda z: A.lovasz_softmax(torch.sigmoid(z), labels, classes=[1], ignore=255),
        lambda z: lovasz_loss(torch.sigmoid(z), labels, mode="binary", from_logits=False, ignore_index=255),
        logits,
    )
    torch.testing.assert_close(v2, v1, **TOL)
    torch.testing.assert_close(g2, g1, **TOL)


# ----------------------------------------------------------------------------------------------
# the authors' bugs, each documented


def test_authors_code_fails_in_float64():
    # lovasz_grad casts the sorted labels to float32 (gt_sorted.float()), so torch.dot meets float64 errors
    g = _gen(4)
    p = torch.softmax(torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64), 1)
    t = torch.randint(0, 3, (2, 4, 4), generator=g)
    with pytest.raises(RuntimeError, match="same dtype"):
        A.lovasz_softmax(p, t)
    with pytest.raises(RuntimeError, match="same dtype"):
        A.lovasz_hinge(torch.randn(2, 4, 4, generator=g, dtype=torch.float64), (t > 0).long())
    assert lovasz_loss(p, t, from_logits=False).dtype == torch.float64


def test_authors_code_fails_with_exactly_one_valid_pixel():
    # flatten_probas: probas[valid.nonzero().squeeze()] drops the pixel dimension when one pixel is valid
    p = torch.softmax(torch.randn(2, 3, 4, 4, generator=_gen(5)), 1)
    t = torch.full((2, 4, 4), 255)
    t[0, 0, 0] = 1
    with pytest.raises(IndexError):
        A.lovasz_softmax(p, t, ignore=255)
    # one pixel of class 1 with p_1: class 1's loss is 1 - p_1 (the only classes present)
    assert float(lovasz_loss(p, t, from_logits=False, ignore_index=255)) == pytest.approx(1 - float(p[0, 1, 0, 0]))


def test_authors_code_returns_an_empty_tensor_when_every_pixel_is_ignored():
    p = torch.softmax(torch.randn(2, 3, 4, 4, generator=_gen(6)), 1).requires_grad_(True)
    t = torch.full((2, 4, 4), 255)
    assert A.lovasz_softmax(p, t, ignore=255).shape == (0, 3)  # 'the gradients should be 0', but not a scalar
    ours = lovasz_loss(p, t, from_logits=False, ignore_index=255)
    ours.backward()
    assert ours.shape == () and float(ours.detach()) == 0.0 and (p.grad == 0).all()


def test_authors_per_image_mean_fails_on_an_image_without_valid_pixels():
    g = _gen(7)
    p = torch.softmax(torch.randn(2, 3, 4, 4, generator=g), 1)
    t = torch.randint(0, 3, (2, 4, 4), generator=g)
    t[1] = 255
    with pytest.raises(RuntimeError, match="broadcast"):
        A.lovasz_softmax(p, t, ignore=255, per_image=True)
    # here the empty image scores 0 and counts in the mean over images (the authors' hinge does the same)
    want = lovasz_loss(p[:1], t[:1], from_logits=False) / 2
    torch.testing.assert_close(lovasz_loss(p, t, from_logits=False, ignore_index=255, per_image=True), want)


def test_authors_code_is_2d_only():
    p = torch.softmax(torch.randn(2, 3, 4, 4, 4, generator=_gen(8)), 1)
    t = torch.randint(0, 3, (2, 4, 4, 4), generator=_gen(9))
    with pytest.raises(ValueError, match="unpack"):
        A.lovasz_softmax(p, t)
    assert lovasz_loss(p, t, from_logits=False).shape == ()


def test_authors_present_test_is_an_identity_comparison():
    # `classes is 'present'`: a "present" string built at run time (read from a config) is not the interned
    # literal, so absent classes are not skipped and the loss is that of classes="all"
    g = _gen(10)
    p = torch.softmax(torch.randn(2, 3, 4, 4, generator=g), 1)
    t = torch.randint(0, 3, (2, 4, 4), generator=g) % 2  # class 2 absent
    from_config = "".join(["pre", "sent"])
    assert from_config == "present" and id(from_config) != id("present")
    got = A.lovasz_softmax(p, t, classes=from_config)
    torch.testing.assert_close(got, A.lovasz_softmax(p, t, classes="all"))
    present = lovasz_loss(p, t, from_logits=False, classes=from_config)
    torch.testing.assert_close(present, A.lovasz_softmax(p, t, classes="present"), **TOL)
    assert abs(float(got) - float(present)) > 1e-3
