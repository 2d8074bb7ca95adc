"""Cross-entropy over an output projection, fused or not, and over materialised logits.

``linear_cross_entropy(hidden, weight, labels)`` is ``cross_entropy(hidden @ weight.T (+ bias),
labels)`` with labels already aligned to the rows of ``hidden`` (shift causal LM labels before
calling). With ``fused=True`` on CUDA the Triton kernel computes loss and gradients in chunks and
never materialises the ``tokens x vocab`` logits; elsewhere logits are computed in fp32 chunks of
the plain PyTorch path.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .attention import kernels_usable

_ROWS = 64  # rows per chunk of the row-wise log-sum-exp: its temporaries stay small and are reused


class _LogitsCrossEntropy(torch.autograd.Function):
    """``F.cross_entropy(logits, labels)`` over fp32 ``[N, V]`` logits with fewer passes over the
    ``N x V`` tensor: the forward keeps only the per-row log-sum-exp (no log-softmax copy) and the
    backward writes ``softmax - one_hot`` once into a fresh tensor (no zero-filled buffer for the
    one-hot, no second pass of the log-softmax backward)."""

    @staticmethod
    def forward(ctx, logits, labels, ignore_index, reduction, num_valid):
        rows = logits.shape[0]
        valid = logits[:, :num_valid]
        lse = torch.empty(rows, dtype=logits.dtype, device=logits.device)
        for start in range(0, rows, _ROWS):
            lse[start:start + _ROWS] = torch.logsumexp(valid[start:start + _ROWS], dim=-1)
        keep = labels != ignore_index
        safe = torch.where(keep, labels, 0)
        losses = (lse - logits.gather(1, safe[:, None]).squeeze(1)) * keep
        total = losses.sum()
        count = keep.sum()
        ctx.save_for_backward(logits, lse, safe, keep, count)
        ctx.mean = reduction == "mean"
        ctx.num_valid = num_valid
        return total / count if ctx.mean else total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        logits, lse, safe, keep, count = ctx.saved_tensors
        weight = keep.to(logits.dtype) * (grad / count if ctx.mean else grad)
        nv = ctx.num_valid
        out = torch.empty_like(logits)
        if nv < logits.shape[1]:
            out[:, nv:] = 0.0  # padding columns: outside the softmax
        for start in range(0, logits.shape[0], _ROWS):
            chunk = out[start:start + _ROWS, :nv]
            torch.sub(logits[start:start + _ROWS, :nv], lse[start:start + _ROWS, None], out=chunk)
            chunk.exp_().mul_(weight[start:start + _ROWS, None])
        rows = torch.arange(logits.shape[0], device=logits.device)
        out[rows, safe] -= weight
        return out, None, None, None, None


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = -100,
                  reduction: str = "mean", num_valid_classes: Optional[int] = None) -> torch.Tensor:
    """``F.cross_entropy(logits[:, :num_valid_classes], labels)`` for ``[N, V]`` logits and ``[N]``
    class labels (reduction ``"mean"`` over the labels that are not ``ignore_index``, or ``"sum"``):
    columns past ``num_valid_classes`` (a padded vocabulary) are outside the softmax and get no
    gradient. Plain fp32 tensors that need a gradient take the leaner path of
    :class:`_LogitsCrossEntropy`; anything else (other dtypes, DTensors under loss parallelism,
    other reductions) goes to ``F.cross_entropy``."""
    num_valid = logits.shape[-1] if num_valid_classes is None else min(num_valid_classes, logits.shape[-1])
    if (type(logits) is torch.Tensor and logits.dim() == 2 and logits.dtype == torch.float32
            and reduction in ("mean", "sum") and logits.requires_grad):
        return _LogitsCrossEntropy.apply(logits, labels, ignore_index, reduction, num_valid)
    if num_valid < logits.shape[-1]:
        logits = logits[..., :num_valid]
    return F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction=reduction)


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    num_valid_classes: Optional[int] = None,
    fused: bool = False,
) -> torch.Tensor:
    """``hidden``: ``[N, H]`` (or ``[..., H]``), ``weight``: ``[V, H]``, ``labels``: ``[N]``.

    ``num_valid_classes`` (< V) masks padded vocabulary rows out of the softmax.
    """
    hidden = hidden.reshape(-1, hidden.shape[-1])
    labels = labels.reshape(-1)
    if fused and kernels_usable(hidden, weight):
        from turing_kernels.cross_entropy import fused_linear_cross_entropy

        return fused_linear_cross_entropy(
            hidden, weight, labels, bias=bias, ignore_index=ignore_index, reduction=reduction,
            num_valid_classes=num_valid_classes,
        )
    logits = F.linear(hidden, weight, bias).float()
    if num_valid_classes is not None and num_valid_classes < logits.shape[-1]:
        logits = logits[:, :num_valid_classes]
    return F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction=reduction)
