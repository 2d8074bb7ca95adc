"""GPT-2 <-> TuringNLG: configs, state dicts, load-time conversion and export.

GPT-2 (transformers' ``GPT2LMHeadModel``) and TuringNLG are the same architecture with different
parameter names and layouts:

=============================  ==========================================  =====================
GPT-2                          TuringNLG                                   change
=============================  ==========================================  =====================
``wte`` / ``wpe``              ``model.embed_tokens`` / ``embed_positions``
``h.i.ln_1`` / ``ln_2``        ``model.layers.i.input_layernorm`` / ``post_attention_layernorm``
``h.i.attn.c_attn``            ``model.layers.i.attention.qkv``            Conv1D ``[in, out]`` -> Linear ``[out, in]``
``h.i.attn.c_proj``            ``model.layers.i.attention.dense``          transpose
``h.i.mlp.c_fc`` / ``c_proj``  ``model.layers.i.mlp.fc_in`` / ``fc_out``   transpose
``ln_f``                       ``model.norm_f``
``lm_head`` (tied to ``wte``)  ``lm_head`` (tied to ``embed_tokens``)
=============================  ==========================================  =====================

GPT-2's ``gelu_new`` is the tanh approximation of GeLU, TuringNLG's ``activation="gelu_tanh"``.
Both store the fused QKV output as ``[q | k | v]``, so no reordering is needed.

``TuringNLG.from_pretrained(x)`` calls :func:`load_pretrained`: ``x`` (a folder or Hub id) whose
``config.json`` says ``model_type: "gpt2"`` is converted on load; ``"turing_nlg"`` loads natively;
anything else, a tensor of the wrong shape or missing weight files raise one
:class:`~turing_models.errors.UsageError`. Names and shapes are checked from the file headers first;
then the model is built on the meta device and the tensors are read, converted and assigned one at a
time, so loading holds one copy of the weights (``benchmarks/load.py`` measures the peak). :func:`export_gpt2` writes a folder that
``GPT2LMHeadModel.from_pretrained`` loads.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional, Union

if TYPE_CHECKING:  # torch is imported where it is used, so path checks stay instant
    import torch

from ..errors import UsageError

GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
NLG_TO_GPT2_ACTIVATION = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}
HUB_KWARGS = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder")

# GPT-2 name (without "transformer.") -> (TuringNLG name, is a Conv1D weight that is transposed)
_LAYER_MAP = {
    "ln_1.weight": ("input_layernorm.weight", False),
    "ln_1.bias": ("input_layernorm.bias", False),
    "attn.c_attn.weight": ("attention.qkv.weight", True),
    "attn.c_attn.bias": ("attention.qkv.bias", False),
    "attn.c_proj.weight": ("attention.dense.weight", True),
    "attn.c_proj.bias": ("attention.dense.bias", False),
    "ln_2.weight": ("post_attention_layernorm.weight", False),
    "ln_2.bias": ("post_attention_layernorm.bias", False),
    "mlp.c_fc.weight": ("mlp.fc_in.weight", True),
    "mlp.c_fc.bias": ("mlp.fc_in.bias", False),
    "mlp.c_proj.weight": ("mlp.fc_out.weight", True),
    "mlp.c_proj.bias": ("mlp.fc_out.bias", False),
}
_TOP_MAP = {
    "wte.weight": "model.embed_tokens.weight",
    "wpe.weight": "model.embed_positions.weight",
    "ln_f.weight": "model.norm_f.weight",
    "ln_f.bias": "model.norm_f.bias",
    "lm_head.weight": "lm_head.weight",
}
_IGNORED = re.compile(r"(^|\.)attn\.(bias|masked_bias)$")


# --------------------------------------------------------------------------------------------- #
# Configs
# --------------------------------------------------------------------------------------------- #
def gpt2_config_to_nlg(gpt2: Union[dict, Any], **overrides):
    """A :class:`TuringNLGConfig` equivalent to a GPT-2 config (object or ``config.json`` dict)."""
    from ..nlg.configuration_turing_nlg import TuringNLGConfig

    g = gpt2 if isinstance(gpt2, dict) else gpt2.to_dict()
    act = g.get("activation_function", "gelu_new")
    if act not in GPT2_ACTIVATIONS:
        raise UsageError(
            f"GPT-2 checkpoint: activation_function={act!r} has no TuringNLG equivalent; "
            f"supported: {', '.join(GPT2_ACTIVATIONS)}."
        )
    for key, ok in (("add_cross_attention", False), ("scale_attn_by_inverse_layer_idx", False),
                    ("scale_attn_weights", True)):
        if bool(g.get(key, ok)) != ok:
            raise UsageError(f"GPT-2 checkpoint: {key}={g.get(key)!r} is not supported by TuringNLG (needs {ok}).")
    hidden = g.get("n_embd", 768)
    values = dict(
        vocab_size=g.get("vocab_size", 50257),
        real_vocab_size=g.get("vocab_size", 50257),
        max_position_embeddings=g.get("n_positions", 1024),
        hidden_size=hidden,
        num_hidden_layers=g.get("n_layer", 12),
        num_attention_heads=g.get("n_head", 12),
        intermediate_size=g.get("n_inner") or 4 * hidden,
        activation=GPT2_ACTIVATIONS[act],
        layer_norm_eps=g.get("layer_norm_epsilon", 1e-5),
        hidden_dropout=g.get("resid_pdrop", 0.1),
        attention_dropout=g.get("attn_pdrop", 0.1),
        initializer_range=g.get("initializer_range", 0.02),
        tie_word_embeddings=g.get("tie_word_embeddings", True),
        bos_token_id=g.get("bos_token_id", 50256),
        eos_token_id=g.get("eos_token_id", 50256),
        pad_token_id=g.get("pad_token_id"),
    )
    values.update(overrides)
    return TuringNLGConfig(**values)


def nlg_config_to_gpt2(config):
    """A transformers ``GPT2Config`` for a TuringNLG config (real vocabulary only, no padding rows)."""
    from transformers import GPT2Config

    if config.activation not in NLG_TO_GPT2_ACTIVATION:
        raise UsageError(f"activation={config.activation!r} cannot be expressed in GPT-2.")
    return GPT2Config(
        vocab_size=config.real_vocab_size,
        n_positions=config.max_position_embeddings,
        n_embd=config.hidden_size,
        n_layer=config.num_hidden_layers,
        n_head=config.num_attention_heads,
        n_inner=config.intermediate_size,
        activation_function=NLG_TO_GPT2_ACTIVATION[config.activation],
        resid_pdrop=config.hidden_dropout,
        embd_pdrop=config.hidden_dropout,
        attn_pdrop=config.attention_dropout,
        layer_norm_epsilon=config.layer_norm_eps,
        initializer_range=config.initializer_range,
        tie_word_embeddings=config.tie_word_embeddings,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )


# --------------------------------------------------------------------------------------------- #
# State dicts
# --------------------------------------------------------------------------------------------- #
def _gpt2_key_to_nlg(key: str) -> Optional[tuple[str, bool]]:
    name = key[len("transformer."):] if key.startswith("transformer.") else key
    if name in _TOP_MAP:
        return _TOP_MAP[name], False
    m = re.fullmatch(r"h\.(\d+)\.(.+)", name)
    if m and m.group(2) in _LAYER_MAP:
        target, transpose = _LAYER_MAP[m.group(2)]
        return f"model.layers.{m.group(1)}.{target}", transpose
    return None


def _gpt2_plan(
    shapes: dict[str, tuple[int, ...]], expected_shapes: Optional[dict[str, torch.Size]] = None
) -> dict[str, tuple[str, bool]]:
    """``{gpt2 key: (TuringNLG name, transpose)}`` for checkpoint tensors of the given shapes.

    Checks names and (with ``expected_shapes``) shapes before any tensor data is read: an unknown
    tensor, or one of the wrong shape, raises one :class:`UsageError`.
    """
    plan: dict[str, tuple[str, bool]] = {}
    unknown = []
    for key, shape in shapes.items():
        if _IGNORED.search(key):
            continue
        mapped = _gpt2_key_to_nlg(key)
        if mapped is None:
            unknown.append(key)
            continue
        target, transpose = mapped
        if expected_shapes is not None and target in expected_shapes:
            want = tuple(expected_shapes[target])
            want_ckpt = tuple(reversed(want)) if transpose else want
            if tuple(shape) != want_ckpt:
                raise UsageError(
                    f"GPT-2 checkpoint tensor {key!r} has shape {list(shape)} but its config needs "
                    f"{list(want_ckpt)}; the weights and config.json do not belong together."
                )
        plan[key] = mapped
    if unknown:
        raise UsageError(
            f"GPT-2 checkpoint has {len(unknown)} tensors TuringNLG does not know, e.g. {unknown[:3]}; "
            "only plain GPT2LMHeadModel / GPT2Model checkpoints convert."
        )
    return plan


def _convert_tensor(tensor: torch.Tensor, transpose: bool, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """One GPT-2 tensor in TuringNLG layout (Conv1D ``[in, out]`` -> Linear ``[out, in]``)."""
    if dtype is not None and tensor.is_floating_point():
        tensor = tensor.to(dtype)
    return tensor.t().contiguous() if transpose else tensor


def gpt2_to_nlg_state_dict(
    state_dict: dict[str, torch.Tensor], expected_shapes: Optional[dict[str, torch.Size]] = None
) -> dict[str, torch.Tensor]:
    """GPT-2 tensors (with or without the ``transformer.`` prefix) -> ``TuringNLGForCausalLM`` names.

    With ``expected_shapes`` (the target model's ``{name: shape}``), a tensor of the wrong shape
    raises a :class:`UsageError` naming it and both shapes, in the checkpoint's own layout.
    (Loading from files streams instead, see :func:`load_pretrained`.)
    """
    plan = _gpt2_plan({k: tuple(v.shape) for k, v in state_dict.items()}, expected_shapes)
    return {target: _convert_tensor(state_dict[key], transpose) for key, (target, transpose) in plan.items()}


def nlg_to_gpt2_state_dict(state_dict: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """``TuringNLGForCausalLM`` tensors -> ``GPT2LMHeadModel`` names (padded vocabulary rows dropped)."""
    inverse_top = {v: k for k, v in _TOP_MAP.items()}
    inverse_layer = {v[0]: (k, v[1]) for k, v in _LAYER_MAP.items()}
    real = config.real_vocab_size
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if key == "lm_head.weight":
            if config.tie_word_embeddings:
                continue
            out["lm_head.weight"] = tensor[:real].contiguous()
            continue
        if key in inverse_top:
            if key == "model.embed_tokens.weight":
                tensor = tensor[:real]
            out["transformer." + inverse_top[key]] = tensor.contiguous()
            continue
        m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", key)
        if not m or m.group(2) not in inverse_layer:
            raise UsageError(f"TuringNLG tensor {key!r} has no GPT-2 equivalent.")
        name, transpose = inverse_layer[m.group(2)]
        out[f"transformer.h.{m.group(1)}.{name}"] = tensor.t().contiguous() if transpose else tensor.contiguous()
    return out


# --------------------------------------------------------------------------------------------- #
# Resolving checkpoints (folders or Hub ids, huggingface_hub's cache and offline mode)
# --------------------------------------------------------------------------------------------- #
def _resolve(path_or_id, filename: str, hub_kwargs: dict, required: bool) -> Optional[str]:
    from transformers.utils import cached_file

    try:
        return cached_file(
            str(path_or_id), filename, _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False, **hub_kwargs,
        )
    except (OSError, ValueError) as exc:
        if not required:
            return None
        raise UsageError(f"cannot read {filename} of checkpoint {str(path_or_id)!r}: {exc}") from None


def looks_like_local_path(path_or_id) -> bool:
    """True for strings that can only be a local path (never a valid Hub id)."""
    text = str(path_or_id)
    return (isinstance(path_or_id, os.PathLike) or text.startswith(("/", "./", "../", "~", "\\"))
            or text.count("/") > 1 or os.sep in text.replace("/", "") or Path(text).exists())


def check_local_path(path_or_id) -> None:
    """A path-looking checkpoint that does not exist -> :class:`UsageError` (no Hub lookup)."""
    if looks_like_local_path(path_or_id) and not Path(os.path.expanduser(str(path_or_id))).exists():
        raise UsageError(
            f"checkpoint folder {str(path_or_id)!r} does not exist; pass a save_pretrained folder or a Hub id."
        )


def read_checkpoint_config(path_or_id, **hub_kwargs) -> dict:
    """``config.json`` of a folder or Hub id, as a dict. Missing -> :class:`UsageError`."""
    check_local_path(path_or_id)
    file = _resolve(path_or_id, "config.json", hub_kwargs, required=True)
    if file is None:
        where = "folder" if Path(str(path_or_id)).is_dir() else "folder or Hub id (in the local cache, or online)"
        raise UsageError(
            f"checkpoint {str(path_or_id)!r}: no config.json found; pass a save_pretrained {where}."
        )
    try:
        with open(file, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"checkpoint {str(path_or_id)!r}: config.json is unreadable ({exc}).") from None


def _weight_files(path_or_id, hub_kwargs: dict) -> list[str]:
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        file = _resolve(path_or_id, single, hub_kwargs, required=False)
        if file is not None:
            return [file]
        index_file = _resolve(path_or_id, index, hub_kwargs, required=False)
        if index_file is not None:
            with open(index_file, encoding="utf-8") as fh:
                shards = sorted(set(json.load(fh)["weight_map"].values()))
            files = [_resolve(path_or_id, s, hub_kwargs, required=False) for s in shards]
            missing = [s for s, f in zip(shards, files) if f is None]
            if missing:
                raise UsageError(f"checkpoint {str(path_or_id)!r}: weight shards {missing} listed in {index} are missing.")
            return files
    raise UsageError(
        f"checkpoint {str(path_or_id)!r} has no weight files (model.safetensors, its sharded index, or "
        "pytorch_model.bin); re-save it with save_pretrained or download it completely."
    )


def _tensor_shapes(files: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """Shapes of every tensor, read from headers only (safetensors) or the pickles (.bin)."""
    import torch
    from safetensors import safe_open

    shapes = {}
    for file in files:
        if file.endswith(".safetensors"):
            with safe_open(file, framework="pt") as fh:
                for key in fh.keys():
                    shapes[key] = tuple(fh.get_slice(key).get_shape())
        else:
            for key, t in torch.load(file, map_location="meta", weights_only=True).items():
                shapes[key] = tuple(t.shape)
    return shapes


_CHUNK_BYTES = 16 * 2**20  # source bytes read per step when streaming a large tensor


def _read_converted(file: str, key: str, transpose: bool, dtype: Optional[torch.dtype]) -> torch.Tensor:
    """One safetensors tensor, converted into freshly allocated memory, read in row chunks.

    safetensors memory-maps the file and the pages read stay resident while the mapping is open, so
    every chunk is read through its own short-lived mapping: at most ``_CHUNK_BYTES`` of the file
    is resident beside the result, whatever the tensor's size.
    """
    import torch
    from safetensors import safe_open

    with safe_open(file, framework="pt") as fh:
        shape = tuple(fh.get_slice(key).get_shape())
        probe = fh.get_slice(key)[0:0] if shape else fh.get_tensor(key)
        row_bytes = probe.element_size() * (int(torch.Size(shape[1:]).numel()) if shape else 1)
        if not shape or shape[0] * row_bytes <= _CHUNK_BYTES:  # small: in one piece
            source = fh.get_tensor(key)
            converted = _convert_tensor(source, transpose, dtype)
            return converted.clone() if converted.data_ptr() == source.data_ptr() else converted
    out_dtype = dtype if dtype is not None and probe.is_floating_point() else probe.dtype
    result = torch.empty(tuple(reversed(shape)) if transpose else shape, dtype=out_dtype)
    rows = max(1, _CHUNK_BYTES // row_bytes)
    for start in range(0, shape[0], rows):
        with safe_open(file, framework="pt") as fh:
            part = fh.get_slice(key)[start:start + rows]
            if transpose:  # Conv1D [in, out] rows become Linear [out, in] columns
                result[:, start:start + rows].copy_(part.t())
            else:
                result[start:start + rows].copy_(part)
            del part
    return result


def _stream_converted(
    files: Iterable[str], plan: dict[str, tuple[str, bool]], dtype: Optional[torch.dtype] = None
) -> Iterable[tuple[str, torch.Tensor]]:
    """Yield ``(TuringNLG name, tensor)`` for every key of ``plan``, one tensor at a time.

    Each result owns its memory (converted: transposed where needed, cast to ``dtype``) and its
    source is released before the next one is read, so the converted weights are the only copy held.
    """
    import torch
    from safetensors import safe_open

    for file in files:
        if file.endswith(".safetensors"):
            with safe_open(file, framework="pt") as fh:
                keys = [k for k in fh.keys() if k in plan]
            for key in keys:
                target, transpose = plan[key]
                yield target, _read_converted(file, key, transpose, dtype)
        else:  # pytorch_model.bin: a memory-mapped pickle, converted tensor by tensor
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            for key in [k for k in state if k in plan]:
                source = state.pop(key)
                target, transpose = plan[key]
                converted = _convert_tensor(source, transpose, dtype)
                if converted.data_ptr() == source.data_ptr():
                    converted = converted.clone()
                del source
                yield target, converted
            del state


def _expected_shapes(cls, config) -> dict[str, torch.Size]:
    import torch

    with torch.device("meta"):
        model = cls(config)
    return {k: v.shape for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------------------- #
# Loading
# --------------------------------------------------------------------------------------------- #
def load_pretrained(cls, path_or_id, *model_args, **kwargs):
    """``cls.from_pretrained`` for TuringNLG classes: native, or converted from GPT-2."""
    hub_kwargs = {k: kwargs[k] for k in HUB_KWARGS if kwargs.get(k) is not None}
    if isinstance(path_or_id, (str, os.PathLike)) and not str(path_or_id).strip():
        raise UsageError("checkpoint path is empty; pass a folder or a Hub id.")
    config = kwargs.get("config")
    if config is not None and not isinstance(config, (str, os.PathLike)):
        return _load_native(cls, path_or_id, model_args, kwargs, hub_kwargs)

    raw = read_checkpoint_config(path_or_id, **hub_kwargs)
    model_type = raw.get("model_type")
    if model_type == "gpt2":
        return _load_gpt2(cls, path_or_id, raw, kwargs, hub_kwargs)
    if model_type != cls.config_class.model_type:
        raise UsageError(
            f"checkpoint {str(path_or_id)!r} has model_type={model_type!r}; TuringNLG loads "
            f"'{cls.config_class.model_type}' checkpoints and converts 'gpt2' ones."
        )
    return _load_native(cls, path_or_id, model_args, kwargs, hub_kwargs)


def _load_native(cls, path_or_id, model_args, kwargs, hub_kwargs):
    config = kwargs.get("config")
    if config is None or isinstance(config, (str, os.PathLike)):
        try:
            config = cls.config_class.from_pretrained(config or path_or_id, **hub_kwargs)
        except ValueError as exc:
            raise UsageError(f"checkpoint {str(path_or_id)!r}: invalid config.json: {exc}") from None
    files = _weight_files(path_or_id, hub_kwargs)
    expected = _expected_shapes(cls, config)
    prefix = cls.base_model_prefix + "."
    for key, shape in _tensor_shapes(files).items():
        name = key
        if name not in expected and name.startswith(prefix) and name[len(prefix):] in expected:
            name = name[len(prefix):]
        elif name not in expected and prefix + name in expected:
            name = prefix + name
        if name in expected and tuple(expected[name]) != tuple(shape):
            raise UsageError(
                f"checkpoint {str(path_or_id)!r}: tensor {key!r} has shape {list(shape)} but the config "
                f"needs {list(expected[name])}; the weights and config.json do not belong together."
            )
    try:
        return cls._from_pretrained_native(path_or_id, *model_args, **kwargs)
    except OSError as exc:
        raise UsageError(f"cannot load checkpoint {str(path_or_id)!r}: {exc}") from None


def _load_gpt2(cls, path_or_id, raw_config: dict, kwargs: dict, hub_kwargs: dict):
    import torch

    overrides = {}
    if kwargs.get("attn_implementation") is not None:
        overrides["attn_implementation"] = kwargs["attn_implementation"]
    config = gpt2_config_to_nlg(raw_config, **overrides)
    config._name_or_path = str(path_or_id)
    files = _weight_files(path_or_id, hub_kwargs)

    # Names and shapes are checked from the file headers before any tensor data is read.
    full_expected = _expected_shapes(_causal_lm_class(), config)
    plan = _gpt2_plan(_tensor_shapes(files), full_expected)
    if config.tie_word_embeddings:  # the head is the embedding: never read a stored copy
        plan = {k: v for k, v in plan.items() if v[0] != "lm_head.weight"}
    provided = {target for target, _ in plan.values()}
    required = {k for k in full_expected if not (k == "lm_head.weight" and config.tie_word_embeddings)}
    missing = sorted(required - provided)
    if missing:
        raise UsageError(
            f"GPT-2 checkpoint {str(path_or_id)!r} lacks {len(missing)} tensors, e.g. {missing[:3]}."
        )
    prefix = cls.base_model_prefix + "."
    if not _is_causal_lm(cls):  # the bare decoder (TuringNLGModel): drop the head, strip "model."
        plan = {k: (t[len(prefix):], tr) for k, (t, tr) in plan.items() if t.startswith(prefix)}

    dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    if not isinstance(dtype, torch.dtype):
        dtype = None

    # Build on the meta device, then convert tensor by tensor: one copy of the weights at a time.
    with torch.device("meta"):
        model = cls(config)
    converted = dict(_stream_converted(files, plan, dtype))
    model.load_state_dict(converted, strict=False, assign=True)
    del converted
    model.tie_weights()
    leftover = [n for n, p in model.named_parameters() if p.is_meta]
    if leftover:
        raise UsageError(f"GPT-2 checkpoint {str(path_or_id)!r} did not provide {leftover[:3]}.")
    model.eval()

    gen_file = _resolve(path_or_id, "generation_config.json", hub_kwargs, required=False)
    if gen_file is not None and getattr(model, "generation_config", None) is not None:
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(os.path.dirname(gen_file))

    device_map = kwargs.get("device_map")
    if device_map is not None:
        if isinstance(device_map, (str, torch.device, int)) and str(device_map) not in ("auto", "balanced",
                                                                                       "sequential"):
            model.to(device_map)
        else:
            from accelerate import dispatch_model, infer_auto_device_map

            if isinstance(device_map, str):
                device_map = infer_auto_device_map(model, no_split_module_classes=model._no_split_modules)
            model = dispatch_model(model, device_map=device_map)
    return model


def _causal_lm_class():
    from ..nlg.modeling_turing_nlg import TuringNLGForCausalLM

    return TuringNLGForCausalLM


def _is_causal_lm(cls) -> bool:
    return issubclass(cls, _causal_lm_class())


# --------------------------------------------------------------------------------------------- #
# Export
# --------------------------------------------------------------------------------------------- #
def export_gpt2(model_or_path, out_dir: Union[str, os.PathLike]) -> Path:
    """Write a TuringNLG model (object, folder or Hub id) as a GPT-2 checkpoint folder.

    The result loads with ``transformers.GPT2LMHeadModel.from_pretrained(out_dir)`` and gives the
    same logits. Padded vocabulary rows are dropped (GPT-2 has no notion of them).
    """
    from safetensors.torch import save_file

    model = model_or_path
    if isinstance(model_or_path, (str, os.PathLike)):
        model = _causal_lm_class().from_pretrained(model_or_path)
    if not _is_causal_lm(type(model)):
        raise UsageError("export_gpt2 needs a TuringNLGForCausalLM (the model with its LM head).")
    config = model.config
    gpt2_config = nlg_config_to_gpt2(config)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    converted = nlg_to_gpt2_state_dict(state, config)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gpt2_config.save_pretrained(out)
    tmp = out / "model.safetensors.tmp"
    save_file(converted, str(tmp), metadata={"format": "pt"})
    tmp.replace(out / "model.safetensors")
    return out


__all__ = [
    "export_gpt2",
    "gpt2_config_to_nlg",
    "gpt2_to_nlg_state_dict",
    "load_pretrained",
    "nlg_config_to_gpt2",
    "nlg_to_gpt2_state_dict",
    "read_checkpoint_config",
]
