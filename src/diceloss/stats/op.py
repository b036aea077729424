"""The one registration of a statistics implementation as a ``torch.ops.diceloss`` op, and its eager twin.

An implementation (:class:`StatsImpl`) is a forward ``(x, target, mask, options) -> (B, C, NUM_STATS)``
statistics and a backward ``(coef, x, target, mask, options) -> dL/dx`` from the (B, C, NUM_STATS)
gradients of the statistics (``options``: a :class:`~diceloss.stats.types.OpOptions`). Nothing of the
size of the logits is kept between the two: only references to the input, the target and the mask.

:func:`register_stats_op` makes two custom ops of it, ``diceloss::<name>`` and
``diceloss::<name>_backward``, with fake-tensor and autograd registrations, so
``torch.compile(fullgraph=True)`` sees one opaque op; the backward op's own backward raises the
implementation's message (double backward is not supported). Their schema is made from the fields of
``OpOptions``.

Eager mode takes :func:`eager_stats` instead: an ``autograd.Function`` with the six statistics as six
outputs (a custom op costs tens of microseconds more per call, and no unbind node sits between the op and
the heads), whose backward stacks only the gradients that arrive. It is given the implementation chosen
for the call, so that choice is made once.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable

import torch
from torch import Tensor

from .types import NUM_STATS, OpOptions, compute_dtype


class StatsImpl:
    """A forward and a backward of the statistics, and what double backward raises."""

    __slots__ = ("forward", "backward", "double_backward_message")

    def __init__(self, forward: Callable[..., Tensor], backward: Callable[..., Tensor],
                 double_backward_message: str):
        self.forward = forward
        self.backward = backward
        self.double_backward_message = double_backward_message


# ----------------------------------------------------------------------------------------------
# eager mode: plain autograd.Functions


class _Backward(torch.autograd.Function):
    """The backward as a node of its own (create_graph=True), whose backward raises."""

    @staticmethod
    def forward(coef, x, target, mask, impl, options):
        return impl.backward(coef, x, target, mask, options)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.message = inputs[4].double_backward_message

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError(ctx.message)


def _stats_outputs(x, target, mask, call):
    # implementation and options as one tuple: apply() inspects every argument, a cost per argument and call
    impl, options = call
    return impl.forward(x, target, mask, options).unbind(-1)


def _save(ctx, x, target, mask, call, outputs) -> None:
    ctx.save_for_backward(x, target, mask)
    ctx.call = call
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(outputs[3])  # the count of valid positions


def _stats_backward(ctx, grads):
    if not ctx.needs_input_grad[0]:
        return None, None, None, None
    arrived = [g for g in grads if g is not None]
    if not arrived:
        return None, None, None, None
    zero = arrived[0].new_zeros(())
    coef = torch.stack([zero.expand_as(arrived[0]) if g is None else g for g in grads], dim=-1)
    x, target, mask = ctx.saved_tensors
    impl, options = ctx.call
    if torch.is_grad_enabled():  # create_graph=True (or a torch.func transform): a node whose own backward raises
        grad_x = _Backward.apply(coef, x, target, mask, impl, options)
    else:
        grad_x = impl.backward(coef, x, target, mask, options)
    return grad_x, None, None, None


class _StatsSplit(torch.autograd.Function):
    """The statistics as six outputs (I, P, G, M, E, F): no unbind node between the op and the heads, and the
    backward stacks only the gradients that arrive. ``ctx`` in forward: apply() then binds no signature (an
    ``inspect.signature`` per call, about 30 us, for Functions with a separate setup_context)."""

    @staticmethod
    def forward(ctx, x, target, mask, call):
        outputs = _stats_outputs(x, target, mask, call)
        _save(ctx, x, target, mask, call, outputs)
        return outputs

    @staticmethod
    def backward(ctx, *grads):
        return _stats_backward(ctx, grads)


class _StatsSplitFunctorch(torch.autograd.Function):
    """:class:`_StatsSplit` with forward and setup_context apart, as torch.func transforms (grad) require."""

    @staticmethod
    def forward(x, target, mask, call):
        return _stats_outputs(x, target, mask, call)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _save(ctx, *inputs, output)

    @staticmethod
    def backward(ctx, *grads):
        return _stats_backward(ctx, grads)


_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)


def eager_stats(impl: StatsImpl, x: Tensor, target: Tensor, mask: Tensor | None,
                options: OpOptions) -> tuple[Tensor, ...]:
    """The six statistics (I, P, G, M, E, F), each (B, C), by ``impl``, differentiable with respect to ``x``."""
    function = _StatsSplitFunctorch if _functorch_active() else _StatsSplit
    return function.apply(x, target, mask, (impl, options))


# ----------------------------------------------------------------------------------------------
# torch.library custom ops

def _with_signature(fn: Callable, tensors: tuple[tuple[str, object], ...]) -> Callable:
    """``fn(*tensors, *options)`` given the typed signature ``(tensors..., OpOptions fields...) -> Tensor``, from
    which ``torch.library.custom_op`` infers the op's schema (the ``schema=`` argument is newer than torch 2.4)."""
    hints = typing.get_type_hints(OpOptions)
    # typing.Optional, not ``X | None``: the schema inference of older torch looks annotations up by equality
    hints = {name: typing.Optional[hint.__args__[0]] if isinstance(hint, types.UnionType) else hint  # noqa: UP045
             for name, hint in hints.items()}
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter(name, positional, annotation=hint) for name, hint in tensors]
    params += [inspect.Parameter(name, positional, annotation=hints[name]) for name in OpOptions._fields]
    fn.__signature__ = inspect.Signature(params, return_annotation=Tensor)
    return fn


