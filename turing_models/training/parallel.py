"""Tensor parallelism and 2-D / 3-D meshes, built from existing engines only.

The model classes stay single-device code: each declares its tensor-parallel plan as data, the way
transformers models do (``config.base_model_tp_plan`` for the base model, ``_tp_plan`` on a head
class), with transformers' style names ("colwise", "rowwise", "replicate", ...). This module
applies that plan from outside:

* the mesh: Accelerate's :class:`~accelerate.ParallelismConfig` (``dp_replicate x dp_shard x tp``,
  torchtitan's ParallelDims) builds the :class:`~torch.distributed.device_mesh.DeviceMesh`, with the
  joint ``dp`` dimension flattened for the data loader;
* tensor parallelism: transformers' DTensor parallel styles
  (``transformers.distributed.tensor_parallel``), applied on the ``tp`` sub-mesh;
* data parallelism: FSDP2 (``torch.distributed.fsdp.fully_shard``) on the ``dp_shard`` sub-mesh,
  or HSDP on ``(dp_replicate, dp_shard)``, over parameters that TP has already turned into
  DTensors (2-D / 3-D parallelism);
* checkpoints: torch's distributed checkpoint (DCP) through its Hugging Face storage
  (safetensors files and a JSON index, no pickle), and a full-tensor gather for the
  ``save_pretrained`` export.

Head counts must divide by the TP size (each rank holds whole heads of q, k and v: the fused QKV
rows are laid out per head), and so must the FFN width.

Sequence parallelism (``sp=True``, Korthikanti et al. 2022, as torchtitan applies it): between
the tensor-parallel matmuls the residual stream, the LayerNorms and the dropouts run on ``1/tp`` of
the sequence. The stream is a DTensor ``Shard(1)`` from the embedding dropout to the final norm;
each column-parallel input all-gathers it (``ColwiseParallel`` redistributes to ``Replicate``) and
each row-parallel output reduce-scatters back to it (``RowwiseParallel(output_layouts=Shard(1))``)
in place of the all-reduce, so communication volume is unchanged. The plan is data on the model
(``config.base_model_sp_plan``, ``_sp_plan``), with the style names registered below.

Loss parallelism (``loss_parallel=True``): the LM head keeps its logits sharded on the vocabulary
(``Shard(-1)``) and the cross-entropy runs under torch's
:func:`~torch.distributed.tensor.parallel.loss_parallel`, which never gathers ``tokens x vocab``.
Padding columns of the head (vocabulary padded to a multiple of 128) are masked to ``-inf`` on the
ranks that hold them, so the loss is over the real vocabulary.

Under TP the fused linear cross-entropy kernel is switched off (it reads the whole head weight).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ..errors import UsageError

DIM_NAMES = ("dp_replicate", "dp_shard", "tp")


# --------------------------------------------------------------------------------------------- #
# Sizes and validation
# --------------------------------------------------------------------------------------------- #
@dataclass(frozen=True)
class ParallelDims:
    """``dp_replicate x dp_shard x tp`` processes. ``tp`` ranks hold slices of every layer and see
    the same batch; ``dp_shard`` ranks shard parameters, gradients and optimizer state (FSDP2);
    ``dp_replicate`` groups hold replicas of that sharded model (HSDP)."""

    tp: int = 1
    dp_shard: int = 1
    dp_replicate: int = 1

    @classmethod
    def from_config(cls, config: Any, world_size: Optional[int] = None) -> "ParallelDims":
        """From any object with ``tp`` / ``dp_shard`` / ``dp_replicate`` (e.g. ``train.parallel``).
        ``dp_shard`` 0 or -1 means "whatever the world size leaves"."""
        tp = int(getattr(config, "tp", 1) or 1)
        dp_replicate = int(getattr(config, "dp_replicate", 1) or 1)
        dp_shard = int(getattr(config, "dp_shard", 1))
        if dp_shard <= 0:
            world_size = world_size or int(os.environ.get("WORLD_SIZE", "1"))
            dp_shard = max(world_size // (tp * dp_replicate), 1)
        return cls(tp=tp, dp_shard=dp_shard, dp_replicate=dp_replicate)

    @property
    def world_size(self) -> int:
        return self.tp * self.dp_shard * self.dp_replicate

    @property
    def dp_size(self) -> int:
        return self.dp_shard * self.dp_replicate

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def validate(self, world_size: int) -> None:
        for name in DIM_NAMES:
            if getattr(self, name) < 1:
                raise UsageError(f"train.parallel.{name} is {getattr(self, name)}; set it to 1 or more.")
        if self.world_size != world_size:
            raise UsageError(
                f"train.parallel gives tp {self.tp} x dp_shard {self.dp_shard} x dp_replicate "
                f"{self.dp_replicate} = {self.world_size} processes but {world_size} were launched; make the "
                "product equal the number of processes (torchrun --nproc-per-node x --nnodes)."
            )
        if self.dp_replicate > 1 and self.dp_shard == 1:
            raise UsageError(
                "train.parallel.dp_replicate > 1 needs train.parallel.dp_shard > 1 (HSDP: replicas of an "
                "FSDP2-sharded model); raise dp_shard, or set dp_replicate to 1 (plain replicas: train.distributed ddp)."
            )


def _ffn_width(model_config: Any) -> int:
    return int(getattr(model_config, "intermediate_size", None) or 4 * int(model_config.hidden_size))


def allowed_tp_sizes(model_config: Any, limit: int = 64) -> list[int]:
    """TP sizes that give every rank whole attention heads and an equal slice of the FFN
    (:func:`turing_models.layers.tensor_parallel.tp_sizes`)."""
    from ..layers.tensor_parallel import tp_sizes

    return tp_sizes(int(model_config.num_attention_heads), _ffn_width(model_config), limit)


def check_tp_size(model_config: Any, tp: int) -> None:
    """Raise :class:`UsageError` unless ``tp`` divides the head count and the FFN width."""
    if tp <= 1:
        return
    if tp not in allowed_tp_sizes(model_config, limit=max(tp, 64)):
        raise UsageError(
            f"train.parallel.tp {tp} does not divide num_attention_heads={model_config.num_attention_heads} and "
            f"intermediate_size={_ffn_width(model_config)}; use one of "
            f"{', '.join(map(str, allowed_tp_sizes(model_config)))}."
        )


# --------------------------------------------------------------------------------------------- #
# The mesh
# --------------------------------------------------------------------------------------------- #
def parallelism_config(dims: ParallelDims):
    """Accelerate's :class:`~accelerate.ParallelismConfig` for ``dims``."""
    from accelerate import ParallelismConfig

    return ParallelismConfig(dp_replicate_size=dims.dp_replicate, dp_shard_size=dims.dp_shard, tp_size=dims.tp)


