"""Triton kernels of the flash attention (FlashAttention-2 algorithm).

One set of kernels serves dense batched input and packed variable-length input:

* dense: q ``[B, H, Tq, D]``, k/v ``[B, Hkv, Tk, D]`` with any strides (last dim contiguous), an
  optional key-padding mask ``[B, Tk]`` applied in-kernel;
* varlen (``IS_VARLEN``): q ``[total_q, H, D]``, k/v ``[total_k, Hkv, D]``, sequence ``b`` spanning
  ``cu_seqlens[b]:cu_seqlens[b+1]``; passed with a batch stride of 0.

Causal masking is bottom-right aligned (query ``i`` of a sequence with ``Lq`` queries and ``Lk`` keys
sees keys ``j <= i + Lk - Lq``), as with a KV cache and as in FlashAttention >= 2.1. Grouped-query
attention maps query head ``h`` to key/value head ``h // GROUP``.

The head dimension is processed in tiles of ``BLOCK_D`` (the next power of two >= D); columns
``>= HEAD_DIM`` are masked on load and store, so head dims such as 40, 80 or 152 need no padded
copy in memory. The softmax works in base 2 (``exp2``) with ``scale * log2(e)`` folded into the
scores; the saved row statistic is ``lse2 = max + log2(sum)`` in that base. Attention dropout
(``HAS_DROPOUT``) draws its mask from Philox (``tl.rand``) and the backward kernels regenerate it,
so no mask is stored. A row with no visible
key gets ``lse2 = +inf`` so that both the output and every gradient of that row are exactly 0.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _sequence_bounds(cu_seqlens, off_b, seqlen, IS_VARLEN: tl.constexpr):
    if IS_VARLEN:
        start = tl.load(cu_seqlens + off_b)
        end = tl.load(cu_seqlens + off_b + 1)
        return start, end - start
    else:
        return 0, seqlen


@triton.jit
def _score_mask(offs_m, offs_n, len_q, len_k, kmask_ptr, stride_mn, IS_CAUSAL: tl.constexpr, HAS_KMASK: tl.constexpr):
    """[BLOCK_M, BLOCK_N] True where query offs_m may attend key offs_n."""
    valid = (offs_m[:, None] < len_q) & (offs_n[None, :] < len_k)
    if IS_CAUSAL:
        valid = valid & (offs_n[None, :] <= offs_m[:, None] + (len_k - len_q))
    if HAS_KMASK:
        keep = tl.load(kmask_ptr + offs_n * stride_mn, mask=offs_n < len_k, other=0)
        valid = valid & (keep != 0)[None, :]
    return valid


@triton.jit
def _score_mask_t(offs_m, offs_n, len_q, len_k, kmask_ptr, stride_mn, IS_CAUSAL: tl.constexpr, HAS_KMASK: tl.constexpr):
    """[BLOCK_N, BLOCK_M]: the transpose of _score_mask, built directly."""
    valid = (offs_n[:, None] < len_k) & (offs_m[None, :] < len_q)
    if IS_CAUSAL:
        valid = valid & (offs_n[:, None] <= offs_m[None, :] + (len_k - len_q))
    if HAS_KMASK:
        keep = tl.load(kmask_ptr + offs_n * stride_mn, mask=offs_n < len_k, other=0)
        valid = valid & (keep != 0)[:, None]
    return valid


@triton.jit
def _attn_fwd(
    Q, K, V, O, LSE, KMASK, CU_Q, CU_K,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    stride_lb, stride_lh,
    stride_mb, stride_mn,
    seqlen_q, seqlen_k, qk_scale_log2, seq_bucket, dropout_p, dropout_seed,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_CAUSAL: tl.constexpr, IS_VARLEN: tl.constexpr, HAS_KMASK: tl.constexpr,
    DOT_PREC: tl.constexpr, HAS_DROPOUT: tl.constexpr,
):
    pid_m = tl.program_id(0)
    off_b = tl.program_id(1)
    off_h = tl.program_id(2)
    off_hk = off_h // GROUP
    q_start, len_q = _sequence_bounds(CU_Q, off_b, seqlen_q, IS_VARLEN)
    k_start, len_k = _sequence_bounds(CU_K, off_b, seqlen_k, IS_VARLEN)
    if pid_m * BLOCK_M >= len_q:
        return

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM

    q_ptrs = Q + off_b * stride_qb + off_h * stride_qh + (q_start + offs_m[:, None]) * stride_qm + offs_d[None, :]
    q = tl.load(q_ptrs, mask=(offs_m[:, None] < len_q) & d_ok[None, :], other=0.0)
    k_base = K + off_b * stride_kb + off_hk * stride_kh + k_start * stride_kn
    v_base = V + off_b * stride_vb + off_hk * stride_vh + k_start * stride_vn
    kmask_ptr = KMASK + off_b * stride_mb

    # Dropout: one Philox stream per (sequence, head), counter = q_row * seqlen_k + k_col (the
    # backward regenerates the same mask from the same numbers).
    seed = dropout_seed + off_b * tl.num_programs(2) + off_h
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    end_n = len_k
    if IS_CAUSAL:
        end_n = tl.minimum(len_k, (pid_m + 1) * BLOCK_M + (len_k - len_q))
    for start_n in range(0, end_n, BLOCK_N):
        offs_n = start_n + offs_n0
        kv_mask = (offs_n[:, None] < len_k) & d_ok[None, :]
        k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :], mask=kv_mask, other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale_log2
        valid = _score_mask(offs_m, offs_n, len_q, len_k, kmask_ptr, stride_mn, IS_CAUSAL, HAS_KMASK)
        qk = tl.where(valid, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(qk - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0)
        p_v = p
        if HAS_DROPOUT:
            keep = tl.rand(seed, offs_m[:, None] * seqlen_k + offs_n[None, :]) >= dropout_p
            p_v = tl.where(keep, p * (1.0 / (1.0 - dropout_p)), 0.0)
        acc = acc * alpha[:, None] + tl.dot(p_v.to(v.dtype), v, input_precision=DOT_PREC)
        m_i = m_new

    empty = l_i == 0.0
    acc = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse2 = tl.where(empty, float("inf"), m_i + tl.log2(tl.where(empty, 1.0, l_i)))
    o_ptrs = O + off_b * stride_ob + off_h * stride_oh + (q_start + offs_m[:, None]) * stride_om + offs_d[None, :]
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=(offs_m[:, None] < len_q) & d_ok[None, :])
    tl.store(LSE + off_b * stride_lb + off_h * stride_lh + offs_m, lse2, mask=offs_m < len_q)


@triton.jit
def _attn_bwd_preprocess(
    O, DO, DELTA, CU_Q,
    stride_ob, stride_oh, stride_om,
    stride_db, stride_dh, stride_dm,
    stride_lb, stride_lh,
    seqlen_q,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    """delta = rowsum(dO * O), the softmax-backward correction term, in fp32."""
    pid_m = tl.program_id(0)
    off_b = tl.program_id(1)
    off_h = tl.program_id(2)
    q_start, len_q = _sequence_bounds(CU_Q, off_b, seqlen_q, IS_VARLEN)
    if pid_m * BLOCK_M >= len_q:
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m[:, None] < len_q) & (offs_d[None, :] < HEAD_DIM)
    rows = (q_start + offs_m[:, None])
    o = tl.load(O + off_b * stride_ob + off_h * stride_oh + rows * stride_om + offs_d[None, :], mask=mask, other=0.0)
    do = tl.load(DO + off_b * stride_db + off_h * stride_dh + rows * stride_dm + offs_d[None, :], mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + off_b * stride_lb + off_h * stride_lh + offs_m, delta, mask=offs_m < len_q)


@triton.jit
def _attn_bwd_dkdv(
    Q, K, V, DO, LSE, DELTA, DK, DV, KMASK, CU_Q, CU_K,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_dom,
    stride_dkb, stride_dkh, stride_dkn,
    stride_dvb, stride_dvh, stride_dvn,
    stride_lb, stride_lh,
    stride_mb, stride_mn,
    seqlen_q, seqlen_k, qk_scale_log2, sm_scale, seq_bucket, dropout_p, dropout_seed,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_CAUSAL: tl.constexpr, IS_VARLEN: tl.constexpr, HAS_KMASK: tl.constexpr,
    DOT_PREC: tl.constexpr, HAS_DROPOUT: tl.constexpr,
):
    """One program per (key block, batch, key/value head): dK and dV, summed over the head group."""
    pid_n = tl.program_id(0)
    off_b = tl.program_id(1)
    off_hk = tl.program_id(2)
    q_start, len_q = _sequence_bounds(CU_Q, off_b, seqlen_q, IS_VARLEN)
    k_start, len_k = _sequence_bounds(CU_K, off_b, seqlen_k, IS_VARLEN)
    if pid_n * BLOCK_N >= len_k:
        return

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    kv_mask = (offs_n[:, None] < len_k) & d_ok[None, :]
    k = tl.load(K + off_b * stride_kb + off_hk * stride_kh + (k_start + offs_n[:, None]) * stride_kn + offs_d[None, :],
                mask=kv_mask, other=0.0)
    v = tl.load(V + off_b * stride_vb + off_hk * stride_vh + (k_start + offs_n[:, None]) * stride_vn + offs_d[None, :],
                mask=kv_mask, other=0.0)
    kmask_ptr = KMASK + off_b * stride_mb
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    # The first query block that can see this key block (causal: query i sees key j <= i + Lk - Lq).
    start_m = 0
    if IS_CAUSAL:
        start_m = tl.maximum(pid_n * BLOCK_N - (len_k - len_q), 0)
        start_m = (start_m // BLOCK_M) * BLOCK_M
    for g in range(GROUP):
        off_h = off_hk * GROUP + g
        q_base = Q + off_b * stride_qb + off_h * stride_qh + q_start * stride_qm
        do_base = DO + off_b * stride_dob + off_h * stride_doh + q_start * stride_dom
        l_base = LSE + off_b * stride_lb + off_h * stride_lh
        d_base = DELTA + off_b * stride_lb + off_h * stride_lh
        for m0 in range(start_m, len_q, BLOCK_M):
            offs_m = m0 + offs_m0
            m_ok = offs_m < len_q
            q_mask = m_ok[:, None] & d_ok[None, :]
            q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :], mask=q_mask, other=0.0)
            do = tl.load(do_base + offs_m[:, None] * stride_dom + offs_d[None, :], mask=q_mask, other=0.0)
            lse2 = tl.load(l_base + offs_m, mask=m_ok, other=float("inf"))
            delta = tl.load(d_base + offs_m, mask=m_ok, other=0.0)
            qkT = tl.dot(k, tl.trans(q), input_precision=DOT_PREC) * qk_scale_log2
            validT = _score_mask_t(offs_m, offs_n, len_q, len_k, kmask_ptr, stride_mn, IS_CAUSAL, HAS_KMASK)
            pT = tl.where(validT, tl.exp2(qkT - lse2[None, :]), 0.0)
            dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
            if HAS_DROPOUT:
                seed = dropout_seed + off_b * (tl.num_programs(2) * GROUP) + off_h
                keepT = tl.rand(seed, offs_m[None, :] * seqlen_k + offs_n[:, None]) >= dropout_p
                dv += tl.dot(tl.where(keepT, pT * (1.0 / (1.0 - dropout_p)), 0.0).to(do.dtype), do,
                             input_precision=DOT_PREC)
                dpT = tl.where(keepT, dpT * (1.0 / (1.0 - dropout_p)), 0.0)
            else:
                dv += tl.dot(pT.to(do.dtype), do, input_precision=DOT_PREC)
            dsT = pT * (dpT - delta[None, :])
            dk += tl.dot(dsT.to(q.dtype), q, input_precision=DOT_PREC)

    dk = dk * sm_scale
    tl.store(DK + off_b * stride_dkb + off_hk * stride_dkh + (k_start + offs_n[:, None]) * stride_dkn + offs_d[None, :],
             dk.to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + off_b * stride_dvb + off_hk * stride_dvh + (k_start + offs_n[:, None]) * stride_dvn + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _attn_bwd_dq(
    Q, K, V, DO, LSE, DELTA, DQ, KMASK, CU_Q, CU_K,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_dom,
    stride_dqb, stride_dqh, stride_dqm,
    stride_lb, stride_lh,
    stride_mb, stride_mn,
    seqlen_q, seqlen_k, qk_scale_log2, sm_scale, seq_bucket, dropout_p, dropout_seed,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_CAUSAL: tl.constexpr, IS_VARLEN: tl.constexpr, HAS_KMASK: tl.constexpr,
    DOT_PREC: tl.constexpr, HAS_DROPOUT: tl.constexpr,
):
    """One program per (query block, batch, head): dQ (no atomics, deterministic)."""
    pid_m = tl.program_id(0)
    off_b = tl.program_id(1)
    off_h = tl.program_id(2)
    off_hk = off_h // GROUP
    q_start, len_q = _sequence_bounds(CU_Q, off_b, seqlen_q, IS_VARLEN)
    k_start, len_k = _sequence_bounds(CU_K, off_b, seqlen_k, IS_VARLEN)
    if pid_m * BLOCK_M >= len_q:
        return

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    m_ok = offs_m < len_q
    q_mask = m_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + off_b * stride_qb + off_h * stride_qh + (q_start + offs_m[:, None]) * stride_qm + offs_d[None, :],
                mask=q_mask, other=0.0)
    do = tl.load(DO + off_b * stride_dob + off_h * stride_doh + (q_start + offs_m[:, None]) * stride_dom + offs_d[None, :],
                 mask=q_mask, other=0.0)
    lse2 = tl.load(LSE + off_b * stride_lb + off_h * stride_lh + offs_m, mask=m_ok, other=float("inf"))
    delta = tl.load(DELTA + off_b * stride_lb + off_h * stride_lh + offs_m, mask=m_ok, other=0.0)
    k_base = K + off_b * stride_kb + off_hk * stride_kh + k_start * stride_kn
    v_base = V + off_b * stride_vb + off_hk * stride_vh + k_start * stride_vn
    kmask_ptr = KMASK + off_b * stride_mb
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    seed = dropout_seed + off_b * tl.num_programs(2) + off_h

    end_n = len_k
    if IS_CAUSAL:
        end_n = tl.minimum(len_k, (pid_m + 1) * BLOCK_M + (len_k - len_q))
    for start_n in range(0, end_n, BLOCK_N):
        offs_n = start_n + offs_n0
        kv_mask = (offs_n[:, None] < len_k) & d_ok[None, :]
        k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale_log2
        valid = _score_mask(offs_m, offs_n, len_q, len_k, kmask_ptr, stride_mn, IS_CAUSAL, HAS_KMASK)
        p = tl.where(valid, tl.exp2(qk - lse2[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
        if HAS_DROPOUT:
            keep = tl.rand(seed, offs_m[:, None] * seqlen_k + offs_n[None, :]) >= dropout_p
            dp = tl.where(keep, dp * (1.0 / (1.0 - dropout_p)), 0.0)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PREC)

    dq = dq * sm_scale
    tl.store(DQ + off_b * stride_dqb + off_h * stride_dqh + (q_start + offs_m[:, None]) * stride_dqm + offs_d[None, :],
             dq.to(DQ.dtype.element_ty), mask=q_mask)


# --------------------------------------------------------------------------------------------
# Tile configurations. On a GPU the autotuner picks among these per (head-dim tile, causal,
# sequence bucket); the lists are pruned so that big head-dim tiles get small key blocks and few
# pipeline stages (shared memory: a 256-wide fp16 tile of 64 rows is already 32 KiB). Under the
# interpreter one large tile is used: fewer interpreted iterations, same arithmetic.
# --------------------------------------------------------------------------------------------

def _fwd_configs():
    out = []
    for bm, bn, warps, stages in [
        (128, 128, 8, 3), (128, 64, 8, 3), (128, 64, 4, 3), (64, 64, 4, 4),
        (128, 32, 8, 2), (64, 64, 4, 2), (64, 32, 4, 2),
    ]:
        out.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages))
    return out


def _bwd_configs():
    out = []
    for bm, bn, warps, stages in [
        (64, 128, 8, 2), (128, 64, 8, 2), (64, 64, 4, 2), (32, 64, 4, 2), (64, 32, 4, 2), (32, 32, 4, 1),
    ]:
        out.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages))
    return out


def _prune_fwd(configs, named_args, **kwargs):
    block_d = kwargs.get("BLOCK_D", named_args.get("BLOCK_D", 64))
    if block_d >= 256:
        keep = [c for c in configs if c.kwargs["BLOCK_N"] <= 64 and c.num_stages <= 2]
    elif block_d >= 128:
        keep = [c for c in configs if c.kwargs["BLOCK_N"] <= 64 and c.num_stages <= 3]
    else:
        keep = configs
    return keep or configs[-1:]


def _prune_bwd(configs, named_args, **kwargs):
    block_d = kwargs.get("BLOCK_D", named_args.get("BLOCK_D", 64))
    if block_d >= 256:
        keep = [c for c in configs if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 64 * 32]
    elif block_d >= 128:
        keep = [c for c in configs if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 64 * 64]
    else:
        keep = configs
    return keep or configs[-1:]


def _tuned(kernel, configs, prune):
    # ``seq_bucket`` (the longest sequence rounded up to a power of two, unused by the kernels) keys
    # the tuner, so a decode loop whose key length grows by one each step does not retune each step.
    return triton.autotune(
        configs=configs,
        key=["BLOCK_D", "IS_CAUSAL", "IS_VARLEN", "HAS_KMASK", "HAS_DROPOUT", "GROUP", "seq_bucket"],
        prune_configs_by={"early_config_prune": prune},
    )(kernel)


attn_fwd_tuned = _tuned(_attn_fwd, _fwd_configs(), _prune_fwd)
attn_bwd_dkdv_tuned = _tuned(_attn_bwd_dkdv, _bwd_configs(), _prune_bwd)
attn_bwd_dq_tuned = _tuned(_attn_bwd_dq, _bwd_configs(), _prune_bwd)
attn_fwd = _attn_fwd
attn_bwd_dkdv = _attn_bwd_dkdv
attn_bwd_dq = _attn_bwd_dq
attn_bwd_preprocess = _attn_bwd_preprocess
