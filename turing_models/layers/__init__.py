"""Building blocks shared by the decoder (NLG) and encoder (NLU) families: the attention registry,
LayerNorm, the MLP, the output-projection loss, the fused QKV layout and tensor-parallel sizes, and
the one loading path for checkpoints (:mod:`turing_models.layers.state_dict_adapter`)."""

from .attention import (
    ATTN_IMPLEMENTATIONS,
    default_attn_implementation,
    dot_product_attention,
    kernels_usable,
    register_with_transformers,
    resolve_attn_implementation,
    varlen_attention,
)
from .loss import linear_cross_entropy
from .mlp import ACTIVATIONS, MLP, activation_fn
from .norm import LayerNorm
from .tensor_parallel import check_tp_size, tp_sizes

__all__ = [
    "ACTIVATIONS",
    "ATTN_IMPLEMENTATIONS",
    "LayerNorm",
    "MLP",
    "activation_fn",
    "check_tp_size",
    "default_attn_implementation",
    "dot_product_attention",
    "kernels_usable",
    "linear_cross_entropy",
    "register_with_transformers",
    "resolve_attn_implementation",
    "tp_sizes",
    "varlen_attention",
]
