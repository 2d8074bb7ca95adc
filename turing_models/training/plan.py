"""The ``--dry-run`` planner: memory per GPU, communication and time to a token budget, for every
engine the trainer can run, without training.

Every term is written down here and checked against the engines themselves in the tests:

**Model states** (``P`` parameters, ``G`` GPUs that shard them, bf16 mixed precision, AdamW).
DeepSpeed is counted the way its own estimators count (``estimate_zero2/3_model_states_mem_needs``):

=====================  ==========  ======================  =====================  ==============
engine                 weights     gradients               optimizer              gathered
=====================  ==========  ======================  =====================  ==============
DDP (Accelerate, amp)  4P          4P                      8P (m, v)              buckets 4P
ZeRO-1                 2P          2P + 4P/G (fp32 part)   12P/G (master, m, v)
ZeRO-2                 2P          6P/G (16-bit + fp32)    12P/G
ZeRO-2 + offload       2P          CPU                     CPU
ZeRO-3                 2P/G        4P/G (fp32)             12P/G                  4 x largest layer
ZeRO-3 + offload       CPU         CPU                     CPU                    4 x largest layer
FSDP2 / HSDP           4P/S (fp32) 4P/S (fp32)             8P/S (m, v)            see below
=====================  ==========  ======================  =====================  ==============

("largest layer": the most parameters one module owns directly, DeepSpeed's definition; FSDP2
keeps fp32 sharded parameters and all-gathers them in bf16; ``S`` = GPUs in the shard group.)
DeepSpeed's 18 bytes per sharded parameter is exact with fp32 gradient accumulation
(``data_types.grad_accum_dtype``); with the 16-bit default of the JSON we ship, ZeRO-3 keeps a
2-byte gradient partition (16 bytes steady) and upcasts one optimizer sub-group (at most
``sub_group_size``, 1e9 by default) to fp32 during the step, when the activations are gone.

**Live buffers** the engines hold on top, read from the DeepSpeed JSON we ship and from FSDP2's
schedule: ZeRO-3 prefetches ``stage3_prefetch_bucket_size`` parameters (at most
``stage3_max_live_parameters`` gathered at once) and reduces gradients through a
``reduce_bucket_size`` bucket; ZeRO-2 with ``overlap_comm`` holds 4.5 x (reduce + all-gather
buckets) in 16-bit (DeepSpeed's documentation); FSDP2 keeps the tail unit (embedding, final norm,
tied LM head: ``reshard_after_forward=False``) unsharded with its gradient, and has one block
all-gathered in flight plus one prefetched, and in backward a block's unsharded gradient plus its
reduce-scatter input.

**Activations** are what autograd saves, counted per block for our residual-form pre-LN block with
fused QKV (``d`` bytes per activation element, ``b`` micro-batch, ``T`` sequence, ``h`` hidden,
``f`` FFN width, ``a`` heads): ``d·bT·(8h + 2f)`` (the two residual sums and two LayerNorm
outputs, the fused QKV output whose q/k/v views attention saves, the attention output that the
output projection saves as a view, the FFN input and GeLU output) + ``4·abT`` (SDPA's
log-sum-exp) + LayerNorm statistics; eager attention adds ``(4 + d)·abT²`` (fp32 softmax and
the masked probabilities) and the ``T²`` causal mask; hidden dropout adds a one-byte mask per
branch. With activation checkpointing each block keeps its two inputs (branch output and
residual stream, ``2·d·bTh``) and one block is recomputed at a time. Outside the blocks: the
final LayerNorm, token ids, and the fp32 log-softmax of the loss (``4·bTV``); the logits peak at
the loss adds the fp32 gradient and its input (``8·bTV``) unless the fused cross-entropy kernel
is on. The tests measure all of this with ``torch.autograd.graph.saved_tensors_hooks``.

**Tensor parallelism** ``t`` (within a node, the trainer's ``train.parallel.tp``) divides the
block weights, the embedding and the tied head by ``t``, and the activations inside attention and
the FFN; the LayerNorm / residual activations (and the block inputs kept under checkpointing) stay
whole on every TP rank unless ``train.parallel.sequence_parallel`` is set, and the logits stay
whole unless ``train.parallel.loss_parallel`` is set (Korthikanti et al. 2022). Every block then
all-reduces its two outputs in forward and backward within the node (with sequence parallelism a
reduce-scatter and an all-gather each, the same volume). HSDP (``train.parallel.dp_replicate``) shards
within a node and all-reduces the gradient shards across nodes.

**Host memory**: each process builds the full fp32 model before the engine shards it.

Time to the budget = ``tokens x flops_per_token / (G x peak x MFU)``; communication per step is
reported in bytes per GPU and seconds at the assumed link speeds (it overlaps compute when smaller).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from .config import CONFIGS_DIR

GiB = 1024**3
GPU_SIZES_GB = (40, 80, 141)
FIT_FRACTION = 0.9
"""A configuration "fits" when its total is under this fraction of the GPU (allocator slack,
CUDA context, NCCL buffers)."""

DISTRIBUTED_DIR = CONFIGS_DIR / "distributed"  # package data: works from a wheel too

#: DeepSpeed defaults for the keys our JSON may leave out (deepspeed.runtime.zero.config).
DS_DEFAULTS = {
    "reduce_bucket_size": 5e8,
    "allgather_bucket_size": 5e8,
    "stage3_prefetch_bucket_size": 5e7,
    "stage3_max_live_parameters": 1e9,
    "overlap_comm": False,
}


@dataclass
class PlanConfig:
    """Hardware (and parallel layout) assumed by ``--dry-run``."""

    gpus: int = 8
    """GPUs in the job (all nodes)."""
    gpu_memory_gb: float = 80.0
    """Memory of one GPU in GiB (the plan also says what fits on 40, 80 and 141 GiB GPUs)."""
    peak_tflops: float = 989.0
    """Dense bf16 peak of one GPU (H100 SXM: 989)."""
    mfu: float = 0.45
    """Model FLOPs utilisation assumed for the time estimate."""
    tokens: Optional[float] = None
    """Token budget; default: max_steps x global batch x sequence length."""
    gpus_per_node: int = 8
    """GPUs per node: the HSDP shard group and the largest tensor-parallel group."""
    tp: int = 1
    """Tensor-parallel size of the configured layout (TP within a node x FSDP2 across)."""
    hsdp_shard: int = 0
    """GPUs per HSDP shard group; 0 = gpus_per_node (replicate across nodes, shard within)."""
    intra_node_gbps: float = 450.0
    """GB/s per GPU inside a node (NVLink 4: 450 each way)."""
    inter_node_gbps: float = 50.0
    """GB/s per GPU between nodes (one 400 Gb/s InfiniBand NIC per GPU)."""


@dataclass
class ModelShape:
    params: int
    matmul_params: int
    layers: int
    hidden: int
    heads: int
    vocab: int
    seq_len: int
    intermediate: Optional[int] = None
    """FFN width; default 4 x hidden."""
    real_vocab: Optional[int] = None
    """Columns of the logits (the tokenizer's vocabulary); default: vocab."""
    largest_layer: Optional[int] = None
    """Most parameters one module owns directly (DeepSpeed's "largest layer")."""
    block_params: Optional[int] = None
    """Parameters of one transformer block (an FSDP unit)."""
    tail_params: Optional[int] = None
    """Parameters outside the blocks that FSDP2 keeps in its tail unit (embedding, final norm)."""
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    attention: str = "sdpa"
    """sdpa / turing (flash: nothing quadratic saved) or eager."""
    fused_cross_entropy: bool = False
    param_rows: Optional[list] = None
    """``(rows, numel, tp_dim)`` of every parameter: FSDP2 pads dim 0 to a multiple of the shard
    group; ``tp_dim`` is the dimension tensor parallelism splits (None: replicated on TP ranks)."""

    def fsdp_shard_numel(self, shard: int, tp: int = 1) -> float:
        """Elements of one rank's FSDP2 shard after TP has split the model ``tp`` ways, dim-0
        padding included."""
        if not self.param_rows:
            return self.params / tp / shard
        total = 0
        for rows, numel, tp_dim in self.param_rows:
            if tp > 1 and tp_dim == 0:
                rows, numel = rows // tp, numel // tp
            elif tp > 1 and tp_dim == 1:
                numel //= tp
            total += -(-rows // shard) * (numel // rows)
        return float(total)

    def __post_init__(self):
        h = self.hidden
        self.intermediate = self.intermediate or 4 * h
        self.real_vocab = self.real_vocab or self.vocab
        if self.block_params is None:
            self.block_params = 4 * h * h + 2 * h * self.intermediate + 9 * h + self.intermediate
        if self.tail_params is None:
            self.tail_params = self.vocab * h + 2 * h
        if self.largest_layer is None:
            self.largest_layer = max(self.vocab * h, h * self.intermediate, 3 * h * h + 3 * h)

    @classmethod
    def from_model(cls, model, seq_len: int) -> "ModelShape":
        """The shape of an HF model (built on the meta device is fine)."""
        from .flops import count_matmul_params

        c = model.config
        params = {id(p): p.numel() for p in model.parameters()}
        rows = [(p.shape[0] if p.dim() else 1, p.numel(), dim) for p, dim in _tp_dims(model)]
        largest = 0
        for module in model.modules():
            largest = max(largest, sum(p.numel() for p in module.parameters(recurse=False)))
        block_cls = set(getattr(model, "_no_split_modules", None) or [])
        blocks = [m for m in model.modules() if type(m).__name__ in block_cls]
        block = max((sum(p.numel() for p in m.parameters()) for m in blocks), default=None)
        in_blocks = {id(p) for m in blocks for p in m.parameters()}
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        positions = sum(n for name, p in model.named_parameters() for n in [p.numel()]
                        if "position" in name or name.endswith("wpe.weight"))
        tail = sum(n for i, n in params.items() if i not in in_blocks) - positions
        attn = getattr(c, "_attn_implementation", None) or "sdpa"
        return cls(
            params=sum(params.values()), matmul_params=count_matmul_params(model),
            layers=c.num_hidden_layers, hidden=c.hidden_size, heads=c.num_attention_heads,
            vocab=emb.weight.shape[0] if emb is not None else c.vocab_size, seq_len=seq_len,
            intermediate=getattr(c, "intermediate_size", None),
            real_vocab=getattr(c, "real_vocab_size", None) or c.vocab_size,
            largest_layer=largest, block_params=block, tail_params=tail if blocks else None,
            hidden_dropout=float(getattr(c, "hidden_dropout", getattr(c, "hidden_dropout_prob", 0.0)) or 0.0),
            attention_dropout=float(getattr(c, "attention_dropout", 0.0) or 0.0),
            attention="eager" if attn == "eager" else "sdpa",
            fused_cross_entropy=bool(getattr(c, "fused_cross_entropy", False)), param_rows=rows,
        )


def _tp_dims(model) -> list:
    """``(parameter, dimension the model's tensor-parallel plan splits or None)``, parameters once.

    transformers' styles: ``colwise`` splits a weight's rows and its bias, ``rowwise`` a weight's
    columns (its bias stays whole); the token embedding (and the head tied to it) splits by rows."""
    try:
        from .parallel import expand_plan, model_tp_plan

        styles = expand_plan(model, model_tp_plan(model))
    except Exception:  # no plan (or no TP support): every parameter counts as replicated
        styles = {}
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    embedding_weight = getattr(embedding, "weight", None)
    out = []
    for name, param in model.named_parameters():
        module, _, leaf = name.rpartition(".")
        style = styles.get(module, "")
        if styles and param is embedding_weight:
            dim = 0
        elif style.startswith("colwise"):
            dim = 0
        elif style.startswith("rowwise") and leaf == "weight":
            dim = 1
        else:
            dim = None
        out.append((param, dim))
    return out


# --------------------------------------------------------------------------------------------- #
# Activations
# --------------------------------------------------------------------------------------------- #
def block_activation_bytes(shape: ModelShape, micro_batch: int, bytes_per: int = 2, tp: int = 1,
                           sequence_parallel: bool = False, mask_bytes: int = 1) -> float:
    """Bytes autograd saves inside one block for one micro-batch (see the module docstring).
    ``mask_bytes``: a dropout mask element (bool on CUDA; the CPU kernel keeps the input dtype)."""
    b, t, h, f, a = micro_batch, shape.seq_len, shape.hidden, shape.intermediate, shape.heads
    d = bytes_per
    sp = tp if sequence_parallel else 1
    replicated = 4 * d * b * t * h + 2 * 2 * 4 * b * t  # residual sums + LayerNorm outputs, LN stats
    if shape.hidden_dropout > 0:
        replicated += 2 * mask_bytes * b * t * h  # one mask per residual branch
    sharded = d * b * t * (4 * h + 2 * f)  # fused QKV output, attention output, FFN input + GeLU output
    if shape.attention == "eager":
        sharded += (4 + d) * b * a * t * t + b * t  # fp32 softmax, masked probabilities, row mask
        if shape.attention_dropout > 0:
            sharded += b * a * t * t  # dropout mask
        replicated += t * t  # the causal mask
    else:
        sharded += 4 * b * a * t  # log-sum-exp
    return replicated / sp + sharded / tp


def activation_breakdown(shape: ModelShape, micro_batch: int, checkpointing: bool, bytes_per: int = 2,
                         tp: int = 1, sequence_parallel: bool = False, mask_bytes: int = 1,
                         loss_parallel: bool = False) -> dict[str, float]:
    """Saved activations of one micro-batch on one GPU, in bytes.

    ``blocks``: what the blocks keep until backward (all their saved tensors, or with
    checkpointing only their inputs); ``recompute``: one block's saved tensors, rebuilt in backward
    under checkpointing; ``outside``: embeddings / final norm / token ids; ``logits_saved``: the
    loss's fp32 log-softmax; ``logits_peak``: the extra fp32 gradient buffers at the loss.
    """
    b, t, h, d = micro_batch, shape.seq_len, shape.hidden, bytes_per
    sp = tp if sequence_parallel else 1
    one = block_activation_bytes(shape, b, d, tp, sequence_parallel, mask_bytes)
    if checkpointing:
        kept = (2 * shape.layers - 1) * d * b * t * h / sp  # branch output + residual per block (one for the first)
        blocks, recompute = kept, one
    else:
        blocks, recompute = shape.layers * one, 0.0
    outside = 2 * d * b * t * h / sp + 8 * b * t + 8 * t + 8 * b * t  # final LN in/out, stats, ids, positions
    if shape.hidden_dropout > 0:
        outside += mask_bytes * b * t * h / sp
    if shape.fused_cross_entropy:
        logits_saved, logits_peak = 0.0, 0.0
    else:
        vocab = shape.real_vocab / (tp if loss_parallel else 1)
        logits_saved = 4 * b * (t - 1) * vocab + 8 * b * (t - 1)
        logits_peak = 8 * b * t * vocab
    saved = blocks + recompute + outside + logits_saved
    return {"blocks": blocks, "recompute": recompute, "outside": outside, "logits_saved": logits_saved,
            "logits_peak": logits_peak, "saved": saved}


def activation_bytes(shape: ModelShape, micro_batch: int, checkpointing: bool, bytes_per: int = 2) -> float:
    """Activation memory of one micro-batch on one GPU, logits included (saved tensors + the peak
    at the loss)."""
    parts = activation_breakdown(shape, micro_batch, checkpointing, bytes_per)
    return parts["saved"] + parts["logits_peak"]


# --------------------------------------------------------------------------------------------- #
# Model states and live buffers
# --------------------------------------------------------------------------------------------- #
def load_ds_config(engine: str) -> dict:
    """The ``zero_optimization`` section of the DeepSpeed JSON the trainer uses for ``engine``."""
    path = DISTRIBUTED_DIR / f"ds_{engine}.json"
    section = json.loads(path.read_text()).get("zero_optimization", {}) if path.is_file() else {}
    return {**DS_DEFAULTS, **section}


@dataclass
class MemoryRow:
    """Memory per GPU in GiB for one engine."""

    zero_stage: int
    offload: bool
    weights: float
    grads: float
    optimizer: float
    activations: float
    buffers: float = 0.0
    """Live gather / reduce buffers of the engine (largest layer, prefetch, buckets, FSDP units)."""
    logits: float = 0.0
    engine: str = ""
    shard_group: int = 1
    buffer_items: dict[str, float] = field(default_factory=dict)
    total: float = field(init=False)

    def __post_init__(self):
        self.total = self.weights + self.grads + self.optimizer + self.buffers + self.activations + self.logits

    @property
    def model_states(self) -> float:
        """What DeepSpeed's estimators count: weights, gradients, optimizer, the largest layer."""
        return self.weights + self.grads + self.optimizer + self.buffer_items.get("largest layer", 0.0)


def deepspeed_states(p: int, largest_layer: int, gpus: int, stage: int, offload_optimizer: bool,
                     offload_params: bool, mixed_precision: bool = True) -> dict[str, float]:
    """Bytes per GPU of weights / gradients / optimizer (+ the gathered largest layer for ZeRO-3)."""
    if mixed_precision:
        w, g16, g32, opt = 2, 2, 4, 12  # 16-bit weights and grads, fp32 grad partition, master + m + v
    else:
        w, g16, g32, opt = 4, 4, 0, 8
    if stage == 0:
        return {"weights": w * p, "grads": (g16 + g32) * p, "optimizer": opt * p}
    if stage == 1:
        states = {"weights": w * p, "grads": g16 * p + g32 * p / gpus, "optimizer": opt * p / gpus}
    elif stage == 2:
        states = {"weights": w * p, "grads": (g16 + g32) * p / gpus, "optimizer": opt * p / gpus}
    else:
        grads = (g32 or g16) * p / gpus  # ZeRO-3 keeps the partition's gradient in fp32 for the step
        states = {"weights": w * p / gpus, "grads": grads, "optimizer": opt * p / gpus,
                  "largest layer": 2 * w * largest_layer}  # gathered 16-bit params + their grads
    if offload_optimizer:
        states["grads"] = 0.0
        states["optimizer"] = 0.0
    if offload_params and stage == 3:
        states["weights"] = 0.0
    return states


def engine_memory(shape: ModelShape, engine: str, gpus: int, micro_batch: int, checkpointing: bool,
                  mixed_precision: bool = True, *, tp: int = 1, shard_group: Optional[int] = None,
                  sequence_parallel: bool = False, loss_parallel: bool = False,
                  ds_config: Optional[dict] = None) -> MemoryRow:
    """Memory per GPU for ``engine`` in ``ddp``, ``zero1``, ``zero2``, ``zero2_offload``, ``zero3``,
    ``zero3_offload``, ``fsdp2``, ``hsdp`` (``shard_group`` GPUs shard, the rest replicate);
    ``tp`` > 1 splits the model across that many GPUs first (TP x FSDP2 / HSDP)."""
    p, d = shape.params, 2 if mixed_precision else 4
    offload = engine.endswith("_offload")
    base = engine.replace("_offload", "")
    items: dict[str, float] = {}
    if base in ("ddp", "zero1", "zero2", "zero3"):
        stage = {"ddp": 0, "zero1": 1, "zero2": 2, "zero3": 3}[base]
        if ds_config is None:
            ds_config = load_ds_config(engine if (DISTRIBUTED_DIR / f"ds_{engine}.json").is_file() else base)
        cfg = {**DS_DEFAULTS, **ds_config}
        if stage == 0:  # Accelerate DDP: fp32 model under autocast, plain AdamW
            states = {"weights": 4 * p, "grads": 4 * p, "optimizer": 8 * p}
            items["DDP gradient buckets"] = 4 * p
            if mixed_precision:
                items["autocast bf16 weight copies"] = 2 * p
        else:
            states = deepspeed_states(p, shape.largest_layer, gpus, stage, offload, offload and stage == 3,
                                      mixed_precision)
            if "largest layer" in states:
                items["largest layer"] = states.pop("largest layer")
            if stage == 3:
                live = min(cfg["stage3_max_live_parameters"] - shape.largest_layer, cfg["stage3_prefetch_bucket_size"])
                items["prefetch (stage3_prefetch_bucket_size)"] = d * max(live, 0)
                items["reduce bucket (reduce_bucket_size)"] = d * cfg["reduce_bucket_size"]
            elif cfg.get("overlap_comm"):
                items["reduce + all-gather buckets (overlap_comm: 4.5x)"] = (
                    4.5 * d * (cfg["reduce_bucket_size"] + cfg["allgather_bucket_size"]))
            else:
                items["reduce + all-gather buckets"] = d * (cfg["reduce_bucket_size"] + cfg["allgather_bucket_size"])
        shard = gpus if stage else 1
    elif base in ("fsdp2", "hsdp"):
        stage = 3
        dp = max(gpus // tp, 1)
        shard = dp if base == "fsdp2" else min(shard_group or dp, dp)
        # TP first: each GPU's slice of every weight; then FSDP2 shards dim 0 (padded) over the group
        local = shape.fsdp_shard_numel(shard, tp)
        states = {"weights": 4 * local, "grads": 4 * local, "optimizer": 8 * local}
        block, tail = shape.block_params / tp, shape.tail_params / tp
        items["tail unit (embedding + head, params + grads)"] = 2 * d * tail
        items["blocks all-gathered (in flight + prefetch)"] = 2 * d * block
        items["block gradients (unsharded + reduce-scatter input)"] = 2 * d * block
    else:
        raise ValueError(f"unknown engine {engine!r}")
    acts = activation_breakdown(shape, micro_batch, checkpointing, d, tp, sequence_parallel,
                                loss_parallel=loss_parallel)
    return MemoryRow(
        zero_stage=stage, offload=offload, weights=states["weights"] / GiB, grads=states["grads"] / GiB,
        optimizer=states["optimizer"] / GiB, activations=(acts["blocks"] + acts["recompute"] + acts["outside"]) / GiB,
        buffers=sum(items.values()) / GiB, logits=(acts["logits_saved"] + acts["logits_peak"]) / GiB,
        engine=engine, shard_group=shard, buffer_items={k: v / GiB for k, v in items.items()},
    )


def memory_per_gpu(shape: ModelShape, gpus: int, zero_stage: int, offload: bool, micro_batch: int,
                   checkpointing: bool, mixed_precision: bool = True) -> MemoryRow:
    """ZeRO stage 0 (DDP) to 3, with offload: :func:`engine_memory` by stage number."""
    engine = {0: "ddp", 1: "zero1", 2: "zero2", 3: "zero3"}[zero_stage]
    if offload and zero_stage >= 2:
        engine += "_offload"
    return engine_memory(shape, engine, gpus, micro_batch, checkpointing, mixed_precision)


# --------------------------------------------------------------------------------------------- #
# Communication
# --------------------------------------------------------------------------------------------- #
def communication(shape: ModelShape, engine: str, gpus: int, micro_batch: int, accumulation: int,
                  plan: PlanConfig, *, tp: int = 1, shard_group: Optional[int] = None,
                  mixed_precision: bool = True) -> dict[str, float]:
    """Bytes each GPU sends per optimizer step (ring collectives), split by link, and seconds."""
    p, d = shape.params, 2 if mixed_precision else 4
    node = plan.gpus_per_node

    def ring(size: float, n: int) -> float:
        return size * (n - 1) / n if n > 1 else 0.0

    intra = inter = 0.0
    base = engine.replace("_offload", "")
    dp = max(gpus // tp, 1)
    if base == "ddp":
        inter = 2 * ring(4 * p, gpus)  # all-reduce of fp32 gradients
    elif base in ("zero1", "zero2"):
        inter = ring(d * p, gpus) * accumulation + ring(d * p, gpus)  # reduce-scatter grads, all-gather weights
    elif base in ("zero3", "fsdp2"):
        shard = dp
        per_micro = 2 * ring(d * p / tp, shard) + ring(d * p / tp, shard)  # gather fwd + bwd, reduce-scatter
        inter = per_micro * accumulation
    elif base == "hsdp":
        shard = min(shard_group or node, dp)
        replicas = max(dp // shard, 1)
        intra = 3 * ring(d * p / tp, shard) * accumulation
        inter = 2 * ring(4 * p / tp / shard, replicas)  # all-reduce of the fp32 gradient shard across replicas
    if tp > 1:  # 4 all-reduces (or all-gather + reduce-scatter pairs) of b x T x h per block per micro-batch
        act = d * micro_batch * shape.seq_len * shape.hidden
        intra += 4 * 2 * ring(act, tp) * shape.layers * accumulation
    seconds = intra / (plan.intra_node_gbps * 1e9) + inter / (plan.inter_node_gbps * 1e9)
    return {"intra_node_bytes": intra, "inter_node_bytes": inter, "seconds": seconds}


# --------------------------------------------------------------------------------------------- #
# The plan
# --------------------------------------------------------------------------------------------- #
ENGINE_NAMES = {
    "ddp": "DDP", "zero1": "ZeRO-1", "zero2": "ZeRO-2", "zero2_offload": "ZeRO-2 + offload",
    "zero3": "ZeRO-3", "zero3_offload": "ZeRO-3 + offload", "fsdp2": "FSDP2", "hsdp": "HSDP",
}


def allowed_tp(shape: ModelShape, limit: int) -> list[int]:
    """TP sizes up to ``limit`` that give every rank whole heads and an integer FFN slice."""
    return [t for t in range(1, limit + 1) if shape.heads % t == 0 and shape.intermediate % t == 0]


def format_duration(seconds: float) -> str:
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest / 60
    if days >= 1:
        return f"{int(days)} d {int(hours)} h"
    if hours >= 1:
        return f"{int(hours)} h {int(minutes)} min"
    return f"{minutes:.1f} min"


Layout = tuple[str, int, Optional[int]]
"""(engine key, TP size, shard group for HSDP)."""


def _layouts(shape: ModelShape, plan: PlanConfig, configured: Layout) -> list[Layout]:
    """The rows of the table: every engine, HSDP within a node, TP 4 / 8 x FSDP2, and the configured one."""
    rows: list[Layout] = [(e, 1, None) for e in ("ddp", "zero2", "zero2_offload", "zero3", "zero3_offload", "fsdp2")]
    node = plan.gpus_per_node
    shard = plan.hsdp_shard or node
    if plan.gpus > shard and plan.gpus % shard == 0:
        rows.append(("hsdp", 1, shard))
    for t in sorted({plan.tp, 4, 8} - {1}):
        if t <= node and plan.gpus % t == 0 and plan.gpus > t:
            rows.append(("fsdp2", t, None))
    if configured not in rows:
        rows.append(configured)
    return rows


def make_plan(shape: ModelShape, plan: PlanConfig, *, micro_batch: int, global_batch: int, max_steps: int,
              checkpointing: bool, mixed_precision: bool, engine: str, flops_per_token: float,
              tp: int = 1, dp_replicate: int = 1, sequence_parallel: bool = False,
              loss_parallel: bool = False) -> dict[str, Any]:
    """The dry-run plan as plain data (what ``--dry-run --json`` prints). ``engine`` is
    ``train.distributed``; ``tp`` / ``dp_replicate`` / ``sequence_parallel`` / ``loss_parallel``
    come from ``train.parallel`` (TP x FSDP2, HSDP) and apply to every TP row."""
    tokens = plan.tokens or float(max_steps) * global_batch * shape.seq_len
    total_flops = tokens * flops_per_token
    seconds = total_flops / (plan.gpus * plan.peak_tflops * 1e12 * plan.mfu)
    step_seconds = global_batch * shape.seq_len * flops_per_token / (plan.gpus * plan.peak_tflops * 1e12 * plan.mfu)
    if tp > 1 or dp_replicate > 1:
        dp = max(plan.gpus // tp, 1)
        configured: Layout = ("hsdp", tp, max(dp // dp_replicate, 1)) if dp_replicate > 1 else ("fsdp2", tp, None)
    else:
        configured = ({"none": "ddp"}.get(engine, engine), 1, None)
    rows = []
    for layout in _layouts(shape, plan, configured):
        name, t, shard = layout
        dp = max(plan.gpus // t, 1)
        accumulation = max(global_batch // (micro_batch * dp), 1)
        row = engine_memory(shape, name, plan.gpus, micro_batch, checkpointing, mixed_precision, tp=t,
                            shard_group=shard, sequence_parallel=sequence_parallel,
                            loss_parallel=loss_parallel)
        comm = communication(shape, name, plan.gpus, micro_batch, accumulation, plan, tp=t, shard_group=shard,
                             mixed_precision=mixed_precision)
        label = ENGINE_NAMES[name]
        if name == "hsdp":
            label = f"HSDP {dp // row.shard_group} x {row.shard_group}"
        if t > 1:
            label = f"TP {t} x " + (f"FSDP2 {dp}" if name == "fsdp2" else label)
        notes = []
        if t > 1 and (shape.heads % t or shape.intermediate % t):
            notes.append(f"not possible: {shape.heads} heads do not split over {t} ranks")
        rows.append({
            "engine": label, "key": name, "tp": t, "shard_group": row.shard_group, "configured": layout == configured,
            "weights_gib": row.weights, "grads_gib": row.grads, "optimizer_gib": row.optimizer,
            "buffers_gib": row.buffers, "activations_gib": row.activations, "logits_gib": row.logits,
            "total_gib": row.total, "model_states_gib": row.model_states, "buffer_items_gib": row.buffer_items,
            "fits": {str(g): row.total <= g * FIT_FRACTION for g in GPU_SIZES_GB},
            "comm_intra_node_gb": comm["intra_node_bytes"] / 1e9, "comm_inter_node_gb": comm["inter_node_bytes"] / 1e9,
            "comm_seconds_per_step": comm["seconds"], "notes": notes,
        })
    chosen = next(r for r in rows if r["configured"])
    compute_per_step = step_seconds
    warnings = []
    if chosen["comm_seconds_per_step"] > compute_per_step:
        warnings.append(
            f"{chosen['engine']}: communication per step ({chosen['comm_seconds_per_step']:.2f} s at the link speeds "
            f"below) exceeds compute ({compute_per_step:.2f} s at {plan.mfu:.0%} MFU), so the time above is "
            "optimistic; "
            "a larger micro-batch, TP within the node or HSDP moves fewer bytes across nodes")
    if not chosen["total_gib"] <= plan.gpu_memory_gb * FIT_FRACTION:
        warnings.append(f"{chosen['engine']} needs {chosen['total_gib']:.1f} GiB per GPU: more than "
                        f"{FIT_FRACTION:.0%} of {plan.gpu_memory_gb:g} GiB")
    warnings += [f"{chosen['engine']}: {n}" for n in chosen["notes"]]
    host_gib = 4 * shape.params * plan.gpus_per_node / GiB
    assumptions = [
        f"host memory at start: each process builds the full fp32 model before the engine shards it "
        f"({4 * shape.params / GiB:.1f} GiB x {plan.gpus_per_node} processes = {host_gib:.0f} GiB per node)",
        f"{'bf16 mixed precision' if mixed_precision else 'fp32'}, AdamW; DeepSpeed states counted as its "
        "estimators do (18 bytes/param sharded for ZeRO-2/3 + 4 x largest layer for ZeRO-3)",
        "FSDP2: fp32 sharded parameters, gradients and Adam moments (16 bytes/param / shard group), "
        "bf16 all-gathers; tail unit (embedding + tied head) kept unsharded through backward",
        "live buffers from recipes/configs/distributed/ds_*.json (prefetch, max live parameters, reduce buckets)",
        "activation checkpointing " + ("on: each block keeps its 2 inputs, one block recomputed" if checkpointing
                                       else "off") + f"; attention {shape.attention} ("
        + ("fp32 softmax and T^2 probabilities saved" if shape.attention == "eager" else "no T^2 tensor saved") + ")",
        ("fused cross-entropy: no logits materialised" if shape.fused_cross_entropy else
         "logits: fp32 log-softmax saved + fp32 gradient at the loss (12 bytes x tokens x vocab)"),
        "TP rows: head and embedding split over the TP ranks, logits "
        + ("vocabulary-parallel, " if loss_parallel else "gathered, ")
        + ("sequence parallel; " if sequence_parallel
           else "no sequence parallel (LayerNorm activations replicated); ")
        + f"TP sizes with whole heads on every rank: {', '.join(map(str, allowed_tp(shape, plan.gpus_per_node)))}",
        f"links: {plan.intra_node_gbps:g} GB/s per GPU in a node, {plan.inter_node_gbps:g} GB/s between nodes "
        f"({plan.gpus_per_node} GPUs per node); fits = total under {FIT_FRACTION:.0%} of the GPU",
    ]
    return {
        "parameters": shape.params, "matmul_parameters": shape.matmul_params,
        "shape": {"layers": shape.layers, "hidden": shape.hidden, "heads": shape.heads, "vocab": shape.vocab,
                  "seq_len": shape.seq_len, "ffn": shape.intermediate, "largest_layer": shape.largest_layer,
                  "block_params": shape.block_params, "tail_params": shape.tail_params},
        "flops_per_token": flops_per_token, "global_batch": global_batch, "micro_batch": micro_batch,
        "tokens_per_step": global_batch * shape.seq_len, "tokens": tokens, "total_flops": total_flops,
        "time_seconds": seconds, "time": format_duration(seconds), "step_seconds": step_seconds,
        "hardware": asdict(plan), "checkpointing": checkpointing, "mixed_precision": mixed_precision,
        "engine": engine, "tp": tp, "dp_replicate": dp_replicate, "layout": chosen["engine"], "memory": rows,
        "warnings": warnings, "assumptions": assumptions,
        "gpu_sizes_gib": list(GPU_SIZES_GB),
    }


def render_plan(data: dict[str, Any]) -> str:
    """The plan of :func:`make_plan` as text."""
    s, hw = data["shape"], data["hardware"]
    lines = [
        f"parameters        {data['parameters'] / 1e6:,.1f} M ({data['matmul_parameters'] / 1e6:,.1f} M in matmuls;"
        f" largest layer {s['largest_layer'] / 1e6:,.1f} M, block {s['block_params'] / 1e6:,.1f} M)",
        f"shape             {s['layers']} layers, hidden {s['hidden']}, {s['heads']} heads, "
        f"vocab {s['vocab']}, sequence {s['seq_len']}",
        f"FLOPs per token   {data['flops_per_token'] / 1e9:,.2f} GFLOP (6N + 12LHQT, training)",
        f"batch             {data['global_batch']} sequences x {s['seq_len']} = {data['tokens_per_step']:,} "
        f"tokens per step, micro-batch {data['micro_batch']}",
        f"token budget      {data['tokens'] / 1e9:,.2f} B tokens = {data['total_flops']:.3e} FLOPs",
        f"time              {data['time']} on {hw['gpus']} GPUs at {hw['peak_tflops']:g} TFLOP/s peak and "
        f"{hw['mfu']:.0%} MFU ({data['step_seconds']:.2f} s per step)",
        "",
        f"memory per GPU (GiB), {hw['gpus']} GPUs, configured: {data['layout']}; fits on 40 / 80 / 141 GiB GPUs:",
        f"  {'engine':<22}{'weights':>8}{'grads':>8}{'optim':>8}{'buffers':>8}{'activ':>8}{'logits':>8}"
        f"{'total':>8}  {'40':>3} {'80':>3} {'141':>3}  comm/step (in node, across)",
    ]
    for r in data["memory"]:
        fits = " ".join(f"{'yes' if r['fits'][str(g)] else 'no':>3}" for g in GPU_SIZES_GB)
        mark = "  <- configured" if r["configured"] else ""
        note = f"  ({'; '.join(r['notes'])})" if r["notes"] else ""
        lines.append(
            f"  {r['engine']:<22}{r['weights_gib']:>8.2f}{r['grads_gib']:>8.2f}{r['optimizer_gib']:>8.2f}"
            f"{r['buffers_gib']:>8.2f}{r['activations_gib']:>8.2f}{r['logits_gib']:>8.2f}{r['total_gib']:>8.2f}"
            f"  {fits}  {r['comm_intra_node_gb']:.0f} + {r['comm_inter_node_gb']:.0f} GB, "
            f"{r['comm_seconds_per_step']:.2f} s{mark}{note}"
        )
    configured = next((r for r in data["memory"] if r["configured"]), None)
    if configured and configured["buffer_items_gib"]:
        lines.append(f"  buffers of {configured['engine']}: " + ", ".join(
            f"{k} {v:.2f}" for k, v in configured["buffer_items_gib"].items()))
    for warning in data.get("warnings", []):
        lines.append(f"warning: {warning}")
    lines.append("assumptions:")
    lines += [f"  - {a}" for a in data["assumptions"]]
    return "\n".join(lines)


def plan_for_model(model, train, plan: PlanConfig, seq_len: int) -> dict[str, Any]:
    """:func:`make_plan` for a model (meta device is fine) and the recipe's ``train`` section."""
    from .flops import flops_per_token

    shape = ModelShape.from_model(model, seq_len)
    fpt = flops_per_token(shape.matmul_params, shape.layers, shape.heads, shape.hidden // shape.heads, seq_len)
    mixed = train.precision in ("bf16", "fp16", "auto")
    parallel = getattr(train, "parallel", None)
    return make_plan(shape, plan, micro_batch=train.micro_batch_size, global_batch=train.global_batch_size,
                     max_steps=train.max_steps, checkpointing=train.activation_checkpointing,
                     mixed_precision=mixed, engine=train.distributed, flops_per_token=fpt,
                     tp=int(getattr(parallel, "tp", 1) or 1),
                     dp_replicate=int(getattr(parallel, "dp_replicate", 1) or 1),
                     sequence_parallel=bool(getattr(parallel, "sequence_parallel", False)),
                     loss_parallel=bool(getattr(parallel, "loss_parallel", False)))


def format_plan(shape: ModelShape, plan: PlanConfig, *, micro_batch: int, global_batch: int,
                max_steps: int, checkpointing: bool, mixed_precision: bool, chosen_stage: int,
                chosen_offload: bool, flops_per_token: float, engine: Optional[str] = None) -> str:
    """The dry-run report as text (``engine`` names the configured one; else ZeRO stage + offload)."""
    if engine is None:
        engine = {0: "ddp", 1: "zero1", 2: "zero2", 3: "zero3"}[chosen_stage] + ("_offload" if chosen_offload else "")
    return render_plan(make_plan(shape, plan, micro_batch=micro_batch, global_batch=global_batch,
                                 max_steps=max_steps, checkpointing=checkpointing, mixed_precision=mixed_precision,
                                 engine=engine, flops_per_token=flops_per_token))
