"""Triton kernels of bias + GeLU (erf and tanh forms), computed in fp32."""

from __future__ import annotations

import triton
import triton.language as tl

# Constants are written as literals inside the kernels: the compiler refuses plain module globals
# and the interpreter cannot multiply a tl.constexpr global with a tensor.
# 0.7071067811865476 = 1/sqrt(2), 0.3989422804014327 = 1/sqrt(2 pi), 0.7978845608028654 = sqrt(2/pi)


@triton.jit
def _tanh(u):
    # Stable for any |u|: exp of a non-positive number never overflows.
    a = tl.exp(-2.0 * tl.abs(u))
    t = (1.0 - a) / (1.0 + a)
    return tl.where(u >= 0, t, -t)


@triton.jit
def bias_gelu_fwd(X, BIAS, Y, numel, N, APPROX_TANH: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # int64: numel may pass 2^31
    mask = offs < numel
    z = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    z += tl.load(BIAS + offs % N, mask=mask, other=0.0).to(tl.float32)
    if APPROX_TANH:
        t = _tanh(0.7978845608028654 * (z + 0.044715 * z * z * z))
        y = 0.5 * z * (1.0 + t)
    else:
        y = 0.5 * z * (1.0 + tl.erf(z * 0.7071067811865476))
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def bias_gelu_bwd(DY, X, BIAS, DX, numel, N, APPROX_TANH: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # int64: numel may pass 2^31
    mask = offs < numel
    z = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    z += tl.load(BIAS + offs % N, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
    if APPROX_TANH:
        t = _tanh(0.7978845608028654 * (z + 0.044715 * z * z * z))
        grad = 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * z * z)
    else:
        grad = 0.5 * (1.0 + tl.erf(z * 0.7071067811865476)) + z * tl.exp(-0.5 * z * z) * 0.3989422804014327
    tl.store(DX + offs, (dy * grad).to(DX.dtype.element_ty), mask=mask)
