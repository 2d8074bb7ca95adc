"""The model and tokenizer of a task: which families a task takes, and how ``--model`` loads.

``--model`` is one of

* a **scale name** of the family the task takes (``tiny``, ``base`` ... for the encoder tasks,
  ``tiny``, ``125m`` ... ``17b`` for ``sft``): a randomly initialised model, with the family's
  default tokenizer unless ``tokenizer`` names another (the vocabulary follows the tokenizer);
* a **checkpoint folder** or a **Hub id** of a TuringNLU, BERT, RoBERTa or XLM-R encoder (``qa``,
  ``classification``) or of a TuringNLG or GPT-2 decoder (``sft``). Public formats are converted on
  load by the model classes; the tokenizer comes from the same folder unless given.

A checkpoint of the wrong family (or, for evaluation, with another task's head) is refused with
one line naming what the task takes. The task names its head class (:attr:`Task.head`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from turing_models.errors import UsageError

if TYPE_CHECKING:
    from turing_models.tasks.base import Task

ENCODER_TYPES = {"turing_nlu": "TuringNLU", "bert": "BERT", "roberta": "RoBERTa", "xlm-roberta": "XLM-R"}
DECODER_TYPES = {"turing_nlg": "TuringNLG", "gpt2": "GPT-2"}
DEFAULT_DECODER_TOKENIZER = "gpt2-bpe"


def family_names(family: str) -> str:
    types = ENCODER_TYPES if family == "encoder" else DECODER_TYPES
    return ", ".join(types.values())


def default_encoder_tokenizer() -> str:
    """The built-in WordPiece tokenizer shipped for the encoder family."""
    from turing_models.data.tokenizer import builtin_tokenizers

    names = builtin_tokenizers()
    for name in names:
        if "wordpiece" in name or "bert" in name:
            return name
    raise UsageError(
        "no built-in encoder tokenizer is installed; pass --tokenizer (a tokenizer folder or Hub id)"
    )


def scale_names(family: str) -> list[str]:
    if family == "encoder":
        from turing_models.nlu import NLU_SCALES

        return list(NLU_SCALES)
    from turing_models.nlg import NLG_SCALES

    return list(NLG_SCALES)


def read_model_config(name_or_path: str) -> dict[str, Any]:
    """The ``config.json`` of a checkpoint folder or Hub id, as a dict."""
    from transformers import PretrainedConfig

    try:
        raw, _ = PretrainedConfig.get_config_dict(name_or_path)
    except (OSError, ValueError) as exc:
        where = "folder" if os.path.isdir(name_or_path) else "scale name, checkpoint folder or Hub id"
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        hint = " (HF_HUB_OFFLINE is set: download it first, e.g. with huggingface-cli download)" if offline and not os.path.isdir(name_or_path) else ""
        raise UsageError(
            f"cannot read the model {name_or_path!r}: it is not a {where} with a config.json{hint}; "
            f"cause: {' '.join(str(exc).split())[:200]}"
        ) from None
    if not raw.get("model_type"):
        raise UsageError(f"{name_or_path}: config.json has no model_type; is it a transformers checkpoint?")
    return raw


def read_model_type(name_or_path: str) -> str:
    """``model_type`` of a checkpoint folder or Hub id, read from its ``config.json``."""
    return str(read_model_config(name_or_path)["model_type"])


def check_family(task: type[Task], model_type: str, source: str) -> None:
    """Refuse a checkpoint of the wrong family for ``task`` with one clear line."""
    family = task.family
    known = ENCODER_TYPES if family == "encoder" else DECODER_TYPES
    if model_type in known:
        return
    if model_type in DECODER_TYPES or model_type in ENCODER_TYPES:
        other = "a decoder" if model_type in DECODER_TYPES else "an encoder"
        other_tasks = "sft" if model_type in DECODER_TYPES else "qa or classification"
        raise UsageError(
            f"{source} is {other} ({(DECODER_TYPES | ENCODER_TYPES)[model_type]}), but the {task.name} task takes "
            f"{family}s ({family_names(family)}); give one of those, or use it with --task {other_tasks}"
        )
    raise UsageError(
        f"{source} has model_type {model_type!r}; the {task.name} task takes {family}s ({family_names(family)})"
    )


def is_scale_name(task: type[Task], model: str) -> bool:
    """Whether ``model`` names a scale of the task's family (and is not a folder of that name)."""
    return model in scale_names(task.family) and not os.path.isdir(model)


