"""BERT / RoBERTa / XLM-R checkpoints <-> TuringNLU.

The public encoders and TuringNLU share one architecture; only names differ, and TuringNLU fuses
the query / key / value projections into one ``qkv`` matrix. This module maps configs and state
dicts both ways:

* :func:`config_from_hf` / :func:`state_dict_from_hf`: a transformers BERT / RoBERTa / XLM-R
  config dict and state dict -> :class:`TuringNLUConfig` and TuringNLU weights (heads included:
  MLM head, pooler, classifier, QA and token-classification heads; BERT's NSP head is dropped).
* :func:`load_for`: what ``TuringNLU*.from_pretrained`` calls to convert a foreign folder or Hub
  id on load.
* :func:`export_to_hf`: a TuringNLU model -> a transformers folder of the original format.

Command line::

    python -m turing_models.convert.bert to-turing path/to/bert-folder checkpoints/converted/bert
    python -m turing_models.convert.bert to-hf checkpoints/converted/bert exported/bert
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from typing import Any, Optional

import torch

from ..io import atomic_directory
from ..errors import cli_main
from ..nlu.configuration_turing_nlu import TuringNLUConfig

SUPPORTED_TYPES = ("bert", "roberta", "xlm-roberta")
#: from_pretrained arguments that locate files; consumed here when converting on load
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder",
              "proxies", "use_safetensors", "weights_only", "trust_remote_code", "variant")
#: from_pretrained arguments that are not config overrides
LOADER_KWARGS = HUB_KWARGS + (
    "dtype", "torch_dtype", "device_map", "attn_implementation", "output_loading_info", "ignore_mismatched_sizes",
    "key_mapping", "quantization_config", "max_memory", "offload_folder", "offload_buffers", "tp_plan",
    "tp_size", "device_mesh", "distributed_config", "_from_auto", "_from_pipeline", "adapter_kwargs",
    "adapter_name", "use_kernels", "kernel_config", "generation_config", "state_dict", "config",
    "disable_mmap", "fusion_config", "tqdm_class", "allow_all_kernels",
)

_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                "gelu_fast": "gelu_tanh", "relu": "relu"}
_SHARED_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                  "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
                  "type_vocab_size", "initializer_range", "layer_norm_eps", "pad_token_id", "bos_token_id",
                  "eos_token_id", "classifier_dropout", "id2label", "label2id", "problem_type")


# ----------------------------------------------------------------------------- config
def config_from_hf(hf: dict[str, Any], **overrides: Any) -> TuringNLUConfig:
    """A transformers BERT / RoBERTa / XLM-R ``config.json`` dict -> TuringNLUConfig."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_TYPES:
        raise ValueError(
            f"cannot convert a {model_type!r} checkpoint: TuringNLU converts {', '.join(SUPPORTED_TYPES)} "
            "(and loads turing_nlu folders); for GPT-2 checkpoints use TuringNLGForCausalLM."
        )
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(
            f"cannot convert: position_embedding_type={hf['position_embedding_type']!r}; TuringNLU has absolute "
            "learned positions only."
        )
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise ValueError("cannot convert a decoder (is_decoder / add_cross_attention) BERT: TuringNLU is an encoder.")
    act = hf.get("hidden_act", "gelu")
    if act not in _ACTIVATIONS:
        raise ValueError(f"cannot convert: hidden_act={act!r}; supported: {', '.join(_ACTIVATIONS)}.")
    kwargs = {k: hf[k] for k in _SHARED_FIELDS if k in hf and hf[k] is not None}
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
    return TuringNLUConfig(**kwargs)


