"""GPT-2 <-> TuringNLG: the key map, both ways (torchtitan's ``state_dict_adapter``).

GPT-2 (transformers' ``GPT2LMHeadModel``) and TuringNLG are the same architecture with different
parameter names and layouts:

=============================  ==========================================  ===========================
GPT-2                          TuringNLG                                   change
=============================  ==========================================  ===========================
``wte`` / ``wpe``              ``model.embed_tokens`` / ``embed_positions``
``h.i.ln_1`` / ``ln_2``        ``model.layers.i.input_layernorm`` / ``post_attention_layernorm``
``h.i.attn.c_attn``            ``model.layers.i.attention.qkv``            transpose; ``[q|k|v]`` -> per head
``h.i.attn.c_proj``            ``model.layers.i.attention.dense``          Conv1D ``[in, out]`` -> Linear ``[out, in]``
``h.i.mlp.c_fc`` / ``c_proj``  ``model.layers.i.mlp.fc_in`` / ``fc_out``   transpose
``ln_f``                       ``model.norm_f``
``lm_head`` (tied to ``wte``)  ``lm_head`` (tied to ``embed_tokens``)
=============================  ==========================================  ===========================

GPT-2's ``gelu_new`` is the tanh approximation of GeLU, TuringNLG's ``activation="gelu_tanh"``.
GPT-2's fused ``c_attn`` output is ``[q | k | v]``; TuringNLG's ``qkv`` rows are per head
(``[heads, 3, head_dim]``, so tensor parallelism splits whole heads), and the rows are permuted
both ways, exactly.

Importing :mod:`turing_models.nlg` registers :class:`GPT2Adapter`, so
``TuringNLGForCausalLM.from_pretrained(gpt2_folder_or_hub_id)`` converts on load through
:mod:`turing_models.layers.state_dict_adapter` (one copy of the weights, streamed).
:func:`export_gpt2` writes a folder that ``GPT2LMHeadModel.from_pretrained`` loads.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Optional, Union

import torch

from ..errors import UsageError
from ..io import atomic_directory, save_safetensors
from ..layers.state_dict_adapter import Source, StateDictAdapter, convert_state_dict, register_adapter
from ..layers.tensor_parallel import deinterleave_qkv
from .configuration_turing_nlg import TuringNLGConfig

GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
NLG_TO_GPT2_ACTIVATION = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}

# GPT-2 config field -> (TuringNLG field, GPT-2's default), both ways
_CONFIG_FIELDS = (
    ("vocab_size", "vocab_size", 50257),
    ("n_positions", "max_position_embeddings", 1024),
    ("n_embd", "hidden_size", 768),
    ("n_layer", "num_hidden_layers", 12),
    ("n_head", "num_attention_heads", 12),
    ("layer_norm_epsilon", "layer_norm_eps", 1e-5),
    ("resid_pdrop", "hidden_dropout", 0.1),
    ("attn_pdrop", "attention_dropout", 0.1),
    ("initializer_range", "initializer_range", 0.02),
    ("tie_word_embeddings", "tie_word_embeddings", True),
    ("bos_token_id", "bos_token_id", 50256),
    ("eos_token_id", "eos_token_id", 50256),
    ("pad_token_id", "pad_token_id", None),
)

# GPT-2 module (without "transformer.h.i.") -> (TuringNLG module, is a Conv1D whose weight is transposed)
_LAYER_MODULES = (
    ("ln_1", "input_layernorm", False),
    ("attn.c_attn", "attention.qkv", True),
    ("attn.c_proj", "attention.dense", True),
    ("ln_2", "post_attention_layernorm", False),
    ("mlp.c_fc", "mlp.fc_in", True),
    ("mlp.c_proj", "mlp.fc_out", True),
)
# GPT-2 name -> (TuringNLG name, transposed), for every weight and bias of a block
_LAYER_MAP = {f"{gpt2}.{p}": (f"{ours}.{p}", conv1d and p == "weight")
              for gpt2, ours, conv1d in _LAYER_MODULES for p in ("weight", "bias")}
_TOP_MAP = {
    "wte.weight": "model.embed_tokens.weight",
    "wpe.weight": "model.embed_positions.weight",
    "ln_f.weight": "model.norm_f.weight",
    "ln_f.bias": "model.norm_f.bias",
    "lm_head.weight": "lm_head.weight",
}
_IGNORED = re.compile(r"(^|\.)attn\.(bias|masked_bias)$")
_QKV = re.compile(r"attention\.qkv\.(weight|bias)$")


# --------------------------------------------------------------------------------------------- #
# Configs
# --------------------------------------------------------------------------------------------- #
def gpt2_config_to_nlg(gpt2: Union[dict, Any], **overrides) -> TuringNLGConfig:
    """A :class:`TuringNLGConfig` equivalent to a GPT-2 config (object or ``config.json`` dict)."""
    g = gpt2 if isinstance(gpt2, dict) else gpt2.to_dict()
    act = g.get("activation_function", "gelu_new")
    if act not in GPT2_ACTIVATIONS:
        raise UsageError(
            f"GPT-2 checkpoint: activation_function={act!r} has no TuringNLG equivalent; "
            f"supported: {', '.join(GPT2_ACTIVATIONS)}"
        )
    for key, ok in (("add_cross_attention", False), ("scale_attn_by_inverse_layer_idx", False),
                    ("scale_attn_weights", True)):
        if bool(g.get(key, ok)) != ok:
            raise UsageError(f"GPT-2 checkpoint: {key}={g.get(key)!r} is not supported by TuringNLG (needs {ok})")
    values = {ours: g.get(theirs, default) for theirs, ours, default in _CONFIG_FIELDS}
    values.update(real_vocab_size=values["vocab_size"], hidden_act=GPT2_ACTIVATIONS[act],
                  intermediate_size=g.get("n_inner") or 4 * values["hidden_size"])
    values.update(overrides)
    try:
        return TuringNLGConfig(**values)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"GPT-2 checkpoint: {' '.join(str(exc).split())}") from None


def nlg_config_to_gpt2(config: TuringNLGConfig):
    """A transformers ``GPT2Config`` for a TuringNLG config (real vocabulary only, no padding rows)."""
    from transformers import GPT2Config

    if config.hidden_act not in NLG_TO_GPT2_ACTIVATION:
        raise UsageError(f"hidden_act={config.hidden_act!r} cannot be expressed in GPT-2")
    values = {theirs: getattr(config, ours) for theirs, ours, _ in _CONFIG_FIELDS}
    values.update(vocab_size=config.real_vocab_size, n_inner=config.intermediate_size,
                  activation_function=NLG_TO_GPT2_ACTIVATION[config.hidden_act], embd_pdrop=config.hidden_dropout)
    return GPT2Config(**values)


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


class GPT2Adapter(StateDictAdapter):
    """GPT-2 checkpoints (``GPT2LMHeadModel`` / ``GPT2Model``) -> TuringNLG."""

    family = TuringNLGConfig.model_type
    model_types = ("gpt2",)
    name = "GPT-2"
    loads_into = "TuringNLGForCausalLM"

    def config_from_foreign(self, raw: dict[str, Any], **overrides: Any) -> TuringNLGConfig:
        return gpt2_config_to_nlg(raw, **overrides)

    def plan(self, shapes: dict[str, tuple[int, ...]], config) -> dict[str, Source]:
        plan: dict[str, Source] = {}
        unknown = []
        for key in shapes:
            if _IGNORED.search(key):
                continue
            mapped = _gpt2_key_to_nlg(key)
            if mapped is None:
                unknown.append(key)
                continue
            target, transpose = mapped
            heads = config.num_attention_heads if _QKV.search(target) else None
            plan[target] = Source((key,), transpose=transpose, qkv_heads=heads)
        if unknown:
            raise UsageError(
                f"GPT-2 checkpoint has {len(unknown)} tensors TuringNLG does not know, e.g. {unknown[:3]}; "
                "only plain GPT2LMHeadModel / GPT2Model checkpoints convert"
            )
        return plan


register_adapter(GPT2Adapter())


def gpt2_to_nlg_state_dict(state_dict: dict[str, torch.Tensor], config: TuringNLGConfig) -> dict[str, torch.Tensor]:
    """GPT-2 tensors (with or without the ``transformer.`` prefix) -> ``TuringNLGForCausalLM`` names,
    in memory. (Loading from files streams instead: ``TuringNLGForCausalLM.from_pretrained``.)"""
    return convert_state_dict(GPT2Adapter(), state_dict, config)


def nlg_to_gpt2_state_dict(state_dict: dict[str, torch.Tensor], config: TuringNLGConfig) -> dict[str, torch.Tensor]:
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
            raise UsageError(f"TuringNLG tensor {key!r} has no GPT-2 equivalent")
        name, transpose = inverse_layer[m.group(2)]
        if _QKV.search(key):
            tensor = deinterleave_qkv(tensor, config.num_attention_heads)
        out[f"transformer.h.{m.group(1)}.{name}"] = tensor.t().contiguous() if transpose else tensor.contiguous()
    return out


# --------------------------------------------------------------------------------------------- #
# Export
# --------------------------------------------------------------------------------------------- #
def export_gpt2(model_or_path, out_dir: Union[str, os.PathLike]) -> Path:
    """Write a TuringNLG model (object, folder or Hub id) as a GPT-2 checkpoint folder.

    The result loads with ``transformers.GPT2LMHeadModel.from_pretrained(out_dir)`` and gives the
    same logits. Padded vocabulary rows are dropped (GPT-2 has no notion of them). The folder is
    written under a temporary name and renamed when complete (replacing ``out_dir``).
    """
    from .modeling_turing_nlg import TuringNLGForCausalLM

    model = model_or_path
    if isinstance(model_or_path, (str, os.PathLike)):
        model = TuringNLGForCausalLM.from_pretrained(model_or_path)
    if not isinstance(model, TuringNLGForCausalLM):
        raise UsageError("export_gpt2 needs a TuringNLGForCausalLM (the model with its LM head)")
    config = model.config
    gpt2_config = nlg_config_to_gpt2(config)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    converted = nlg_to_gpt2_state_dict(state, config)
    out = Path(out_dir)
    with atomic_directory(out, overwrite=True) as tmp:
        gpt2_config.save_pretrained(tmp)
        save_safetensors(converted, tmp / "model.safetensors", metadata={"format": "pt"})
    return out


__all__ = [
    "GPT2Adapter",
    "export_gpt2",
    "gpt2_config_to_nlg",
    "gpt2_to_nlg_state_dict",
    "nlg_config_to_gpt2",
    "nlg_to_gpt2_state_dict",
]
