"""Cross-entropy over an output projection, fused or not.

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
