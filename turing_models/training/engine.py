"""Engine setup: the :class:`accelerate.Accelerator` for a :class:`TrainerConfig`.

``TrainerConfig.distributed`` names the engine (DDP, FSDP2, DeepSpeed ZeRO-2/3, + offload) for a
run started by ``torchrun``; ``none`` keeps whatever ``accelerate launch --config_file`` set up.
Setting both is refused, and so is a DeepSpeed engine without a launcher. Two patches make the
engines run on the CPU (gloo), which the test-suite uses:

* DeepSpeed's CPU accelerator: Accelerate records a single process; the ranks are fixed here;
* FSDP2: Accelerate switches FSDP on for accelerator devices only; ``fully_shard`` itself runs on
  the CPU, so it is switched on here.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import torch

from ..errors import UsageError
from .config import CONFIGS_DIR, TrainerConfig

logger = logging.getLogger(__name__)

DISTRIBUTED_DIR = CONFIGS_DIR / "distributed"  # package data: works from a wheel too

_LAUNCHED_BY = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")


def _accelerate_launch_engine() -> str | None:
    """The engine an ``accelerate launch`` config asked for (through its environment), if any."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "")
        return f"DeepSpeed ZeRO-{stage}" if stage else "DeepSpeed"
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        return f"FSDP{os.environ.get('FSDP_VERSION', '1')}"
    return None


#: what ``accelerate launch`` reports for each ``train.distributed`` engine it can also set up
_LAUNCH_NAMES = {"fsdp2": "FSDP2", "zero2": "DeepSpeed ZeRO-2",
                 "zero3": "DeepSpeed ZeRO-3", "zero3_offload": "DeepSpeed ZeRO-3"}


def check_launch(config: TrainerConfig) -> str:
    """The engine to set up here: ``config.distributed``, or ``"none"`` when an ``accelerate
    launch`` config already asks for the same engine (its settings then apply). An engine that
    conflicts with the launch config, or cannot start as launched, is refused in one line that says
    how to launch it."""
    engine = config.distributed
    launched = _accelerate_launch_engine()
    if engine != "none" and launched is not None:
        if _LAUNCH_NAMES.get(engine) == launched:
            logger.info("train.distributed=%s: the accelerate launch config sets up %s", engine, launched)
            return "none"
        raise UsageError(
            f"train.distributed={engine} conflicts with the accelerate launch config, which asks for "
            f"{launched}; set the engine in one place: drop train.distributed (or set it to none) under "
            "accelerate launch, or start the run with torchrun")
    if engine.startswith("zero") and not all(k in os.environ for k in _LAUNCHED_BY):
        n = max(torch.cuda.device_count(), 1)
        command = " ".join(shlex.quote(a) for a in sys.argv) if sys.argv and sys.argv[0] else "<recipe> ..."
        raise UsageError(
            f"train.distributed={engine} (DeepSpeed) needs a launcher; run: torchrun --nproc_per_node {n} "
            f"{command}")
    return engine


def resolve_precision(precision: str) -> str:
    if precision == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    return precision


def build_accelerator(config: TrainerConfig, accumulation: int):
    """An Accelerator for ``config``: the engine named by ``config.distributed`` (under torchrun),
    else whatever ``accelerate launch`` configured through its environment."""
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin

    engine = check_launch(config)
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[resolve_precision(config.precision)]
    kwargs: dict[str, Any] = dict(mixed_precision=mixed, gradient_accumulation_steps=accumulation,
                                  step_scheduler_with_optimizer=False)
    if engine == "fsdp2":
        kwargs["fsdp_plugin"] = FullyShardedDataParallelPlugin(
            fsdp_version=2, auto_wrap_policy="transformer_based_wrap", reshard_after_forward=True,
            state_dict_type="SHARDED_STATE_DICT", cpu_ram_efficient_loading=False,
        )
    elif engine.startswith("zero"):
        path = DISTRIBUTED_DIR / f"ds_{engine}.json"
        ds_config = json.loads(path.read_text())
        kwargs["deepspeed_plugin"] = DeepSpeedPlugin(hf_ds_config=ds_config)
    if not torch.cuda.is_available() and not engine.startswith("zero"):
        kwargs["cpu"] = True  # DeepSpeed runs on its CPU accelerator only when cpu is not forced
    accelerator = Accelerator(**kwargs)
    if (accelerator.distributed_type == DistributedType.DEEPSPEED and not torch.cuda.is_available()
            and torch.distributed.is_initialized()):
        # DeepSpeed's CPU accelerator: Accelerate initialises the process group through DeepSpeed
        # but, with no device backend, records a single process; fix the ranks.
        from accelerate import PartialState

        for state in (PartialState(), accelerator.state):
            state.num_processes = torch.distributed.get_world_size()
            state.process_index = torch.distributed.get_rank()
            state.local_process_index = int(os.environ.get("LOCAL_RANK", "0"))
            state.backend = torch.distributed.get_backend()
    if engine == "fsdp2" and accelerator.distributed_type == DistributedType.MULTI_CPU:
        # FSDP2 (fully_shard) runs on the CPU with gloo; Accelerate only enables it on devices.
        from accelerate import PartialState

        PartialState().distributed_type = DistributedType.FSDP
        accelerator.state.distributed_type = DistributedType.FSDP
        accelerator.state.fsdp_plugin = kwargs["fsdp_plugin"]
    return accelerator


def fill_deepspeed_config(accelerator, config: TrainerConfig, accumulation: int) -> None:
    """Write this run's batch and clipping numbers into the DeepSpeed config (no "auto" left)."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        return
    ds = plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = config.micro_batch_size
    ds["gradient_accumulation_steps"] = accumulation
    ds["train_batch_size"] = config.global_batch_size
    ds["gradient_clipping"] = config.grad_clip
    ds["zero_allow_untested_optimizer"] = True
    ds.setdefault("zero_force_ds_cpu_optimizer", False)
    ds["steps_per_print"] = 1 << 30


def engine_kind(accelerator) -> str:
    """``"deepspeed"``, ``"fsdp"`` or ``"torch"`` (plain / DDP): how states are gathered."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return "deepspeed"
    if accelerator.distributed_type == DistributedType.FSDP:
        return "fsdp"
    return "torch"


def base_optimizer(optimizer) -> torch.optim.Optimizer:
    """The torch optimizer under Accelerate's (and DeepSpeed's) wrappers."""
    opt = optimizer
    for _ in range(4):
        inner = getattr(opt, "optimizer", None)
        if inner is None:
            break
        opt = inner
    return opt
