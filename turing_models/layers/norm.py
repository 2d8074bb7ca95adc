"""LayerNorm with an optional fused residual add.

``LayerNorm(hidden, eps, fused=...)`` is an ``nn.LayerNorm`` (same parameter names, so state
dicts match transformers' checkpoints). Called as ``norm(x)`` it returns the normalised ``x``;
called as ``norm(x, residual=r)`` it returns ``(normalised(x + r), x + r)`` so a pre-LN block can
hand the sum on as the next residual. With ``fused=True`` on CUDA the Triton kernel of
``turing_kernels`` does both in one pass (fp32 statistics; the sum is normalised as returned);
where the kernel cannot run the plain PyTorch path runs.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .attention import kernels_usable


class LayerNorm(nn.LayerNorm):
    def __init__(self, hidden_size: int, eps: float = 1e-5, fused: bool = False, **kwargs):
        super().__init__(hidden_size, eps=eps, **kwargs)
        self.fused = fused

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None):
        if self.fused and kernels_usable(x, self.weight, residual):
            from turing_kernels.layernorm import layer_norm

            return layer_norm(x, self.weight, self.bias, self.eps, residual=residual)
        if residual is None:
            return super().forward(x)
        summed = x + residual
        return super().forward(summed), summed
