"""Triton kernel of the row-wise cross-entropy used by the chunked linear cross-entropy.

For one chunk of logits it computes each row's loss and overwrites the row, in place, with the
gradient of that loss with respect to the logits (unscaled by the reduction), so the chunk's logits
buffer is the only ``tokens x vocab`` memory ever held.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def cross_entropy_fwd_bwd(
    LOGITS, LABELS, LOSS, LSE,
    stride_row, n_cols, n_valid, ignore_index, label_smoothing, z_loss,
    COMPUTE_GRAD: tl.constexpr, BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0)
    row_ptr = LOGITS + row.to(tl.int64) * stride_row
    label = tl.load(LABELS + row).to(tl.int32)
    cols0 = tl.arange(0, BLOCK_V)
    if label == ignore_index:
        tl.store(LOSS + row, 0.0)
        tl.store(LSE + row, 0.0)
        if COMPUTE_GRAD:
            for start in range(0, n_cols, BLOCK_V):
                cols = start + cols0
                tl.store(row_ptr + cols, tl.zeros([BLOCK_V], dtype=tl.float32).to(LOGITS.dtype.element_ty),
                         mask=cols < n_cols)
        return

    # Pass 1: online max / sum of exponentials over the valid classes (+ sum of logits for smoothing).
    m = tl.full([BLOCK_V], float("-inf"), dtype=tl.float32)
    s = tl.zeros([BLOCK_V], dtype=tl.float32)
    total = tl.zeros([BLOCK_V], dtype=tl.float32)
    for start in range(0, n_valid, BLOCK_V):
        cols = start + cols0
        x = tl.load(row_ptr + cols, mask=cols < n_valid, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, x)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - m_safe) + tl.exp(x - m_safe)
        m = m_new
        total += tl.where(cols < n_valid, x, 0.0)
    m_row = tl.max(m, 0)
    s_row = tl.sum(s * tl.exp(m - m_row), 0)
    lse = m_row + tl.log(s_row)
    x_label = tl.load(row_ptr + label).to(tl.float32)
    nll = lse - x_label
    loss = (1.0 - label_smoothing) * nll + label_smoothing * (lse - tl.sum(total, 0) / n_valid)
    loss += z_loss * lse * lse
    tl.store(LOSS + row, loss)
    tl.store(LSE + row, lse)

    # Pass 2: d loss / d logits = softmax * (1 + 2 z lse) - (1 - eps) onehot - eps / V.
    if COMPUTE_GRAD:
        for start in range(0, n_cols, BLOCK_V):
            cols = start + cols0
            x = tl.load(row_ptr + cols, mask=cols < n_valid, other=float("-inf")).to(tl.float32)
            p = tl.exp(x - lse)
            g = p * (1.0 + 2.0 * z_loss * lse) - label_smoothing / n_valid
            g -= tl.where(cols == label, 1.0 - label_smoothing, 0.0)
            g = tl.where(cols < n_valid, g, 0.0)
            tl.store(row_ptr + cols, g.to(LOGITS.dtype.element_ty), mask=cols < n_cols)
