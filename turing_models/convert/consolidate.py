"""A training checkpoint -> one ``save_pretrained`` folder, without unpickling anything.

=====================  =========================================================================
layout                 model weights in ``checkpoints/step-XXXXXXXX/``
=====================  =========================================================================
the trainer's own      ``model.safetensors``: the full model, whatever engine trained it (plain,
                       DDP, FSDP2, ZeRO-1/2/3); the folder's ``manifest.json`` is verified first
DeepSpeed's own        ``<tag>/*_model_states.pt`` + per-rank ``*_optim_states.pt`` (fp32 master
(``engine.save_checkpoint``)  weight partitions) and a ``latest`` file: read with
                       :func:`~turing_models.io.safe_torch_load`, admitting only DeepSpeed's ``LossScaler``
                       / ``DynamicLossScaler``, ``ZeroStageEnum`` and ``fragment_address``, then
                       merged by DeepSpeed's own ``zero_to_fp32`` merge functions
torch.distributed.checkpoint  ``pytorch_model_fsdp_0/`` (what Accelerate writes for FSDP): refused,
                       because DCP's ``.metadata`` is a pickle; convert it in a trusted environment
                       (``dcp_to_torch_save``) to ``pytorch_model.bin``, which is read safely
=====================  =========================================================================

:func:`consolidate` checks every tensor against the model config and writes a folder that
``from_pretrained`` loads (safetensors, + tokenizer), under a temporary name renamed when
complete. The trainer's ``save_final`` does the same at the end of a run from the live model; this
is for checkpoints taken during a run, or a run that never finished. No GPU and no process group
are needed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

import torch

from ..errors import UsageError
from ..io import (MANIFEST_FILE, atomic_directory, load_safetensors, newest_verified, numbered_dirs, read_json,
                  safe_torch_load, verify_manifest)

PathLike = Union[str, os.PathLike]
FSDP_DIR = "pytorch_model_fsdp_0"
DEEPSPEED_DIR = "pytorch_model"


def find_checkpoint(path: PathLike) -> Path:
    """A step folder: ``path`` itself, or the newest usable ``step-*`` of a run folder (or of its
    ``checkpoints/`` folder): the newest whose manifest verifies, else (a checkpoint written by
    DeepSpeed itself, with no manifest) the newest holding model weights."""
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"checkpoint {path} does not exist; pass a checkpoints/runs/<run> folder or one of its "
                         "step-* folders.")
    if detect_format(path) is not None:
        return path
    for folder in (path / "checkpoints", path):
        steps = numbered_dirs(folder, "step-")
        verified, _ = newest_verified(steps)
        if verified is not None:
            return verified
        foreign = [p for p in steps if not (p / MANIFEST_FILE).is_file() and detect_format(p)]
        if foreign:
            return foreign[-1]
    raise UsageError(f"{path} holds no training checkpoint (no complete step-* folder with model weights); "
                     "pass a run folder written by the trainer or one of its step-* folders.")


def detect_format(step_dir: PathLike) -> Optional[str]:
    """``"plain"``, ``"fsdp"``, ``"deepspeed"`` or ``None`` (not a checkpoint)."""
    step_dir = Path(step_dir)
    if (step_dir / FSDP_DIR).is_dir():
        return "fsdp"
    if (step_dir / DEEPSPEED_DIR).is_dir() or (step_dir / "latest").is_file():
        return "deepspeed"
    if (step_dir / "model.safetensors").is_file() or (step_dir / "pytorch_model.bin").is_file():
        return "plain"
    return None


def load_checkpoint_state_dict(step_dir: PathLike) -> dict[str, torch.Tensor]:
    """The full, unsharded model state dict of a step folder, on the CPU."""
    step_dir = Path(step_dir)
    kind = detect_format(step_dir)
    if kind is None:
        raise UsageError(f"{step_dir} has no model weights (model.safetensors or DeepSpeed's {DEEPSPEED_DIR}/); "
                         "pass a step-* folder written by the trainer.")
    if (step_dir / MANIFEST_FILE).is_file():
        reason = verify_manifest(step_dir)
        if reason is not None:
            raise UsageError(f"checkpoint {step_dir} does not verify ({reason}); consolidate an earlier step-* folder.")
    if kind == "plain":
        if (step_dir / "model.safetensors").is_file():
            return load_safetensors(step_dir / "model.safetensors")
        state = safe_torch_load(step_dir / "pytorch_model.bin")
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]  # dcp_to_torch_save of Accelerate's {"model": ...} layout
        if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
            raise UsageError(f"{step_dir / 'pytorch_model.bin'} holds no model state dict (name -> tensor).")
        return state
    if kind == "fsdp":
        raise UsageError(
            f"{step_dir / FSDP_DIR} is a torch.distributed.checkpoint folder, whose .metadata is a pickle and is never "
            "read here; in an environment you trust, convert it with "
            "`python -m torch.distributed.checkpoint.format_utils "
            f"dcp_to_torch {step_dir / FSDP_DIR} {step_dir / 'pytorch_model.bin'}` and consolidate again.")
    return deepspeed_state_dict(step_dir)


def _deepspeed_safe_globals() -> list:
    """The DeepSpeed classes its ZeRO checkpoints name: plain-data objects (an enum, a dataclass of
    two ints, loss scalers' attribute dicts) that the restricted unpickler may rebuild."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def deepspeed_state_dict(step_dir: PathLike) -> dict[str, torch.Tensor]:
    """The fp32 model of a checkpoint DeepSpeed wrote itself (``engine.save_checkpoint``), read with
    :func:`~turing_models.io.safe_torch_load` and merged by DeepSpeed's ``zero_to_fp32`` functions
    (never its loader, which unpickles)."""
    step_dir = Path(step_dir)
    try:
        from deepspeed.checkpoint import constants as C
        from deepspeed.utils import zero_to_fp32 as z
    except ImportError:
        raise UsageError(f"{step_dir} is a DeepSpeed checkpoint; install deepspeed to consolidate it.") from None
    tag = DEEPSPEED_DIR
    if (step_dir / "latest").is_file():
        tag = (step_dir / "latest").read_text(errors="replace").strip()
    ds_dir = (step_dir / tag)
    if not tag or "/" in tag or "\\" in tag or tag in (".", "..") or not ds_dir.is_dir():
        raise UsageError(f"{step_dir}/latest names {tag!r}, which is not a folder of this checkpoint; "
                         "pass the step folder DeepSpeed wrote.")
    model_files = sorted(ds_dir.glob("*_model_states.pt"), key=lambda p: z.natural_keys(p.name))
    optim_files = sorted(ds_dir.glob("*_optim_states.pt"), key=lambda p: z.natural_keys(p.name))
    if not model_files or not optim_files:
        raise UsageError(f"{ds_dir} lacks DeepSpeed's *_model_states.pt / *_optim_states.pt files; "
                         "the checkpoint is incomplete.")
    allowed = _deepspeed_safe_globals()
    damaged = f"{ds_dir} is not a complete DeepSpeed ZeRO checkpoint"
    try:
        model_states = []
        for file in model_files:
            sd = safe_torch_load(file, safe_globals=allowed)
            buffers = {k: v.float() if v.is_floating_point() else v
                       for k, v in sd["module"].items() if k in sd[C.BUFFER_NAMES]}
            model_states.append(z.zero_model_state(
                buffers=buffers, param_shapes=sd[C.PARAM_SHAPES],
                shared_params=[[k, v] for k, v in sd["shared_params"].items()],
                ds_version=sd.get(C.DS_VERSION), frozen_param_shapes=sd.get(C.FROZEN_PARAM_SHAPES),
                frozen_param_fragments=sd.get(C.FROZEN_PARAM_FRAGMENTS)))
        optim = []
        for file in optim_files:
            sd = safe_torch_load(file, safe_globals=allowed)[C.OPTIMIZER_STATE_DICT]
            sd.pop(C.OPTIMIZER_STATE_DICT, None)
            optim.append(sd)
        stage = int(optim[0][C.ZERO_STAGE])
        world = optim[0][C.PARTITION_COUNT]
        world = max(world) if isinstance(world, list) else int(world)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        if isinstance(exc, UsageError):
            raise
        raise UsageError(f"{damaged} (missing {exc}).") from None
    if world != len(optim_files):
        raise UsageError(f"{damaged}: it was written by {world} ranks but holds {len(optim_files)} optimizer files.")
    if stage <= 2:
        groups = [sd[C.SINGLE_PARTITION_OF_FP32_GROUPS] for sd in optim]
        state = z._get_fp32_state_dict_from_zero2_checkpoint(world, groups, model_states, False,
                                                              optim[0].get(C.PARAM_ALIGNMENT_PADDINGS))
    elif stage == 3:
        groups = [sd[C.FP32_FLAT_GROUPS] for sd in optim]
        state = z._get_fp32_state_dict_from_zero3_checkpoint(world, groups, model_states, False)
    else:
        raise UsageError(f"{damaged} (unknown ZeRO stage {stage}).")
    state = z.to_torch_tensor(state)
    return {k: v.detach().clone() if not v.is_contiguous() else v.detach() for k, v in state.items()}


def _find_config(step_dir: Path, config: Optional[PathLike]) -> Path:
    candidates = []
    if config is not None:
        config = Path(config)
        candidates.append(config / "config.json" if config.is_dir() else config)
        if not candidates[0].is_file():
            raise UsageError(f"model config {config} not found; pass a config.json or a folder holding one.")
    run_dir = step_dir.parent.parent if step_dir.parent.name == "checkpoints" else step_dir.parent
    candidates += [step_dir / "config.json", run_dir / "final" / "config.json"]
    for file in candidates:
        if file.is_file():
            return file
    raise UsageError(f"no model config for {step_dir}: pass --config with the model's config.json (or a "
                     "save_pretrained folder of the same model), e.g. the run's final/ folder.")


def _model_class(config: Any):
    """The head the checkpoint's config names (``architectures``), registered Auto classes as fallback."""
    import transformers

    import turing_models.nlg  # noqa: F401  (registers the Turing classes)
    import turing_models.nlu  # noqa: F401

    arch = (getattr(config, "architectures", None) or [None])[0]
    for module in ("turing_models.nlg", "turing_models.nlu"):
        mod = __import__(module, fromlist=["_"])
        if arch and hasattr(mod, arch):
            return getattr(mod, arch)
    if arch and hasattr(transformers, arch):
        return getattr(transformers, arch)
    auto = transformers.AutoModelForCausalLM if config.model_type == "turing_nlg" else transformers.AutoModel
    return auto._model_mapping[type(config)]


def consolidate(
    checkpoint: PathLike,
    out_dir: PathLike,
    *,
    config: Optional[PathLike] = None,
    tokenizer: Optional[PathLike] = None,
    dtype: Optional[torch.dtype] = None,
) -> dict[str, Any]:
    """Write the model of a training checkpoint as a ``save_pretrained`` folder.

    Args:
        checkpoint: a ``step-*`` folder, or a run folder (its newest complete checkpoint is used).
        out_dir: the folder to write (replaced when it exists).
        config: the model's ``config.json`` or a folder holding one; default: the step folder's,
            else the run's ``final/``.
        tokenizer: a folder or built-in name whose tokenizer is saved alongside; default: the run's
            ``final/`` tokenizer when there is one.
        dtype: cast floating-point weights (default: as stored, fp32 for ZeRO masters).

    Returns ``{"checkpoint", "format", "out_dir", "tensors", "parameters"}``.
    """
    from transformers import AutoConfig

    step_dir = find_checkpoint(checkpoint)
    kind = detect_format(step_dir)
    config_file = _find_config(step_dir, config)
    import turing_models.nlg  # noqa: F401
    import turing_models.nlu  # noqa: F401

    model_config = AutoConfig.from_pretrained(str(config_file.parent)) if config_file.name == "config.json" \
        else AutoConfig.from_pretrained(str(config_file))
    cls = _model_class(model_config)
    state = load_checkpoint_state_dict(step_dir)
    state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}

    with torch.device("meta"):
        model = cls(model_config)
    expected = model.state_dict()
    unknown = sorted(set(state) - set(expected))
    if unknown:
        raise UsageError(f"{step_dir}: {len(unknown)} tensors are not part of {cls.__name__}, e.g. {unknown[:3]}; "
                         "the config does not belong to this checkpoint (pass the right one with --config).")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise UsageError(f"{step_dir}: tensor {key!r} has shape {list(tensor.shape)} but the config needs "
                             f"{list(expected[key].shape)}; pass the model's own config with --config.")
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    missing = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
    if missing:
        raise UsageError(f"{step_dir}: the checkpoint lacks {len(missing)} tensors of {cls.__name__}, e.g. "
                         f"{missing[:3]}; it is incomplete or belongs to another model.")

    tok = _load_tokenizer(tokenizer, step_dir)
    out = Path(out_dir)
    with atomic_directory(out, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tok is not None:
            tok.save_pretrained(tmp)
    params = sum(p.numel() for p in model.parameters())
    return {"checkpoint": str(step_dir), "format": kind, "out_dir": str(out), "tensors": len(state),
            "parameters": params, "architecture": cls.__name__}


def _load_tokenizer(tokenizer: Optional[PathLike], step_dir: Path):
    if tokenizer is None:
        run_dir = step_dir.parent.parent if step_dir.parent.name == "checkpoints" else step_dir.parent
        final = run_dir / "final"
        if not any((final / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
            return None
        tokenizer = final
    from ..data import load_tokenizer

    return load_tokenizer(str(tokenizer))


def read_trainer_state(step_dir: PathLike) -> dict[str, Any]:
    """``trainer_state.json`` of a step folder (step, tokens seen, ...), or ``{}``."""
    file = Path(step_dir) / "trainer_state.json"
    if not file.is_file():
        return {}
    try:
        data = read_json(file)
    except UsageError:
        return {}
    return data if isinstance(data, dict) else {}


__all__ = ["consolidate", "deepspeed_state_dict", "detect_format", "find_checkpoint", "load_checkpoint_state_dict",
           "read_trainer_state"]