def config_to_hf(config: TuringNLUConfig, model_type: Optional[str] = None):
    """TuringNLUConfig -> a transformers BertConfig / RobertaConfig / XLMRobertaConfig."""
    from transformers import BertConfig, RobertaConfig, XLMRobertaConfig

    model_type = model_type or config.source_model_type or ("roberta" if config.position_offset else "bert")
    if model_type not in SUPPORTED_TYPES:
        raise ValueError(f"cannot export to {model_type!r}; choose one of {', '.join(SUPPORTED_TYPES)}.")
    if config.norm_position != "post":
        raise ValueError("cannot export a pre-LN TuringNLU model: BERT, RoBERTa and XLM-R are post-LN; "
                         "keep it in the TuringNLU format (save_pretrained).")
    roberta = model_type != "bert"
    head_act = config.mlm_head_act or config.hidden_act
    if head_act != ("gelu" if roberta else config.hidden_act):
        raise ValueError(f"cannot export to {model_type}: its MLM head uses "
                         f"{'gelu' if roberta else 'hidden_act'}, this model mlm_head_act={head_act!r}.")
    if roberta and config.position_offset != (config.pad_token_id or 0) + 1:
        raise ValueError(f"cannot export to {model_type}: it needs position_offset = pad_token_id + 1, "
                         f"this model has position_offset={config.position_offset}, pad_token_id={config.pad_token_id}.")
    if not roberta and config.position_offset:
        raise ValueError(f"cannot export to bert: position_offset={config.position_offset} (RoBERTa-style positions); "
                         "export with model_type='roberta'.")
    if config.hidden_act == "gelu_tanh":
        act = "gelu_new"
    else:
        act = config.hidden_act
    kwargs = {k: getattr(config, k) for k in _SHARED_FIELDS}
    kwargs.update(hidden_act=act, type_vocab_size=max(config.type_vocab_size, 1))
    cls = {"bert": BertConfig, "roberta": RobertaConfig, "xlm-roberta": XLMRobertaConfig}[model_type]
    return cls(**kwargs)


# ----------------------------------------------------------------------------- state dicts
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


def _legacy_names(key: str) -> str:
    # Old TF-converted BERT checkpoints name LayerNorm parameters gamma / beta.
    return re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", key))


def state_dict_from_hf(state_dict: dict[str, torch.Tensor], model_type: str) -> dict[str, torch.Tensor]:
    """transformers weights (base model or any head) -> TuringNLU weights, base under ``encoder.``."""
    prefix = "bert." if model_type == "bert" else "roberta."
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        key = _legacy_names(key)
        if _DROPPED.search(key):
            continue
        is_base = key.startswith(prefix) or key.split(".")[0] in ("embeddings", "encoder", "pooler")
        if not is_base:
            for pattern, repl in _HEAD_RULES:
                if re.match(pattern, key):
                    out[re.sub(pattern, repl, key, count=1)] = tensor
                    break
            else:
                raise ValueError(f"cannot convert checkpoint tensor {key!r}: not part of a {model_type} "
                                 "encoder or of a head TuringNLU supports.")
            continue
        key = key.removeprefix(prefix)
        m = _QKV.match(key)
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = tensor
            continue
        for pattern, repl in _BASE_RULES:
            if pattern.match(key):
                key = pattern.sub(repl, key, count=1)
                break
        out["encoder." + key] = tensor
    for (layer, kind), parts in qkv.items():
        missing = {"query", "key", "value"} - parts.keys()
        if missing:
            raise ValueError(f"checkpoint layer {layer} lacks attention.self.{sorted(missing)[0]}.{kind}; "
                             "the checkpoint is incomplete.")
        out[f"encoder.layers.{layer}.attention.qkv.{kind}"] = torch.cat(
            [parts["query"], parts["key"], parts["value"]], dim=0)
    return out


