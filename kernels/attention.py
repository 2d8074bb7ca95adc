"""Flash attention (FlashAttention-2 algorithm) in Triton: forward and backward.

Three entry points:

* :func:`flash_attention` — dense batched ``q [B, H, Tq, D]``, ``k, v [B, Hkv, Tk, D]`` (any strides
  with a contiguous last dim, so ``x.view(B, T, H, D).transpose(1, 2)`` needs no copy), optional
  boolean ``key_padding_mask [B, Tk]`` (True = attend) applied inside the kernel.
* :func:`flash_attn_varlen_func` — packed sequences, ``[total, H, D]`` with int32 ``cu_seqlens``,
  FlashAttention's signature.
* :func:`dense_attention` — what ``turing_models.layers.dot_product_attention(implementation=
  "turing")`` calls: takes a boolean ``attn_mask`` broadcastable to ``[B, H, Tq, Tk]``; a key-padding
  mask (alone or combined with the causal mask) runs in the kernel, any other mask falls back to
  PyTorch SDPA.

Causal masking is bottom-right aligned (as with a KV cache). Head dims up to 256 are supported,
including non-powers of two (40, 72, 80, 96, 152, ...): the kernel masks the head dimension up to
the next power of two, nothing is padded in memory. A query row that sees no key returns zeros and
zero gradients. ``Hkv`` may divide ``H`` (grouped-query attention) without repeating k and v.

Attention dropout (``dropout_p``) runs inside the kernel: the mask comes from Philox random numbers
seeded from torch's generator (so ``torch.manual_seed`` makes it reproducible) and is regenerated
in the backward pass, never stored.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ._runtime import check_can_run, interpreting, next_power_of_2

MAX_HEAD_DIM = 256
_LOG2E = 1.4426950408889634

__all__ = [
    "FlashAttention",
    "dense_attention",
    "flash_attention",
    "flash_attn_func",
    "flash_attn_varlen_func",
]


def _kernels():
    from . import _attention_triton

    return _attention_triton


def _strides(t: torch.Tensor, varlen: bool) -> Tuple[int, int, int]:
    """(batch, head, sequence) strides; varlen tensors ``[total, H, D]`` have no batch axis."""
    if varlen:
        return 0, t.stride(1), t.stride(0)
    return t.stride(0), t.stride(1), t.stride(2)


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _dot_precision(q: torch.Tensor) -> str:
    # fp32 inputs get exact fp32 products (the reference path); half inputs use the tensor cores.
    return "ieee" if q.dtype == torch.float32 else "tf32"


def _interpret_block(n: int) -> int:
    # One large tile under the interpreter (fewer interpreted loop iterations); >= 16 for tl.dot.
    return min(128, max(16, next_power_of_2(n)))


def _flash_forward(q, k, v, kmask, cu_q, cu_k, batch, max_q, max_k, causal, scale, varlen, dropout_p, seed):
    kern = _kernels()
    heads, head_dim = q.shape[-2] if varlen else q.shape[1], q.shape[-1]
    kv_heads = k.shape[-2] if varlen else k.shape[1]
    o = torch.zeros_like(q) if varlen else torch.empty_like(q)
    lse = torch.empty((batch, heads, max(max_q, 1)), device=q.device, dtype=torch.float32)
    dummy = lse
    args = [
        q, k, v, o, lse,
        kmask if kmask is not None else dummy,
        cu_q if varlen else dummy, cu_k if varlen else dummy,
        *_strides(q, varlen), *_strides(k, varlen), *_strides(v, varlen), *_strides(o, varlen),
        lse.stride(0), lse.stride(1),
        *((kmask.stride(0), kmask.stride(1)) if kmask is not None else (0, 0)),
        max_q, max_k, scale * _LOG2E, next_power_of_2(max(max_q, max_k)), float(dropout_p), int(seed),
    ]
    meta = dict(
        GROUP=heads // kv_heads, HEAD_DIM=head_dim, BLOCK_D=max(16, next_power_of_2(head_dim)),
        IS_CAUSAL=causal, IS_VARLEN=varlen, HAS_KMASK=kmask is not None, DOT_PREC=_dot_precision(q),
        HAS_DROPOUT=dropout_p > 0.0,
    )
    if interpreting():
        bm, bn = _interpret_block(max_q), _interpret_block(max_k)
        kern.attn_fwd[(triton_cdiv(max_q, bm), batch, heads)](*args, **meta, BLOCK_M=bm, BLOCK_N=bn)
    else:
        grid = lambda m: (triton_cdiv(max_q, m["BLOCK_M"]), batch, heads)  # noqa: E731
        kern.attn_fwd_tuned[grid](*args, **meta)
    return o, lse


def _flash_backward(do, q, k, v, o, lse, kmask, cu_q, cu_k, batch, max_q, max_k, causal, scale, varlen, dropout_p,
                    seed):
    kern = _kernels()
    heads, head_dim = q.shape[-2] if varlen else q.shape[1], q.shape[-1]
    kv_heads = k.shape[-2] if varlen else k.shape[1]
    do = _last_dim_contiguous(do)
    make = torch.zeros_like if varlen else torch.empty_like
    dq, dk, dv = make(q), make(k), make(v)
    delta = torch.empty_like(lse)
    dummy = lse
    block_d = max(16, next_power_of_2(head_dim))
    kmask_arg = kmask if kmask is not None else dummy
    kmask_strides = (kmask.stride(0), kmask.stride(1)) if kmask is not None else (0, 0)
    cu = (cu_q if varlen else dummy, cu_k if varlen else dummy)
    bucket = next_power_of_2(max(max_q, max_k))
    meta = dict(
        GROUP=heads // kv_heads, HEAD_DIM=head_dim, BLOCK_D=block_d,
        IS_CAUSAL=causal, IS_VARLEN=varlen, HAS_KMASK=kmask is not None, DOT_PREC=_dot_precision(q),
        HAS_DROPOUT=dropout_p > 0.0,
    )

    pre_bm = 64 if not interpreting() else _interpret_block(max_q)
    kern.attn_bwd_preprocess[(triton_cdiv(max_q, pre_bm), batch, heads)](
        o, do, delta, cu[0], *_strides(o, varlen), *_strides(do, varlen), lse.stride(0), lse.stride(1), max_q,
        HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_M=pre_bm, IS_VARLEN=varlen,
    )
    common = [*_strides(q, varlen), *_strides(k, varlen), *_strides(v, varlen), *_strides(do, varlen)]
    dkdv_args = [
        q, k, v, do, lse, delta, dk, dv, kmask_arg, *cu, *common,
        *_strides(dk, varlen), *_strides(dv, varlen), lse.stride(0), lse.stride(1), *kmask_strides,
        max_q, max_k, scale * _LOG2E, scale, bucket, float(dropout_p), int(seed),
    ]
    dq_args = [
        q, k, v, do, lse, delta, dq, kmask_arg, *cu, *common,
        *_strides(dq, varlen), lse.stride(0), lse.stride(1), *kmask_strides,
        max_q, max_k, scale * _LOG2E, scale, bucket, float(dropout_p), int(seed),
    ]
    if interpreting():
        bm, bn = _interpret_block(max_q), _interpret_block(max_k)
        kern.attn_bwd_dkdv[(triton_cdiv(max_k, bn), batch, kv_heads)](*dkdv_args, **meta, BLOCK_M=bm, BLOCK_N=bn)
        kern.attn_bwd_dq[(triton_cdiv(max_q, bm), batch, heads)](*dq_args, **meta, BLOCK_M=bm, BLOCK_N=bn)
    else:
        kern.attn_bwd_dkdv_tuned[lambda m: (triton_cdiv(max_k, m["BLOCK_N"]), batch, kv_heads)](*dkdv_args, **meta)
        kern.attn_bwd_dq_tuned[lambda m: (triton_cdiv(max_q, m["BLOCK_M"]), batch, heads)](*dq_args, **meta)
    return dq, dk, dv


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


class _FlashAttnFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, kmask, cu_q, cu_k, batch, max_q, max_k, causal, scale, varlen, dropout_p):
        # Dropout seed from torch's (CPU) generator: reproducible under torch.manual_seed, no device sync.
        seed = int(torch.randint(0, 2**30, (1,)).item()) if dropout_p > 0.0 else 0
        o, lse = _flash_forward(q, k, v, kmask, cu_q, cu_k, batch, max_q, max_k, causal, scale, varlen, dropout_p, seed)
        ctx.save_for_backward(q, k, v, o, lse, kmask, cu_q, cu_k)
        ctx.config = (batch, max_q, max_k, causal, scale, varlen, dropout_p, seed)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, kmask, cu_q, cu_k = ctx.saved_tensors
        dq, dk, dv = _flash_backward(do, q, k, v, o, lse, kmask, cu_q, cu_k, *ctx.config)
        return dq, dk, dv, None, None, None, None, None, None, None, None, None, None


def _check_qkv(name: str, q, k, v, ndim: int) -> None:
    check_can_run(name, q, k, v)
    if q.dim() != ndim or k.dim() != ndim or v.dim() != ndim:
        layout = "[batch, heads, seq, head_dim]" if ndim == 4 else "[total_tokens, heads, head_dim]"
        raise ValueError(f"{name}: q, k, v must be {ndim}-D {layout}, got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}.")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"{name}: q, k, v must share one dtype among float16, bfloat16, float32; got "
                         f"{q.dtype}, {k.dtype}, {v.dtype}.")
    head_dim = q.shape[-1]
    if k.shape[-1] != head_dim or v.shape[-1] != head_dim:
        raise ValueError(f"{name}: q, k and v must have the same head_dim, got {q.shape[-1]}, {k.shape[-1]}, "
                         f"{v.shape[-1]}.")
    if head_dim > MAX_HEAD_DIM:
        raise ValueError(f"{name}: head_dim {head_dim} > {MAX_HEAD_DIM} is not supported by the Triton kernel; "
                         "use attn_implementation='sdpa'.")
    hq, hk = (q.shape[1], k.shape[1]) if ndim == 4 else (q.shape[1], k.shape[1])
    if hk == 0 or hq % hk != 0 or v.shape[1] != hk:
        raise ValueError(f"{name}: the number of query heads ({hq}) must be a multiple of the key/value heads "
                         f"({hk}, {v.shape[1]}).")


def _check_dropout(name: str, p: float) -> None:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{name}: dropout_p must be in [0, 1), got {p}.")


def _bottom_right_causal(q_len: int, k_len: int, device) -> torch.Tensor:
    return torch.arange(k_len, device=device)[None, :] <= torch.arange(k_len - q_len, k_len, device=device)[:, None]


def _sdpa_fallback(q, k, v, attn_mask, is_causal, scale, dropout_p):
    """PyTorch SDPA with the kernel's conventions (bottom-right causal, empty rows -> 0)."""
    if k.shape[1] != q.shape[1]:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    mask = attn_mask
    if is_causal:
        causal = _bottom_right_causal(q.shape[-2], k.shape[-2], q.device)
        mask = causal if mask is None else mask & causal
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    if mask is not None:
        empty = ~mask.any(dim=-1, keepdim=True)
        out = out.masked_fill(empty, 0.0)
    return out


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    softmax_scale: Optional[float] = None,
    key_padding_mask: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Dense flash attention. q ``[B, H, Tq, D]``, k/v ``[B, Hkv, Tk, D]``; returns ``[B, H, Tq, D]``.

    ``key_padding_mask``: bool ``[B, Tk]`` (or broadcastable from ``[1, Tk]``), True = attend.
    ``dropout_p``: attention-probability dropout (pass 0 in evaluation).
    """
    _check_qkv("flash_attention", q, k, v, 4)
    batch, _, t_q, head_dim = q.shape
    t_k = k.shape[2]
    if k.shape[0] != batch or v.shape[0] != batch or v.shape[2] != t_k:
        raise ValueError(f"flash_attention: batch/sequence sizes of q {tuple(q.shape)}, k {tuple(k.shape)} and "
                         f"v {tuple(v.shape)} do not match.")
    scale = 1.0 / math.sqrt(head_dim) if softmax_scale is None else float(softmax_scale)
    kmask = None
    if key_padding_mask is not None:
        if key_padding_mask.dim() != 2 or key_padding_mask.shape[-1] != t_k:
            raise ValueError(f"flash_attention: key_padding_mask must be [batch, {t_k}], got "
                             f"{tuple(key_padding_mask.shape)}.")
        kmask = key_padding_mask.to(device=q.device, dtype=torch.uint8).expand(batch, t_k)
    if batch == 0 or t_q == 0 or q.shape[1] == 0:
        return q * 0.0  # empty input: keeps the autograd graph
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    _check_dropout("flash_attention", dropout_p)
    return _FlashAttnFunction.apply(q, k, v, kmask, None, None, batch, t_q, t_k, bool(causal), scale, False,
                                    float(dropout_p))


def flash_attn_func(q, k, v, dropout_p: float = 0.0, softmax_scale: Optional[float] = None, causal: bool = False):
    """FlashAttention's ``flash_attn_func`` signature: q, k, v ``[B, T, H, D]``; returns ``[B, T, H, D]``."""
    out = flash_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=causal,
                          softmax_scale=softmax_scale, dropout_p=dropout_p)
    return out.transpose(1, 2)