def build_device_mesh(dims: ParallelDims, device_type: Optional[str] = None):
    """The DeviceMesh for ``dims`` (dimensions named ``dp_replicate`` / ``dp_shard`` / ``tp``, only
    those larger than 1, plus the flattened ``dp``), built by Accelerate's ParallelismConfig.
    torch.distributed must be initialised (torchrun)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        raise UsageError("tensor / 2-D parallelism needs torch.distributed: launch with torchrun.")
    dims.validate(dist.get_world_size())
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    return parallelism_config(dims).build_device_mesh(device_type)


def _sub_mesh(mesh, names: tuple[str, ...]):
    present = tuple(n for n in names if mesh is not None and n in (mesh.mesh_dim_names or ()))
    if not present:
        return None
    return mesh[present if len(present) > 1 else present[0]]


def tp_mesh(mesh):
    return _sub_mesh(mesh, ("tp",))


def dp_mesh(mesh):
    """The FSDP2 mesh: ``dp_shard`` (FSDP) or ``(dp_replicate, dp_shard)`` (HSDP)."""
    return _sub_mesh(mesh, ("dp_replicate", "dp_shard"))


def data_parallel_rank(mesh) -> tuple[int, int]:
    """``(rank, size)`` among the data-parallel groups: ranks of one TP group share a rank here,
    so a sampler sharding by it hands them the same batch."""
    if mesh is None:
        return 0, 1
    names = mesh.mesh_dim_names or ()
    rank, size = 0, 1
    for n in ("dp_replicate", "dp_shard"):  # row-major over the data dims, as Accelerate flattens "dp"
        if n in names:
            rank = rank * mesh[n].size() + mesh[n].get_local_rank()
            size *= mesh[n].size()
    return rank, size


# --------------------------------------------------------------------------------------------- #
# The plan
# --------------------------------------------------------------------------------------------- #
def _prefixed(model: nn.Module, plan: Optional[dict[str, str]]) -> dict[str, str]:
    """A base-model plan under the base model's attribute name (``layers.*`` -> ``model.layers.*``)."""
    plan = dict(plan or {})
    prefix = getattr(model, "base_model_prefix", "")
    if plan and prefix and hasattr(model, prefix) and getattr(model, prefix) is not model:
        plan = {f"{prefix}.{k}": v for k, v in plan.items()}
    return plan