def state_dict_to_hf(state_dict: dict[str, torch.Tensor], model_type: str,
                     base_only: bool = False) -> dict[str, torch.Tensor]:
    """TuringNLU weights -> transformers weights (``base_only``: keys of the bare BertModel)."""
    prefix = "" if base_only else ("bert." if model_type == "bert" else "roberta.")
    roberta = model_type != "bert"
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if key.startswith("encoder."):
            key = key.removeprefix("encoder.")
        elif not key.split(".")[0] in ("embeddings", "layers", "pooler", "final_norm"):
            head = key
            rules = [
                (r"lm_head\.dense\.", "lm_head.dense." if roberta else "cls.predictions.transform.dense."),
                (r"lm_head\.norm\.", "lm_head.layer_norm." if roberta else "cls.predictions.transform.LayerNorm."),
                (r"lm_head\.decoder\.weight", "lm_head.decoder.weight" if roberta else "cls.predictions.decoder.weight"),
                (r"lm_head\.decoder\.bias", "lm_head.bias" if roberta else "cls.predictions.bias"),
                (r"(classifier|qa_outputs)\.", r"\1."),
            ]
            for pattern, repl in rules:
                if re.match(pattern, head):
                    out[re.sub(pattern, repl, head, count=1)] = tensor
                    break
            else:
                raise ValueError(f"cannot export tensor {key!r}: no {model_type} counterpart "
                                 "(ELECTRA generators and discriminator heads stay in the TuringNLU format).")
            continue
        m = re.match(r"layers\.(\d+)\.attention\.qkv\.(weight|bias)$", key)
        if m:
            for name, part in zip(("query", "key", "value"), tensor.chunk(3, dim=0)):
                out[f"{prefix}encoder.layer.{m.group(1)}.attention.self.{name}.{m.group(2)}"] = part.contiguous()
            continue
        if key.startswith("final_norm."):
            raise ValueError("cannot export a pre-LN model (final_norm): BERT / RoBERTa / XLM-R are post-LN.")
        for pattern, repl in _BASE_RULES_BACK:
            if pattern.match(key):
                key = pattern.sub(repl, key, count=1)
                break
        out[prefix + key] = tensor
    return out


# ----------------------------------------------------------------------------- loading
def _resolve(name_or_path: str, filename: str, hub: dict[str, Any]) -> Optional[str]:
    from transformers.utils import cached_file

    return cached_file(name_or_path, filename, _raise_exceptions_for_missing_entries=False,
                       _raise_exceptions_for_connection_errors=False, **hub)


