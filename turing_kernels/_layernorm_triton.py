"""Triton kernels of the LayerNorm with an optional fused residual add (fp32 statistics)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def layer_norm_fwd(
    X, RES, SUM, Y, W, B, MEAN, RSTD,
    stride_x, stride_r, stride_s, stride_y,
    N, eps,
    HAS_RES: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One row per program: s = x (+ residual), y = (s - mean) * rstd * w + b."""
    row = tl.program_id(0).to(tl.int64)  # int64 offsets: rows x stride may pass 2^31
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RES:
        r = tl.load(RES + row * stride_r + cols, mask=mask, other=0.0)
        s = (x.to(tl.float32) + r.to(tl.float32)).to(SUM.dtype.element_ty)
        tl.store(SUM + row * stride_s + cols, s, mask=mask)
        x = s  # normalise the sum exactly as it is handed on (rounded to its dtype)
    x = x.to(tl.float32)
    mean = tl.sum(x, 0) / N
    xc = tl.where(mask, x - mean, 0.0)
    var = tl.sum(xc * xc, 0) / N
    rstd = 1.0 / tl.sqrt(var + eps)
    y = xc * rstd
    if HAS_W:
        y = y * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_B:
        y = y + tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)


@triton.jit
def layer_norm_bwd(
    DY, X, W, MEAN, RSTD, DSUM, DX, DRES, DW_PART, DB_PART,
    stride_dy, stride_x, stride_ds, stride_dx, stride_dr,
    M, N, rows_per_program,
    HAS_DSUM: tl.constexpr, HAS_DRES: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Each program owns a contiguous group of rows and writes partial dW/dB sums (fp32)."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32) if HAS_W else tl.full([BLOCK_N], 1.0, tl.float32)
    dw = tl.zeros([BLOCK_N], dtype=tl.float32)
    db = tl.zeros([BLOCK_N], dtype=tl.float32)
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    for row32 in range(row_start, row_end):
        row = tl.cast(row32, tl.int64)  # int64 offsets: rows x stride may pass 2^31
        x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(MEAN + row)
        rstd = tl.load(RSTD + row)
        xhat = tl.where(mask, (x - mean) * rstd, 0.0)
        wdy = w * dy
        c1 = tl.sum(xhat * wdy, 0) / N
        c2 = tl.sum(wdy, 0) / N
        dx = (wdy - (xhat * c1 + c2)) * rstd
        if HAS_DSUM:
            dx += tl.load(DSUM + row * stride_ds + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + row * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=mask)
        if HAS_DRES:
            tl.store(DRES + row * stride_dr + cols, dx.to(DRES.dtype.element_ty), mask=mask)
        dw += dy * xhat
        db += dy
    if HAS_W:
        tl.store(DW_PART + pid.to(tl.int64) * N + cols, dw, mask=mask)
    if HAS_B:
        tl.store(DB_PART + pid.to(tl.int64) * N + cols, db, mask=mask)