def check_model_source(task: type[Task], model: str) -> None:
    """Fail early, with one line, on a ``--model`` the task cannot take."""
    if not model:
        raise UsageError(f"--model is empty; give a scale name ({', '.join(scale_names(task.family))}), a checkpoint folder or a Hub id")
    if not is_scale_name(task, model):
        check_family(task, read_model_type(model), model)


def load_task_tokenizer(task: type[Task], model: str, tokenizer: Optional[str]):
    """The tokenizer named by ``tokenizer``, else the checkpoint's, else the family default."""
    from turing_models.data import load_tokenizer

    if tokenizer:
        return load_tokenizer(tokenizer)
    if is_scale_name(task, model):
        return load_tokenizer(default_encoder_tokenizer() if task.family == "encoder" else DEFAULT_DECODER_TOKENIZER)
    if os.path.isdir(model) and not any(
        (Path(model) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json")
    ):
        raise UsageError(f"checkpoint {model} has no tokenizer files; pass --tokenizer (a folder, built-in name or Hub id)")
    return load_tokenizer(model)


def build_model(
    task: type[Task],
    model: str,
    tokenizer,
    *,
    config_overrides: Optional[dict[str, Any]] = None,
    head_kwargs: Optional[dict[str, Any]] = None,
):
    """The model to fine-tune for ``task``: random init from a scale name, else loaded from a checkpoint.

    ``config_overrides`` set config fields (shapes for a random init, dropouts for any model).
    ``head_kwargs`` are the head's config fields (e.g. ``num_labels``, ``id2label``,
    ``problem_type``); they are saved with the model. A checkpoint whose head has another shape
    gets a new, randomly initialised head.
    """
    cls = task.head_class()
    overrides = {**(config_overrides or {}), **(head_kwargs or {})}
    if is_scale_name(task, model):
        vocab = len(tokenizer)
        try:
            if task.family == "encoder":
                from turing_models.nlu import TuringNLUConfig

                pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
                config = TuringNLUConfig.from_name(model, **{"vocab_size": vocab, "pad_token_id": pad, **overrides})
            else:
                from turing_models.nlg import TuringNLGConfig, pad_vocab_size

                eos = tokenizer.eos_token_id
                bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
                config = TuringNLGConfig.from_name(
                    model,
                    **{"vocab_size": pad_vocab_size(vocab), "real_vocab_size": vocab, "bos_token_id": bos,
                       "eos_token_id": eos, **overrides},
                )
        except (TypeError, ValueError) as exc:
            raise UsageError(f"model_overrides do not make a valid {task.family} config: {' '.join(str(exc).split())}") from None
        return cls(config)

    check_family(task, read_model_type(model), model)
    kwargs = dict(overrides)
    if head_kwargs:
        kwargs["ignore_mismatched_sizes"] = True
    return cls.from_pretrained(model, **kwargs)


def load_saved(task: type[Task], model: str, *, dtype=None, device=None):
    """A saved model to evaluate on ``task``: its family and head are checked, then it is loaded
    with the task's head class (public formats are converted on load)."""
    raw = read_model_config(model)
    check_family(task, str(raw["model_type"]), model)
    task.check_head(raw.get("architectures") or [], model)
    loaded = task.head_class().from_pretrained(model, dtype=dtype)
    return loaded.to(device) if device is not None else loaded
