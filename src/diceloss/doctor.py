"""Check a hand-written segmentation loss for the classic faults, in seconds.

:func:`check` calls ``loss_fn(input, target)`` on small generated problems and reports, per check, pass or
fail with the likely cause and the fix in plain words:

=============  ===========================================================================================
``graph``      the result is a scalar tensor attached to the autograd graph (``.item()``, ``float()``,
               ``.detach()`` or a NumPy round trip inside a loss cut the graph: nothing learns)
``gradient``   the gradient matches central finite differences (float64 where the loss allows it); a
               cosine near -1 means a sign error in a hand-written backward, a constant ratio a missing
               scale (such as the division by the batch size)
``perfect``    a perfect prediction gives the minimum, 0 for the Dice family (0.5 points at a missing
               factor 2 in ``2I / (P + G)``, a small positive value at misplaced smoothing, the largest value
               at a score returned instead of a loss)
``wrong``      a fully wrong prediction gives a value near the maximum (1 for a Dice loss)
``range``      the loss is never below 0, so no Dice above 1, and a score (a value that grows as the
               prediction improves) never passes 1 (summing the per-class Dice over classes, dividing by the
               batch size only, class weights in the numerator only: a maximum near C, B or B x C is named)
``descent``    a few steps of gradient descent on a toy problem lower the loss
``empty``      an empty target and an empty prediction give finite values and gradients
``float16``    a float16 input gives a finite value close to the float32 one (sums overflow past 65504;
               the probe has C x about 64 000 elements)
``batch``      the value does not depend on the batch size for repeated samples ("mean" reduction)
=============  ===========================================================================================

Inputs follow the usual conventions: ``mode="multiclass"``: input (B, C, H, W), target class indices
(B, H, W) int64 (``target="index"``) or one-hot (B, C, H, W) float (``target="onehot"``); ``"binary"``:
input and target (B, 1, H, W); ``"multilabel"``: both (B, C, H, W). ``inputs="logits"`` passes raw scores,
``"probs"`` probabilities (softmax over C in multiclass mode, sigmoid otherwise).

Example:
    >>> import torch
    >>> from diceloss import DiceLoss, doctor
    >>> report = doctor.check(DiceLoss(), mode="multiclass")
    >>> report.ok
    True
    >>> def bad_dice(x, t):                      # forgets the factor 2
    ...     p = x.softmax(1)
    ...     g = torch.nn.functional.one_hot(t, 3).permute(0, 3, 1, 2).float()
    ...     return 1 - ((p * g).sum((2, 3)) / (p + g).sum((2, 3))).mean()
    >>> doctor.check(bad_dice)["perfect"].passed
    False
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

MODES = ("binary", "multiclass", "multilabel")
INPUTS = ("logits", "probs")
TARGETS = ("index", "onehot")
CHECKS = ("graph", "gradient", "perfect", "wrong", "range", "descent", "empty", "float16", "batch")

# logits this large make softmax / sigmoid one-hot to float64 rounding (exp(-25) ~ 1e-11)
_CONFIDENT = 25.0
# and these underflow to exactly 0 / 1 in float32 (exp(-200) = 0), as saturated network outputs do
_SATURATED = 200.0
# the float16 probe: positions of its dominant label (about 0.8 x 60 000 = 48 000 in the intersection: twice
# that, and prediction + target, pass 65504, the largest float16), and at least this many other positions
_FLOAT16_POSITIONS = 60000
_FLOAT16_REST = 4096


@dataclass
class CheckResult:
    """One line of a :class:`Report`: ``status`` is "pass", "fail" or "skip"."""

    name: str
    status: str
    summary: str
    cause: str = ""
    fix: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def lines(self) -> list[str]:
        out = [f"  {self.status.upper():<5} {self.name:<9} {self.summary}"]
        if self.cause:
            out.append(f"  {'':<15} likely cause: {self.cause}")
        if self.fix:
            out.append(f"  {'':<15} fix: {self.fix}")
        return out


@dataclass
class Report:
    """What :func:`check` found: one :class:`CheckResult` per check, in the order of :data:`CHECKS`."""

    name: str
    mode: str
    inputs: str
    target: str
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no check failed."""
        return not self.failed

    @property
    def failed(self) -> list[str]:
        return [c.name for c in self.checks if c.status == "fail"]

    def __getitem__(self, name: str) -> CheckResult:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no check named {name!r}; checks: {', '.join(CHECKS)}")

    def __str__(self) -> str:
        head = f"diceloss doctor: {self.name} (mode={self.mode}, inputs={self.inputs}, target={self.target})"
        body = [line for c in self.checks for line in c.lines()]
        counts = {s: sum(c.status == s for c in self.checks) for s in ("pass", "fail", "skip")}
        tail = f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped"
        return "\n".join([head, *body, tail])


