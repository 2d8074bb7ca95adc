"""The ``--dry-run`` planner: memory per GPU and time to a token budget, without training.

Memory per GPU for mixed-precision AdamW (ZeRO paper, section 3; ``P`` parameters, ``G`` GPUs):

============  ==========================  =========================================
state         bytes                       sharded across GPUs from ZeRO stage
============  ==========================  =========================================
weights       2P (bf16/fp16; 4P in fp32)  3 (offload_param moves them to CPU)
gradients     2P (4P in fp32)             2
optimizer     12P: fp32 master, m, v       1 (offload moves them to CPU)
              (8P in fp32: m, v)
============  ==========================  =========================================

Activations per layer and sequence (Korthikanti et al. 2022, 16-bit, no sequence parallelism):
``T h (34 + 5 a T / h)`` bytes, or ``2 T h`` with full activation checkpointing (only each layer's
input is kept, plus one layer recomputed at a time). The logits add ``T V (2 + 4 + 4)`` bytes
(bf16 output, fp32 upcast and its gradient). FSDP2 full sharding corresponds to ZeRO-3.
Time to the budget = ``tokens x flops_per_token / (G x peak x MFU)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

GiB = 1024**3


@dataclass
class PlanConfig:
    """Hardware assumed by ``--dry-run``."""

    gpus: int = 8
    """GPUs in the job (all nodes)."""
    gpu_memory_gb: float = 80.0
    """Memory of one GPU in GiB."""
    peak_tflops: float = 989.0
    """Dense bf16 peak of one GPU (H100 SXM: 989)."""
    mfu: float = 0.45
    """Model FLOPs utilisation assumed for the time estimate."""
    tokens: Optional[float] = None
    """Token budget; default: max_steps x global batch x sequence length."""


@dataclass
class ModelShape:
    params: int
    matmul_params: int
    layers: int
    hidden: int
    heads: int
    vocab: int
    seq_len: int


@dataclass
class MemoryRow:
    zero_stage: int
    offload: bool
    weights: float
    grads: float
    optimizer: float
    activations: float
    total: float = field(init=False)

    def __post_init__(self):
        self.total = self.weights + self.grads + self.optimizer + self.activations


def activation_bytes(shape: ModelShape, micro_batch: int, checkpointing: bool, bytes_per: int = 2) -> float:
    """Activation memory of one micro-batch on one GPU (see module docstring)."""
    t, h, a, layers = shape.seq_len, shape.hidden, shape.heads, shape.layers
    scale = bytes_per / 2
    if checkpointing:
        per_layer_kept = 2 * t * h * scale
        one_layer = t * h * (34 + 5 * a * t / h) * scale
        body = layers * per_layer_kept + one_layer
    else:
        body = layers * t * h * (34 + 5 * a * t / h) * scale
    logits = t * shape.vocab * (bytes_per + 4 + 4)
    return micro_batch * (body + logits)


def memory_per_gpu(shape: ModelShape, gpus: int, zero_stage: int, offload: bool, micro_batch: int,
                   checkpointing: bool, mixed_precision: bool = True) -> MemoryRow:
    p = shape.params
    w_bytes, g_bytes, o_bytes = (2, 2, 12) if mixed_precision else (4, 4, 8)
    weights = p * w_bytes / (gpus if zero_stage >= 3 else 1)
    grads = p * g_bytes / (gpus if zero_stage >= 2 else 1)
    optimizer = p * o_bytes / (gpus if zero_stage >= 1 else 1)
    if offload:
        optimizer = 0.0
        if zero_stage >= 3:
            weights = 0.0  # offload_param: weights live in CPU memory, gathered per layer
    acts = activation_bytes(shape, micro_batch, checkpointing, bytes_per=2 if mixed_precision else 4)
    return MemoryRow(zero_stage, offload, weights / GiB, grads / GiB, optimizer / GiB, acts / GiB)


def format_duration(seconds: float) -> str:
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest / 60
    if days >= 1:
        return f"{int(days)} d {int(hours)} h"
    if hours >= 1:
        return f"{int(hours)} h {int(minutes)} min"
    return f"{minutes:.1f} min"


def format_plan(shape: ModelShape, plan: PlanConfig, *, micro_batch: int, global_batch: int,
                max_steps: int, checkpointing: bool, mixed_precision: bool, chosen_stage: int,
                chosen_offload: bool, flops_per_token: float) -> str:
    """The dry-run report as text."""
    tokens = plan.tokens or float(max_steps) * global_batch * shape.seq_len
    total_flops = tokens * flops_per_token
    seconds = total_flops / (plan.gpus * plan.peak_tflops * 1e12 * plan.mfu)
    lines = [
        f"parameters        {shape.params / 1e6:,.1f} M ({shape.matmul_params / 1e6:,.1f} M in matmuls)",
        f"shape             {shape.layers} layers, hidden {shape.hidden}, {shape.heads} heads, "
        f"vocab {shape.vocab}, sequence {shape.seq_len}",
        f"FLOPs per token   {flops_per_token / 1e9:,.2f} GFLOP (6N + 12LHQT, training)",
        f"batch             {global_batch} sequences x {shape.seq_len} = {global_batch * shape.seq_len:,} "
        f"tokens per step, micro-batch {micro_batch}",
        f"token budget      {tokens / 1e9:,.2f} B tokens = {total_flops:.3e} FLOPs",
        f"time              {format_duration(seconds)} on {plan.gpus} GPUs at "
        f"{plan.peak_tflops:g} TFLOP/s peak and {plan.mfu:.0%} MFU",
        "",
        f"memory per GPU (GiB), {plan.gpus} GPUs of {plan.gpu_memory_gb:g} GiB, "
        f"{'bf16 mixed precision' if mixed_precision else 'fp32'}, activation checkpointing "
        f"{'on' if checkpointing else 'off'}:",
        f"  {'engine':<22}{'weights':>9}{'grads':>9}{'optim':>9}{'activ':>9}{'total':>9}  fits",
    ]
    for stage in (0, 1, 2, 3):
        for offload in (False, True):
            if offload and stage == 0:
                continue
            row = memory_per_gpu(shape, plan.gpus, stage, offload, micro_batch, checkpointing, mixed_precision)
            name = ("DDP (ZeRO-0)" if stage == 0 else f"ZeRO-{stage}") + (" + offload" if offload else "")
            mark = " <- configured" if (stage, offload) == (chosen_stage, chosen_offload) else ""
            fits = "yes" if row.total <= plan.gpu_memory_gb * 0.9 else "no"
            lines.append(
                f"  {name:<22}{row.weights:>9.2f}{row.grads:>9.2f}{row.optimizer:>9.2f}"
                f"{row.activations:>9.2f}{row.total:>9.2f}  {fits}{mark}"
            )
    lines.append("  (fits = total under 90 % of the GPU; FSDP2 full sharding ~ ZeRO-3)")
    return "\n".join(lines)