def read_hf_state_dict(name_or_path: str, hub: Optional[dict[str, Any]] = None) -> dict[str, torch.Tensor]:
    """All weights of a transformers folder or Hub id: safetensors (single or sharded) or .bin."""
    from safetensors.torch import load_file

    hub = hub or {}
    single = _resolve(name_or_path, "model.safetensors", hub)
    if single:
        return load_file(single)
    index = _resolve(name_or_path, "model.safetensors.index.json", hub)
    if index:
        shards = sorted(set(json.loads(Path(index).read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(_resolve(name_or_path, shard, hub)))
        return state
    binary = _resolve(name_or_path, "pytorch_model.bin", hub)
    if binary:
        return torch.load(binary, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{name_or_path} has no model.safetensors, model.safetensors.index.json or "
                            "pytorch_model.bin; pass a folder saved with save_pretrained or a Hub id.")


def check_shapes(expected: dict[str, torch.Size], state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Raise one clear error for the first tensor whose shape disagrees with the model's."""
    for key, tensor in state_dict.items():
        want = expected.get(key)
        if want is None and key.startswith("encoder."):
            want = expected.get(key.removeprefix("encoder."))
        if want is not None and tuple(tensor.shape) != tuple(want):
            raise ValueError(
                f"checkpoint {source}: tensor {key!r} has shape {tuple(tensor.shape)} but the model expects "
                f"{tuple(want)}; the config does not match the weights (check vocab_size / hidden_size / "
                "num_labels, or pass ignore_mismatched_sizes=True to re-initialise a head)."
            )


def load_for(cls, name_or_path, kwargs: dict[str, Any]):
    """Called by ``TuringNLU*.from_pretrained``. Returns ``(config, state_dict)`` for a BERT /
    RoBERTa / XLM-R checkpoint, ``None`` for a TuringNLU one (loaded by transformers as usual).
    Config overrides in ``kwargs`` (``num_labels=3`` ...) are applied and removed from ``kwargs``."""
    hub = {k: kwargs[k] for k in ("cache_dir", "force_download", "local_files_only", "token", "revision",
                                  "subfolder") if k in kwargs}
    config_file = _resolve(str(name_or_path), "config.json", hub)
    if config_file is None:
        if os.path.isdir(str(name_or_path)):
            raise FileNotFoundError(f"{name_or_path} has no config.json; pass a folder written by save_pretrained.")
        return None  # let transformers report a missing Hub id in its own words
    hf = json.loads(Path(config_file).read_text())
    model_type = hf.get("model_type")
    if model_type == TuringNLUConfig.model_type:
        if not kwargs.get("ignore_mismatched_sizes"):
            _check_native_shapes(cls, str(name_or_path), hf, kwargs, hub)
        return None
    overrides = {k: kwargs.pop(k) for k in list(kwargs) if k not in LOADER_KWARGS}
    given = kwargs.pop("config", None)
    config = given if isinstance(given, TuringNLUConfig) else config_from_hf(hf, **overrides)
    if isinstance(given, TuringNLUConfig):
        for k, v in overrides.items():
            setattr(config, k, v)
    config.name_or_path = str(name_or_path)
    state_dict = state_dict_from_hf(read_hf_state_dict(str(name_or_path), hub), model_type)
    if not kwargs.get("ignore_mismatched_sizes"):
        check_shapes(_expected_shapes(cls, config), state_dict, str(name_or_path))
    return config, state_dict


def _expected_shapes(cls, config: TuringNLUConfig) -> dict[str, torch.Size]:
    with torch.device("meta"):
        model = cls(config)
    return {k: v.shape for k, v in model.state_dict().items()}


def _check_native_shapes(cls, name_or_path: str, hf: dict[str, Any], kwargs: dict[str, Any], hub) -> None:
    from safetensors import safe_open

    path = _resolve(name_or_path, "model.safetensors", hub)
    if path is None or isinstance(kwargs.get("config"), TuringNLUConfig):
        return
    overrides = {k: v for k, v in kwargs.items() if k not in LOADER_KWARGS}
    clean = {k: v for k, v in hf.items() if k not in ("model_type", "transformers_version", "architectures")}
    config = TuringNLUConfig(**{**clean, **overrides})
    with safe_open(path, "pt") as f:
        shapes = {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
    check_shapes(_expected_shapes(cls, config), shapes, name_or_path)


# ----------------------------------------------------------------------------- export
def _hf_class(model, model_type: str):
    import transformers as tf

    from ..nlu import modeling_turing_nlu as m

    stem = {"bert": "Bert", "roberta": "Roberta", "xlm-roberta": "XLMRoberta"}[model_type]
    if isinstance(model, m.TuringNLUForPreTraining):
        if model.config.pretraining_objective != "mlm":
            raise ValueError("cannot export an ELECTRA pretraining model; export its discriminator: "
                             "TuringNLUModel.from_pretrained(folder) then export that.")
        return getattr(tf, f"{stem}ForMaskedLM")
    for ours, suffix in ((m.TuringNLUForMaskedLM, "ForMaskedLM"),
                         (m.TuringNLUForSequenceClassification, "ForSequenceClassification"),
                         (m.TuringNLUForQuestionAnswering, "ForQuestionAnswering"),
                         (m.TuringNLUForTokenClassification, "ForTokenClassification"),
                         (m.TuringNLUModel, "Model")):
        if isinstance(model, ours):
            return getattr(tf, stem + suffix)
    raise ValueError(f"cannot export {type(model).__name__}.")


def export_to_hf(model, out_dir: str | os.PathLike, model_type: Optional[str] = None, tokenizer=None):
    """Write ``model`` as a transformers BERT / RoBERTa / XLM-R folder (safetensors). The folder
    is built under a temporary name and renamed when complete (replacing ``out_dir`` if it exists).
    Returns the transformers model."""
    from ..nlu import modeling_turing_nlu as m

    config = model.config
    model_type = model_type or config.source_model_type or ("roberta" if config.position_offset else "bert")
    if isinstance(model, m.TuringNLUForSequenceClassification):
        want = "pooler" if model_type == "bert" else "dense"
        if config.classifier_head != want:
            raise ValueError(f"cannot export a classifier_head={config.classifier_head!r} classifier to "
                             f"{model_type} (which uses {want!r}); keep it in the TuringNLU format.")
    hf_config = config_to_hf(config, model_type)
    hf_cls = _hf_class(model, model_type)
    base_only = isinstance(model, m.TuringNLUModel)
    state = state_dict_to_hf(model.state_dict(), model_type, base_only=base_only)
    if base_only and model.pooler is None:
        hf_model = hf_cls(hf_config, add_pooling_layer=False)
    else:
        hf_model = hf_cls(hf_config)
    missing, unexpected = hf_model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not re.search(r"position_ids|token_type_ids|decoder\.(weight|bias)$", k)]
    if missing or unexpected:
        raise ValueError(f"export to {model_type} is incomplete: missing {missing[:3]}, unexpected {unexpected[:3]}.")
    hf_model.tie_weights()
    with atomic_directory(out_dir, overwrite=True) as tmp:
        hf_model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return hf_model


# ----------------------------------------------------------------------------- command line
@cli_main
def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m turing_models.convert.bert", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    to_turing = sub.add_parser("to-turing", help="BERT / RoBERTa / XLM-R folder or Hub id -> TuringNLU folder")
    to_turing.add_argument("source")
    to_turing.add_argument("output")
    to_turing.add_argument("--head", default="auto", choices=["auto", "base", "mlm", "sequence-classification",
                                                               "question-answering", "token-classification"])
    to_hf = sub.add_parser("to-hf", help="TuringNLU folder -> BERT / RoBERTa / XLM-R folder")
    to_hf.add_argument("source")
    to_hf.add_argument("output")
    to_hf.add_argument("--model-type", choices=list(SUPPORTED_TYPES), default=None)
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    from .. import nlu

    heads = {"base": nlu.TuringNLUModel, "mlm": nlu.TuringNLUForMaskedLM,
             "sequence-classification": nlu.TuringNLUForSequenceClassification,
             "question-answering": nlu.TuringNLUForQuestionAnswering,
             "token-classification": nlu.TuringNLUForTokenClassification}
    source = args.source
    config_file = _resolve(source, "config.json", {})
    if config_file is None:
        raise FileNotFoundError(f"{source} has no config.json; pass a folder written by save_pretrained or a Hub id.")
    arch = (json.loads(Path(config_file).read_text()).get("architectures") or [""])[0]
    if args.command == "to-turing" and args.head == "auto" or args.command == "to-hf":
        cls = next((c for k, c in (("MaskedLM", heads["mlm"]), ("PreTraining", heads["mlm"]),
                                   ("SequenceClassification", heads["sequence-classification"]),
                                   ("QuestionAnswering", heads["question-answering"]),
                                   ("TokenClassification", heads["token-classification"])) if k in arch),
                   heads["base"])
    else:
        cls = heads[args.head]
    model = cls.from_pretrained(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError):
        tokenizer = None
    if args.command == "to-turing":
        with atomic_directory(args.output, overwrite=True) as tmp:
            model.save_pretrained(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
    else:
        export_to_hf(model, args.output, args.model_type, tokenizer=tokenizer)
    print(f"wrote {type(model).__name__} -> {args.output}")


if __name__ == "__main__":
    main()