def _err(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


class _Problem:
    """Generated inputs and targets in the conventions of (mode, inputs, target)."""

    def __init__(
        self,
        mode: str,
        inputs: str,
        target: str,
        num_classes: int,
        batch_size: int,
        spatial: tuple[int, ...],
        seed: int,
    ):
        self.mode, self.inputs, self.target = mode, inputs, target
        self.C = 1 if mode == "binary" else num_classes
        self.B, self.spatial = batch_size, spatial
        self.gen = torch.Generator().manual_seed(seed)
        self.labels = self.make_labels(batch_size, spatial)

    # -- targets, kept as dense (B, C, *S) 0/1 "label probabilities" g
    def make_labels(self, B: int, spatial: tuple[int, ...]) -> Tensor:
        C, n = self.C, math.prod(spatial)
        if self.mode == "multiclass":
            idx = torch.randint(0, C, (B, n), generator=self.gen)
            idx[:, :C] = torch.arange(C)  # every class present in every sample
            return F.one_hot(idx, C).permute(0, 2, 1).reshape(B, C, *spatial).float()
        g = (torch.rand(B, C, n, generator=self.gen) < 0.4).float()
        g[:, :, 0], g[:, :, 1] = 1.0, 0.0  # both values present in every channel
        return g.reshape(B, C, *spatial)

    def empty_labels(self, like: Tensor) -> Tensor:
        g = torch.zeros_like(like)
        if self.mode == "multiclass":
            g[:, 0] = 1.0  # background only
        return g

    def target_of(self, g: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        if self.mode == "multiclass" and self.target == "index":
            return g.argmax(dim=1)
        return g.to(dtype)

    # -- inputs
    def random_logits(self, like: Tensor, scale: float = 1.5) -> Tensor:
        return torch.randn(like.shape, generator=self.gen) * scale

    def confident_logits(self, g: Tensor, strength: float = _CONFIDENT) -> Tensor:
        """Logits whose probabilities are g (0/1) to rounding."""
        return strength * (2 * g - 1)

    def activate(self, z: Tensor) -> Tensor:
        if self.inputs == "logits":
            return z
        return z.softmax(dim=1) if self.mode == "multiclass" else torch.sigmoid(z)

    def exact(self, g: Tensor, dtype: torch.dtype = torch.float32, strength: float = _CONFIDENT) -> Tensor:
        """The input that predicts g exactly: confident logits, or g itself as probabilities."""
        return self.confident_logits(g, strength).to(dtype) if self.inputs == "logits" else g.to(dtype)

    def wrong_labels(self, g: Tensor) -> Tensor:
        return g.roll(1, dims=1) if self.mode == "multiclass" else 1 - g

    def float16_problem(self) -> tuple[Tensor, Tensor]:
        """One sample (input (1, C, *S) float16, target) whose float16 sums overflow, at a size linear in C.

        The dominant label (class 0 in multiclass mode, the positives of every channel otherwise) holds
        :data:`_FLOAT16_POSITIONS` positions predicted with probability about 0.8: its intersection (about
        48 000), prediction and target sums each stay below 65504, the largest float16, but twice the
        intersection and prediction + target pass it, so a float16 Dice of that class is inf / inf = NaN,
        which no mean over C classes hides. The rest of the positions (a fixed number while C <= 2048) hold
        the other classes, every class present. C x about 64 000 elements in all: a probe that made every
        class overflow would need C^2.
        """
        C, d = self.C, len(self.spatial)
        side = math.ceil((_FLOAT16_POSITIONS + max(_FLOAT16_REST, 2 * C)) ** (1 / d))
        spatial = (side,) * d
        n, n0 = math.prod(spatial), _FLOAT16_POSITIONS
        if self.mode == "multiclass":
            idx = torch.zeros(n, dtype=torch.int64)
            idx[n0:] = torch.randint(1, C, (n - n0,), generator=self.gen)
            idx[n0 : n0 + C] = torch.arange(C)  # every class present
            g = torch.zeros(C, n).scatter_(0, idx[None], 1.0)
            p = 0.8 * g + 0.2 / (C - 1) * (1 - g)
            z = p.log()  # softmax(log p) = p
        else:
            g = torch.zeros(C, n)
            g[:, :n0] = 1.0
            p = 0.8 * g + 0.2 * (1 - g)
            z = (p / (1 - p)).log()  # sigmoid(logit p) = p
        g, z = g.reshape(1, C, *spatial), z.reshape(1, C, *spatial)
        z += torch.randn(z.shape, generator=self.gen) * 0.1
        return self.activate(z).half(), self.target_of(g)


class _Doctor:
    def __init__(self, loss_fn: Callable, problem: _Problem):
        self.loss_fn = loss_fn
        self.pb = problem
        self.results: list[CheckResult] = []
        self.grad_ok = False
        self.value_ok = False

    # -- calling the loss
    def value(self, x: Tensor, t: Tensor) -> float:
        with torch.no_grad():
            out = self.loss_fn(x.clone(), t.clone())  # a loss that writes into its input must not spoil ours
        if isinstance(out, Tensor):
            if out.numel() != 1:
                raise ValueError(f"the loss returned shape {tuple(out.shape)}, not a scalar")
            return float(out.detach().reshape(()).double())
        return float(out)

    def grad(self, x: Tensor, t: Tensor) -> tuple[float, Tensor]:
        x = x.detach().clone().requires_grad_(True)
        out = self.loss_fn(x, t)
        (g,) = torch.autograd.grad(out, x, allow_unused=True)
        if g is None:
            g = torch.zeros_like(x)
        return float(out.detach()), g

    def add(self, name: str, status: str, summary: str, cause: str = "", fix: str = "") -> None:
        self.results.append(CheckResult(name, status, summary, cause, fix))

    def skip(self, name: str, why: str) -> None:
        self.add(name, "skip", why)

    # -- the checks
    def run(self) -> list[CheckResult]:
        pb = self.pb
        g = pb.labels
        self.t = pb.target_of(g)
        self.x = pb.activate(pb.random_logits(g))
        self.check_graph()
        for name in CHECKS[1:]:
            needs_grad = name in ("gradient", "descent")
            if needs_grad and not self.grad_ok:
                self.skip(name, "needs a gradient (see the graph check)")
                continue
            if not needs_grad and not self.value_ok:
                self.skip(name, "needs a scalar value (see the graph check)")
                continue
            try:
                getattr(self, f"check_{name}")()
            except Exception as e:  # a loss that raises on one probe fails that check, not the doctor
                self.add(
                    name,
                    "fail",
                    f"the loss raised {_err(e)}",
                    "the loss does not handle this case (see the message)",
                    "make the loss accept the input described by the check",
                )
        return self.results

    def check_graph(self) -> None:
        x = self.x.clone().requires_grad_(True)
        try:
            out = self.loss_fn(x, self.t)
        except Exception as e:
            self.add(
                "graph",
                "fail",
                f"the loss raised {_err(e)}",
                f"it does not accept input {tuple(x.shape)} ({self.pb.inputs}) with target "
                f"{tuple(self.t.shape)} {self.t.dtype}",
                "check --mode, --inputs and --target (or the arguments of check()) against what the loss "
                "expects",
            )
            return
        if not isinstance(out, Tensor):
            try:
                float(out)
                self.value_ok = True
            except (TypeError, ValueError):
                pass
            self.add(
                "graph",
                "fail",
                f"the loss returned a {type(out).__name__} ({out!r:.40}), not a tensor",
                ".item(), float() or a NumPy computation inside the loss turns the result into a "
                "plain number: "
                "no gradient reaches the network, so it does not learn",
                "keep the computation in torch and return the tensor; call .item() only for logging",
            )
            return
        if out.numel() != 1:
            self.add(
                "graph",
                "fail",
                f"the loss returned a tensor of shape {tuple(out.shape)}, not a scalar",
                "the per-sample or per-class values are not reduced",
                "reduce with .mean() (or reduction='mean') before returning",
            )
            return
        self.value_ok = True
        if out.grad_fn is None or not out.requires_grad:
            self.add(
                "graph",
                "fail",
                "the result is a tensor detached from the graph (no grad_fn)",
                ".detach(), .data, torch.no_grad(), .item() wrapped back in torch.tensor(), or a NumPy round "
                "trip: the loss value carries no gradient",
                "compute the loss with differentiable torch operations on the input and return that tensor",
            )
            return
        try:
            (gx,) = torch.autograd.grad(out, x, allow_unused=True)
        except Exception as e:
            self.add(
                "graph",
                "fail",
                f"backward raised {_err(e)}",
                "the backward pass cannot run",
                "fix the error, or drop the custom backward and let autograd differentiate the forward",
            )
            return
        if gx is None:
            self.add(
                "graph",
                "fail",
                "the result has a graph, but not one that leads back to the input",
                "the input was replaced on the way (torch.tensor(x.tolist()), a NumPy round trip, a new leaf "
                "tensor)",
                "compute the loss from the input tensor itself",
            )
            return
        if not bool(torch.isfinite(gx).all()):
            self.add(
                "graph",
                "fail",
                "the gradient holds NaN or inf on an ordinary input",
                "log(0), sqrt(0), or a division by zero in the forward or backward",
                "clamp before log, add smoothing to the denominators",
            )
            return
        self.grad_ok = True
        self.add(
            "graph", "pass", "the result is a scalar tensor attached to the graph; backward reaches the input"
        )

    def check_gradient(self) -> None:
        pb = self.pb
        gen = torch.Generator().manual_seed(1)
        x32 = self.x
        dtype, h, tol = torch.float64, 1e-6, 1e-4
        try:
            x = x32.double()
            t = self.t.double() if self.t.is_floating_point() else self.t
            _, ga = self.grad(x, t)
            with torch.no_grad():
                out = self.loss_fn(x.clone(), t.clone())
            if isinstance(out, Tensor) and out.dtype != torch.float64:  # x.float() inside: float32 values
                raise TypeError("float32 result")
        except Exception:  # a loss that only runs (or computes) in float32
            dtype, h, tol = torch.float32, 1e-2 if pb.inputs == "logits" else 1e-3, 3e-2
            x, t = x32, self.t
            _, ga = self.grad(x, t)
        if self.value(x, t) != self.value(x, t):
            self.add(
                "gradient",
                "fail",
                "two calls on the same input give different values",
                "randomness inside the loss (dropout, random sampling) or state that changes between calls",
                "make the loss a deterministic function of (input, target)",
            )
            return
        n = x.numel()
        # half the coordinates where the gradient is largest: with many classes most entries are ~1e-7, where
        # finite differences are rounding noise; the other half at random
        top = ga.detach().reshape(-1).abs().argsort(descending=True)[: min(n, 48)]
        rest = torch.ones(n, dtype=torch.bool)
        rest[top] = False
        rest = rest.nonzero().reshape(-1)
        idx = torch.cat([top, rest[torch.randperm(len(rest), generator=gen)[: min(len(rest), 96 - len(top))]]])
        flat = x.detach().reshape(-1)
        gn = torch.empty(len(idx), dtype=torch.float64)
        for k, i in enumerate(idx.tolist()):
            xp = flat.clone()
            xp[i] += h
            xm = flat.clone()
            xm[i] -= h
            gn[k] = (self.value(xp.view_as(x), t) - self.value(xm.view_as(x), t)) / (2 * h)
        ga_s = ga.reshape(-1)[idx].double()
        na, nn_ = float(ga_s.norm()), float(gn.norm())
        err = float((ga_s - gn).norm()) / max(na, nn_, 1e-30)
        where = f"{len(idx)} coordinates, {str(dtype).replace('torch.', '')}"
        if nn_ < 1e-12 and na < 1e-12:
            self.add(
                "gradient",
                "fail",
                f"the loss is flat: gradient and finite differences are both 0 ({where})",
                "a hard argmax, threshold or round inside the loss makes it piecewise constant",
                "use probabilities (softmax / sigmoid), not hard labels, in the loss",
            )
            return
        if err <= tol:
            self.add(
                "gradient", "pass", f"matches central finite differences (relative error {err:.1e}, {where})"
            )
            return
        cos = float(ga_s @ gn) / max(na * nn_, 1e-300)
        if na < 1e-12:
            self.add(
                "gradient",
                "fail",
                "the gradient is 0 but the loss changes with the input",
                "a custom backward returns zeros, or the part of the loss that depends on the input "
                "is detached",
                "return the real gradient in backward, or remove the .detach()",
            )
        elif cos < -0.99:
            self.add(
                "gradient",
                "fail",
                f"the gradient points the wrong way: cosine with finite differences {cos:.3f} ({where})",
                "a sign error in a hand-written backward (it returns +dL/dx where -dL/dx is due, or "
                "the reverse)",
                "negate the gradient returned by backward, or drop the custom backward and let autograd "
                "differentiate the forward",
            )
        elif cos > 0.99:
            ratio = float(ga_s @ gn) / float(gn @ gn)
            self.add(
                "gradient",
                "fail",
                f"the gradient is {ratio:.4g} x the finite-difference one (cosine {cos:.4f})",
                _scale_cause(ratio, pb),
                "apply in backward every scale factor the forward applies (or let autograd differentiate it)",
            )
        else:
            self.add(
                "gradient",
                "fail",
                f"the gradient differs from finite differences: cosine {cos:.3f}, relative "
                f"error {err:.2g} ({where})",
                "a wrong formula in a hand-written backward, a gradient through only part of the loss, or a "
                "non-differentiable operation (clamp, abs, max) at the test point",
                "check the backward with torch.autograd.gradcheck in float64, or let autograd "
                "differentiate the "
                "forward",
            )

    def _probe(self, g: Tensor) -> float:
        return self.value(self.pb.exact(g), self.t)

    def _score(self) -> tuple[str, str] | None:
        """(cause, fix) when the loss is a score: it grows as the prediction improves; None otherwise."""
        pb = self.pb
        if not hasattr(self, "_score_values"):
            self._score_values = (
                self._probe(pb.labels),
                self.value(self.x, self.t),
                self._probe(pb.wrong_labels(pb.labels)),
            )
        vp, vr, vw = self._score_values
        if not all(math.isfinite(v) for v in (vp, vr, vw)) or vp <= max(vr, vw) + 1e-3 * max(1.0, abs(vp)):
            return None
        cause = (
            f"it returns a score, not a loss: the value grows as the prediction improves (perfect {vp:.3g}, "
            f"random {vr:.3g}, wrong {vw:.3g}), so minimising it makes the prediction worse"
        )
        named = _sums_named(vp, pb)
        if named:
            cause += f"; and its maximum, {vp:.3g} at a perfect prediction, is about {named}"
        elif vp > 1 + 1e-3:
            cause += (
                f"; and its maximum, {vp:.3g} at a perfect prediction, is above 1: class weights applied to the "
                "numerator only, or a weighted sum not divided by the sum of the weights"
            )
        fix = "return 1 - Dice, with Dice the mean over classes (and samples) of (2I + s) / (P + G + s)"
        return cause, fix

    def check_perfect(self) -> None:
        v = self._probe(self.pb.labels)
        v_rand = self.value(self.x, self.t)
        self.v_perfect = v
        if not math.isfinite(v):
            self.add(
                "perfect",
                "fail",
                f"a perfect prediction gives {v}",
                "0/0 or log(0) at a confident prediction",
                "clamp before log; smooth the denominators",
            )
            return
        if abs(v) <= 1e-3:
            self.add(
                "perfect",
                "pass",
                f"a perfect prediction gives {v:.2g}, the minimum (random prediction: {v_rand:.3g})",
            )
            return
        score = self._score()
        if score:
            cause, fix = score
        elif v < 0:
            cause = "the loss goes below 0 (see the range check): it returns -Dice, or the Dice exceeds 1"
            fix = "return 1 - Dice, with Dice = mean over classes of (2I + s) / (P + G + s)"
        elif abs(v - 0.5) <= 0.05:
            cause = (
                "the factor 2 is missing: I / (P + G) is at most 0.5, so 1 - I / (P + G) never goes "
                "below 0.5; "
                "or an activation applied twice (softmax of probabilities)"
            )
            fix = "use Dice = (2 I + s) / (P + G + s)"
        elif v < 0.5:
            cause = (
                "smoothing in the wrong place: a constant added to the denominator only (2I / (P + G "
                "+ s)), or "
                "larger in the denominator than in the numerator; or an activation applied twice"
            )
            fix = (
                "add the same small constant to numerator and denominator: (2 I + s) / (P + G + s), s = 1e-5"
            )
        else:
            cause = (
                "the loss is not minimal at a perfect prediction: the Dice is computed against the "
                "wrong target "
                "layout, returns Dice instead of 1 - Dice, or the activation does not match --inputs"
            )
            fix = "check which of input and target is which, and whether the loss expects logits or probs"
        self.add(
            "perfect",
            "fail",
            f"a perfect prediction gives {v:.4g}, not the minimum 0 (random prediction: {v_rand:.3g})",
            cause,
            fix,
        )

    def check_wrong(self) -> None:
        pb = self.pb
        v = self._probe(pb.wrong_labels(pb.labels))
        v_rand = self.value(self.x, self.t)
        self.v_wrong = v
        if not math.isfinite(v):
            self.add(
                "wrong",
                "fail",
                f"a fully wrong prediction gives {v}",
                "log(0) or 0/0 at a confident wrong prediction",
                "clamp probabilities before log; smooth the denominators",
            )
            return
        if v > 1 + 1e-3:
            ok = v > v_rand
            summary = (
                f"a fully wrong prediction gives {v:.4g}, above a random one ({v_rand:.3g}); the loss is not "
                "bounded by 1 (log, cross-entropy or focal terms)"
            )
        else:
            ok = v >= 0.9
            summary = f"a fully wrong prediction gives {v:.4g} (random prediction: {v_rand:.3g}, maximum 1)"
        if ok:
            self.add("wrong", "pass", summary)
        elif v <= getattr(self, "v_perfect", -math.inf) + 1e-6:
            cause, fix = self._score() or (
                "the loss does not depend on the prediction the way a Dice does (sign, or input and target "
                "swapped)",
                "return 1 - Dice, computed from the prediction and the target",
            )
            self.add("wrong", "fail", summary + ": no worse than a perfect one", cause, fix)
        else:
            vol = math.prod(pb.spatial)
            self.add(
                "wrong",
                "fail",
                summary + ", far below the maximum",
                f"a smoothing constant large against the class volumes here (about {vol // max(pb.C, 2)} "
                "positions per class) props up the Dice of a wrong prediction, or the loss averages in terms "
                "that ignore the prediction",
                "use a small smoothing constant (1e-5) in numerator and denominator",
            )

    def check_range(self) -> None:
        pb = self.pb
        probes = {"random": self.value(self.x, self.t)}
        for k in range(3):
            probes[f"random {k + 2}"] = self.value(pb.activate(pb.random_logits(pb.labels, 0.5 + k)), self.t)
        probes["perfect"] = self._probe(pb.labels)
        probes["wrong"] = self._probe(pb.wrong_labels(pb.labels))
        bad = {k: v for k, v in probes.items() if not math.isfinite(v)}
        if bad:
            self.add("range", "fail", f"non-finite values: {bad}", "0/0 or log(0)", "smooth the denominators")
            return
        low = min(probes, key=probes.get)
        high = max(probes, key=probes.get)
        values = f"values from {probes[low]:.3g} to {probes[high]:.3g}"
        if probes[low] >= -1e-6:
            score = self._score()
            if score and high == "perfect" and probes[high] > 1 + 1e-3:
                self.add(
                    "range",
                    "fail",
                    f"{values}: a perfect prediction gives {probes[high]:.4g}, the largest value and above 1 "
                    "(read as a Dice, a Dice above 1)",
                    *score,
                )
                return
            self.add("range", "pass", f"never below 0 ({values})")
            return
        v_perfect, v_wrong = probes["perfect"], probes["wrong"]
        dice = 1 - v_perfect
        named = _sums_named(dice, pb)
        if abs(v_perfect + 1) < 0.05 and abs(v_wrong) < 0.1:
            cause = "the loss is -Dice (nnU-Net's convention): fine to optimise, but not a loss in [0, 1]"
            fix = "return 1 - Dice"
        elif named:
            cause = f"a Dice of {dice:.3g} at a perfect prediction, about {named}"
            fix = "average the per-class Dice over the classes (and the samples): .mean(), not .sum()"
        else:
            cause = (
                f"a Dice above 1 ({dice:.3g} at a perfect prediction): class weights applied to the "
                "numerator "
                "only, or a weighted sum not divided by the sum of the weights"
            )
            fix = "weight the per-class losses and divide by the sum of the weights: sum(w_c l_c) / sum(w_c)"
        self.add(
            "range",
            "fail",
            f"the loss goes below 0: {probes[low]:.4g} for the {low} prediction (that is a Dice above 1)",
            cause,
            fix,
        )

    def check_descent(self) -> None:
        pb = self.pb
        z = pb.random_logits(pb.labels).requires_grad_(True)
        opt = torch.optim.Adam([z], lr=0.1)
        values = []
        for _ in range(25):
            opt.zero_grad()
            out = self.loss_fn(pb.activate(z), self.t)
            values.append(float(out.detach()))
            out.backward()
            opt.step()
        with torch.no_grad():
            values.append(float(self.loss_fn(pb.activate(z), self.t)))
        v0, v1 = values[0], values[-1]
        if not all(math.isfinite(v) for v in values):
            self.add(
                "descent",
                "fail",
                f"the loss became non-finite during gradient descent ({values[-1]})",
                "log(0) or 0/0 once predictions become confident",
                "clamp before log; smooth the denominators",
            )
        elif v1 <= v0 - 0.05 * abs(v0) and v1 < v0:
            self.add(
                "descent", "pass", f"25 Adam steps on the logits lower the loss from {v0:.4g} to {v1:.4g}"
            )
        elif v1 > v0:
            self.add(
                "descent",
                "fail",
                f"25 Adam steps raise the loss from {v0:.4g} to {v1:.4g}",
                "the gradient points uphill: a sign error in a hand-written backward, or a loss that "
                "should be "
                "minimised is returned with the wrong sign",
                "negate the backward (or the loss)",
            )
        else:
            self.add(
                "descent",
                "fail",
                f"25 Adam steps barely move the loss ({v0:.4g} -> {v1:.4g})",
                "a vanishing or zero gradient: a hard threshold, a detached part, or a huge "
                "smoothing constant",
                "compute the loss from probabilities with small smoothing",
            )

    def check_empty(self) -> None:
        pb = self.pb
        g = pb.labels
        empty = pb.empty_labels(g)
        cases = {
            "empty target, empty prediction": (pb.exact(empty, strength=_SATURATED), pb.target_of(empty)),
            "empty target, random prediction": (self.x, pb.target_of(empty)),
            "target present, empty prediction": (pb.exact(empty, strength=_SATURATED), self.t),
        }
        bad = []
        for name, (x, t) in cases.items():
            if self.grad_ok:
                v, gx = self.grad(x, t)
                if not (math.isfinite(v) and bool(torch.isfinite(gx).all())):
                    bad.append(f"{name}: value {v:.4g}, gradient finite: {bool(torch.isfinite(gx).all())}")
            else:
                v = self.value(x, t)
                if not math.isfinite(v):
                    bad.append(f"{name}: value {v}")
        what = "background only" if pb.mode == "multiclass" else "all zeros"
        if not bad:
            self.add(
                "empty",
                "pass",
                f"finite values{' and gradients' if self.grad_ok else ''} with an empty target "
                f"({what}) and an empty prediction",
            )
        else:
            self.add(
                "empty",
                "fail",
                "; ".join(bad),
                "0/0 when a class is absent from both target and prediction, or log(0) of a zero probability",
                "add a small constant to numerator and denominator ((2I + s) / (P + G + s), s = "
                "1e-5) and clamp "
                "probabilities before log",
            )

    def check_float16(self) -> None:
        pb = self.pb
        x16, t = pb.float16_problem()
        v16 = self.value(x16, t)
        v32 = self.value(x16.float(), t)
        size = " x ".join(str(n) for n in x16.shape)
        if not math.isfinite(v16):
            self.add(
                "float16",
                "fail",
                f"a float16 input of {size} gives {v16} (float32: {v32:.4g})",
                "sums over many positions overflow in float16 (the largest float16 is 65504)",
                "accumulate in float32: x.float() inside the loss, or .sum(dtype=torch.float32)",
            )
        elif abs(v16 - v32) > 1e-2 * max(1.0, abs(v32)):
            self.add(
                "float16",
                "fail",
                f"a float16 input of {size} gives {v16:.4g}, float32 {v32:.4g}",
                "float16 sums overflow (past 65504) or lose most of their digits over many positions",
                "accumulate in float32: x.float() inside the loss, or .sum(dtype=torch.float32)",
            )
        else:
            self.add("float16", "pass", f"a float16 input of {size} gives {v16:.4g} (float32: {v32:.4g})")

    def check_batch(self) -> None:
        x1, t1 = self.x[:1], self.t[:1]
        reps = 3
        x3 = torch.cat([x1] * reps)
        t3 = torch.cat([t1] * reps)
        v1, v3 = self.value(x1, t1), self.value(x3, t3)
        if abs(v3 - v1) <= 1e-5 + 1e-4 * abs(v1):
            self.add("batch", "pass", f"the value is the same for 1 and {reps} copies of a sample ({v1:.4g})")
            return
        ratio = v3 / v1 if v1 else math.inf
        if abs(ratio - reps) < 0.02 * reps:
            cause = "the loss sums over the samples (reduction 'sum', or a division by a fixed number)"
            fix = "average over the batch: .mean(), or divide the sum by input.shape[0]"
        elif abs(ratio - 1 / reps) < 0.02 / reps:
            cause = "the loss divides by the batch size twice (a mean followed by another division by B)"
            fix = "divide by the batch size once"
        else:
            cause = (
                "the samples interact beyond batch Dice: a normalisation over the batch, or "
                "statistics that are "
                "not plain sums"
            )
            fix = "compute per-sample (or batch-summed) statistics and average the result"
        self.add(
            "batch",
            "fail",
            f"{reps} copies of a sample give {v3:.4g}, one copy {v1:.4g} (ratio {ratio:.3g})",
            cause,
            fix,
        )


def _sums_named(dice: float, pb: _Problem) -> str:
    """What a Dice of ``dice`` at a perfect prediction sums, when it is about C, B x C or B; "" otherwise."""
    B, C = pb.B, pb.C
    named = []
    if C > 1 and abs(dice - C) < 0.05 * C:
        named.append(
            f"the number of classes C = {C}: the per-class Dice is summed over the classes instead of averaged "
            "(or a sum over batch and classes is divided by the batch size only)"
        )
    if C > 1 and abs(dice - B * C) < 0.05 * B * C:
        named.append(f"B x C = {B * C}: the Dice is summed over samples and classes instead of averaged")
    if B > 1 and abs(dice - B) < 0.05 * B:
        named.append(f"the batch size B = {B}: the Dice is summed over the samples instead of averaged")
    return "; or ".join(named)


def _scale_cause(ratio: float, pb: _Problem) -> str:
    named = {
        pb.B: f"the batch size B = {pb.B}",
        pb.C: f"the number of classes C = {pb.C}",
        math.prod(pb.spatial): f"the number of positions N = {math.prod(pb.spatial)}",
    }
    for n, what in named.items():
        if n > 1 and abs(ratio - n) < 0.02 * n:
            return f"backward misses a division by {what} that the forward applies"
        if n > 1 and abs(ratio - 1 / n) < 0.02 / n:
            return f"backward divides by {what} once more than the forward does"
    return (
        "a scale factor in a hand-written backward differs from the forward (for example the division by the "
        "batch size, or a factor 2)"
    )


def check(
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    mode: str = "multiclass",
    inputs: str = "logits",
    target: str = "index",
    *,
    num_classes: int = 3,
    batch_size: int = 2,
    spatial: tuple[int, ...] | None = None,
    seed: int = 0,
    name: str | None = None,
) -> Report:
    """Run every check on ``loss_fn(input, target)`` and return a :class:`Report`.

    Args:
        loss_fn: the loss: an ``nn.Module`` instance, a function, or ``SomeFunction.apply`` of a
            ``torch.autograd.Function``; called as ``loss_fn(input, target)``.
        mode: "binary" (input and target (B, 1, *S)), "multiclass" (input (B, C, *S)), "multilabel"
            (input and target (B, C, *S)).
        inputs: what the loss expects: "logits" (raw scores) or "probs" (softmax over C in multiclass mode,
            sigmoid otherwise).
        target: multiclass mode: "index" (class indices (B, *S), int64) or "onehot" ((B, C, *S) float).
        num_classes: C for multiclass and multilabel (at least 2 for multiclass).
        batch_size, spatial: the shape of the generated problems (B >= 2; spatial holds at least 2 positions
            per class, default (8, 8), or a larger square for more than 16 classes).
        seed: seed of the generated data.
        name: shown in the report (default: the loss's name).

    Returns:
        a :class:`Report`; ``report.ok`` is False when a check failed, ``str(report)`` is the text report.
    """
    for arg, value, choices in (
        ("mode", mode, MODES),
        ("inputs", inputs, INPUTS),
        ("target", target, TARGETS),
    ):
        if value not in choices:
            raise ValueError(f"{arg} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, int)
        or num_classes < (2 if mode == "multiclass" else 1)
    ):
        raise ValueError(
            f"num_classes must be an int >= {2 if mode == 'multiclass' else 1}, got {num_classes!r}"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
        raise ValueError(f"batch_size must be an int >= 2, got {batch_size!r}")
    C = 1 if mode == "binary" else num_classes
    if spatial is None:
        side = max(8, math.ceil(math.sqrt(4 * C)))
        spatial = (side, side)
    spatial = tuple(int(s) for s in spatial)
    if not spatial or math.prod(spatial) < 2 * C:
        raise ValueError(
            f"spatial must hold at least 2 * num_classes = {2 * C} positions, got {spatial} "
            f"({math.prod(spatial)} positions); leave it out to size it from num_classes"
        )
    if name is None:
        owner = getattr(loss_fn, "__self__", None)
        if isinstance(owner, type):  # SomeFunction.apply
            name = f"{owner.__qualname__}.apply"
        else:
            name = getattr(loss_fn, "__qualname__", None) or type(loss_fn).__name__
    problem = _Problem(mode, inputs, target, num_classes, batch_size, spatial, seed)
    report = Report(name=name, mode=mode, inputs=inputs, target=target if mode == "multiclass" else "dense")
    report.checks = _Doctor(loss_fn, problem).run()
    return report


__all__ = ["check", "Report", "CheckResult", "CHECKS"]
