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
including non-powers of two (40, 72, 80, 96, 152, ...): the head dimension runs as a power-of-two
tile plus a power-of-two remainder tile (152 = 128 + 32, see :func:`head_dim_tiles`), nothing is
padded in memory. A query row that sees no key returns zeros and zero gradients. ``Hkv`` may divide
``H`` (grouped-query attention) without repeating k and v.

Attention dropout (``dropout_p``) runs inside the kernel: the mask comes from Philox random numbers
whose seed and offset each call draws from torch's generator on the tensors' device (so
``torch.manual_seed`` makes it reproducible, and every call, layer, step and CUDA-graph replay gets
its own stream) and is regenerated in the backward pass, never stored.

No host synchronisation on a GPU: checks that would read tensor values on the host (``max_seqlen``
against ``cu_seqlens``, recognising a ``[B, 1, Tq, Tk]`` mask as key padding) run only in debug mode
(``TURING_KERNELS_DEBUG=1``) or on CPU tensors; otherwise ``max_seqlen`` is checked by an
asynchronous device-side assertion and such masks go to SDPA.

The launches are built by :func:`forward_launch` / :func:`backward_launches` without running
anything, which is how ``turing_kernels/compile_check.py`` compiles exactly what would run.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ._runtime import check_can_run, debug_checks, interpreting, next_power_of_2

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


def head_dim_tiles(head_dim: int) -> Tuple[int, int]:
    """(BLOCK_D, BLOCK_D2): the head dimension as a power-of-two tile plus a power-of-two remainder
    tile (0 when ``head_dim`` is a power of two), e.g. 152 -> (128, 32), 80 -> (64, 16)."""
    first = max(16, 1 << (max(head_dim, 1).bit_length() - 1))
    rest = head_dim - first
    return first, (max(16, next_power_of_2(rest)) if rest > 0 else 0)


def _aligned(*tensors: torch.Tensor) -> bool:
    """Every base pointer 16-byte aligned and every stride but the last a multiple of 8 elements."""
    return all(t.data_ptr() % 16 == 0 and all(s % 8 == 0 for s in t.stride()[:-1]) for t in tensors)


# Forced tiles: {"fwd" | "dkdv" | "dq": (BLOCK_M, BLOCK_N, num_warps, num_stages)}; set by force_tiles().
_FORCED: dict = {}


@contextlib.contextmanager
def force_tiles(fwd=None, dkdv=None, dq=None, tma=None):
    """Launch with the given tiles instead of autotuning (or the interpreter's one large tile).

    Each: ``(BLOCK_M, BLOCK_N, num_warps, num_stages)``, as in ``_attention_triton.FWD_TILES`` /
    ``DKDV_TILES`` / ``DQ_TILES`` (Hopper) or their ``SM80_`` counterparts (Ampere). ``tma``: the
    forward's key / value loads through TMA descriptors (True) or pointers (False, the default);
    only for aligned inputs. Lets the tests run every kept GPU configuration."""
    saved = dict(_FORCED)
    _FORCED.update({k: v for k, v in (("fwd", fwd), ("dkdv", dkdv), ("dq", dq), ("tma", tma)) if v is not None})
    try:
        yield
    finally:
        _FORCED.clear()
        _FORCED.update(saved)


