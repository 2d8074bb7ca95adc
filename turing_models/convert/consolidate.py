"""A training checkpoint (plain, FSDP2 sharded or DeepSpeed ZeRO) -> one ``save_pretrained`` folder.

The trainer writes checkpoints with ``Accelerator.save_state`` (see
:mod:`turing_models.training.checkpoint`); what the model weights look like depends on the engine:

=====================  =========================================================================
engine                 model weights in ``checkpoints/step-XXXXXXXX/``
=====================  =========================================================================
none / DDP             ``model.safetensors`` (a full copy)
FSDP2                  ``pytorch_model_fsdp_0/`` (torch.distributed.checkpoint shards, one per rank)
DeepSpeed ZeRO 1-3     ``pytorch_model/`` (``*_model_states.pt`` + per-rank ``*_optim_states.pt``
                       holding the fp32 master weights) and a ``latest`` file
=====================  =========================================================================

:func:`consolidate` gathers them with the engines' own tools (accelerate's ``merge_fsdp_weights``,
DeepSpeed's ``zero_to_fp32``), checks every tensor against the model config, and writes a folder
that ``from_pretrained`` loads (safetensors, + tokenizer), under a temporary name renamed when
complete. The trainer's ``save_final`` does the same at the end of a run from the live model; this
is for checkpoints taken during a run, or a run that never finished. No GPU and no process group
are needed.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

import torch

from ..io import atomic_directory
from ..errors import UsageError

PathLike = Union[str, os.PathLike]
FSDP_DIR = "pytorch_model_fsdp_0"
DEEPSPEED_DIR = "pytorch_model"


def find_checkpoint(path: PathLike) -> Path:
    """A step folder: ``path`` itself, or the newest complete ``step-*`` of a run folder (or of its
    ``checkpoints/`` folder)."""
    from ..training import checkpoint as ckpt

    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"checkpoint {path} does not exist; pass a checkpoints/runs/<run> folder or one of its step-* folders.")
    if detect_format(path) is not None:
        return path
    for folder in (path / "checkpoints", path):
        found = ckpt.list_checkpoints(folder, warn=False)
        if found:
            return found[-1]
    raise UsageError(f"{path} holds no training checkpoint (no step-* folder with model weights); "
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
        raise UsageError(f"{step_dir} has no model weights (model.safetensors, {FSDP_DIR}/ or {DEEPSPEED_DIR}/); "
                         "pass a step-* folder written by the trainer.")
    if kind == "plain":
        if (step_dir / "model.safetensors").is_file():
            from safetensors.torch import load_file

            return load_file(str(step_dir / "model.safetensors"))
        return torch.load(step_dir / "pytorch_model.bin", map_location="cpu", weights_only=True)
    if kind == "fsdp":
        from accelerate.utils import merge_fsdp_weights
        from safetensors.torch import load_file

        with tempfile.TemporaryDirectory(prefix="turing-consolidate-") as tmp:
            merge_fsdp_weights(str(step_dir / FSDP_DIR), tmp, safe_serialization=True)
            return load_file(str(Path(tmp) / "model.safetensors"))
    try:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    except ImportError:
        raise UsageError(f"{step_dir} is a DeepSpeed checkpoint; install deepspeed to consolidate it.") from None
    tag = None if (step_dir / "latest").is_file() else DEEPSPEED_DIR
    state = get_fp32_state_dict_from_zero_checkpoint(str(step_dir), tag=tag)
    return {k: v.detach().clone() if not v.is_contiguous() else v for k, v in state.items()}


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
        return json.loads(file.read_text())
    except json.JSONDecodeError:
        return {}


__all__ = ["consolidate", "detect_format", "find_checkpoint", "load_checkpoint_state_dict", "read_trainer_state"]
