"""LayerNorm with an optional fused residual add, in Triton (fp32 statistics, forward + backward).

``layer_norm(x, weight, bias, eps)`` is ``F.layer_norm`` over the last dimension;
``layer_norm(x, weight, bias, eps, residual=r)`` returns ``(layer_norm(x + r), x + r)`` from one
pass over memory, the pre-LN transformer block's "add, then normalise, and keep the sum as the
next residual". The sum takes the promoted dtype of ``x`` and ``residual`` (keep the residual
stream in fp32 for an fp32 sum) and is normalised exactly as returned.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import nn

from ._runtime import check_can_run, interpreting, next_power_of_2

__all__ = ["FusedLayerNorm", "layer_norm"]

MAX_HIDDEN = 65536


def _kernels():
    from . import _layernorm_triton

    return _layernorm_triton


def _warps(block_n: int) -> int:
    return 16 if block_n >= 16384 else 8 if block_n >= 4096 else 4


def _rows(t: torch.Tensor, n: int) -> torch.Tensor:
    t = t.reshape(-1, n)
    return t if t.stride(-1) == 1 else t.contiguous()


class _LayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, residual, eps):
        shape, n = x.shape, x.shape[-1]
        x2 = _rows(x, n)
        m = x2.shape[0]
        res2 = _rows(residual, n) if residual is not None else None
        y = torch.empty((m, n), device=x.device, dtype=x.dtype)
        summed = None
        if res2 is not None:
            summed = torch.empty((m, n), device=x.device, dtype=torch.result_type(x, residual))
        mean = torch.empty(m, device=x.device, dtype=torch.float32)
        rstd = torch.empty_like(mean)
        block_n = next_power_of_2(n)
        if m > 0:
            _kernels().layer_norm_fwd[(m,)](
                x2, res2 if res2 is not None else x2, summed if summed is not None else y, y,
                weight if weight is not None else x2, bias if bias is not None else x2, mean, rstd,
                x2.stride(0), res2.stride(0) if res2 is not None else 0,
                summed.stride(0) if summed is not None else 0, y.stride(0),
                n, eps,
                HAS_RES=res2 is not None, HAS_W=weight is not None, HAS_B=bias is not None, BLOCK_N=block_n,
                num_warps=_warps(block_n),
            )
        normed_input = summed if summed is not None else x2
        ctx.save_for_backward(normed_input, weight, bias, mean, rstd)
        ctx.meta = (shape, x.dtype, residual.dtype if residual is not None else None, residual is not None)
        if summed is None:
            return y.view(shape)
        return y.view(shape), summed.view(shape)

    @staticmethod
    def backward(ctx, dy, dsum=None):
        xin, weight, bias, mean, rstd = ctx.saved_tensors
        shape, x_dtype, res_dtype, has_res = ctx.meta
        m, n = xin.shape
        dy2 = _rows(dy, n)
        dsum2 = _rows(dsum, n) if (has_res and dsum is not None) else None
        dx = torch.empty((m, n), device=xin.device, dtype=x_dtype)
        dres = None
        if has_res and ctx.needs_input_grad[3]:
            dres = torch.empty((m, n), device=xin.device, dtype=res_dtype)
        block_n = next_power_of_2(n)
        if interpreting():
            programs = min(max(m, 1), 4)
        else:
            programs = min(max(m, 1), torch.cuda.get_device_properties(xin.device).multi_processor_count * 4)
        rows_per_program = (m + programs - 1) // programs if m > 0 else 1
        dw_part = torch.empty((programs, n), device=xin.device, dtype=torch.float32) if weight is not None else None
        db_part = torch.empty((programs, n), device=xin.device, dtype=torch.float32) if bias is not None else None
        if m > 0:
            _kernels().layer_norm_bwd[(programs,)](
                dy2, xin, weight if weight is not None else xin, mean, rstd,
                dsum2 if dsum2 is not None else dy2, dx, dres if dres is not None else dx,
                dw_part if dw_part is not None else mean, db_part if db_part is not None else mean,
                dy2.stride(0), xin.stride(0), dsum2.stride(0) if dsum2 is not None else 0, dx.stride(0),
                dres.stride(0) if dres is not None else 0,
                m, n, rows_per_program,
                HAS_DSUM=dsum2 is not None, HAS_DRES=dres is not None, HAS_W=weight is not None,
                HAS_B=bias is not None, BLOCK_N=block_n, num_warps=_warps(block_n),
            )
        dw = dw_part.sum(0).to(weight.dtype) if weight is not None and m > 0 else (
            torch.zeros_like(weight) if weight is not None else None)
        db = db_part.sum(0).to(bias.dtype) if bias is not None and m > 0 else (
            torch.zeros_like(bias) if bias is not None else None)
        return dx.view(shape), dw, db, (dres.view(shape) if dres is not None else None), None


def layer_norm(
    x: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    eps: float = 1e-5,
    residual: Optional[torch.Tensor] = None,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """LayerNorm over the last dim of ``x``; with ``residual`` returns ``(norm(x + residual), x + residual)``."""
    check_can_run("layernorm.layer_norm", x, weight, bias, residual)
    n = x.shape[-1]
    if n > MAX_HIDDEN:
        raise ValueError(f"layer_norm: hidden size {n} > {MAX_HIDDEN} is not supported by the fused kernel.")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and p.shape != (n,):
            raise ValueError(f"layer_norm: {name} must have shape ({n},), got {tuple(p.shape)}.")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"layer_norm: residual shape {tuple(residual.shape)} != x shape {tuple(x.shape)}.")
    if residual is None:
        return _LayerNormFunction.apply(x, weight, bias, None, float(eps))
    return _LayerNormFunction.apply(x, weight, bias, residual, float(eps))


class FusedLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` whose forward runs the Triton kernel: ``norm(x)`` or ``norm(x, residual)``."""

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None):
        if len(self.normalized_shape) != 1:
            raise ValueError("FusedLayerNorm normalises over the last dimension only.")
        return layer_norm(x, self.weight, self.bias, self.eps, residual=residual)