def model_tp_plan(model: nn.Module, *, sequence_parallel: bool = False,
                  loss_parallel: bool = False) -> dict[str, str]:
    """The model's plan with full module names (``*`` stands for a layer number): the base model's
    ``config.base_model_tp_plan`` under its prefix, plus the class's ``_tp_plan`` (transformers'
    ``init_parallel_plans`` assembles the same).

    ``sequence_parallel`` lays the base model's ``config.base_model_sp_plan`` over it (the norms,
    the dropouts and the row-parallel outputs on a sequence-sharded stream); ``loss_parallel`` lays
    the class's ``_loss_parallel_plan`` over it (the head's logits left vocabulary-sharded)."""
    plan = getattr(model, "tp_plan", None)
    if plan:
        plan = dict(plan)
    else:
        config = getattr(model, "config", None)
        plan = {**_prefixed(model, getattr(config, "base_model_tp_plan", None)),
                **dict(getattr(type(model), "_tp_plan", None) or {})}
    if sequence_parallel:
        sp_plan = _prefixed(model, getattr(getattr(model, "config", None), "base_model_sp_plan", None))
        if not sp_plan:
            raise UsageError(f"{type(model).__name__} declares no sequence-parallel plan; set "
                             "train.parallel.sequence_parallel to false.")
        plan.update(sp_plan)
    if loss_parallel:
        lp_plan = dict(getattr(type(model), "_loss_parallel_plan", None) or {})
        if not lp_plan:
            raise UsageError(f"{type(model).__name__} declares no loss-parallel plan (its loss is not a "
                             "vocabulary cross-entropy); set train.parallel.loss_parallel to false.")
        plan.update(lp_plan)
    return plan


