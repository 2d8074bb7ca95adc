"""The config fields both families share: one spelling, one check.

==========================  =============================================  ==========================
field                       meaning                                        also accepted (alias)
==========================  =============================================  ==========================
``hidden_act``              MLP activation (:data:`ACTIVATIONS`)           ``activation`` (TuringNLG)
``hidden_dropout``          dropout on embeddings and residual branches    ``hidden_dropout_prob`` (BERT)
``attention_dropout``       dropout on the attention probabilities         ``attention_probs_dropout_prob`` (BERT)
``vocab_size`` ...          shapes: positive integers
``layer_norm_eps``          LayerNorm epsilon, > 0
``qkv_layout``              ``"per_head"``: the fused qkv rows' order      (``"blocks"``: older files)
==========================  =============================================  ==========================

The aliases are transformers' ``attribute_map``: reading or writing ``config.hidden_dropout_prob``
reads or writes ``config.hidden_dropout``, and an older ``config.json`` that spells a field the old
way loads unchanged. Scale tables of both families are keyword dicts of these field names.
"""

from __future__ import annotations

from typing import Any

from ..errors import UsageError
from .mlp import ACTIVATIONS

#: alias -> field, for both families' ``attribute_map``
FIELD_ALIASES = {
    "activation": "hidden_act",
    "hidden_dropout_prob": "hidden_dropout",
    "attention_probs_dropout_prob": "attention_dropout",
}

#: the fused ``qkv`` rows of this version, per head (:mod:`turing_models.layers.tensor_parallel`)
QKV_LAYOUT = "per_head"
#: ``[q | k | v]`` blocks: what checkpoints written before the per-head layout hold
LEGACY_QKV_LAYOUT = "blocks"

SHAPE_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "max_position_embeddings")


def apply_aliases(config, kwargs: dict[str, Any]) -> None:
    """Move aliased keyword arguments (``activation=...``) onto their fields before validation."""
    for alias, field in FIELD_ALIASES.items():
        if alias in kwargs:
            setattr(config, field, kwargs.pop(alias))


def mark_qkv_layout(config_dict: dict[str, Any]) -> dict[str, Any]:
    """A ``config.json`` dict without ``qkv_layout`` was written before the per-head layout: mark it
    :data:`LEGACY_QKV_LAYOUT`, so loading permutes its ``qkv`` rows (dicts built in code have no
    ``model_type`` and are left alone)."""
    if "model_type" in config_dict and "qkv_layout" not in config_dict:
        return {**config_dict, "qkv_layout": LEGACY_QKV_LAYOUT}
    return config_dict


def check_shared_fields(config) -> None:
    """One :class:`UsageError` naming the field, its value and what is allowed, for the fields
    both families share."""
    name = type(config).__name__

    def bad(field: str, allowed: str):
        raise UsageError(f"{name}.{field}={getattr(config, field)!r} is invalid: {allowed}")

    for field in SHAPE_FIELDS:
        value = getattr(config, field)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            bad(field, "it must be a positive integer")
    if config.hidden_size % config.num_attention_heads:
        bad("hidden_size", f"it must be divisible by num_attention_heads={config.num_attention_heads}")
    if config.hidden_act not in ACTIVATIONS:
        bad("hidden_act", f"choose one of {', '.join(ACTIVATIONS)}")
    for field in ("hidden_dropout", "attention_dropout"):
        value = getattr(config, field)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            bad(field, "a probability in [0, 1) is required")
    if config.qkv_layout not in (QKV_LAYOUT, LEGACY_QKV_LAYOUT):
        bad("qkv_layout", f"choose {QKV_LAYOUT!r} (or {LEGACY_QKV_LAYOUT!r} for checkpoints written before it)")
    if not config.layer_norm_eps > 0:
        bad("layer_norm_eps", "it must be > 0")
    if not config.initializer_range > 0:
        bad("initializer_range", "it must be > 0")


__all__ = ["ACTIVATIONS", "FIELD_ALIASES", "LEGACY_QKV_LAYOUT", "QKV_LAYOUT", "SHAPE_FIELDS", "apply_aliases",
           "check_shared_fields", "mark_qkv_layout"]
