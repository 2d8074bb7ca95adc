"""Bias add + GeLU (erf or tanh form) in one Triton kernel, forward and backward.

``bias_gelu(x, bias)`` equals ``F.gelu(x + bias)``; ``approximate=True`` gives
``F.gelu(x + bias, approximate="tanh")``. Only ``x`` is kept for backward (the sum is recomputed),
so the pre-activation is never stored twice.
"""

from __future__ import annotations

import torch
from torch import nn

from ._runtime import check_can_run

__all__ = ["BiasGeLU", "bias_gelu"]

_BLOCK = 1024


def _kernels():
    from . import _bias_gelu_triton

    return _bias_gelu_triton


class _BiasGeLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, approximate):
        x_c = x.contiguous()
        y = torch.empty_like(x_c)
        numel, n = x_c.numel(), x_c.shape[-1]
        if numel:
            grid = ((numel + _BLOCK - 1) // _BLOCK,)
            _kernels().bias_gelu_fwd[grid](x_c, bias, y, numel, n, APPROX_TANH=approximate, BLOCK=_BLOCK)
        ctx.save_for_backward(x_c, bias)
        ctx.approximate = approximate
        return y

    @staticmethod
    def backward(ctx, dy):
        x, bias = ctx.saved_tensors
        dy = dy.contiguous()
        dx = torch.empty_like(x)
        numel, n = x.numel(), x.shape[-1]
        if numel:
            grid = ((numel + _BLOCK - 1) // _BLOCK,)
            _kernels().bias_gelu_bwd[grid](dy, x, bias, dx, numel, n, APPROX_TANH=ctx.approximate, BLOCK=_BLOCK)
        dbias = dx.reshape(-1, n).sum(0, dtype=torch.float32).to(bias.dtype) if ctx.needs_input_grad[1] else None
        return dx, dbias, None


def bias_gelu(x: torch.Tensor, bias: torch.Tensor, approximate: bool = False) -> torch.Tensor:
    """``gelu(x + bias)`` over the last dim of ``x``; ``approximate=True`` for the tanh form."""
    check_can_run("bias_gelu.bias_gelu", x, bias)
    if isinstance(approximate, str):  # accept F.gelu's spelling too
        approximate = approximate == "tanh"
    if bias.dim() != 1 or bias.shape[0] != x.shape[-1]:
        raise ValueError(f"bias_gelu: bias must have shape ({x.shape[-1]},), got {tuple(bias.shape)}.")
    return _BiasGeLUFunction.apply(x, bias.contiguous(), bool(approximate))


class BiasGeLU(nn.Module):
    """Owns the bias: ``BiasGeLU(n)(x) == gelu(x + bias)``; pair it with a bias-free ``nn.Linear``."""

    def __init__(self, features: int, approximate: bool = False):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(features))
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bias_gelu(x, self.bias, self.approximate)
