"""Sums of statistics across the ranks of a ``torch.distributed`` process group, differentiably.

The statistics are plain sums, so batch Dice over many processes is one all-reduce of (1, C, k)
numbers between the statistics and the head. Forward: every rank gets the global sums, so every
rank computes the loss of the union of all batches. Backward: the gradient with respect to a
rank's own contribution is the sum over ranks of the upstream gradients (an all-reduce again).
Under ``DistributedDataParallel`` every rank computes the same loss L, so each rank's local input
gradient is ``world_size * dL/d(local)``; DDP's averaging of the parameter gradients divides that
back, giving exactly the single-process gradient on the union of the batches, whatever the
local batch sizes.

Verified by ``tests/test_distributed.py`` (2 and 3 gloo processes, float64, every loss, equal and
unequal local batches, a rank whose batch holds background only, a subgroup as ``process_group``):
losses equal the single-process loss and DDP parameter gradients the single-process gradients to
~1e-15. Every rank must call the loss the same number of times: each call is a collective. Outside
an initialised process group everything here is the identity, so one script runs with and without
``torchrun``.

Example:
    >>> import torch
    >>> from diceloss.distributed import all_reduce_sum
    >>> v = torch.ones(3, requires_grad=True)
    >>> all_reduce_sum(v) is v          # no process group: the identity
    True
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor

from .stats.types import OverlapStats


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: Tensor, group) -> Tensor:
        ctx.group = group
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


def all_reduce_sum(tensor: Tensor, group=None) -> Tensor:
    """Differentiable all-reduce (sum) over ``group`` (default: the whole world).

    Forward: the sum over the ranks, on every rank. Backward: the sum over the ranks of the upstream
    gradients (the gradient of the sum of every rank's loss). The identity when torch.distributed is
    not initialised or the group has one rank.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    if dist.get_world_size(group) == 1:
        return tensor
    return _AllReduceSum.apply(tensor, group)


def all_reduce_stats(stats: OverlapStats, group=None) -> OverlapStats:
    """Sum every statistic over the ranks of ``group`` in one collective.

    The fields must have the same shape on every rank: sum over the batch first (batch Dice), which
    also makes unequal local batch sizes work.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return stats
    present = [f for f in stats if f is not None]
    shapes = {tuple(f.shape) for f in present}
    if len(shapes) != 1 or next(iter(shapes))[0] != 1:
        raise ValueError(
            f"all_reduce_stats expects statistics summed over the batch, (1, C); got shapes {shapes}"
        )
    stacked = torch.stack(present, dim=-1)
    summed = all_reduce_sum(stacked, group).unbind(dim=-1)
    it = iter(summed)
    return OverlapStats(*(None if f is None else next(it) for f in stats))


def all_reduce_sum_(tensor: Tensor, group=None) -> Tensor:
    """Sum ``tensor`` over the ranks of ``group`` in place, without autograd (accumulated metric state).

    Returns ``tensor``; does nothing when torch.distributed is not initialised.
    """
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor


def sum_state_over_ranks(state: Tensor | None, zeros: Callable[[torch.device], Tensor], group=None) -> Tensor:
    """An accumulating metric's state summed over the ranks of ``group`` (the state itself outside one).

    A rank that saw no batch (``state`` None) must still join the all-reduce, or the others hang: it contributes
    ``zeros(device)``, on the device the group's backend needs (CUDA for NCCL). ``zeros`` may raise to say what
    the metric needs to know to make them.
    """
    in_group = dist.is_available() and dist.is_initialized()
    if state is None:
        device = torch.device("cpu")
        if in_group and dist.get_backend(group) == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        state = zeros(device)
    if in_group:
        state = all_reduce_sum_(state.clone(), group)
    return state

