"""BERT / RoBERTa / XLM-R <-> TuringNLU: the key map, both ways (torchtitan's ``state_dict_adapter``).

The public encoders and TuringNLU share one architecture; only names differ, and TuringNLU fuses
the query / key / value projections into one ``qkv`` matrix whose rows are laid out per head
(``[heads, 3, head_dim]``, so tensor parallelism splits whole heads). This module maps configs and
state dicts both ways:

* :func:`config_from_hf` / :func:`state_dict_from_hf`: a transformers BERT / RoBERTa / XLM-R
  config dict and state dict -> :class:`TuringNLUConfig` and TuringNLU weights (heads included:
  MLM head, pooler, classifier, QA and token-classification heads; BERT's NSP head is dropped).
* :class:`BertAdapter`: registered when :mod:`turing_models.nlu` is imported, so
  ``TuringNLU*.from_pretrained(bert_folder_or_hub_id)`` converts on load through
  :mod:`turing_models.layers.state_dict_adapter` (streamed, one copy of the weights).
* :func:`export_to_hf`: a TuringNLU model -> a transformers folder of the original format.

Every checkpoint or config that cannot be converted is one :class:`~turing_models.errors.UsageError`.
"""

from __future__ import annotations

import os
import re
from typing import Any, Optional

import torch

from ..errors import UsageError
from ..io import atomic_directory
from ..layers.state_dict_adapter import Source, StateDictAdapter, convert_state_dict, register_adapter
from ..layers.tensor_parallel import split_qkv
from .configuration_turing_nlu import TuringNLUConfig

SUPPORTED_TYPES = ("bert", "roberta", "xlm-roberta")

_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                "gelu_fast": "gelu_tanh", "relu": "relu"}
_SHARED_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                  "max_position_embeddings", "type_vocab_size", "initializer_range", "layer_norm_eps", "pad_token_id",
                  "bos_token_id", "eos_token_id", "classifier_dropout", "id2label", "label2id", "problem_type")
_DROPOUTS = {"hidden_dropout_prob": "hidden_dropout", "attention_probs_dropout_prob": "attention_dropout"}