# --------------------------------------------------------------------------------------------- #
# Sequence- and loss-parallel styles, in transformers' style registry
# --------------------------------------------------------------------------------------------- #
def register_parallel_styles() -> None:
    """Add the styles the sequence- and loss-parallel plans name to transformers' registry
    (``ALL_PARALLEL_STYLES``); each is one of transformers' own classes with other layouts:

    * ``sequence_scatter``: the replicated stream enters the sequence-sharded region (a local
      slice in forward, an all-gather of the gradient in backward);
    * ``sequence_parallel_stream``: a norm on the sequence-sharded stream, parameters replicated,
      inputs and outputs kept as DTensors (``x`` and ``residual`` alike);
    * ``rowwise_to_sequence``: a row-parallel linear layer whose partial sums are reduce-scattered
      onto the sequence shards instead of all-reduced;
    * ``colwise_loss_parallel``: a column-parallel head whose logits stay sharded on the
      vocabulary, padding columns masked to ``-inf``.
    """
    from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
    from transformers.distributed.tensor_parallel import (
        ALL_PARALLEL_STYLES,
        ColwiseParallel,
        RowwiseParallel,
        SequenceParallel,
        TensorParallelLayer,
    )

    if "colwise_loss_parallel" in ALL_PARALLEL_STYLES:
        return

    class SequenceScatter(TensorParallelLayer):
        def transform_inputs_pre_forward(self, module, args, kwargs, mesh):
            x = args[0]
            if not isinstance(x, DTensor):
                x = DTensor.from_local(x, mesh, [Replicate()], run_check=False)
            if x.placements != (Shard(1),):
                x = x.redistribute(placements=[Shard(1)])
            return (x,) + args[1:], kwargs

    class SequenceParallelStream(SequenceParallel):
        def transform_inputs_pre_forward(self, module, args, kwargs, mesh):
            args, kwargs = super().transform_inputs_pre_forward(module, args, kwargs, mesh)
            residual = kwargs.get("residual")
            if residual is not None and not isinstance(residual, DTensor):
                raise RuntimeError(f"sequence parallelism: the residual reaching {type(module).__name__} is not "
                                   "sequence-sharded; the plan misses the module that produces it.")
            return args, kwargs

    class VocabParallelHead(ColwiseParallel):
        def install_forward(self, module, mesh, *, config=None, mesh_manager=None):
            module.masks_padding = True  # the model keeps every column: the padding ones are -inf here
            return super().install_forward(module, mesh, config=config, mesh_manager=mesh_manager)

        def transform_output_post_forward(self, module, output, mesh, config=None):
            logits = super().transform_output_post_forward(module, output, mesh, config=config)
            real = getattr(config, "real_vocab_size", None) or logits.shape[-1]
            if real >= logits.shape[-1]:
                return logits
            mask = getattr(module, "_padding_mask", None)
            if mask is None or mask.dtype != logits.dtype or mask.device != logits.device:
                full = torch.zeros(logits.shape[-1], dtype=logits.dtype, device=logits.device)
                full[real:] = float("-inf")
                # each rank cuts its own slice (no communication)
                mask = distribute_tensor(full, mesh, [Shard(0)], src_data_rank=None).to_local()
                module._padding_mask = mask
            local = logits.to_local() + mask
            return DTensor.from_local(local, mesh, [Shard(-1)], run_check=False, shape=logits.shape,
                                      stride=logits.stride())

    ALL_PARALLEL_STYLES.register("sequence_scatter", SequenceScatter())
    ALL_PARALLEL_STYLES.register("sequence_parallel_stream", SequenceParallelStream(use_local_output=False))
    ALL_PARALLEL_STYLES.register(
        "rowwise_to_sequence", RowwiseParallel(input_layouts=Shard(-1), output_layouts=Shard(1), use_local_output=False)
    )
    ALL_PARALLEL_STYLES.register(
        "colwise_loss_parallel", VocabParallelHead(input_layouts=Replicate(), output_layouts=Shard(-1),
                                                   use_local_output=False)
    )


def expand_plan(model: nn.Module, plan: dict[str, str]) -> dict[str, str]:
    """One entry per concrete parameter and module: ``layers.*.mlp.fc_in`` ->
    ``layers.0.mlp.fc_in.weight``, ``layers.0.mlp.fc_in.bias``, ``layers.0.mlp.fc_in`` (parameters
    before their module, as transformers' ``apply_tensor_parallelism`` expects)."""
    patterns = [(re.compile(re.escape(k).replace(r"\*", r"\d+") + r"\Z"), v) for k, v in plan.items()]
    expanded: dict[str, str] = {}
    used: set[int] = set()
    # a tied parameter (head = embedding) is listed once, under its first name: its module is
    # hooked, and the parameter is shared again after sharding (see _retie)
    owned = {id(p): n for n, p in model.named_parameters()}
    for name, module in model.named_modules():
        style = None
        for i, (pattern, value) in enumerate(patterns):
            if pattern.match(name):
                style = value
                used.add(i)
        if style is None:
            continue
        for param_name, param in module.named_parameters(recurse=False):
            full = f"{name}.{param_name}" if name else param_name
            if owned.get(id(param)) == full:
                expanded[full] = style
        expanded[name] = style
    unused = [k for i, k in enumerate(plan) if i not in used]
    if unused:
        raise UsageError(f"the tensor-parallel plan of {type(model).__name__} names modules it does not have: "
                         f"{', '.join(unused)}; fix the plan on the model class.")
    return expanded


