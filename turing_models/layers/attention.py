"""The one attention dispatch both model families go through.

Model code computes q, k, v and calls :func:`dot_product_attention` (dense, batched) or
:func:`varlen_attention` (packed sequences described by ``cu_seqlens``). Which backend runs is
``config.attn_implementation``:

* ``"eager"``: plain PyTorch matmul + softmax; the reference every other path is tested against.
* ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention``.
* ``"turing"``: the Triton flash-attention kernel of ``turing_kernels`` (CUDA; on the CPU only
  under ``TRITON_INTERPRET=1``, for tests), imported lazily so this package imports without Triton
  or a GPU. Key-padding masks (alone or with the causal mask) and dropout run in the kernel; any
  other mask falls back to SDPA.

Shapes: dense q is ``[batch, heads, q_len, head_dim]`` and k, v are ``[batch, heads, k_len,
head_dim]``; varlen q, k, v are ``[total_tokens, heads, head_dim]``. ``attn_mask`` is boolean,
broadcastable to ``[batch, heads, q_len, k_len]``, True where a query may attend to a key.
A query row with no key to attend to returns zeros, never NaN, on every backend.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F

ATTN_IMPLEMENTATIONS = ("turing", "sdpa", "eager")


def turing_kernels_available() -> bool:
    """True when the Triton kernels can run here (CUDA device and Triton installed)."""
    if not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def fused_kernels_usable(*tensors: Optional[torch.Tensor]) -> bool:
    """True when the fused Triton kernels can run on these tensors: CUDA tensors with Triton, or CPU
    tensors under Triton's interpreter (``TRITON_INTERPRET=1``, used by the tests). The ``fused_*``
    flags of the layers fall back to plain PyTorch where this is False."""
    try:
        from turing_kernels import can_run
    except ImportError:
        return False
    return can_run(*tensors)


def default_attn_implementation() -> str:
    """"turing" on CUDA with Triton, "sdpa" everywhere else (DESIGN.md principle 3)."""
    return "turing" if turing_kernels_available() else "sdpa"


def resolve_attn_implementation(name: Optional[str]) -> str:
    """Validate a requested implementation; ``None`` or ``"auto"`` picks the default."""
    if name is None or name == "auto":
        return default_attn_implementation()
    if name not in ATTN_IMPLEMENTATIONS:
        raise ValueError(
            f"attn_implementation={name!r} is not supported; choose one of "
            f"{', '.join(ATTN_IMPLEMENTATIONS)} (or 'auto')."
        )
    return name


def _causal_mask(q_len: int, k_len: int, device: torch.device) -> torch.Tensor:
    # Bottom-right aligned, as with a KV cache: query i sits at absolute position k_len - q_len + i.
    q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    k_pos = torch.arange(k_len, device=device)[None, :]
    return k_pos <= q_pos


def _combined_mask(q, k, attn_mask, is_causal):
    mask = attn_mask
    if is_causal:
        causal = _causal_mask(q.shape[-2], k.shape[-2], q.device)
        mask = causal if mask is None else (mask & causal)
    return mask


def eager_attention(q, k, v, attn_mask=None, is_causal=False, scale=None, dropout_p=0.0):
    """Reference attention: softmax(q k^T * scale + mask) v, computed in the input dtype."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    mask = _combined_mask(q, k, attn_mask, is_causal)
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    if mask is not None:
        probs = probs.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p, training=True)
    return torch.matmul(probs, v)


def sdpa_attention(q, k, v, attn_mask=None, is_causal=False, scale=None, dropout_p=0.0):
    """``F.scaled_dot_product_attention`` with fully masked rows returned as zeros."""
    if attn_mask is None:
        # SDPA's own is_causal is top-left aligned; only equal lengths mean the same thing.
        if is_causal and q.shape[-2] != k.shape[-2]:
            attn_mask = _causal_mask(q.shape[-2], k.shape[-2], q.device)
            is_causal = False
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale
        )
    mask = _combined_mask(q, k, attn_mask, is_causal)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    empty = ~mask.any(dim=-1, keepdim=True)
    if bool(empty.any()):
        out = out.masked_fill(empty, 0.0)
    return out


def _turing_attention(q, k, v, attn_mask=None, is_causal=False, scale=None, dropout_p=0.0):
    from turing_kernels.attention import dense_attention  # lazy: needs Triton + CUDA

    return dense_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale, dropout_p=dropout_p)


_DENSE: dict[str, Callable] = {"eager": eager_attention, "sdpa": sdpa_attention, "turing": _turing_attention}


def dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    implementation: str = "sdpa",
    attn_mask: Optional[torch.Tensor] = None,
    is_causal: bool = False,
    scale: Optional[float] = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Dense batched attention through the configured backend. Returns ``[B, H, q_len, D]``."""
    try:
        fn = _DENSE[implementation]
    except KeyError:
        resolve_attn_implementation(implementation)  # raises the clear error
        raise
    return fn(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale, dropout_p=dropout_p)


def _varlen_fallback(q, k, v, cu_seqlens, max_seqlen, is_causal, scale, dropout_p, dense_fn):
    # Correct on any device: one dense call per sequence (no padding copies, no cross-sequence mask).
    bounds = cu_seqlens.tolist()
    outs = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        qs, ks, vs = (t[start:end].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        o = dense_fn(qs, ks, vs, attn_mask=None, is_causal=is_causal, scale=scale, dropout_p=dropout_p)
        outs.append(o.squeeze(0).transpose(0, 1))
    return torch.cat(outs, dim=0) if outs else q.new_zeros(q.shape)


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    *,
    implementation: str = "sdpa",
    is_causal: bool = False,
    scale: Optional[float] = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Attention over packed sequences. q, k, v: ``[total, H, D]``; cu_seqlens: int32 ``[n+1]``."""
    if implementation == "turing":
        from turing_kernels.attention import flash_attn_varlen_func

        return flash_attn_varlen_func(
            q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
            dropout_p=dropout_p, softmax_scale=scale, causal=is_causal,
        )
    dense_fn = _DENSE.get(implementation)
    if dense_fn is None:
        resolve_attn_implementation(implementation)
        raise KeyError(implementation)
    return _varlen_fallback(q, k, v, cu_seqlens, max_seqlen, is_causal, scale, dropout_p, dense_fn)
