"""Building blocks shared by the decoder (NLG) and encoder (NLU) families."""

from .attention import (
    ATTN_IMPLEMENTATIONS,
    default_attn_implementation,
    dot_product_attention,
    resolve_attn_implementation,
    turing_kernels_available,
    varlen_attention,
)
from .loss import linear_cross_entropy
from .mlp import ACTIVATIONS, MLP, activation_fn
from .norm import LayerNorm

__all__ = [
    "ACTIVATIONS",
    "ATTN_IMPLEMENTATIONS",
    "LayerNorm",
    "MLP",
    "activation_fn",
    "default_attn_implementation",
    "dot_product_attention",
    "linear_cross_entropy",
    "resolve_attn_implementation",
    "turing_kernels_available",
    "varlen_attention",
]