def apply_tensor_parallel(model: nn.Module, mesh, plan: Optional[dict[str, str]] = None, *,
                          sequence_parallel: bool = False, loss_parallel: bool = False) -> nn.Module:
    """Shard ``model`` in place on the ``tp`` mesh by its plan, with transformers' DTensor styles.

    Each rank keeps only its slices (``distribute_tensor`` without a broadcast: the full weights
    each rank already holds are cut locally, and the parameters become DTensors). With
    ``loss_parallel`` the loss must be computed, and its backward run, under
    :func:`loss_parallel_context`."""
    from transformers.distributed.tensor_parallel import apply_tensor_parallelism

    sub = tp_mesh(mesh) if mesh is not None and mesh.ndim > 1 else mesh
    if sub is None or sub.size() == 1:
        return model
    config = getattr(model, "config", None)
    if config is not None:
        check_tp_size(config, sub.size())
    if plan is None:
        plan = model_tp_plan(model, sequence_parallel=sequence_parallel, loss_parallel=loss_parallel)
    if not plan:
        raise UsageError(f"{type(model).__name__} declares no tensor-parallel plan; set train.parallel.tp to 1.")
    register_parallel_styles()
    apply_tensor_parallelism(model, sub, expand_plan(model, plan))
    _retie(model)
    if getattr(config, "fused_cross_entropy", False):
        # the fused linear cross-entropy kernel reads the whole head weight; under TP the logits
        # come from the column-parallel head instead
        config.fused_cross_entropy = False
    model._tp_size = sub.size()
    model._device_mesh = sub
    model._loss_parallel = loss_parallel
    return model


def loss_parallel_context(model: nn.Module):
    """torch's :func:`~torch.distributed.tensor.parallel.loss_parallel` when ``model`` was sharded
    with ``loss_parallel`` (wrap the forward that computes the loss and its backward), else a
    context that does nothing."""
    import contextlib

    if not getattr(model, "_loss_parallel", False):
        return contextlib.nullcontext()
    from torch.distributed.tensor.parallel import loss_parallel

    return loss_parallel()


def _retie(model: nn.Module) -> None:
    """Sharding replaces parameters one module at a time, which unties a tied head from its
    embedding: point the head at the embedding's (identically sharded) parameter again."""
    config = getattr(model, "config", None)
    tied = getattr(model, "_tied_weights_keys", None)
    if not isinstance(tied, dict) or not getattr(config, "tie_word_embeddings", False):
        return
    for target, source in tied.items():
        try:
            src = model.get_parameter(source)
            module_name, _, param_name = target.rpartition(".")
            module = model.get_submodule(module_name)
        except AttributeError:
            continue
        current = module._parameters.get(param_name)
        if current is None or current is src:
            continue
        if getattr(current, "placements", None) not in (None, getattr(src, "placements", None)):
            raise UsageError(f"the tensor-parallel plan shards {target} and its tied {source} differently; "
                             "give both the same placement in the plan.")
        module._parameters[param_name] = src


