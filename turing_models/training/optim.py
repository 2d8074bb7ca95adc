"""AdamW with the usual decay exclusions, and the learning-rate schedules."""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from .config import TrainerConfig


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two parameter groups: matrices decay; biases, norms and embeddings do not.

    A parameter is excluded from weight decay when it is 1-D (biases, LayerNorm/RMSNorm weights)
    or belongs to an ``nn.Embedding`` (token and position embeddings; a tied output projection is
    the embedding, so it is excluded too, as in GPT-2/Megatron practice).
    """
    embedding_params = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    decay, no_decay, seen = [], [], set()
    for _, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        if param.ndim < 2 or id(param) in embedding_params:
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _fused_supported(params: Iterable[torch.Tensor]) -> bool:
    params = list(params)
    if not params:
        return False
    device = params[0].device.type
    return device in ("cuda", "cpu") and all(p.device.type == device and p.dtype.is_floating_point for p in params)


def build_optimizer(model: nn.Module, config: TrainerConfig) -> torch.optim.Optimizer:
    """AdamW (fused kernel on CUDA and CPU where PyTorch has one, else the foreach path)."""
    groups = decay_groups(model, config.weight_decay)
    kwargs = dict(lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps)
    params = [p for g in groups for p in g["params"]]
    if _fused_supported(params):
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):
            pass
    return torch.optim.AdamW(groups, foreach=True, **kwargs)


def lr_lambda(config: TrainerConfig):
    """Multiplier of ``config.lr`` at a step: linear warm-up, then cosine / linear decay to
    ``min_lr_ratio`` over ``decay_steps`` (default ``max_steps``), then constant; or constant."""
    warmup = config.warmup_steps
    decay_end = config.decay_steps or config.max_steps
    floor = config.min_lr_ratio

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if config.schedule == "constant":
            return 1.0
        span = max(1, decay_end - warmup)
        progress = min(1.0, (step - warmup) / span)
        if config.schedule == "cosine":
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        return floor + (1 - floor) * (1 - progress)

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainerConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config))