@dataclass
class Launch:
    """One kernel launch: the autotuned kernel, the same kernel with fixed tiles, and its arguments.

    ``turing_kernels/compile_check.py`` builds these with meta tensors and compiles exactly what would run."""

    name: str
    tuned: Any
    fixed: Any
    grid: Callable[[dict], tuple]
    args: list
    meta: dict
    phase: str  # "fwd", "dkdv", "dq" (which forced tiles apply) or "pre"

    def run(self, interp_tiles: Tuple[int, int]) -> None:
        forced = _FORCED.get(self.phase)
        extra = {}
        if self.phase == "fwd":
            extra["USE_TMA"] = bool(_FORCED.get("tma", False))
            if extra["USE_TMA"] and not self.meta["ALIGNED"]:
                raise ValueError("force_tiles(tma=True) needs aligned inputs (16-byte pointers, strides of 8 elements)")
        if not interpreting() and self.phase == "fwd":
            _ensure_allocator()
        if forced is not None:
            bm, bn, warps, stages = forced
            meta = dict(self.meta, BLOCK_M=bm, BLOCK_N=bn, **extra)
            opts = {} if interpreting() else dict(num_warps=warps, num_stages=stages)
            self.fixed[self.grid(meta)](*self.args, **meta, **opts)
        elif interpreting():
            meta = dict(self.meta, BLOCK_M=interp_tiles[0], BLOCK_N=interp_tiles[1], **extra)
            self.fixed[self.grid(meta)](*self.args, **meta)
        else:
            self.tuned[self.grid](*self.args, **self.meta)


def _ensure_allocator() -> None:
    """TMA descriptors built on the device need a little global scratch memory per launch (128
    bytes per descriptor and program), which Triton asks of the allocator set with
    ``triton.set_allocator``: unless the caller set one, take it from PyTorch's caching allocator."""
    import triton
    from triton.runtime import _allocation

    if isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
        # on the current device, which is the launch's: Triton launches there
        triton.set_allocator(lambda size, alignment, stream: torch.empty(size, dtype=torch.int8, device="cuda"))


def _common_meta(q, k, varlen, causal, kmask, dropout_p, aligned):
    heads, head_dim = q.shape[-2] if varlen else q.shape[1], q.shape[-1]
    kv_heads = k.shape[-2] if varlen else k.shape[1]
    block_d, block_d2 = head_dim_tiles(head_dim)
    return dict(
        GROUP=heads // kv_heads, HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_D2=block_d2,
        IS_CAUSAL=causal, IS_VARLEN=varlen, HAS_KMASK=kmask is not None, DOT_PREC=_dot_precision(q),
        HAS_DROPOUT=dropout_p > 0.0, ALIGNED=aligned,
    )


def forward_launch(q, k, v, kmask, cu_q, cu_k, rng, batch, max_q, max_k, causal, scale, varlen, dropout_p):
    """The output buffers and the forward launch (nothing runs)."""
    kern = _kernels()
    heads = q.shape[-2] if varlen else q.shape[1]
    o = torch.zeros_like(q) if varlen else torch.empty_like(q)
    lse = torch.empty((batch, heads, max(max_q, 1)), device=q.device, dtype=torch.float32)
    dummy = lse
    args = [
        q, k, v, o, lse,
        kmask if kmask is not None else dummy,
        cu_q if varlen else dummy, cu_k if varlen else dummy, rng if rng is not None else dummy,
        *_strides(q, varlen), *_strides(k, varlen), *_strides(v, varlen), *_strides(o, varlen),
        lse.stride(0), lse.stride(1),
        *((kmask.stride(0), kmask.stride(1)) if kmask is not None else (0, 0)),
        max_q, max_k, scale * _LOG2E, next_power_of_2(max(max_q, max_k)), float(dropout_p),
    ]
    meta = _common_meta(q, k, varlen, causal, kmask, dropout_p, _aligned(q, k, v, o))
    grid = lambda m: (triton_cdiv(max_q, m["BLOCK_M"]), batch, heads)  # noqa: E731
    return o, lse, Launch("attn_fwd", kern.attn_fwd_tuned, kern.attn_fwd, grid, args, meta, "fwd")


