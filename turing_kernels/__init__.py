"""turing_kernels: the fused Triton kernels of the Turing model zoo.

Not named ``kernels``: that import name belongs to Hugging Face's kernels package, which
transformers imports. Importing it needs neither Triton nor a GPU; the kernels
themselves run on CUDA tensors, or on CPU tensors under Triton's interpreter
(``TRITON_INTERPRET=1``, how the tests check them without a GPU). Elsewhere a call raises
:class:`KernelUnavailableError` with one line saying what to do.

Kernels (each: autograd function + functional API + module):

* :mod:`turing_kernels.attention` — flash attention forward/backward: causal or not, dense with a
  key-padding mask or packed variable-length (``cu_seqlens``), head dims up to 256 incl. 40/80/152,
  grouped-query heads.
* :mod:`turing_kernels.layernorm` — LayerNorm with an optional fused residual add.
* :mod:`turing_kernels.cross_entropy` — linear + cross-entropy in chunks, never materialising the
  ``tokens x vocab`` logits; ignore_index, label smoothing, z-loss, padded vocabularies.
* :mod:`turing_kernels.bias_gelu` — bias add + GeLU (erf or tanh).

Plain PyTorch references of all four live in :mod:`turing_kernels.reference`.
"""

from ._runtime import KernelUnavailableError, can_run, interpreting, triton_installed
from .attention import FlashAttention, dense_attention, flash_attention, flash_attn_func, flash_attn_varlen_func
from .bias_gelu import BiasGeLU, bias_gelu
from .cross_entropy import FusedLinearCrossEntropy, fused_linear_cross_entropy
from .layernorm import FusedLayerNorm, layer_norm
from .transformers_integration import register_with_transformers, turing_attention_forward

__version__ = "0.1.0"


def is_available() -> bool:
    """True when the kernels can run on this machine's default accelerator (CUDA + Triton), or the
    interpreter is on."""
    import torch

    if not triton_installed():
        return False
    return interpreting() or torch.cuda.is_available()


__all__ = [
    "BiasGeLU",
    "FlashAttention",
    "FusedLayerNorm",
    "FusedLinearCrossEntropy",
    "KernelUnavailableError",
    "bias_gelu",
    "can_run",
    "dense_attention",
    "flash_attention",
    "flash_attn_func",
    "flash_attn_varlen_func",
    "fused_linear_cross_entropy",
    "is_available",
    "layer_norm",
    "register_with_transformers",
    "turing_attention_forward",
]