_FORWARD_TENSORS = (("x", Tensor), ("target", Tensor), ("mask", typing.Optional[Tensor]))  # noqa: UP045
_BACKWARD_TENSORS = (("coef", Tensor),) + _FORWARD_TENSORS


def register_stats_op(name: str, impl: StatsImpl):
    """``torch.ops.diceloss.<name>`` (statistics, (B, C, NUM_STATS)) and ``<name>_backward`` over ``impl``.

    ``impl.forward`` and ``impl.backward`` may be changed later (they are looked up at each call).
    Returns the forward op.
    """

    def forward(x, target, mask, *options):
        return impl.forward(x, target, mask, OpOptions(*options))

    def backward_op(coef, x, target, mask, *options):
        return impl.backward(coef, x, target, mask, OpOptions(*options))

    stats_op = torch.library.custom_op(
        f"diceloss::{name}", _with_signature(forward, _FORWARD_TENSORS), mutates_args=()
    )
    backward_def = torch.library.custom_op(
        f"diceloss::{name}_backward", _with_signature(backward_op, _BACKWARD_TENSORS), mutates_args=()
    )

    @stats_op.register_fake
    def _(x, target, mask, *options):
        return x.new_empty((x.shape[0], x.shape[1], NUM_STATS), dtype=compute_dtype(x.dtype))

    @backward_def.register_fake
    def _(coef, x, *args):
        return torch.empty_like(x)

    def setup_context(ctx, inputs, output):
        x, target, mask, *options = inputs
        ctx.save_for_backward(x, target, mask)
        ctx.options = options

    def backward(ctx, grad):
        x, target, mask = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = backward_def(grad, x, target, mask, *ctx.options)
        return (grad_x,) + (None,) * (2 + len(ctx.options))

    stats_op.register_autograd(backward, setup_context=setup_context)

    def setup_double(ctx, inputs, output):
        pass

    def double_backward(ctx, grad):
        raise RuntimeError(impl.double_backward_message)

    backward_def.register_autograd(double_backward, setup_context=setup_double)
    return stats_op
