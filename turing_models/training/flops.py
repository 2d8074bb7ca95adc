"""FLOPs per token and model FLOPs utilisation (MFU), from one formula (DESIGN.md principle 7).

Training a decoder costs, per token (PaLM appendix B; Megatron-LM)::

    6 N + 12 L H Q T

``N`` parameters that take part in matrix multiplies (every parameter except the position
embeddings; a tied token embedding counts once, as the output projection), ``L`` layers, ``H``
attention heads, ``Q`` head dimension, ``T`` sequence length. ``6N`` is forward (2) + backward (4)
through the weights, ``12LHQT`` the attention scores and weighted sum. Causal masking is not
discounted, as in PaLM and Megatron, so figures compare with theirs. Inference is a third of it.

MFU = achieved model FLOP/s / peak FLOP/s of the hardware. The peak is the dense bf16 tensor-core
figure for known GPUs (:data:`PEAK_FLOPS`), or measured once with an fp32 matmul on CPU
(:func:`measure_matmul_peak`).
"""

from __future__ import annotations

import functools
import time
from typing import Optional

import torch

#: Dense (no sparsity) bf16 tensor-core peak per device, FLOP/s, from the vendors' data sheets.
PEAK_FLOPS: dict[str, float] = {
    "H200": 989e12,
    "H100": 989e12,  # SXM; the PCIe card is 756e12
    "H100 PCIE": 756e12,
    "A100": 312e12,
    "A10G": 125e12,
    "L4": 121e12,
    "V100": 125e12,  # fp16
}


def count_matmul_params(model: torch.nn.Module) -> int:
    """``N`` of the formula: parameters except position embeddings (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for name, param in model.named_parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        lowered = name.lower()
        if "position_embeddings" in lowered or lowered.endswith("wpe.weight") or "embed_positions" in lowered:
            continue
        total += param.numel()
    return total


def flops_per_token(n_params: int, n_layers: int, n_heads: int, head_dim: int, seq_len: int,
                    training: bool = True) -> float:
    """``6N + 12LHQT`` for training (``2N + 4LHQT`` for a forward pass only)."""
    if training:
        return 6.0 * n_params + 12.0 * n_layers * n_heads * head_dim * seq_len
    return 2.0 * n_params + 4.0 * n_layers * n_heads * head_dim * seq_len


def model_flops_per_token(model: torch.nn.Module, seq_len: int, training: bool = True) -> float:
    """The formula for an HF model, its shape read from ``model.config``."""
    config = model.config
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer")
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head")
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd")
    return flops_per_token(count_matmul_params(model), layers, heads, hidden // heads, seq_len, training)


@functools.lru_cache(maxsize=None)
def measure_matmul_peak(dtype: torch.dtype = torch.float32, size: int = 2048, seconds: float = 0.5) -> float:
    """Best FLOP/s of a square fp32 matmul on this CPU with the current thread count (measured once)."""
    generator = torch.Generator().manual_seed(0)  # leave the global RNG alone (bitwise resume)
    a = torch.randn(size, size, dtype=dtype, generator=generator)
    b = torch.randn(size, size, dtype=dtype, generator=generator)
    out = torch.empty(size, size, dtype=dtype)
    for _ in range(3):
        torch.mm(a, b, out=out)
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b, out=out)
        elapsed = time.perf_counter() - start
        best = max(best, 4 * 2 * size**3 / elapsed)
    return best


def device_peak_flops(device: Optional[torch.device] = None) -> float:
    """Peak FLOP/s of one device: data-sheet bf16 figure for known GPUs, else measured (fp32 CPU)."""
    device = device or (torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device).upper()
        for key in sorted(PEAK_FLOPS, key=len, reverse=True):
            if key in name:
                return PEAK_FLOPS[key]
        return 312e12  # an unknown GPU: assume A100-class rather than guess high
    return measure_matmul_peak()


def mfu(tokens_per_second: float, flops_per_tok: float, peak_flops: float, n_devices: int = 1) -> float:
    """Model FLOPs utilisation in [0, 1]."""
    return tokens_per_second * flops_per_tok / (peak_flops * n_devices)