def backward_launches(do, q, k, v, o, lse, kmask, cu_q, cu_k, rng, batch, max_q, max_k, causal, scale, varlen,
                      dropout_p):
    """The gradient buffers and the three backward launches (preprocess, dK/dV, dQ), in order."""
    kern = _kernels()
    heads = q.shape[-2] if varlen else q.shape[1]
    kv_heads = k.shape[-2] if varlen else k.shape[1]
    make = torch.zeros_like if varlen else torch.empty_like
    dq, dk, dv = make(q), make(k), make(v)
    delta = torch.empty_like(lse)
    dummy = lse
    kmask_arg = kmask if kmask is not None else dummy
    kmask_strides = (kmask.stride(0), kmask.stride(1)) if kmask is not None else (0, 0)
    cu = (cu_q if varlen else dummy, cu_k if varlen else dummy)
    rng_arg = rng if rng is not None else dummy
    tail = [max_q, max_k, scale * _LOG2E, scale, next_power_of_2(max(max_q, max_k)), float(dropout_p)]
    meta = _common_meta(q, k, varlen, causal, kmask, dropout_p, _aligned(q, k, v, o, do, dq, dk, dv))
    common = [*_strides(q, varlen), *_strides(k, varlen), *_strides(v, varlen), *_strides(do, varlen)]
    dkdv_args = [q, k, v, do, lse, delta, dk, dv, kmask_arg, *cu, rng_arg, *common, *_strides(dk, varlen),
                 *_strides(dv, varlen), lse.stride(0), lse.stride(1), *kmask_strides, *tail]
    dq_args = [q, k, v, do, lse, delta, dq, kmask_arg, *cu, rng_arg, *common, *_strides(dq, varlen),
               lse.stride(0), lse.stride(1), *kmask_strides, *tail]
    pre_args = [o, do, delta, cu[0], *_strides(o, varlen), *_strides(do, varlen), lse.stride(0), lse.stride(1), max_q]
    pre_meta = dict(HEAD_DIM=meta["HEAD_DIM"], BLOCK_D=max(16, next_power_of_2(meta["HEAD_DIM"])),
                    IS_VARLEN=varlen, ALIGNED=meta["ALIGNED"])
    pre_grid = lambda m: (triton_cdiv(max_q, m["BLOCK_M"]), batch, heads)  # noqa: E731
    launches = [
        Launch("attn_bwd_preprocess", None, kern.attn_bwd_preprocess, pre_grid, pre_args, pre_meta, "pre"),
        Launch("attn_bwd_dkdv", kern.attn_bwd_dkdv_tuned, kern.attn_bwd_dkdv,
               lambda m: (triton_cdiv(max_k, m["BLOCK_N"]), batch, kv_heads), dkdv_args, meta, "dkdv"),
        Launch("attn_bwd_dq", kern.attn_bwd_dq_tuned, kern.attn_bwd_dq,
               lambda m: (triton_cdiv(max_q, m["BLOCK_M"]), batch, heads), dq_args, meta, "dq"),
    ]
    return dq, dk, dv, delta, launches


def _run_preprocess(launch: Launch, max_q: int) -> None:
    bm = _interpret_block(max_q) if interpreting() else 64
    meta = dict(launch.meta, BLOCK_M=bm)
    launch.fixed[launch.grid(meta)](*launch.args, **meta)


def _flash_forward(q, k, v, kmask, cu_q, cu_k, rng, batch, max_q, max_k, causal, scale, varlen, dropout_p):
    o, lse, launch = forward_launch(q, k, v, kmask, cu_q, cu_k, rng, batch, max_q, max_k, causal, scale, varlen,
                                    dropout_p)
    launch.run((_interpret_block(max_q), _interpret_block(max_k)))
    return o, lse


def _flash_backward(do, q, k, v, o, lse, kmask, cu_q, cu_k, rng, batch, max_q, max_k, causal, scale, varlen,
                    dropout_p):
    do = _last_dim_contiguous(do)
    dq, dk, dv, _, (pre, dkdv, dqk) = backward_launches(do, q, k, v, o, lse, kmask, cu_q, cu_k, rng, batch, max_q,
                                                         max_k, causal, scale, varlen, dropout_p)
    _run_preprocess(pre, max_q)
    tiles = (_interpret_block(max_q), _interpret_block(max_k))
    dkdv.run(tiles)
    dqk.run(tiles)
    return dq, dk, dv


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def _dropout_rng(device) -> torch.Tensor:
    """Philox seed and counter offset for one call, drawn from torch's generator on ``device``: no host
    sync, reproducible under ``torch.manual_seed``, fresh for every call and every CUDA-graph replay."""
    return torch.empty(2, dtype=torch.int64, device=device).random_()