def flash_attn_varlen_func(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float = 0.0,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
) -> torch.Tensor:
    """Attention over packed sequences (FlashAttention's signature).

    q ``[total_q, H, D]``, k/v ``[total_k, Hkv, D]``; ``cu_seqlens_*`` int32 ``[n + 1]`` with the
    cumulative sequence lengths; ``max_seqlen_*`` at least the longest sequence. Returns
    ``[total_q, H, D]``.
    """
    _check_qkv("flash_attn_varlen_func", q, k, v, 3)
    if cu_seqlens_q.dim() != 1 or cu_seqlens_k.shape != cu_seqlens_q.shape or cu_seqlens_q.numel() < 1:
        raise ValueError("flash_attn_varlen_func: cu_seqlens_q and cu_seqlens_k must be 1-D of equal length n + 1, "
                         f"got {tuple(cu_seqlens_q.shape)} and {tuple(cu_seqlens_k.shape)}.")
    scale = 1.0 / math.sqrt(q.shape[-1]) if softmax_scale is None else float(softmax_scale)
    batch = cu_seqlens_q.numel() - 1
    _check_dropout("flash_attn_varlen_func", dropout_p)
    if batch == 0 or q.shape[0] == 0 or max_seqlen_q <= 0:
        return q * 0.0  # empty input: keeps the autograd graph
    cu_q = cu_seqlens_q.to(device=q.device, dtype=torch.int32)
    cu_k = cu_seqlens_k.to(device=q.device, dtype=torch.int32)
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    return _FlashAttnFunction.apply(q, k, v, None, cu_q, cu_k, batch, int(max_seqlen_q), int(max(max_seqlen_k, 1)),
                                    bool(causal), scale, True, float(dropout_p))


