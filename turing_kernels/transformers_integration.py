"""The "turing" attention backend for any transformers model that uses ``AttentionInterface``.

After :func:`register_with_transformers` (``import turing_models`` calls it), ``attn_implementation=
"turing"`` works for every transformers model built on the attention interface (Llama, Mistral,
Qwen2, BERT, ...): ``AutoModelForCausalLM.from_pretrained(path, attn_implementation="turing")``.
The mask is built as for "sdpa" (boolean, or None when the causal flag suffices); key-padding
masks, alone or combined with the causal mask, run inside the Triton kernel, other masks fall back
to SDPA. Features the kernel lacks (additive float masks, position biases, soft-capping, sliding
windows) are delegated to transformers' own SDPA path, so a model never silently computes
something else.
"""

from __future__ import annotations

from typing import Optional

import torch

ATTN_IMPLEMENTATION = "turing"


def turing_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    dropout: float = 0.0,
    scaling: Optional[float] = None,
    is_causal: Optional[bool] = None,
    **kwargs,
):
    """transformers attention-interface function: q/k/v ``[B, H, T, D]`` -> (``[B, Tq, H, D]``, None)."""
    from .attention import dense_attention

    unsupported = (
        kwargs.get("softcap") is not None
        or kwargs.get("position_bias") is not None
        or kwargs.get("sliding_window") is not None
        or kwargs.get("s_aux") is not None
        or (attention_mask is not None and attention_mask.dtype != torch.bool)
    )
    if unsupported:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    q_len, kv_len = query.shape[2], key.shape[2]
    causal = bool(is_causal) and attention_mask is None and q_len > 1
    if causal and kv_len > q_len:
        # Prefill into an empty static cache: transformers relies on top-left alignment here.
        key, value = key[:, :, :q_len], value[:, :, :q_len]
    out = dense_attention(query, key, value, attn_mask=attention_mask, is_causal=causal, scale=scaling,
                          dropout_p=dropout)
    return out.transpose(1, 2).contiguous(), None


def register_with_transformers() -> bool:
    """Register "turing" with transformers' ``AttentionInterface`` (and its mask builder). Idempotent.

    Returns False (and does nothing) when transformers is not importable.
    """
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError:
        return False
    AttentionInterface.register(ATTN_IMPLEMENTATION, turing_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)
    return True
