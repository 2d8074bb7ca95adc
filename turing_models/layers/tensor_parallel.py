"""The fused QKV layout both families share, and which tensor-parallel sizes a shape allows.

Both families project q, k and v with one ``qkv`` linear layer whose output rows are laid out
per head, as Megatron-LM does::

    rows of qkv.weight / qkv.bias = [num_heads, 3, head_dim]   (head 0: q k v, head 1: q k v, ...)

so a plain column-wise split of the fused projection over ``tp`` ranks (transformers' ``"colwise"``
plan style, ``Shard(0)`` of the weight) gives every rank whole heads of q, k and v, and the
attention code views its local output as ``[..., local_heads, 3, head_dim]`` whatever the split.
GPT-2's ``c_attn`` and BERT's separate ``query`` / ``key`` / ``value`` are ``[3, num_heads,
head_dim]`` blocks; the adapters convert with :func:`interleave_qkv` / :func:`split_qkv`.

Nothing here is parallel: the models stay single-device code and the plans
(``base_model_tp_plan`` on the configs, ``_tp_plan`` on the heads) are applied from outside.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..errors import UsageError


def interleave_qkv(blocks: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``[q | k | v]`` rows (``[3, H, D, ...]`` flattened on dim 0) -> per-head rows ``[H, 3, D, ...]``."""
    rest = blocks.shape[1:]
    return blocks.reshape(3, num_heads, -1, *rest).transpose(0, 1).reshape(blocks.shape)


def deinterleave_qkv(fused: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Per-head rows ``[H, 3, D, ...]`` -> ``[q | k | v]`` rows; the inverse of :func:`interleave_qkv`."""
    rest = fused.shape[1:]
    return fused.reshape(num_heads, 3, -1, *rest).transpose(0, 1).reshape(fused.shape)


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Separate q, k, v projections (weights ``[H*D, in]`` or biases ``[H*D]``) -> the fused per-head tensor."""
    return interleave_qkv(torch.cat([q, k, v], dim=0), num_heads)


def split_qkv(fused: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused per-head tensor -> contiguous ``(q, k, v)``, each ``[H*D, ...]``."""
    q, k, v = deinterleave_qkv(fused, num_heads).chunk(3, dim=0)
    return q.contiguous(), k.contiguous(), v.contiguous()


def tp_sizes(num_attention_heads: int, intermediate_size: int, limit: Optional[int] = None) -> list[int]:
    """Tensor-parallel sizes a model shape allows: every rank holds whole heads and an equal share
    of the MLP width (the column split of ``qkv`` and ``fc_in``). ``limit`` caps the sizes (e.g. 8
    GPUs in a node). The vocabulary need not divide: transformers' plans shard it unevenly."""
    top = num_attention_heads if limit is None else min(limit, num_attention_heads)
    return [t for t in range(1, top + 1) if num_attention_heads % t == 0 and intermediate_size % t == 0]


def check_tp_size(config, tp: int) -> None:
    """Raise a :class:`UsageError` unless ``tp`` splits ``config``'s heads and MLP width evenly."""
    heads, width = config.num_attention_heads, config.intermediate_size
    if not isinstance(tp, int) or tp < 1 or heads % tp or width % tp:
        raise UsageError(
            f"tensor-parallel size {tp} does not divide num_attention_heads={heads} and intermediate_size={width}; "
            f"choose one of {tp_sizes(heads, width)}"
        )


__all__ = ["check_tp_size", "deinterleave_qkv", "fuse_qkv", "interleave_qkv", "split_qkv", "tp_sizes"]