# ----------------------------------------------------------------------------- config
def config_from_hf(hf: dict[str, Any], **overrides: Any) -> TuringNLUConfig:
    """A transformers BERT / RoBERTa / XLM-R ``config.json`` dict -> TuringNLUConfig."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_TYPES:
        raise UsageError(
            f"cannot convert a {model_type!r} checkpoint: TuringNLU converts {', '.join(SUPPORTED_TYPES)} "
            "(and loads turing_nlu folders); for GPT-2 checkpoints use TuringNLGForCausalLM"
        )
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise UsageError(
            f"cannot convert: position_embedding_type={hf['position_embedding_type']!r}; TuringNLU has absolute "
            "learned positions only"
        )
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise UsageError("cannot convert a decoder (is_decoder / add_cross_attention) BERT: TuringNLU is an encoder")
    act = hf.get("hidden_act", "gelu")
    if act not in _ACTIVATIONS:
        raise UsageError(f"cannot convert: hidden_act={act!r}; supported: {', '.join(_ACTIVATIONS)}")
    kwargs = {k: hf[k] for k in _SHARED_FIELDS if k in hf and hf[k] is not None}
    kwargs.update({ours: hf[theirs] for theirs, ours in _DROPOUTS.items() if hf.get(theirs) is not None})
    kwargs["hidden_act"] = _ACTIVATIONS[act]
    if model_type == "bert":
        kwargs.setdefault("layer_norm_eps", 1e-12)
        kwargs.setdefault("pad_token_id", 0)
        kwargs.update(position_offset=0, classifier_head="pooler")
    else:
        kwargs.setdefault("layer_norm_eps", 1e-5)
        kwargs.setdefault("pad_token_id", 1)
        kwargs.update(position_offset=kwargs["pad_token_id"] + 1, classifier_head="dense", mlm_head_act="gelu")
    kwargs.update(norm_position="post", source_model_type=model_type)
    if "id2label" in kwargs:
        kwargs["id2label"] = {int(k): v for k, v in kwargs["id2label"].items()}
    kwargs.update(overrides)
    try:
        return TuringNLUConfig(**kwargs)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"cannot convert the {model_type} config: {' '.join(str(exc).split())}") from None


def config_to_hf(config: TuringNLUConfig, model_type: Optional[str] = None):
    """TuringNLUConfig -> a transformers BertConfig / RobertaConfig / XLMRobertaConfig."""
    from transformers import BertConfig, RobertaConfig, XLMRobertaConfig

    model_type = model_type or config.source_model_type or ("roberta" if config.position_offset else "bert")
    if model_type not in SUPPORTED_TYPES:
        raise UsageError(f"cannot export to {model_type!r}; choose one of {', '.join(SUPPORTED_TYPES)}")
    if config.norm_position != "post":
        raise UsageError("cannot export a pre-LN TuringNLU model: BERT, RoBERTa and XLM-R are post-LN; "
                         "keep it in the TuringNLU format (save_pretrained)")
    roberta = model_type != "bert"
    head_act = config.mlm_head_act or config.hidden_act
    if head_act != ("gelu" if roberta else config.hidden_act):
        raise UsageError(f"cannot export to {model_type}: its MLM head uses "
                         f"{'gelu' if roberta else 'hidden_act'}, this model mlm_head_act={head_act!r}")
    if roberta and config.position_offset != (config.pad_token_id or 0) + 1:
        raise UsageError(f"cannot export to {model_type}: it needs position_offset = pad_token_id + 1, this model "
                         f"has position_offset={config.position_offset}, pad_token_id={config.pad_token_id}")
    if not roberta and config.position_offset:
        raise UsageError(f"cannot export to bert: position_offset={config.position_offset} (RoBERTa-style "
                         "positions); export with model_type='roberta'")
    act = "gelu_new" if config.hidden_act == "gelu_tanh" else config.hidden_act
    kwargs = {k: getattr(config, k) for k in _SHARED_FIELDS}
    kwargs.update({theirs: getattr(config, ours) for theirs, ours in _DROPOUTS.items()})
    kwargs.update(hidden_act=act, type_vocab_size=max(config.type_vocab_size, 1))
    cls = {"bert": BertConfig, "roberta": RobertaConfig, "xlm-roberta": XLMRobertaConfig}[model_type]
    return cls(**kwargs)


# ----------------------------------------------------------------------------- key map
_BASE_NAMES = [  # (transformers base-model key prefix, TuringNLU base-model key prefix)
    ("embeddings.LayerNorm.", "embeddings.norm."),
    ("encoder.layer.{i}.attention.output.dense.", "layers.{i}.attention.out."),
    ("encoder.layer.{i}.attention.output.LayerNorm.", "layers.{i}.attention_norm."),
    ("encoder.layer.{i}.intermediate.dense.", "layers.{i}.mlp.fc_in."),
    ("encoder.layer.{i}.output.dense.", "layers.{i}.mlp.fc_out."),
    ("encoder.layer.{i}.output.LayerNorm.", "layers.{i}.mlp_norm."),
]


def _rule(src: str, dst: str) -> tuple[re.Pattern, str]:
    return re.compile("^" + re.escape(src).replace(re.escape("{i}"), r"(\d+)")), dst.replace("{i}", r"\1")


_BASE_RULES = [_rule(hf, ours) for hf, ours in _BASE_NAMES]
_BASE_RULES_BACK = [_rule(ours, hf) for hf, ours in _BASE_NAMES]
_HEAD_RULES = [  # (transformers head key regex, TuringNLU head key)
    (r"cls\.predictions\.transform\.dense\.", "lm_head.dense."),
    (r"cls\.predictions\.transform\.LayerNorm\.", "lm_head.norm."),
    (r"cls\.predictions\.decoder\.weight", "lm_head.decoder.weight"),
    (r"cls\.predictions\.(decoder\.)?bias", "lm_head.decoder.bias"),
    (r"lm_head\.dense\.", "lm_head.dense."),
    (r"lm_head\.layer_norm\.", "lm_head.norm."),
    (r"lm_head\.decoder\.weight", "lm_head.decoder.weight"),
    (r"lm_head\.(decoder\.)?bias", "lm_head.decoder.bias"),
    (r"classifier\.", "classifier."),
    (r"qa_outputs\.", "qa_outputs."),
]
_DROPPED = re.compile(r"(^|\.)(position_ids|token_type_ids)$|^cls\.seq_relationship\.")
_QKV = re.compile(r"encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.(weight|bias)$")
_LEGACY = (re.compile(r"\.gamma$"), re.compile(r"\.beta$"))


def _legacy_names(key: str) -> str:
    # Old TF-converted BERT checkpoints name LayerNorm parameters gamma / beta.
    return _LEGACY[0].sub(".weight", _LEGACY[1].sub(".bias", key))


def _prefix(model_type: str) -> str:
    return "bert." if model_type == "bert" else "roberta."


def _map_key(key: str, model_type: str) -> Optional[tuple[str, Optional[tuple[str, str, str]]]]:
    """``(TuringNLU key, qkv part)`` for a transformers key; ``None`` to drop it; a
    :class:`UsageError` for a tensor no TuringNLU class has. ``qkv part`` is ``(layer, kind, which)``
    for the separate q / k / v projections that are fused."""
    prefix = _prefix(model_type)
    name = _legacy_names(key)
    if _DROPPED.search(name):
        return None
    if not (name.startswith(prefix) or name.split(".")[0] in ("embeddings", "encoder", "pooler")):
        for pattern, repl in _HEAD_RULES:
            if re.match(pattern, name):
                return re.sub(pattern, repl, name, count=1), None
        raise UsageError(f"cannot convert checkpoint tensor {key!r}: not part of a {model_type} encoder or of a "
                         "head TuringNLU supports")
    name = name.removeprefix(prefix)
    m = _QKV.match(name)
    if m:
        return f"encoder.layers.{m.group(1)}.attention.qkv.{m.group(3)}", (m.group(1), m.group(3), m.group(2))
    for pattern, repl in _BASE_RULES:
        if pattern.match(name):
            name = pattern.sub(repl, name, count=1)
            break
    return "encoder." + name, None


class BertAdapter(StateDictAdapter):
    """BERT / RoBERTa / XLM-R checkpoints (base model or any head) -> TuringNLU."""

    family = TuringNLUConfig.model_type
    model_types = SUPPORTED_TYPES
    name = "BERT / RoBERTa / XLM-R"
    loads_into = "the TuringNLU classes"

    def config_from_foreign(self, raw: dict[str, Any], **overrides: Any) -> TuringNLUConfig:
        return config_from_hf(raw, **overrides)

    def plan(self, shapes: dict[str, tuple[int, ...]], config) -> dict[str, Source]:
        model_type = config.source_model_type or "bert"
        plan: dict[str, Source] = {}
        qkv: dict[str, dict[str, str]] = {}
        for key in shapes:
            mapped = _map_key(key, model_type)
            if mapped is None:
                continue
            target, part = mapped
            if part is None:
                plan[target] = Source((key,))
            else:
                qkv.setdefault(target, {})[part[2]] = key
        for target, parts in qkv.items():
            missing = {"query", "key", "value"} - parts.keys()
            if missing:
                raise UsageError(f"checkpoint tensor {target!r} lacks attention.self.{sorted(missing)[0]}; the "
                                 "checkpoint is incomplete")
            plan[target] = Source((parts["query"], parts["key"], parts["value"]), qkv_heads=config.num_attention_heads)
        return plan

    def describe(self, source: Source) -> str:
        return repr(source.keys[0]) if len(source.keys) == 1 else f"{source.keys[0]!r} (with key and value)"

    def initializable(self, key: str) -> bool:
        # task heads and the pooler may be new (a base checkpoint fine-tuned for a task);
        # the embeddings and the layers may not
        return not key.startswith(("encoder.embeddings.", "encoder.layers.", "encoder.final_norm."))


register_adapter(BertAdapter())


def state_dict_from_hf(state_dict: dict[str, torch.Tensor], config: TuringNLUConfig) -> dict[str, torch.Tensor]:
    """transformers weights (base model or any head) -> TuringNLU weights, base under ``encoder.``,
    in memory, for ``config`` (:func:`config_from_hf`). Loading from files streams instead:
    ``TuringNLU*.from_pretrained``."""
    return convert_state_dict(BertAdapter(), state_dict, config)


def state_dict_to_hf(state_dict: dict[str, torch.Tensor], model_type: str, num_attention_heads: int,
                     base_only: bool = False) -> dict[str, torch.Tensor]:
    """TuringNLU weights -> transformers weights (``base_only``: keys of the bare BertModel)."""
    prefix = "" if base_only else _prefix(model_type)
    roberta = model_type != "bert"
    head_rules = [
        (r"lm_head\.dense\.", "lm_head.dense." if roberta else "cls.predictions.transform.dense."),
        (r"lm_head\.norm\.", "lm_head.layer_norm." if roberta else "cls.predictions.transform.LayerNorm."),
        (r"lm_head\.decoder\.weight", "lm_head.decoder.weight" if roberta else "cls.predictions.decoder.weight"),
        (r"lm_head\.decoder\.bias", "lm_head.bias" if roberta else "cls.predictions.bias"),
        (r"(classifier|qa_outputs)\.", r"\1."),
    ]
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if key.startswith("encoder."):
            key = key.removeprefix("encoder.")
        elif key.split(".")[0] not in ("embeddings", "layers", "pooler", "final_norm"):
            for pattern, repl in head_rules:
                if re.match(pattern, key):
                    out[re.sub(pattern, repl, key, count=1)] = tensor
                    break
            else:
                raise UsageError(f"cannot export tensor {key!r}: no {model_type} counterpart (ELECTRA generators "
                                 "and discriminator heads stay in the TuringNLU format)")
            continue
        m = re.match(r"layers\.(\d+)\.attention\.qkv\.(weight|bias)$", key)
        if m:
            for name, part in zip(("query", "key", "value"), split_qkv(tensor, num_attention_heads)):
                out[f"{prefix}encoder.layer.{m.group(1)}.attention.self.{name}.{m.group(2)}"] = part
            continue
        if key.startswith("final_norm."):
            raise UsageError("cannot export a pre-LN model (final_norm): BERT / RoBERTa / XLM-R are post-LN")
        for pattern, repl in _BASE_RULES_BACK:
            if pattern.match(key):
                key = pattern.sub(repl, key, count=1)
                break
        out[prefix + key] = tensor
    return out


# ----------------------------------------------------------------------------- export
def _hf_class(model, model_type: str):
    import transformers as tf

    from . import modeling_turing_nlu as m

    stem = {"bert": "Bert", "roberta": "Roberta", "xlm-roberta": "XLMRoberta"}[model_type]
    if isinstance(model, m.TuringNLUForPreTraining):
        if model.config.pretraining_objective != "mlm":
            raise UsageError("cannot export an ELECTRA pretraining model; export its discriminator: "
                             "TuringNLUModel.from_pretrained(folder) then export that")
        return getattr(tf, f"{stem}ForMaskedLM")
    for ours, suffix in ((m.TuringNLUForMaskedLM, "ForMaskedLM"),
                         (m.TuringNLUForSequenceClassification, "ForSequenceClassification"),
                         (m.TuringNLUForQuestionAnswering, "ForQuestionAnswering"),
                         (m.TuringNLUForTokenClassification, "ForTokenClassification"),
                         (m.TuringNLUModel, "Model")):
        if isinstance(model, ours):
            return getattr(tf, stem + suffix)
    raise UsageError(f"cannot export {type(model).__name__}: no transformers counterpart")


def export_to_hf(model, out_dir: str | os.PathLike, model_type: Optional[str] = None, tokenizer=None):
    """Write ``model`` as a transformers BERT / RoBERTa / XLM-R folder (safetensors). The folder
    is built under a temporary name and renamed when complete (replacing ``out_dir`` if it exists).
    Returns the transformers model."""
    from . import modeling_turing_nlu as m

    config = model.config
    model_type = model_type or config.source_model_type or ("roberta" if config.position_offset else "bert")
    if isinstance(model, m.TuringNLUForSequenceClassification):
        want = "pooler" if model_type == "bert" else "dense"
        if config.classifier_head != want:
            raise UsageError(f"cannot export a classifier_head={config.classifier_head!r} classifier to "
                             f"{model_type} (which uses {want!r}); keep it in the TuringNLU format")
    hf_config = config_to_hf(config, model_type)
    hf_cls = _hf_class(model, model_type)
    base_only = isinstance(model, m.TuringNLUModel)
    state = state_dict_to_hf(model.state_dict(), model_type, config.num_attention_heads, base_only=base_only)
    if base_only and model.pooler is None:
        hf_model = hf_cls(hf_config, add_pooling_layer=False)
    else:
        hf_model = hf_cls(hf_config)
    missing, unexpected = hf_model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not re.search(r"position_ids|token_type_ids|decoder\.(weight|bias)$", k)]
    if missing or unexpected:
        raise UsageError(f"export to {model_type} is incomplete: missing {missing[:3]}, unexpected {unexpected[:3]}")
    hf_model.tie_weights()
    with atomic_directory(out_dir, overwrite=True) as tmp:
        hf_model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return hf_model


__all__ = [
    "BertAdapter",
    "SUPPORTED_TYPES",
    "config_from_hf",
    "config_to_hf",
    "export_to_hf",
    "state_dict_from_hf",
    "state_dict_to_hf",
]