class _FlashAttnFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, kmask, cu_q, cu_k, batch, max_q, max_k, causal, scale, varlen, dropout_p):
        rng = _dropout_rng(q.device) if dropout_p > 0.0 else None
        o, lse = _flash_forward(q, k, v, kmask, cu_q, cu_k, rng, batch, max_q, max_k, causal, scale, varlen, dropout_p)
        ctx.save_for_backward(q, k, v, o, lse, kmask, cu_q, cu_k, rng)
        ctx.config = (batch, max_q, max_k, causal, scale, varlen, dropout_p)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, kmask, cu_q, cu_k, rng = ctx.saved_tensors
        dq, dk, dv = _flash_backward(do, q, k, v, o, lse, kmask, cu_q, cu_k, rng, *ctx.config)
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
    cu_q = cu_seqlens_q.to(device=q.device, dtype=torch.int32).contiguous()
    cu_k = cu_seqlens_k.to(device=q.device, dtype=torch.int32).contiguous()
    max_q, max_k = int(max_seqlen_q), int(max(max_seqlen_k, 1))
    _check_max_seqlen(cu_q, max_q, "q")
    _check_max_seqlen(cu_k, max_k, "k")
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    return _FlashAttnFunction.apply(q, k, v, None, cu_q, cu_k, batch, max_q, max_k, bool(causal), scale, True,
                                    float(dropout_p))


def _check_max_seqlen(cu: torch.Tensor, max_seqlen: int, which: str) -> None:
    """A max_seqlen below the longest sequence would leave rows uncomputed: a clear error on the host
    in debug mode (and on the CPU), an asynchronous device-side assertion otherwise (no sync)."""
    longest = (cu[1:] - cu[:-1]).max()
    if debug_checks(cu):
        if int(longest) > max_seqlen:
            raise ValueError(f"flash_attn_varlen_func: max_seqlen_{which}={max_seqlen} is smaller than the longest "
                             f"sequence in cu_seqlens_{which} ({int(longest)}); pass the true maximum.")
    else:
        torch._assert_async(longest <= max_seqlen, f"flash_attn_varlen_func: max_seqlen_{which} is smaller than the "
                            f"longest sequence in cu_seqlens_{which}")


def _as_key_padding(mask: torch.Tensor, batch: int, t_q: int, t_k: int, is_causal: bool, inspect: bool = True):
    """Return ``(key_padding [B, Tk], causal)`` when ``mask`` is a key-padding mask (optionally
    combined with the bottom-right causal mask), else ``None``.

    Masks of shape ``[B or 1, 1, 1 or Tq, Tk]`` with ``Tq == 1`` are recognised from their shape alone;
    a ``[B, 1, Tq, Tk]`` mask needs its values compared (a host sync on a GPU), which happens only when
    ``inspect`` is true; otherwise it is left to SDPA. Pass the key-padding mask ``[B, 1, 1, Tk]``
    with ``is_causal=True`` to run causal padded attention in the kernel without a sync."""
    if mask.dim() == 2 and mask.shape[-1] == t_k:
        return mask.expand(batch, t_k), is_causal
    if mask.dim() != 4 or mask.shape[-1] != t_k or mask.shape[1] != 1 or mask.shape[0] not in (1, batch):
        return None
    mask = mask.expand(batch, 1, mask.shape[2], t_k)[:, 0]  # [B, Tq or 1, Tk]
    if mask.shape[1] == 1:
        return mask[:, 0], is_causal
    if mask.shape[1] != t_q or not inspect:
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
        found = _as_key_padding(attn_mask, q.shape[0], q.shape[2], k.shape[2], is_causal,
                                inspect=debug_checks(attn_mask))
        if found is None:
            return _sdpa_fallback(q, k, v, attn_mask, is_causal, scale, dropout_p)
        kp, causal = found
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
