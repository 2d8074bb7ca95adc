"""Triton kernels of the flash attention (FlashAttention-2 algorithm).

One set of kernels serves dense batched input and packed variable-length input:

* dense: q ``[B, H, Tq, D]``, k/v ``[B, Hkv, Tk, D]`` with any strides (last dim contiguous), an
  optional key-padding mask ``[B, Tk]`` applied in-kernel;
* varlen (``IS_VARLEN``): q ``[total_q, H, D]``, k/v ``[total_k, Hkv, D]``, sequence ``b`` spanning
  ``cu_seqlens[b]:cu_seqlens[b+1]``; passed with a batch stride of 0.

Causal masking is bottom-right aligned (query ``i`` of a sequence with ``Lq`` queries and ``Lk`` keys
sees keys ``j <= i + Lk - Lq``), as with a KV cache and as in FlashAttention >= 2.1. Grouped-query
attention maps query head ``h`` to key/value head ``h // GROUP``.

Head dimension. It is split into at most two power-of-two column tiles, ``BLOCK_D`` (the largest
power of two <= D) and ``BLOCK_D2`` (the rest rounded up to a power of two, 0 when D is a power of
two), and every matmul over it is two ``tl.dot`` calls: head dim 152 runs as 128 + 32 (5 % padding)
instead of one 256-wide tile, 80 as 64 + 16, 96 as 64 + 32. Columns ``>= HEAD_DIM`` are masked on
load and store, so nothing is padded in memory.

Memory access. ``ALIGNED`` (set by the launcher when every row stride is a multiple of 8 elements
and every base pointer is 16-byte aligned) adds ``tl.multiple_of`` hints, so that strides such as
152 * heads, which Triton's own specialisation (multiples of 16) misses, still give 16-byte vector
loads and cp.async pipelining. Batch, head and sequence-start offsets are computed in int64; the
offsets inside one tile stay int32. ``EVEN_M`` / ``EVEN_N`` (dense input whose lengths divide the
tiles) drop the bounds masks; otherwise only the last block of a loop is masked.

Masking. Each loop over key (or query) blocks runs in two parts: the blocks that need no mask at
all, then the blocks on the causal diagonal or at the sequence tail, the only ones that build the
``[BLOCK_M, BLOCK_N]`` mask.

The softmax works in base 2 (``exp2``) with ``scale * log2(e)`` folded into the scores; the saved
row statistic is ``lse2 = max + log2(sum)`` in that base. A row with no visible key gets
``lse2 = +inf`` so that both the output and every gradient of that row are exactly 0.

Dropout (``HAS_DROPOUT``). ``RNG`` points to two int64 words drawn from torch's generator on the
device for each call (a Philox seed and a counter offset): every call, layer and CUDA-graph replay
gets its own stream, with no host synchronisation. Keys ``4c .. 4c + 3`` of query ``i`` in
(batch ``b``, head ``h``) share Philox counter ``offset + ((b * H + h) * seqlen_q + i) * ceil(seqlen_k
/ 4) + c`` (int64), one call giving their four numbers; the backward kernels regenerate the same
mask, so no mask is stored.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

# --------------------------------------------------------------------------------------------
# Helpers shared by the forward and backward kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _sequence_bounds(cu_seqlens, off_b, seqlen, IS_VARLEN: tl.constexpr):
    if IS_VARLEN:
        start = tl.load(cu_seqlens + off_b)
        end = tl.load(cu_seqlens + off_b + 1)
        return start, end - start
    else:
        return 0, seqlen


@triton.jit
def _base(ptr, off_b, stride_b, off_h, stride_h, start, stride_m, ALIGNED: tl.constexpr):
    """Scalar pointer to row ``start`` of (batch, head), in int64 arithmetic. Each term is hinted on
    its own: a hint on their sum is lost when the compiler folds a zero term away."""
    return _advance(_advance(_advance(ptr, off_b, stride_b, ALIGNED), off_h, stride_h, ALIGNED), start, stride_m,
                    ALIGNED)


@triton.jit
def _advance(base, start, stride, ALIGNED: tl.constexpr):
    """``base`` moved by ``start`` rows (int64; a multiple of 8 elements when ALIGNED)."""
    off = tl.cast(start, tl.int64) * stride
    if ALIGNED:
        off = tl.multiple_of(off, 8)
    return base + off


@triton.jit
def _tile_ptrs(base, rows, stride, COL0: tl.constexpr, WIDTH: tl.constexpr, ALIGNED: tl.constexpr):
    """[len(rows), WIDTH] pointers to columns COL0 .. COL0 + WIDTH of the given rows."""
    row_off = rows[:, None] * stride
    if ALIGNED:
        row_off = tl.multiple_of(row_off, [8, 8])
    return base + row_off + (COL0 + tl.arange(0, WIDTH))[None, :]


@triton.jit
def _tile_mask(rows, n_rows, COL0: tl.constexpr, WIDTH: tl.constexpr, HEAD_DIM: tl.constexpr,
               EVEN_ROWS: tl.constexpr):
    cols = COL0 + tl.arange(0, WIDTH)
    if EVEN_ROWS:
        return (rows[:, None] >= 0) & (cols[None, :] < HEAD_DIM)
    else:
        return (rows[:, None] < n_rows) & (cols[None, :] < HEAD_DIM)


@triton.jit
def _load_chunk(base, rows, n_rows, stride, COL0: tl.constexpr, WIDTH: tl.constexpr, HEAD_DIM: tl.constexpr,
                EVEN_ROWS: tl.constexpr, ALIGNED: tl.constexpr):
    ptrs = _tile_ptrs(base, rows, stride, COL0, WIDTH, ALIGNED)
    if EVEN_ROWS and COL0 + WIDTH <= HEAD_DIM:
        return tl.load(ptrs)
    else:
        return tl.load(ptrs, mask=_tile_mask(rows, n_rows, COL0, WIDTH, HEAD_DIM, EVEN_ROWS), other=0.0)


@triton.jit
def _load_rows(base, rows, n_rows, stride, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_D2: tl.constexpr,
               EVEN_ROWS: tl.constexpr, ALIGNED: tl.constexpr):
    """The two head-dim chunks of a [len(rows), HEAD_DIM] tile (the second is the first when BLOCK_D2 == 0)."""
    a = _load_chunk(base, rows, n_rows, stride, 0, BLOCK_D, HEAD_DIM, EVEN_ROWS, ALIGNED)
    if BLOCK_D2 > 0:
        b = _load_chunk(base, rows, n_rows, stride, BLOCK_D, BLOCK_D2, HEAD_DIM, EVEN_ROWS, ALIGNED)
    else:
        b = a
    return a, b


@triton.jit
def _store_chunk(base, rows, n_rows, stride, x, COL0: tl.constexpr, WIDTH: tl.constexpr, HEAD_DIM: tl.constexpr,
                 EVEN_ROWS: tl.constexpr, ALIGNED: tl.constexpr):
    ptrs = _tile_ptrs(base, rows, stride, COL0, WIDTH, ALIGNED)
    x = x.to(base.dtype.element_ty)
    if EVEN_ROWS and COL0 + WIDTH <= HEAD_DIM:
        tl.store(ptrs, x)
    else:
        tl.store(ptrs, x, mask=_tile_mask(rows, n_rows, COL0, WIDTH, HEAD_DIM, EVEN_ROWS))


@triton.jit
def _store_rows(base, rows, n_rows, stride, a, b, scale, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                BLOCK_D2: tl.constexpr, EVEN_ROWS: tl.constexpr, ALIGNED: tl.constexpr):
    _store_chunk(base, rows, n_rows, stride, a * scale, 0, BLOCK_D, HEAD_DIM, EVEN_ROWS, ALIGNED)
    if BLOCK_D2 > 0:
        _store_chunk(base, rows, n_rows, stride, b * scale, BLOCK_D, BLOCK_D2, HEAD_DIM, EVEN_ROWS, ALIGNED)


@triton.jit
def _dot_t(x_a, x_b, y_a, y_b, BLOCK_D2: tl.constexpr, DOT_PREC: tl.constexpr):
    """x @ y.T over the head dimension, one dot per chunk; fp32."""
    s = tl.dot(x_a, tl.trans(y_a), input_precision=DOT_PREC)
    if BLOCK_D2 > 0:
        s = tl.dot(x_b, tl.trans(y_b), s, input_precision=DOT_PREC)  # accumulates in place: no second tile
    return s


@triton.jit
def _acc_dot(acc_a, acc_b, p, y_a, y_b, BLOCK_D2: tl.constexpr, DOT_PREC: tl.constexpr):
    """(acc_a, acc_b) += p @ (y_a, y_b)."""
    p = p.to(y_a.dtype)
    acc_a = tl.dot(p, y_a, acc_a, input_precision=DOT_PREC)
    if BLOCK_D2 > 0:
        acc_b = tl.dot(p, y_b, acc_b, input_precision=DOT_PREC)
    return acc_a, acc_b


@triton.jit
def _key_block(q_a, q_b, k_base, start_n, offs_n0, len_k, stride_kn, qk_scale_log2, HEAD_DIM: tl.constexpr,
               BLOCK_D: tl.constexpr, BLOCK_D2: tl.constexpr, EVEN: tl.constexpr, ALIGNED: tl.constexpr,
               DOT_PREC: tl.constexpr):
    """The key tile at ``start_n`` and the base-2 scores q @ k.T * scale * log2(e) against it."""
    k_a, k_b = _load_rows(_advance(k_base, start_n, stride_kn, ALIGNED), offs_n0, len_k - start_n, stride_kn,
                          HEAD_DIM, BLOCK_D, BLOCK_D2, EVEN, ALIGNED)
    return k_a, k_b, _dot_t(q_a, q_b, k_a, k_b, BLOCK_D2, DOT_PREC) * qk_scale_log2


@triton.jit
def _score_mask(offs_m, offs_n, len_q, len_k, IS_CAUSAL: tl.constexpr):
    """[BLOCK_M, BLOCK_N] True where query offs_m may attend key offs_n (causal diagonal, key tail)."""
    valid = offs_n[None, :] < len_k
    if IS_CAUSAL:
        valid = valid & (offs_n[None, :] <= offs_m[:, None] + (len_k - len_q))
    return valid


@triton.jit
def _key_keep(kmask_ptr, offs_n, len_k, stride_mn):
    return tl.load(kmask_ptr + offs_n * stride_mn, mask=offs_n < len_k, other=0) != 0


@triton.jit
def _apply_masks(x, fill, offs_m, offs_n, len_q, len_k, kmask_ptr, stride_mn, MASKED: tl.constexpr,
                 IS_CAUSAL: tl.constexpr, HAS_KMASK: tl.constexpr):
    """``x`` [BLOCK_M, BLOCK_N] with ``fill`` where the key is not visible: causal diagonal and key tail
    (only in MASKED blocks), key padding (in every block when there is a key-padding mask)."""
    if MASKED:
        x = tl.where(_score_mask(offs_m, offs_n, len_q, len_k, IS_CAUSAL), x, fill)
    if HAS_KMASK:
        x = tl.where(_key_keep(kmask_ptr, offs_n, len_k, stride_mn)[None, :], x, fill)
    return x


@triton.jit
def _dropout_keep(seed, rng_base, offs_m, start_n, seqlen_k, dropout_p, BLOCK_N: tl.constexpr):
    """[len(offs_m), BLOCK_N] keep-mask of keys start_n .. start_n + BLOCK_N for one (batch, head).

    One Philox call gives four numbers, used for four neighbouring keys: counter
    ``rng_base + row * ceil(seqlen_k / 4) + key // 4`` (int64), a quarter of the rounds and registers
    of one call per element."""
    quads = (seqlen_k + 3) // 4
    counter = rng_base + offs_m.to(tl.int64)[:, None] * quads + (start_n // 4 + tl.arange(0, BLOCK_N // 4))[None, :]
    u0, u1, u2, u3 = tl.rand4x(seed, counter)
    u = tl.interleave(tl.interleave(u0, u1), tl.interleave(u2, u3))
    return u >= dropout_p


@triton.jit
def _rng_state(RNG, off_b, off_h, n_heads, seqlen_q, seqlen_k, HAS_DROPOUT: tl.constexpr):
    """(seed, counter base) of (batch, head): the call's offset plus the (b, h) block of counters."""
    if HAS_DROPOUT:
        seed = tl.load(RNG)
        base = tl.load(RNG + 1) + (off_b.to(tl.int64) * n_heads + off_h) * seqlen_q * ((seqlen_k + 3) // 4)
        return seed, base
    else:
        return 0, 0


@triton.jit
def _causal_split(lo, hi, diag, BLOCK: tl.constexpr, EVEN: tl.constexpr, FROM_LOW: tl.constexpr):
    """Split [lo, hi) (steps of BLOCK from lo) into a mask-free part and a masked part.

    FROM_LOW (key loops of the forward / dQ): blocks below ``diag`` are mask-free, the rest (diagonal
    and, unless EVEN, the tail) masked; returns the first masked block. Otherwise (query loops of
    dK/dV): blocks from ``diag`` on are mask-free; returns the first mask-free block.
    """
    if FROM_LOW:
        full = tl.maximum(diag, 0) // BLOCK * BLOCK
        if not EVEN:
            full = tl.minimum(full, hi // BLOCK * BLOCK)
        return tl.maximum(tl.minimum(full, hi), lo)
    else:
        start = (tl.maximum(diag, 0) + BLOCK - 1) // BLOCK * BLOCK
        return tl.minimum(tl.maximum(start, lo), tl.maximum(hi, lo))


# --------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------


@triton.jit
def _row_descriptors(base, n_rows, stride, HEAD_DIM: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
                     BLOCK_D2: tl.constexpr):
    """TMA descriptors of the two head-dim chunks of a [n_rows, HEAD_DIM] matrix at ``base`` (row
    stride ``stride``, a multiple of 8 elements: 16-byte rows), loading [BLOCK_ROWS, BLOCK_D] and
    [BLOCK_ROWS, BLOCK_D2] boxes. The copy engine fills rows past ``n_rows`` and columns past
    ``HEAD_DIM`` with zeros, as the masked pointer loads do."""
    desc_a = tl.make_tensor_descriptor(base, shape=[n_rows, HEAD_DIM], strides=[stride, 1],
                                       block_shape=[BLOCK_ROWS, BLOCK_D])
    if BLOCK_D2 > 0:
        desc_b = tl.make_tensor_descriptor(base + BLOCK_D, shape=[n_rows, HEAD_DIM - BLOCK_D], strides=[stride, 1],
                                           block_shape=[BLOCK_ROWS, BLOCK_D2])
    else:
        desc_b = desc_a
    return desc_a, desc_b


@triton.jit
def _desc_rows(desc_a, desc_b, row, BLOCK_D2: tl.constexpr):
    a = desc_a.load([row, 0])
    if BLOCK_D2 > 0:
        b = desc_b.load([row, 0])
    else:
        b = a
    return a, b


@triton.jit
def _fwd_inner(acc_a, acc_b, l_i, m_i, q_a, q_b, k_base, v_base, stride_kn, stride_vn, kmask_ptr, stride_mn,
               seed, rng_base, offs_m, lo, hi, len_q, len_k, seqlen_k, qk_scale_log2, dropout_p,
               k_desc_a, k_desc_b, v_desc_a, v_desc_b,
               HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_D2: tl.constexpr, BLOCK_N: tl.constexpr,
               MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_KMASK: tl.constexpr, EVEN_N: tl.constexpr,
               ALIGNED: tl.constexpr, DOT_PREC: tl.constexpr, HAS_DROPOUT: tl.constexpr, USE_TMA: tl.constexpr):
    """Online softmax over the key blocks [lo, hi); the ``*_desc_*`` are read only with USE_TMA."""
    offs_n0 = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + offs_n0
        if USE_TMA:
            k_a, k_b = _desc_rows(k_desc_a, k_desc_b, start_n, BLOCK_D2)
            qk = _dot_t(q_a, q_b, k_a, k_b, BLOCK_D2, DOT_PREC) * qk_scale_log2
        else:
            k_a, k_b, qk = _key_block(q_a, q_b, k_base, start_n, offs_n0, len_k, stride_kn, qk_scale_log2, HEAD_DIM,
                                      BLOCK_D, BLOCK_D2, EVEN_N or not MASKED, ALIGNED, DOT_PREC)
        qk = _apply_masks(qk, float("-inf"), offs_m, offs_n, len_q, len_k, kmask_ptr, stride_mn, MASKED, IS_CAUSAL,
                          HAS_KMASK)
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        if MASKED or HAS_KMASK:
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_safe = m_new
        p = tl.exp2(qk - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        if USE_TMA:
            v_a, v_b = _desc_rows(v_desc_a, v_desc_b, start_n, BLOCK_D2)
        else:
            v_a, v_b = _load_rows(_advance(v_base, start_n, stride_vn, ALIGNED), offs_n0, len_k - start_n, stride_vn,
                                  HEAD_DIM, BLOCK_D, BLOCK_D2, EVEN_N or not MASKED, ALIGNED)
        if HAS_DROPOUT:
            keep = _dropout_keep(seed, rng_base, offs_m, start_n, seqlen_k, dropout_p, BLOCK_N)
            p = tl.where(keep, p * (1.0 / (1.0 - dropout_p)), 0.0)
        acc_a = acc_a * alpha[:, None]
        if BLOCK_D2 > 0:
            acc_b = acc_b * alpha[:, None]
        acc_a, acc_b = _acc_dot(acc_a, acc_b, p, v_a, v_b, BLOCK_D2, DOT_PREC)
        m_i = m_new
    return acc_a, acc_b, l_i, m_i


@triton.jit
def _attn_fwd(
    Q, K, V, O, LSE, KMASK, CU_Q, CU_K, RNG,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    stride_lb, stride_lh,
    stride_mb, stride_mn,
    seqlen_q, seqlen_k, qk_scale_log2, seq_bucket, dropout_p,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_D2: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_CAUSAL: tl.constexpr, IS_VARLEN: tl.constexpr, HAS_KMASK: tl.constexpr,
    DOT_PREC: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, ALIGNED: tl.constexpr, USE_TMA: tl.constexpr = False,
):
    """One [BLOCK_M, HEAD_DIM] block of queries of one (batch, head) against all its keys.
    ``USE_TMA`` (sm_90 and newer, aligned inputs only): key and value tiles come through tensor
    memory accelerator descriptors built on the device, one per (sequence, head-dim chunk)."""
    pid_m = tl.program_id(0)
    off_b = tl.program_id(1)
    off_h = tl.program_id(2)
    off_hk = off_h // GROUP
    q_start, len_q = _sequence_bounds(CU_Q, off_b, seqlen_q, IS_VARLEN)
    k_start, len_k = _sequence_bounds(CU_K, off_b, seqlen_k, IS_VARLEN)
    m0 = pid_m * BLOCK_M
    if m0 >= len_q:
        return

    offs_m0 = tl.arange(0, BLOCK_M)
    offs_m = m0 + offs_m0
    q_a, q_b = _load_rows(_base(Q, off_b, stride_qb, off_h, stride_qh, q_start + m0, stride_qm, ALIGNED),
                          offs_m0, len_q - m0, stride_qm, HEAD_DIM, BLOCK_D, BLOCK_D2, EVEN_M, ALIGNED)
    k_base = _base(K, off_b, stride_kb, off_hk, stride_kh, k_start, stride_kn, ALIGNED)
    v_base = _base(V, off_b, stride_vb, off_hk, stride_vh, k_start, stride_vn, ALIGNED)
    kmask_ptr = KMASK + off_b.to(tl.int64) * stride_mb
    seed, rng_base = _rng_state(RNG, off_b, off_h, tl.num_programs(2), seqlen_q, seqlen_k, HAS_DROPOUT)

    if USE_TMA:
        k_desc_a, k_desc_b = _row_descriptors(k_base, len_k, stride_kn, HEAD_DIM, BLOCK_N, BLOCK_D, BLOCK_D2)
        v_desc_a, v_desc_b = _row_descriptors(v_base, len_k, stride_vn, HEAD_DIM, BLOCK_N, BLOCK_D, BLOCK_D2)
    else:  # unused
        k_desc_a, k_desc_b, v_desc_a, v_desc_b = k_base, k_base, v_base, v_base

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc_a = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    if BLOCK_D2 > 0:
        acc_b = tl.zeros([BLOCK_M, BLOCK_D2], dtype=tl.float32)
    else:
        acc_b = acc_a

    shift = len_k - len_q
    end_n = len_k
    diag = len_k
    if IS_CAUSAL:
        end_n = tl.minimum(len_k, m0 + BLOCK_M + shift)
        diag = m0 + shift + 1
    mid = _causal_split(0, end_n, diag, BLOCK_N, EVEN_N, True)
    acc_a, acc_b, l_i, m_i = _fwd_inner(
        acc_a, acc_b, l_i, m_i, q_a, q_b, k_base, v_base, stride_kn, stride_vn, kmask_ptr, stride_mn, seed,
        rng_base, offs_m, 0, mid, len_q, len_k, seqlen_k, qk_scale_log2, dropout_p, k_desc_a, k_desc_b, v_desc_a,
        v_desc_b, HEAD_DIM, BLOCK_D, BLOCK_D2, BLOCK_N, False, IS_CAUSAL, HAS_KMASK, EVEN_N, ALIGNED, DOT_PREC,
        HAS_DROPOUT, USE_TMA)
    acc_a, acc_b, l_i, m_i = _fwd_inner(
        acc_a, acc_b, l_i, m_i, q_a, q_b, k_base, v_base, stride_kn, stride_vn, kmask_ptr, stride_mn, seed,
        rng_base, offs_m, mid, end_n, len_q, len_k, seqlen_k, qk_scale_log2, dropout_p, k_desc_a, k_desc_b, v_desc_a,
        v_desc_b, HEAD_DIM, BLOCK_D, BLOCK_D2, BLOCK_N, True, IS_CAUSAL, HAS_KMASK, EVEN_N, ALIGNED, DOT_PREC,
        HAS_DROPOUT, USE_TMA)

    empty = l_i == 0.0
    inv = 1.0 / tl.where(empty, 1.0, l_i)
    lse2 = tl.where(empty, float("inf"), m_i + tl.log2(tl.where(empty, 1.0, l_i)))
    _store_rows(_base(O, off_b, stride_ob, off_h, stride_oh, q_start + m0, stride_om, ALIGNED),
                offs_m0, len_q - m0, stride_om, acc_a, acc_b, inv[:, None], HEAD_DIM, BLOCK_D, BLOCK_D2, EVEN_M,
                ALIGNED)
    lse_ptrs = LSE + off_b.to(tl.int64) * stride_lb + off_h.to(tl.int64) * stride_lh + offs_m
    if EVEN_M:
        tl.store(lse_ptrs, lse2)
    else:
        tl.store(lse_ptrs, lse2, mask=offs_m < len_q)


# --------------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------------


@triton.jit
def _attn_bwd_preprocess(
    O, DO, DELTA, CU_Q,
    stride_ob, stride_oh, stride_om,
    stride_db, stride_dh, stride_dm,
    stride_lb, stride_lh,
    seqlen_q,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, IS_VARLEN: tl.constexpr,
    ALIGNED: tl.constexpr,
):
    """delta = rowsum(dO * O), the softmax-backward correction term, in fp32."""
    pid_m = tl.program_id(0)
    off_b = tl.program_id(1)
    off_h = tl.program_id(2)
    q_start, len_q = _sequence_bounds(CU_Q, off_b, seqlen_q, IS_VARLEN)
    m0 = pid_m * BLOCK_M
    if m0 >= len_q:
        return
    rows = tl.arange(0, BLOCK_M)
    o = _load_chunk(_base(O, off_b, stride_ob, off_h, stride_oh, q_start + m0, stride_om, ALIGNED),
                    rows, len_q - m0, stride_om, 0, BLOCK_D, HEAD_DIM, False, ALIGNED)
    do = _load_chunk(_base(DO, off_b, stride_db, off_h, stride_dh, q_start + m0, stride_dm, ALIGNED), rows, len_q - m0,
                     stride_dm, 0, BLOCK_D, HEAD_DIM, False, ALIGNED)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    offs_m = m0 + rows
    tl.store(DELTA + off_b.to(tl.int64) * stride_lb + off_h.to(tl.int64) * stride_lh + offs_m, delta,
             mask=offs_m < len_q)


@triton.jit
def _dkdv_inner(dk_a, dk_b, dv_a, dv_b, k_a, k_b, v_a, v_b, q_base, do_base, l_base, d_base, stride_qm, stride_dom,
                kmask_keep, seed, rng_base, n0, offs_n, lo, hi, len_q, len_k, seqlen_k, qk_scale_log2, dropout_p,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_D2: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr,
                MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_KMASK: tl.constexpr, EVEN_M: tl.constexpr,
                ALIGNED: tl.constexpr, DOT_PREC: tl.constexpr, HAS_DROPOUT: tl.constexpr):
    offs_m0 = tl.arange(0, BLOCK_M)
    for start_m in range(lo, hi, BLOCK_M):
        start_m = tl.multiple_of(start_m, BLOCK_M)
        offs_m = start_m + offs_m0
        q_a, q_b = _load_rows(_advance(q_base, start_m, stride_qm, ALIGNED), offs_m0, len_q - start_m, stride_qm,
                              HEAD_DIM, BLOCK_D, BLOCK_D2, EVEN_M, ALIGNED)
        do_a, do_b = _load_rows(_advance(do_base, start_m, stride_dom, ALIGNED), offs_m0, len_q - start_m, stride_dom,
                                HEAD_DIM, BLOCK_D, BLOCK_D2, EVEN_M, ALIGNED)
        # Rows past the sequence end read lse2 = +inf: their probabilities, hence gradients, are 0.
        if EVEN_M:
            lse2 = tl.load(l_base + offs_m)
            delta = tl.load(d_base + offs_m)
        else:
            lse2 = tl.load(l_base + offs_m, mask=offs_m < len_q, other=float("inf"))
            delta = tl.load(d_base + offs_m, mask=offs_m < len_q, other=0.0)
        qkT = _dot_t(k_a, k_b, q_a, q_b, BLOCK_D2, DOT_PREC) * qk_scale_log2
        pT = tl.exp2(qkT - lse2[None, :])
        if MASKED and IS_CAUSAL:
            pT = tl.where(offs_n[:, None] <= offs_m[None, :] + (len_k - len_q), pT, 0.0)
        if HAS_KMASK:
            pT = tl.where(kmask_keep[:, None], pT, 0.0)
        dpT = _dot_t(v_a, v_b, do_a, do_b, BLOCK_D2, DOT_PREC)
        if HAS_DROPOUT:
            keepT = tl.trans(_dropout_keep(seed, rng_base, offs_m, n0, seqlen_k, dropout_p, BLOCK_N))
            dv_a, dv_b = _acc_dot(dv_a, dv_b, tl.where(keepT, pT * (1.0 / (1.0 - dropout_p)), 0.0),
                                  do_a, do_b, BLOCK_D2, DOT_PREC)
            dpT = tl.where(keepT, dpT * (1.0 / (1.0 - dropout_p)), 0.0)
        else:
            dv_a, dv_b = _acc_dot(dv_a, dv_b, pT, do_a, do_b, BLOCK_D2, DOT_PREC)
        dsT = pT * (dpT - delta[None, :])
        dk_a, dk_b = _acc_dot(dk_a, dk_b, dsT, q_a, q_b, BLOCK_D2, DOT_PREC)
    return dk_a, dk_b, dv_a, dv_b


@triton.jit
def _attn_bwd_dkdv(
    Q, K, V, DO, LSE, DELTA, DK, DV, KMASK, CU_Q, CU_K, RNG,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_dom,
    stride_dkb, stride_dkh, stride_dkn,
    stride_dvb, stride_dvh, stride_dvn,
    stride_lb, stride_lh,
    stride_mb, stride_mn,
    seqlen_q, seqlen_k, qk_scale_log2, sm_scale, seq_bucket, dropout_p,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_D2: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_CAUSAL: tl.constexpr, IS_VARLEN: tl.constexpr, HAS_KMASK: tl.constexpr,
    DOT_PREC: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, ALIGNED: tl.constexpr,
):
    """One program per (key block, batch, key/value head): dK and dV, summed over the head group."""
    pid_n = tl.program_id(0)
    off_b = tl.program_id(1)
    off_hk = tl.program_id(2)
    q_start, len_q = _sequence_bounds(CU_Q, off_b, seqlen_q, IS_VARLEN)
    k_start, len_k = _sequence_bounds(CU_K, off_b, seqlen_k, IS_VARLEN)
    n0 = pid_n * BLOCK_N
    if n0 >= len_k:
        return

    offs_n0 = tl.arange(0, BLOCK_N)
    offs_n = n0 + offs_n0
    k_a, k_b = _load_rows(_base(K, off_b, stride_kb, off_hk, stride_kh, k_start + n0, stride_kn, ALIGNED),
                          offs_n0, len_k - n0, stride_kn, HEAD_DIM, BLOCK_D, BLOCK_D2, EVEN_N, ALIGNED)
    v_a, v_b = _load_rows(_base(V, off_b, stride_vb, off_hk, stride_vh, k_start + n0, stride_vn, ALIGNED),
                          offs_n0, len_k - n0, stride_vn, HEAD_DIM, BLOCK_D, BLOCK_D2, EVEN_N, ALIGNED)
    kmask_keep = offs_n0 >= 0
    if HAS_KMASK:
        kmask_keep = _key_keep(KMASK + off_b.to(tl.int64) * stride_mb, offs_n, len_k, stride_mn)
    dk_a = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv_a = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    if BLOCK_D2 > 0:
        dk_b = tl.zeros([BLOCK_N, BLOCK_D2], dtype=tl.float32)
        dv_b = tl.zeros([BLOCK_N, BLOCK_D2], dtype=tl.float32)
    else:
        dk_b = dk_a
        dv_b = dv_a

    # Causal: query i sees key j <= i + Lk - Lq. Query blocks before the diagonal see none of this key
    # block; from ``mid`` on they see all of it.
    start_m = 0
    mid = 0
    if IS_CAUSAL:
        start_m = tl.maximum(n0 - (len_k - len_q), 0) // BLOCK_M * BLOCK_M
        mid = _causal_split(start_m, len_q, n0 + BLOCK_N - 1 - (len_k - len_q), BLOCK_M, EVEN_M, False)
    for g in range(GROUP):
        off_h = off_hk * GROUP + g
        q_base = _base(Q, off_b, stride_qb, off_h, stride_qh, q_start, stride_qm, ALIGNED)
        do_base = _base(DO, off_b, stride_dob, off_h, stride_doh, q_start, stride_dom, ALIGNED)
        l_base = LSE + off_b.to(tl.int64) * stride_lb + off_h.to(tl.int64) * stride_lh
        d_base = DELTA + off_b.to(tl.int64) * stride_lb + off_h.to(tl.int64) * stride_lh
        seed, rng_base = _rng_state(RNG, off_b, off_h, tl.num_programs(2) * GROUP, seqlen_q, seqlen_k, HAS_DROPOUT)
        if IS_CAUSAL:
            dk_a, dk_b, dv_a, dv_b = _dkdv_inner(
                dk_a, dk_b, dv_a, dv_b, k_a, k_b, v_a, v_b, q_base, do_base, l_base, d_base, stride_qm, stride_dom,
                kmask_keep, seed, rng_base, n0, offs_n, start_m, mid, len_q, len_k, seqlen_k, qk_scale_log2, dropout_p,
                HEAD_DIM, BLOCK_D, BLOCK_D2, BLOCK_M, BLOCK_N, True, IS_CAUSAL, HAS_KMASK, EVEN_M, ALIGNED, DOT_PREC,
                HAS_DROPOUT)
        dk_a, dk_b, dv_a, dv_b = _dkdv_inner(
            dk_a, dk_b, dv_a, dv_b, k_a, k_b, v_a, v_b, q_base, do_base, l_base, d_base, stride_qm, stride_dom,
            kmask_keep, seed, rng_base, n0, offs_n, mid, len_q, len_q, len_k, seqlen_k, qk_scale_log2, dropout_p,
            HEAD_DIM, BLOCK_D, BLOCK_D2, BLOCK_M, BLOCK_N, False, IS_CAUSAL, HAS_KMASK, EVEN_M, ALIGNED, DOT_PREC,
            HAS_DROPOUT)

    _store_rows(_base(DK, off_b, stride_dkb, off_hk, stride_dkh, k_start + n0, stride_dkn, ALIGNED),
                offs_n0, len_k - n0, stride_dkn, dk_a, dk_b, sm_scale, HEAD_DIM, BLOCK_D, BLOCK_D2, EVEN_N, ALIGNED)
    _store_rows(_base(DV, off_b, stride_dvb, off_hk, stride_dvh, k_start + n0, stride_dvn, ALIGNED),
                offs_n0, len_k - n0, stride_dvn, dv_a, dv_b, 1.0, HEAD_DIM, BLOCK_D, BLOCK_D2, EVEN_N, ALIGNED)


@triton.jit
def _dq_inner(dq_a, dq_b, q_a, q_b, do_a, do_b, lse2, delta, k_base, v_base, stride_kn, stride_vn, kmask_ptr,
              stride_mn, seed, rng_base, offs_m, lo, hi, len_q, len_k, seqlen_k, qk_scale_log2, dropout_p,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_D2: tl.constexpr, BLOCK_N: tl.constexpr,
              MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_KMASK: tl.constexpr, EVEN_N: tl.constexpr,
              ALIGNED: tl.constexpr, DOT_PREC: tl.constexpr, HAS_DROPOUT: tl.constexpr):
    offs_n0 = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + offs_n0
        k_a, k_b, qk = _key_block(q_a, q_b, k_base, start_n, offs_n0, len_k, stride_kn, qk_scale_log2, HEAD_DIM,
                                  BLOCK_D, BLOCK_D2, EVEN_N or not MASKED, ALIGNED, DOT_PREC)
        v_a, v_b = _load_rows(_advance(v_base, start_n, stride_vn, ALIGNED), offs_n0, len_k - start_n, stride_vn,
                              HEAD_DIM, BLOCK_D, BLOCK_D2, EVEN_N or not MASKED, ALIGNED)
        p = _apply_masks(tl.exp2(qk - lse2[:, None]), 0.0, offs_m, offs_n, len_q, len_k, kmask_ptr, stride_mn, MASKED,
                         IS_CAUSAL, HAS_KMASK)
        dp = _dot_t(do_a, do_b, v_a, v_b, BLOCK_D2, DOT_PREC)
        if HAS_DROPOUT:
            keep = _dropout_keep(seed, rng_base, offs_m, start_n, seqlen_k, dropout_p, BLOCK_N)
            dp = tl.where(keep, dp * (1.0 / (1.0 - dropout_p)), 0.0)
        ds = p * (dp - delta[:, None])
        dq_a, dq_b = _acc_dot(dq_a, dq_b, ds, k_a, k_b, BLOCK_D2, DOT_PREC)
    return dq_a, dq_b


@triton.jit
def _attn_bwd_dq(
    Q, K, V, DO, LSE, DELTA, DQ, KMASK, CU_Q, CU_K, RNG,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_dom,
    stride_dqb, stride_dqh, stride_dqm,
    stride_lb, stride_lh,
    stride_mb, stride_mn,
    seqlen_q, seqlen_k, qk_scale_log2, sm_scale, seq_bucket, dropout_p,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_D2: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_CAUSAL: tl.constexpr, IS_VARLEN: tl.constexpr, HAS_KMASK: tl.constexpr,
    DOT_PREC: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, ALIGNED: tl.constexpr,
):
    """One program per (query block, batch, head): dQ (no atomics, deterministic)."""
    pid_m = tl.program_id(0)
    off_b = tl.program_id(1)
    off_h = tl.program_id(2)
    off_hk = off_h // GROUP
    q_start, len_q = _sequence_bounds(CU_Q, off_b, seqlen_q, IS_VARLEN)
    k_start, len_k = _sequence_bounds(CU_K, off_b, seqlen_k, IS_VARLEN)
    m0 = pid_m * BLOCK_M
    if m0 >= len_q:
        return

    offs_m0 = tl.arange(0, BLOCK_M)
    offs_m = m0 + offs_m0
    q_a, q_b = _load_rows(_base(Q, off_b, stride_qb, off_h, stride_qh, q_start + m0, stride_qm, ALIGNED),
                          offs_m0, len_q - m0, stride_qm, HEAD_DIM, BLOCK_D, BLOCK_D2, EVEN_M, ALIGNED)
    do_a, do_b = _load_rows(_base(DO, off_b, stride_dob, off_h, stride_doh, q_start + m0, stride_dom, ALIGNED), offs_m0,
                            len_q - m0, stride_dom, HEAD_DIM, BLOCK_D, BLOCK_D2, EVEN_M, ALIGNED)
    l_ptrs = LSE + off_b.to(tl.int64) * stride_lb + off_h.to(tl.int64) * stride_lh + offs_m
    d_ptrs = DELTA + off_b.to(tl.int64) * stride_lb + off_h.to(tl.int64) * stride_lh + offs_m
    if EVEN_M:
        lse2 = tl.load(l_ptrs)
        delta = tl.load(d_ptrs)
    else:
        lse2 = tl.load(l_ptrs, mask=offs_m < len_q, other=float("inf"))
        delta = tl.load(d_ptrs, mask=offs_m < len_q, other=0.0)
    k_base = _base(K, off_b, stride_kb, off_hk, stride_kh, k_start, stride_kn, ALIGNED)
    v_base = _base(V, off_b, stride_vb, off_hk, stride_vh, k_start, stride_vn, ALIGNED)
    kmask_ptr = KMASK + off_b.to(tl.int64) * stride_mb
    seed, rng_base = _rng_state(RNG, off_b, off_h, tl.num_programs(2), seqlen_q, seqlen_k, HAS_DROPOUT)
    dq_a = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    if BLOCK_D2 > 0:
        dq_b = tl.zeros([BLOCK_M, BLOCK_D2], dtype=tl.float32)
    else:
        dq_b = dq_a

    shift = len_k - len_q
    end_n = len_k
    diag = len_k
    if IS_CAUSAL:
        end_n = tl.minimum(len_k, m0 + BLOCK_M + shift)
        diag = m0 + shift + 1
    mid = _causal_split(0, end_n, diag, BLOCK_N, EVEN_N, True)
    dq_a, dq_b = _dq_inner(
        dq_a, dq_b, q_a, q_b, do_a, do_b, lse2, delta, k_base, v_base, stride_kn, stride_vn, kmask_ptr, stride_mn,
        seed, rng_base, offs_m, 0, mid, len_q, len_k, seqlen_k, qk_scale_log2, dropout_p,
        HEAD_DIM, BLOCK_D, BLOCK_D2, BLOCK_N, False, IS_CAUSAL, HAS_KMASK, EVEN_N, ALIGNED, DOT_PREC, HAS_DROPOUT)
    dq_a, dq_b = _dq_inner(
        dq_a, dq_b, q_a, q_b, do_a, do_b, lse2, delta, k_base, v_base, stride_kn, stride_vn, kmask_ptr, stride_mn,
        seed, rng_base, offs_m, mid, end_n, len_q, len_k, seqlen_k, qk_scale_log2, dropout_p,
        HEAD_DIM, BLOCK_D, BLOCK_D2, BLOCK_N, True, IS_CAUSAL, HAS_KMASK, EVEN_N, ALIGNED, DOT_PREC, HAS_DROPOUT)
    _store_rows(_base(DQ, off_b, stride_dqb, off_h, stride_dqh, q_start + m0, stride_dqm, ALIGNED), offs_m0, len_q - m0,
                stride_dqm, dq_a, dq_b, sm_scale, HEAD_DIM, BLOCK_D, BLOCK_D2, EVEN_M, ALIGNED)


# --------------------------------------------------------------------------------------------
# Tile configurations, per head-dim class (BLOCK_D + BLOCK_D2: <= 64, <= 128, <= 160, larger) and
# per GPU generation: Hopper and newer (compute capability >= 9.0) and Ampere / Ada (8.x), whose
# mma.sync tiles hold operands and accumulators in registers and so need smaller tiles. On a GPU
# the autotuner picks among the kept ones per (head-dim tiles, causal, sequence bucket, ...), the
# generation being read from the launch device's compute capability. Each kept configuration is
# compiled for sm_90 and sm_80 by turing_kernels/compile_check.py, which fails on register spills,
# missing wgmma or scalar loads. Under the interpreter one large tile is used instead (fewer
# interpreted iterations, same arithmetic), or the one a test forces.
# --------------------------------------------------------------------------------------------

# (BLOCK_M, BLOCK_N, num_warps, num_stages) per head-dim class, chosen with compile_check.py so that
# none spills at head dims 64 / 128 / 152 on sm_90. dK/dV accumulate two [BLOCK_N, D] fp32 tiles, so
# their key blocks shrink as the head dim grows (FlashAttention-2 uses 8 warps there too).
FWD_TILES = {
    64: [(128, 128, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3)],
    128: [(128, 128, 8, 3), (128, 64, 8, 3), (64, 64, 4, 3)],
    160: [(128, 64, 8, 3), (64, 64, 4, 3)],
    256: [(64, 64, 4, 2), (64, 32, 4, 2)],
}
DKDV_TILES = {
    64: [(64, 128, 8, 2), (32, 128, 8, 2), (64, 64, 4, 2)],
    128: [(32, 128, 8, 2), (32, 64, 4, 2)],
    160: [(32, 64, 8, 3), (32, 64, 8, 2)],
    256: [(32, 64, 8, 1), (16, 32, 4, 1)],
}
DQ_TILES = {
    64: [(128, 64, 8, 2), (64, 64, 4, 2)],
    128: [(128, 64, 8, 2), (64, 64, 4, 2)],
    160: [(128, 64, 8, 2), (64, 64, 8, 2)],
    256: [(64, 32, 4, 1), (32, 32, 4, 1)],
}
# With attention dropout (Philox on every score tile): fewer score elements per thread.
FWD_DROPOUT_TILES = {
    64: [(128, 64, 8, 3), (64, 64, 8, 3)],
    128: [(128, 64, 8, 3), (64, 64, 8, 3)],
    160: [(64, 64, 8, 3), (128, 32, 8, 3)],
    256: [(64, 32, 4, 2)],
}
DKDV_DROPOUT_TILES = {
    64: [(32, 128, 8, 2), (64, 64, 8, 2)],
    128: [(32, 64, 8, 2), (16, 64, 4, 2)],
    160: [(16, 64, 8, 2)],
    256: [(16, 32, 4, 1)],
}
DQ_DROPOUT_TILES = {
    64: [(128, 64, 8, 2), (64, 64, 8, 2)],
    128: [(64, 32, 4, 2), (64, 64, 8, 2)],
    160: [(64, 32, 4, 2)],
    256: [(32, 32, 4, 1)],
}


# Ampere / Ada (compute capability 8.x), chosen with compile_check.py --arch 80 so that none spills
# at head dims 64 / 128 / 152. Without wgmma, the score tile, the output accumulators and the
# q (or k, v) operands all live in registers, so the tiles are smaller than on Hopper: 128 x 64 with
# 8 warps or 64 x 64 with 4 for the forward at head dim 128; at 152 (128 + 32) 32-wide key blocks
# for the forward and dQ and 16-row query blocks for dK/dV, and 16-wide blocks with dropout. Head
# dim 256 gets the smallest tiles; the check does not grade it.
SM80_FWD_TILES = {
    64: [(128, 128, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3)],
    128: [(128, 64, 8, 3), (64, 64, 4, 3), (128, 32, 8, 3)],
    160: [(128, 32, 8, 3), (64, 32, 4, 3)],
    256: [(64, 32, 8, 2), (32, 32, 4, 2)],
}
SM80_DKDV_TILES = {
    64: [(64, 128, 8, 2), (32, 128, 8, 2), (64, 64, 8, 2)],
    128: [(64, 64, 8, 2), (32, 64, 8, 2), (64, 32, 4, 2)],
    160: [(16, 64, 8, 2), (16, 32, 4, 2)],
    256: [(64, 32, 8, 2), (32, 16, 4, 2)],
}
SM80_DQ_TILES = {
    64: [(128, 64, 8, 2), (64, 64, 4, 2)],
    128: [(64, 64, 8, 2), (128, 32, 8, 2)],
    160: [(128, 32, 8, 2), (64, 32, 4, 2)],
    256: [(64, 32, 8, 2), (32, 16, 4, 2)],
}
SM80_FWD_DROPOUT_TILES = {
    64: [(128, 64, 8, 3), (64, 64, 8, 3)],
    128: [(64, 64, 8, 3), (128, 32, 8, 3)],
    160: [(128, 32, 8, 3), (64, 32, 4, 3)],
    256: [(64, 32, 8, 2), (32, 16, 4, 2)],
}
SM80_DKDV_DROPOUT_TILES = {
    64: [(32, 128, 8, 2), (64, 32, 8, 2)],
    128: [(32, 64, 8, 2), (16, 64, 8, 2)],
    160: [(32, 16, 4, 2), (16, 16, 4, 2)],
    256: [(16, 16, 4, 2)],
}
SM80_DQ_DROPOUT_TILES = {
    64: [(128, 32, 8, 2), (64, 32, 8, 2)],
    128: [(64, 64, 8, 2), (64, 32, 8, 2)],
    160: [(128, 16, 8, 2), (64, 16, 8, 2)],
    256: [(32, 16, 4, 2)],
}


def head_dim_class(block_d_total: int) -> int:
    for cls in sorted(FWD_TILES):
        if block_d_total <= cls:
            return cls
    return max(FWD_TILES)


def _configs(*tile_tables, tma_tables=()):
    """One configuration per distinct tile of the tables; with ``tma_tables`` (kernels that have a
    ``USE_TMA`` switch) every configuration says ``USE_TMA`` and those tables' tiles come twice,
    with and without TMA, for the autotuner to measure both where the pruning allows TMA."""
    seen, out = set(), []
    for tma, tables in ((False, tile_tables), (True, tma_tables)):
        for tiles in tables:
            for rows in tiles.values():
                for bm, bn, warps, stages in rows:
                    if (bm, bn, warps, stages, tma) not in seen:
                        seen.add((bm, bn, warps, stages, tma))
                        kwargs = {"BLOCK_M": bm, "BLOCK_N": bn}
                        if tma_tables:
                            kwargs["USE_TMA"] = tma
                        out.append(triton.Config(kwargs, num_warps=warps, num_stages=stages))
    return out


#: Kernels with a TMA path (sm_90 and newer: the tensor memory accelerator loads the key and value
#: tiles through descriptors). Kept only for aligned inputs; whether it pays is the autotuner's
#: measurement on the device, config by config against the same tile with pointer loads.
TMA_MIN_ARCH = 90


# Compute capability (major * 10 + minor) that pruning targets instead of the launch device's; set by
# target_arch() to list what a launch would keep on another GPU, without one.
_ARCH_OVERRIDE: list = []


@contextlib.contextmanager
def target_arch(arch: int):
    """Prune the autotuned configurations as on a GPU of compute capability ``arch`` (80 = A100,
    90 = H100), whatever device the arguments are on."""
    _ARCH_OVERRIDE.append(int(arch))
    try:
        yield
    finally:
        _ARCH_OVERRIDE.pop()


def launch_arch(named_args) -> int:
    """Compute capability (major * 10 + minor) the kept tiles are chosen for: the one set by
    target_arch(), else that of the device of the query tensor (the current CUDA device when no
    query is given), else 90."""
    if _ARCH_OVERRIDE:
        return _ARCH_OVERRIDE[-1]
    q = named_args.get("Q")
    device = getattr(q, "device", None)
    if device is not None and device.type != "cuda":
        return 90
    if not torch.cuda.is_available():
        return 90
    major, minor = torch.cuda.get_device_capability(device)
    return major * 10 + minor


def kept_tiles(tiles, dropout_tiles, block_d, block_d2, has_dropout):
    """The tiles of one launch: per head-dim class, and smaller ones with dropout (Philox needs registers)."""
    return (dropout_tiles if has_dropout else tiles)[head_dim_class(block_d + block_d2)]


def _pruner(tiles, dropout_tiles, sm80_tiles=None, sm80_dropout_tiles=None):
    """Keeps the configurations of the launch's head-dim class and dropout setting, from the Hopper
    tables on compute capability >= 9.0 and from the Ampere ones (when given) below."""
    def prune(configs, named_args, **kwargs):
        def get(name):
            return kwargs[name] if name in kwargs else named_args[name]

        arch = launch_arch(named_args)
        tables = (tiles, dropout_tiles)
        if sm80_tiles is not None and arch < 90:
            tables = (sm80_tiles, sm80_dropout_tiles)
        wanted = set(kept_tiles(*tables, get("BLOCK_D"), get("BLOCK_D2"), get("HAS_DROPOUT")))
        tma_ok = arch >= TMA_MIN_ARCH and bool(kwargs.get("ALIGNED", named_args.get("ALIGNED", False)))
        return [c for c in configs
                if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) in wanted
                and (tma_ok or not c.kwargs.get("USE_TMA", False))]

    return prune


def even_flags(args):
    """EVEN_M / EVEN_N: dense input whose lengths are multiples of the tiles needs no bounds masks."""
    varlen = args["IS_VARLEN"]
    return {
        "EVEN_M": (not varlen) and args["seqlen_q"] % args["BLOCK_M"] == 0,
        "EVEN_N": (not varlen) and args["seqlen_k"] % args["BLOCK_N"] == 0,
    }


HEURISTICS = {
    "EVEN_M": lambda args: even_flags(args)["EVEN_M"],
    "EVEN_N": lambda args: even_flags(args)["EVEN_N"],
}


def _tuned(kernel, tiles, dropout_tiles, sm80_tiles, sm80_dropout_tiles, tma: bool = False):
    # The candidates are the configurations of both GPU generations; the pruning keeps those of the
    # launch device's generation, head-dim class and dropout setting.
    # ``seq_bucket`` (the longest sequence rounded up to a power of two, unused by the kernels) keys
    # the tuner, so a decode loop whose key length grows by one each step does not retune each step.
    return triton.autotune(
        configs=_configs(tiles, dropout_tiles, sm80_tiles, sm80_dropout_tiles,
                         tma_tables=(tiles, dropout_tiles) if tma else ()),
        key=["BLOCK_D", "BLOCK_D2", "IS_CAUSAL", "IS_VARLEN", "HAS_KMASK", "HAS_DROPOUT", "GROUP", "ALIGNED",
             "seq_bucket"],
        prune_configs_by={"early_config_prune": _pruner(tiles, dropout_tiles, sm80_tiles, sm80_dropout_tiles)},
    )(kernel)


# The kernels as launched with given tiles (EVEN_M / EVEN_N filled in from the arguments), and
# autotuned over the kept tiles.
attn_fwd = triton.heuristics(HEURISTICS)(_attn_fwd)
attn_bwd_dkdv = triton.heuristics(HEURISTICS)(_attn_bwd_dkdv)
attn_bwd_dq = triton.heuristics(HEURISTICS)(_attn_bwd_dq)
attn_bwd_preprocess = _attn_bwd_preprocess
attn_fwd_tuned = _tuned(attn_fwd, FWD_TILES, FWD_DROPOUT_TILES, SM80_FWD_TILES, SM80_FWD_DROPOUT_TILES, tma=True)
attn_bwd_dkdv_tuned = _tuned(attn_bwd_dkdv, DKDV_TILES, DKDV_DROPOUT_TILES, SM80_DKDV_TILES, SM80_DKDV_DROPOUT_TILES)
attn_bwd_dq_tuned = _tuned(attn_bwd_dq, DQ_TILES, DQ_DROPOUT_TILES, SM80_DQ_TILES, SM80_DQ_DROPOUT_TILES)