def apply_fsdp(model: nn.Module, mesh, *, mp_policy=None, reshard_after_forward: bool = True) -> nn.Module:
    """FSDP2 over the data-parallel dims of ``mesh`` (HSDP when both ``dp_replicate`` and
    ``dp_shard`` are there): each block of ``model._no_split_modules`` is one unit, then the root."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    sub = dp_mesh(mesh)
    if sub is None or sub.size() == 1:
        return model
    kwargs: dict[str, Any] = {"mesh": sub, "reshard_after_forward": reshard_after_forward}
    kwargs["mp_policy"] = mp_policy or MixedPrecisionPolicy()
    block_names = set(getattr(model, "_no_split_modules", None) or [])
    for module in model.modules():
        if type(module).__name__ in block_names:
            fully_shard(module, **kwargs)
    fully_shard(model, **kwargs)
    return model


def _move_plain_tensors(model: nn.Module, device: torch.device) -> None:
    """Move the parameters and buffers that are not DTensors to ``device`` (TP's ``distribute_tensor``
    already put each shard on the mesh's device), keeping tied parameters tied."""
    from torch.distributed.tensor import DTensor

    moved: dict[int, Any] = {}
    for module in model.modules():
        for table, wrap in ((module._parameters, True), (module._buffers, False)):
            for name, t in list(table.items()):
                if t is None or isinstance(t, DTensor) or t.device == device:
                    continue
                if id(t) not in moved:
                    data = t.data.to(device)
                    moved[id(t)] = nn.Parameter(data, requires_grad=t.requires_grad) if wrap else data
                table[name] = moved[id(t)]


def parallelize(model: nn.Module, dims: ParallelDims, mesh=None, *, mp_policy=None, sequence_parallel: bool = False,
                loss_parallel: bool = False):
    """TP on the ``tp`` mesh (with sequence / loss parallelism if asked), then FSDP2 / HSDP on the
    data-parallel mesh. Returns ``(model, mesh)``. A model built on the CPU is sharded there and
    each rank's shards land on the mesh's device."""
    if mesh is None:
        mesh = build_device_mesh(dims)
    if dims.tp > 1:
        apply_tensor_parallel(model, mesh, sequence_parallel=sequence_parallel, loss_parallel=loss_parallel)
    if mesh.device_type != "cpu":
        index = torch.cuda.current_device() if mesh.device_type == "cuda" else None
        _move_plain_tensors(model, torch.device(mesh.device_type, index))
    if dims.dp_shard > 1:
        apply_fsdp(model, mesh, mp_policy=mp_policy)
    return model, mesh


def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` for a model whose parameters live on different meshes
    (TP x FSDP2: the planned weights on ``(dp_shard, tp)``, norms and position embeddings on
    ``dp_shard``), which torch's version refuses to stack: the norm of each mesh's group is made
    full with DTensor's own reduction, the groups' norms are combined, and every gradient is
    scaled by the one global factor. Returns the global norm (a plain tensor)."""
    from torch.distributed.tensor import DTensor

    groups: dict[Any, list[torch.Tensor]] = {}
    for p in parameters:
        if p.grad is None:
            continue
        mesh = p.grad.device_mesh if isinstance(p.grad, DTensor) else None
        groups.setdefault(mesh, []).append(p)
    if not groups:
        return torch.tensor(0.0)
    norms = []
    for params in groups.values():
        norm = torch.nn.utils.get_total_norm([p.grad for p in params], norm_type)
        norms.append(norm.full_tensor() if isinstance(norm, DTensor) else norm)
    stacked = torch.stack([n.float().to(norms[0].device) for n in norms])
    total = stacked.max() if norm_type == float("inf") else stacked.pow(norm_type).sum().pow(1.0 / norm_type)
    for params in groups.values():
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


def data_parallel_rank_for(parallel_config: Any, rank: int, world_size: int) -> tuple[int, int]:
    """``(data rank, data world size)`` for global ``rank`` of ``world_size`` processes: the rank
    itself without tensor parallelism; else its rank among the data-parallel groups (ranks of a TP
    group are consecutive, the innermost mesh dimension, so they share ``rank // tp``)."""
    if parallel_config is None or not getattr(parallel_config, "active", False):
        return rank, world_size
    dims = ParallelDims.from_config(parallel_config, world_size)
    dims.validate(world_size)
    return rank // dims.tp, dims.dp_size


class TrainerParallel:
    """What the Trainer needs for ``train.parallel``: the mesh, the sharded model, the data rank,
    clipping and the full-tensor export. Accelerate builds the mesh (ParallelismConfig) and keeps
    the optimizer wrapper; the model is sharded here rather than by ``Accelerator.prepare``, whose
    TP path (Accelerate 1.16) accepts accelerator devices only and, with FSDP2, imports a
    ``ReplicateParallel`` that transformers 5 no longer has."""

    def __init__(self, config: Any, world_size: int, rank: int, precision: str = "fp32"):
        self.dims = ParallelDims.from_config(config.parallel, world_size)
        self.dims.validate(world_size)
        self.precision = precision
        self.sequence_parallel = bool(getattr(config.parallel, "sequence_parallel", False))
        self.loss_parallel = bool(getattr(config.parallel, "loss_parallel", False))
        self.mesh = build_device_mesh(self.dims)
        self.data_rank, self.data_world = data_parallel_rank(self.mesh)
        if (self.data_rank, self.data_world) != data_parallel_rank_for(config.parallel, rank, world_size):
            raise RuntimeError("the device mesh does not put tensor-parallel ranks innermost")

    @classmethod
    def create(cls, config: Any, accelerator, precision: str = "fp32") -> Optional["TrainerParallel"]:
        """None unless ``config.parallel`` asks for TP or HSDP."""
        parallel = getattr(config, "parallel", None)
        if parallel is None or not parallel.active:
            return None
        return cls(config, accelerator.num_processes, accelerator.process_index, precision)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """TP by the model's plan, FSDP2 / HSDP over the data ranks, and (bf16 / fp16) autocast
        around the forward, as Accelerate does for the models it prepares."""
        parallelize(model, self.dims, self.mesh, sequence_parallel=self.sequence_parallel,
                    loss_parallel=self.loss_parallel)
        if self.precision in ("bf16", "fp16"):
            device_type = "cuda" if torch.cuda.is_available() else "cpu"
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            model.forward = torch.autocast(device_type, dtype=dtype)(model.forward)
        return model

    @staticmethod
    def loss_context(model: nn.Module):
        return loss_parallel_context(model)

    @staticmethod
    def clip_grad_norm_(parameters, max_norm: float) -> torch.Tensor:
        return clip_grad_norm_(list(parameters), max_norm)

    @staticmethod
    def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
        return full_state_dict(model)


# --------------------------------------------------------------------------------------------- #
# State: distributed checkpoints and the full-tensor export
# --------------------------------------------------------------------------------------------- #
def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's full (unsharded) state dict on the CPU, on every rank: DTensors of TP and FSDP2
    are gathered (every rank must call this)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True,
                                                                broadcast_from_rank0=False))


def save_pretrained_full(model: nn.Module, path: str | os.PathLike, *, is_main: Optional[bool] = None) -> Path:
    """A single-device ``save_pretrained`` folder of a TP / FSDP2-sharded model (all ranks call)."""
    import torch.distributed as dist

    path = Path(path)
    state = full_state_dict(model)
    if is_main is None:
        is_main = not dist.is_initialized() or dist.get_rank() == 0
    if is_main:
        model.save_pretrained(path, state_dict=state, safe_serialization=True)
    if dist.is_initialized():
        dist.barrier()
    return path


def _sharded_state(model: nn.Module, optimizer: Optional[torch.optim.Optimizer]) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    state = {"model": get_model_state_dict(model)}
    if optimizer is not None:
        state["optim"] = get_optimizer_state_dict(model, optimizer)
    return state


def _split_tensors(tree: Any, prefix: str, tensors: dict, other: dict) -> None:
    if isinstance(tree, dict):
        for key, value in tree.items():
            _split_tensors(value, f"{prefix}.{key}" if prefix else str(key), tensors, other)
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            _split_tensors(value, f"{prefix}.{i}", tensors, other)
    elif isinstance(tree, torch.Tensor):
        tensors[prefix] = tree
    else:
        other[prefix] = tree


ALIASES_KEY = "__aliases__"


def _flatten(state: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors by dotted name (a tensor shared under two names, e.g. a tied head, is kept once and
    the other name recorded in ``other[ALIASES_KEY]``) and the non-tensor leaves."""
    tensors: dict[str, torch.Tensor] = {}
    other: dict[str, Any] = {}
    _split_tensors(state, "", tensors, other)
    seen: dict[Any, str] = {}
    aliases: dict[str, str] = {}
    for name, t in list(tensors.items()):
        data = t.to_local() if hasattr(t, "to_local") else t
        key = (data.data_ptr(), tuple(data.shape), tuple(data.stride()), data.dtype) if data.numel() else id(t)
        if key in seen:
            aliases[name] = seen[key]
            del tensors[name]
        else:
            seen[key] = name
    other[ALIASES_KEY] = aliases
    return tensors, other


def _unflatten_into(state: Any, tensors: dict[str, torch.Tensor], other: dict[str, Any], prefix: str = "") -> Any:
    if isinstance(state, dict):
        return {k: _unflatten_into(v, tensors, other, f"{prefix}.{k}" if prefix else str(k)) for k, v in state.items()}
    if isinstance(state, list):
        return [_unflatten_into(v, tensors, other, f"{prefix}.{i}") for i, v in enumerate(state)]
    if isinstance(state, torch.Tensor):
        return tensors[other[ALIASES_KEY].get(prefix, prefix)]
    return other.get(prefix, state)


SHARDED_DIR = "sharded"
SCALARS_FILE = "sharded_scalars.json"


def save_sharded_checkpoint(path: str | os.PathLike, model: nn.Module,
                            optimizer: Optional[torch.optim.Optimizer] = None) -> Path:
    """Save the model (and optimizer) of a TP / FSDP2 mesh with torch's distributed checkpoint:
    each rank writes its own shards as safetensors (Hugging Face storage, JSON index, no pickle);
    the non-tensor optimizer entries (step counts, hyper-parameters) go to a JSON file. All ranks call."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    path = Path(path)
    tensors, other = _flatten(_sharded_state(model, optimizer))
    dcp.save(tensors, storage_writer=HuggingFaceStorageWriter(str(path / SHARDED_DIR), save_distributed=True))
    if not dist.is_initialized() or dist.get_rank() == 0:
        (path / SCALARS_FILE).write_text(json.dumps(other, indent=1, sort_keys=True))
    if dist.is_initialized():
        dist.barrier()
    return path


def load_sharded_checkpoint(path: str | os.PathLike, model: nn.Module,
                            optimizer: Optional[torch.optim.Optimizer] = None) -> None:
    """Load what :func:`save_sharded_checkpoint` wrote into an identically parallelised model
    (and optimizer). All ranks call."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    path = Path(path)
    if not (path / SHARDED_DIR).is_dir():
        raise UsageError(f"{path} holds no sharded checkpoint ({SHARDED_DIR}/ is missing); pass the folder "
                         "a tensor-parallel run saved.")
    state = _sharded_state(model, optimizer)
    tensors, other = _flatten(state)
    dcp.load(tensors, storage_reader=HuggingFaceStorageReader(str(path / SHARDED_DIR)))
    saved_other = json.loads((path / SCALARS_FILE).read_text())
    restored = _unflatten_into(state, tensors, {**other, **saved_other})
    set_model_state_dict(model, restored["model"])
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, restored["optim"])


__all__ = [
    "ParallelDims",
    "TrainerParallel",
    "clip_grad_norm_",
    "data_parallel_rank_for",
    "allowed_tp_sizes",
    "apply_fsdp",
    "apply_tensor_parallel",
    "build_device_mesh",
    "check_tp_size",
    "data_parallel_rank",
    "dp_mesh",
    "expand_plan",
    "full_state_dict",
    "load_sharded_checkpoint",
    "loss_parallel_context",
    "model_tp_plan",
    "parallelism_config",
    "parallelize",
    "register_parallel_styles",
    "save_pretrained_full",
    "save_sharded_checkpoint",
    "tp_mesh",
]
