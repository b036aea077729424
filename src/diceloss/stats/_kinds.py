"""What the statistic kinds beyond I, P, G, M, E, F share: probabilities of a chunk, chunking, backend choice.

The kinds (:mod:`~diceloss.stats.pairs`, :mod:`~diceloss.stats.regions`, :mod:`~diceloss.stats.focal_asym`) each
have three implementations, chosen per call by :func:`choose_backend`:

* ``"reference"``: plain autograd on full-size tensors (one-hot targets), from the paper's formula: the oracle;
* ``"fused"``: an ``autograd.Function`` that walks the positions in chunks (:func:`chunk_positions`), keeps only
  the logits and the target-side maps for the backward, and recomputes the probabilities there;
* ``"triton"``: a forward and a backward kernel (CUDA tensors; CPU tensors under ``TRITON_INTERPRET=1``).

``"auto"`` takes Triton for CUDA tensors where it is installed and serves the call; on the CPU the reference below
16 MiB of logits (like the I, P, G statistics when their compiled kernel cannot run), else the fused path.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator

import torch
from torch import Tensor

from .chunked import chunk_positions
from .fused import AUTO_CHUNKED_MIN_BYTES
from .types import compute_dtype

__all__ = ["activate", "chunk_positions", "chunks", "chunk_target", "choose_backend", "triton_reason", "launch_context",
           "compute_dtype"]


def activate(x: Tensor, activation: str) -> tuple[Tensor, Tensor | None]:
    """(p, log p) of logits ``x`` (B, C, n): softmax over C with its log-softmax, sigmoid (log p None: the callers
    take ``logsigmoid`` where they need it), or ``x`` itself for probabilities."""
    if activation == "softmax":
        logp = torch.log_softmax(x, dim=1)
        return logp.exp(), logp
    if activation == "sigmoid":
        return torch.sigmoid(x), None
    return x, None


def chunks(N: int, step: int) -> Iterator[tuple[int, int]]:
    for n0 in range(0, N, step):
        yield n0, min(N, n0 + step)


def chunk_target(target: Tensor, mask: Tensor | None, n0: int, n1: int, C: int, ignore_index: int | None,
                 dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The target probabilities g (B, C, n) and the validity mask m (B, 1 or C, n) of positions n0:n1, both in
    ``dtype`` and contiguous: the values of :func:`diceloss.stats.reference.dense_target` on the chunk (its
    ``one_hot(...).permute`` would make every later op of the chunk strided, several times slower)."""
    mc = None if mask is None else mask[:, None, n0:n1]
    if not target.is_floating_point():
        t = target[:, n0:n1]
        valid = None if ignore_index is None else (t != ignore_index)
        if valid is not None:
            t = torch.where(valid, t, torch.zeros_like(t))
        g = (t[:, None, :] == torch.arange(C, device=t.device)[None, :, None]).to(dtype)
        m = torch.ones_like(t[:, None, :], dtype=torch.bool) if valid is None else valid[:, None, :]
    else:
        g = target[..., n0:n1].to(dtype)
        if ignore_index is not None:
            m = g != ignore_index
            g = torch.where(m, g, torch.zeros_like(g))
        else:
            m = torch.ones(g.shape[0], 1, g.shape[-1], dtype=torch.bool, device=g.device)
    if mc is not None:
        m = m & mc
    return g, m.to(dtype)


def interpreter_enabled() -> bool:
    """Whether ``TRITON_INTERPRET`` asks for Triton's CPU interpreter (read at each call)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")


def triton_reason(x: Tensor, target_requires_grad: bool = False) -> str | None:
    """None when a Triton kernel of a kind can take these tensors, else why not."""
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (pip install 'diceloss[triton]')"
    device = x.device.type
    if device == "cpu" and not interpreter_enabled():
        return ("it runs CUDA tensors and the input is on the CPU; set TRITON_INTERPRET=1 to run the kernels in "
                "Triton's CPU interpreter (slow, for testing), or use backend='fused' or 'reference'")
    if device not in ("cpu", "cuda"):
        return f"it runs CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), got a tensor on {device}"
    if target_requires_grad:
        return "it gives no gradient with respect to the target; use backend='reference' for that"
    return None


def launch_context(device: torch.device):
    """The device context of a launch (the tensor's CUDA device; nothing on the CPU)."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def choose_backend(name: str, x: Tensor, target: Tensor, kind_reason: str | None = None) -> str:
    """``"reference"``, ``"fused"`` or ``"triton"`` for backend ``name`` ("auto" or one of those, checked by the
    caller); ``kind_reason``: why the kind's Triton kernel cannot serve this call (None: it can). A backend asked
    for by name that cannot serve the call raises ValueError with the reason."""
    needs_target_grad = target.is_floating_point() and target.requires_grad
    if name == "auto":
        if needs_target_grad:
            return "reference"  # only autograd differentiates with respect to a soft target
        if x.device.type == "cuda" and kind_reason is None and triton_reason(x) is None:
            return "triton"
        if x.device.type == "cpu" and x.numel() * x.element_size() < AUTO_CHUNKED_MIN_BYTES:
            # the rule of the I, P, G statistics without their compiled kernel: on small inputs the per-chunk
            # overhead of the chunked path costs more time than the reference's full-size temporaries cost memory
            return "reference"
        return "fused"
    if name == "triton":
        reason = triton_reason(x, needs_target_grad) or kind_reason
        if reason is not None:
            raise ValueError(f"backend 'triton' cannot serve this call: {reason}")
    if name == "fused" and needs_target_grad:
        raise ValueError("backend 'fused' cannot serve this call: the target requires grad (the fused backward "
                         "differentiates with respect to the input only); use backend='reference'")
    return name