def _as_key_padding(mask: torch.Tensor, batch: int, t_q: int, t_k: int, is_causal: bool):
    """Return ``(key_padding [B, Tk], causal)`` when ``mask`` is a key-padding mask (optionally
    combined with the bottom-right causal mask), else ``None``."""
    if mask.dim() == 2 and mask.shape[-1] == t_k:
        return mask.expand(batch, t_k), is_causal
    if mask.dim() != 4 or mask.shape[-1] != t_k or mask.shape[1] != 1 or mask.shape[0] not in (1, batch):
        return None
    mask = mask.expand(batch, 1, mask.shape[2], t_k)[:, 0]  # [B, Tq or 1, Tk]
    if mask.shape[1] == 1:
        return mask[:, 0], is_causal
    if mask.shape[1] != t_q:
        return None
    # With bottom-right causality the last query row sees every key, so it is the key-padding row.
    kp = mask[:, -1]
    causal = _bottom_right_causal(t_q, t_k, mask.device)
    if is_causal:
        return (kp, True) if torch.equal(mask & causal, kp[:, None, :] & causal) else None
    if torch.equal(mask, kp[:, None, :].expand_as(mask)):
        return kp, False
    if torch.equal(mask, kp[:, None, :] & causal):
        return kp, True
    return None


def dense_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: Optional[torch.Tensor] = None,
    is_causal: bool = False,
    scale: Optional[float] = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """The "turing" backend of ``turing_models.layers.dot_product_attention``.

    q ``[B, H, Tq, D]``; ``attn_mask`` bool broadcastable to ``[B, H, Tq, Tk]``, True = attend.
    Key-padding masks (``[B, 1, 1, Tk]``, ``[B, Tk]``, or a ``[B, 1, Tq, Tk]`` mask equal to
    key-padding & causal) run in the kernel; other masks fall back to SDPA.
    """
    check_can_run("attention.dense_attention", q, k, v)
    kp = None
    causal = is_causal
    if attn_mask is not None:
        if attn_mask.dtype != torch.bool:
            raise ValueError(f"dense_attention: attn_mask must be boolean (True = attend), got {attn_mask.dtype}.")
        found = _as_key_padding(attn_mask, q.shape[0], q.shape[2], k.shape[2], is_causal)
        if found is None:
            return _sdpa_fallback(q, k, v, attn_mask, is_causal, scale, dropout_p)
        kp, causal = found
        if bool(kp.all()):
            kp = None
    return flash_attention(q, k, v, causal=causal, softmax_scale=scale, key_padding_mask=kp, dropout_p=dropout_p)


class FlashAttention(nn.Module):
    """Module form of :func:`flash_attention`: ``FlashAttention(causal=True)(q, k, v, key_padding_mask)``."""

    def __init__(self, causal: bool = False, softmax_scale: Optional[float] = None, dropout: float = 0.0):
        super().__init__()
        self.causal = causal
        self.softmax_scale = softmax_scale
        self.dropout = dropout

    def forward(self, q, k, v, key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return flash_attention(q, k, v, causal=self.causal, softmax_scale=self.softmax_scale,
                               key_padding_mask=key_padding_mask, dropout_p=self.dropout if self.training else 0.0)

    def extra_repr(self) -> str:
        return f"causal={self.causal}, softmax_scale={self.softmax_scale}, dropout={self.dropout}"
