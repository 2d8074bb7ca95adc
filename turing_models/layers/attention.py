"""The one attention registry of both model families.

One table (:data:`BACKENDS`) says which function runs for each ``attn_implementation``, one check
(:func:`kernels_usable`) says whether the Triton kernels can run, one function
(:func:`resolve_attn_implementation`) decides which backend a model gets, and one reference
implementation (:func:`eager_attention`) is what every other backend is tested against. Model code
computes q, k, v and calls :func:`dot_product_attention` (dense, batched) or
:func:`varlen_attention` (packed sequences described by ``cu_seqlens``):

* ``"eager"``: plain PyTorch matmul + softmax; the reference.
* ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention``.
* ``"turing"``: the Triton flash-attention kernel of ``turing_kernels`` (CUDA; on the CPU only
  under ``TRITON_INTERPRET=1``, for tests), imported lazily so this package imports without Triton
  or a GPU. Key-padding masks (alone or with the causal mask) and dropout run in the kernel.

Asking for a backend that cannot run is never silent: :func:`resolve_attn_implementation` raises a
:class:`~turing_models.errors.UsageError` saying why (both families call it when a model is built
or loaded), and a "turing" model whose tensors later sit where the kernel cannot run (moved to a
CPU without the interpreter) logs one warning with the reason and runs "sdpa".
:func:`register_with_transformers` registers "turing" once with transformers' ``AttentionInterface``
for other transformers models (``import turing_models`` calls it).

Shapes: dense q is ``[batch, heads, q_len, head_dim]`` and k, v are ``[batch, heads, k_len,
head_dim]``; varlen q, k, v are ``[total_tokens, heads, head_dim]``. ``attn_mask`` is boolean,
broadcastable to ``[batch, heads, q_len, k_len]``, True where a query may attend to a key.
A query row with no key to attend to returns zeros, never NaN, on every backend.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..errors import UsageError

logger = logging.getLogger(__name__)

ATTN_IMPLEMENTATIONS = ("turing", "sdpa", "eager")


# --------------------------------------------------------------------------------------------- #
# Where the kernels can run: the one check
# --------------------------------------------------------------------------------------------- #
def kernels_usable(*tensors: Optional[torch.Tensor]) -> bool:
    """True when the Triton kernels of ``turing_kernels`` can run: on these tensors when given
    (CUDA tensors with Triton, or CPU tensors under ``TRITON_INTERPRET=1``), else on this machine.
    The ``fused_*`` flags of the layers and the "turing" backend all ask this."""
    try:
        import turing_kernels
    except ImportError:
        return False
    if any(t is not None for t in tensors):
        return turing_kernels.can_run(*tensors)
    return turing_kernels.is_available()


def kernels_unusable_reason() -> str:
    """Why :func:`kernels_usable` is False here, as a phrase."""
    try:
        from turing_kernels import triton_installed
    except ImportError:
        return "turing_kernels is not importable"
    if not triton_installed():
        return "Triton is not installed (pip install 'turing-models[triton]')"
    return "there is no CUDA GPU (set TRITON_INTERPRET=1 to run the kernels, slowly, on the CPU)"


def default_attn_implementation() -> str:
    """"turing" on CUDA with Triton, "sdpa" everywhere else (the interpreter is for tests only)."""
    return "turing" if torch.cuda.is_available() and kernels_usable() else "sdpa"


def check_attn_implementation(name: Optional[str]) -> None:
    """A :class:`UsageError` unless ``name`` is a backend of the registry, ``None`` or ``"auto"``
    (what a config accepts: it may be written here for a machine where the kernels run)."""
    if name not in (None, "auto", *ATTN_IMPLEMENTATIONS):
        raise UsageError(
            f"attn_implementation={name!r} is not supported; choose one of {', '.join(ATTN_IMPLEMENTATIONS)} "
            "(or 'auto')"
        )


def resolve_attn_implementation(name: Optional[str]) -> str:
    """The backend a model gets for a requested ``attn_implementation``: ``None`` / ``"auto"``
    pick :func:`default_attn_implementation`; an unknown name, or "turing" where the kernels cannot
    run, is a :class:`UsageError` saying why and what to pass instead."""
    if name is None or name == "auto":
        return default_attn_implementation()
    check_attn_implementation(name)
    if name == "turing" and not kernels_usable():
        raise UsageError(
            f"attn_implementation='turing' cannot run here: {kernels_unusable_reason()}; use 'sdpa' or 'eager', "
            "or leave it unset to pick the best available"
        )
    return name


# --------------------------------------------------------------------------------------------- #
# The reference and the backends
# --------------------------------------------------------------------------------------------- #
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
    """The reference: softmax(q k^T * scale + mask) v, computed in the input dtype."""
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
    """``F.scaled_dot_product_attention`` with the reference's conventions (bottom-right causal,
    fully masked rows returned as zeros)."""
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


def _turing_dense(q, k, v, attn_mask=None, is_causal=False, scale=None, dropout_p=0.0):
    from turing_kernels.attention import dense_attention  # lazy: needs Triton

    return dense_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale, dropout_p=dropout_p)


def _turing_varlen(q, k, v, cu_seqlens, max_seqlen, is_causal, scale, dropout_p):
    from turing_kernels.attention import flash_attn_varlen_func  # lazy: needs Triton

    return flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
                                  dropout_p=dropout_p, softmax_scale=scale, causal=is_causal)


@dataclass(frozen=True)
class Backend:
    """One ``attn_implementation``: its dense function and, where it has one, a packed (varlen) one;
    ``kernel`` backends run only where :func:`kernels_usable` says so."""

    dense: Callable
    varlen: Optional[Callable] = None
    kernel: bool = False


#: the one dispatch table: ``attn_implementation`` -> backend
BACKENDS: dict[str, Backend] = {
    "eager": Backend(eager_attention),
    "sdpa": Backend(sdpa_attention),
    "turing": Backend(_turing_dense, _turing_varlen, kernel=True),
}


@functools.lru_cache(maxsize=None)
def _warn_fallback(name: str, devices: str) -> None:
    logger.warning("attn_implementation=%r cannot run on tensors on %s (%s); running 'sdpa' instead",
                   name, devices, kernels_unusable_reason())


def _backend(name: str, *tensors: torch.Tensor) -> Backend:
    backend = BACKENDS.get(name)
    if backend is None:
        resolve_attn_implementation(name)  # raises the clear error
        raise KeyError(name)
    if backend.kernel and not kernels_usable(*tensors):
        _warn_fallback(name, ", ".join(sorted({str(t.device) for t in tensors})))
        return BACKENDS["sdpa"]
    return backend


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
    backend = _backend(implementation, q, k, v)
    return backend.dense(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale, dropout_p=dropout_p)


def _varlen_by_sequence(q, k, v, cu_seqlens, is_causal, scale, dropout_p, dense_fn):
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
    backend = _backend(implementation, q, k, v)
    if backend.varlen is not None:
        return backend.varlen(q, k, v, cu_seqlens, max_seqlen, is_causal, scale, dropout_p)
    return _varlen_by_sequence(q, k, v, cu_seqlens, is_causal, scale, dropout_p, backend.dense)


def register_with_transformers() -> bool:
    """Register "turing" with transformers' ``AttentionInterface`` (and its mask builder), once,
    so other transformers models (Llama, BERT, ...) can run the kernel. Idempotent."""
    try:
        from turing_kernels import register_with_transformers as register
    except ImportError:
        return False
    return register()


__all__ = [
    "ATTN_IMPLEMENTATIONS",
    "BACKENDS",
    "Backend",
    "check_attn_implementation",
    "default_attn_implementation",
    "dot_product_attention",
    "eager_attention",
    "kernels_usable",
    "register_with_transformers",
    "resolve_attn_implementation",
    "sdpa_attention",
    "varlen_attention",
]
