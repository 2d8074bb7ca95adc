"""Evaluation of saved models: the run behind ``recipes/evaluate.py``.

* ``perplexity``: a TuringNLG / GPT-2 checkpoint on a text file (or a folder / list of them) or on
  a token-shard folder written by ``prepare_data.py tokenize``. The tokens are scored with a
  sliding window: windows of ``max_length`` tokens start every ``stride`` tokens, and each window
  scores only the tokens the previous one did not, so with ``stride < max_length`` every token but
  the first is predicted once, with at least ``max_length - stride`` tokens of context. Reports the token-weighted mean NLL,
  the perplexity, and bits per byte (comparable across tokenizers) for text input.
* ``qa`` / ``classification`` / ``sft``: a fine-tuned folder on labelled data, with the task's
  postprocessing and metric (the settings saved by ``finetune.py``, such as the SQuAD v2 null
  threshold, are used unless given).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import torch

from turing_models.errors import UsageError
from turing_models.tasks.common import resolve_data_path, write_json, write_jsonl
from turing_models.tasks.finetune import ClassificationOptions, QAOptions, SFTOptions, predict_classification, predict_qa

logger = logging.getLogger(__name__)


@dataclass
class EvaluateConfig:
    """Evaluate a saved model: perplexity of a decoder, or a fine-tuned task's metrics."""

    task: Literal["perplexity", "qa", "classification", "sft"] = "perplexity"
    model: str = ""
    """A checkpoint folder (or Hub id)."""
    data: str = ""
    """perplexity: text file(s) (comma-separated), a folder of .txt files, or a token-shard folder;
    qa / classification / sft: labelled data as finetune.py reads it."""
    tokenizer: Optional[str] = None
    """Default: the checkpoint's."""
    split: Optional[str] = None
    """Split of a token-shard folder (default val) or of a datasets name (default validation)."""
    max_length: Optional[int] = None
    """perplexity: window length in tokens; default: the model's context."""
    stride: Optional[int] = None
    """perplexity: tokens between window starts; default: max_length // 2."""
    max_tokens: Optional[int] = None
    """perplexity: score at most this many tokens."""
    max_examples: Optional[int] = None
    batch_size: int = 8
    device: str = "auto"
    """auto (CUDA when present), cpu or cuda."""
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """auto: bf16 on CUDA, fp32 on CPU."""
    output: Optional[str] = None
    """Folder for metrics.json and the predictions (nothing is written when unset)."""
    qa: QAOptions = field(default_factory=QAOptions)
    classification: ClassificationOptions = field(default_factory=ClassificationOptions)
    sft: SFTOptions = field(default_factory=SFTOptions)


def _device_and_dtype(cfg: EvaluateConfig) -> tuple[torch.device, torch.dtype]:
    if cfg.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        if cfg.device.startswith("cuda") and not torch.cuda.is_available():
            raise UsageError("device cuda asked for, but CUDA is not available; use --device cpu")
        device = torch.device(cfg.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.dtype)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return device, dtype


# --------------------------------------------------------------------------------------------
# Perplexity
# --------------------------------------------------------------------------------------------


@dataclass
class PerplexityResult:
    nll: float  # mean negative log-likelihood per scored token (nats)
    tokens: int  # tokens scored
    windows: int
    nll_sum: float

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.nll, 700.0))


@torch.no_grad()
def sliding_window_perplexity(
    model, tokens: np.ndarray | torch.Tensor | list[int], *, max_length: int, stride: int, batch_size: int = 8
) -> PerplexityResult:
    """Perplexity of ``tokens`` (one flat sequence) with a sliding window.

    Window ``k`` covers ``tokens[k*stride : k*stride + max_length]`` and scores its tokens past the
    end of window ``k-1``; a window never scores its own first token (it has no context there).
    With ``stride == max_length`` the windows do not overlap (the fastest, and the highest
    perplexity; each window's first token goes unscored); smaller strides give each token more
    context and score every token but the very first.
    """
    if not 0 < stride <= max_length:
        raise UsageError(f"stride must be in [1, max_length={max_length}], got {stride}")
    ids = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    n = int(ids.numel())
    if n < 2:
        raise UsageError(f"need at least 2 tokens to measure perplexity, got {n}")
    device = next(model.parameters()).device
    # (begin, end, first scored position) of every window
    windows, prev_end, begin = [], 0, 0
    while True:
        end = min(begin + max_length, n)
        windows.append((begin, end, max(prev_end, begin + 1)))
        prev_end = end
        if end == n:
            break
        begin += stride
    was_training = model.training
    model.eval()
    nll_sum, scored = 0.0, 0
    for i in range(0, len(windows), batch_size):
        group = windows[i : i + batch_size]
        length = max(e - b for b, e, _ in group)
        input_ids = torch.zeros(len(group), length, dtype=torch.long)
        targets = torch.full((len(group), length), -100, dtype=torch.long)
        attention = torch.zeros(len(group), length, dtype=torch.long)
        for row, (b, e, first) in enumerate(group):
            input_ids[row, : e - b] = ids[b:e]
            attention[row, : e - b] = 1
            # target at position t is token t+1: score tokens first..e-1
            targets[row, first - b - 1 : e - b - 1] = ids[first:e]
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits.float()
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.to(device).reshape(-1), ignore_index=-100, reduction="sum"
        )
        nll_sum += float(nll)
        scored += int((targets != -100).sum())
    model.train(was_training)
    return PerplexityResult(nll=nll_sum / scored, tokens=scored, windows=len(windows), nll_sum=nll_sum)


def _read_texts(data: str) -> tuple[str, list[Path]]:
    paths = []
    for part in data.split(","):
        path = Path(resolve_data_path(part.strip()))
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".txt", ".md", ".text") and p.is_file())
            if not files:
                raise UsageError(f"{path} holds no .txt files and no token shards (manifest.json)")
            paths += files
        elif path.is_file():
            paths.append(path)
        else:
            raise FileNotFoundError(f"perplexity data not found: {part} (give a text file, a folder of them, or a token-shard folder)")
    text = "\n\n".join(p.read_text(encoding="utf-8") for p in paths)
    if not text.strip():
        raise UsageError(f"{data} holds no text")
    return text, paths


def perplexity_tokens(cfg: EvaluateConfig, tokenizer) -> tuple[np.ndarray, Optional[int], str]:
    """The token ids to score, the number of UTF-8 bytes they came from (text only), and a description."""
    path = Path(resolve_data_path(cfg.data))
    if path.is_dir() and (path / "manifest.json").is_file():
        from turing_models.data import load_split, load_tokenizer

        split = cfg.split or "val"
        tokens, _, _ = load_split(path, split)
        if (path / "tokenizer").is_dir() and load_tokenizer(path / "tokenizer").get_vocab() != tokenizer.get_vocab():
            raise UsageError(
                f"{path} was tokenized with another vocabulary than the model's; re-tokenize it with the model's "
                "tokenizer (prepare_data.py tokenize --tokenizer <model folder>) or pass the matching --tokenizer"
            )
        return np.asarray(tokens, dtype=np.int64), None, f"{path} [{split}]"
    text, paths = _read_texts(cfg.data)
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return np.asarray(ids, dtype=np.int64), len(text.encode("utf-8")), ", ".join(map(str, paths))


def _load_decoder(cfg: EvaluateConfig):
    from turing_models.tasks.models import check_family, load_task_tokenizer, read_model_type

    check_family("sft", read_model_type(cfg.model), cfg.model)
    from turing_models.nlg import TuringNLGForCausalLM

    tokenizer = load_task_tokenizer("sft", cfg.model, cfg.tokenizer)
    device, dtype = _device_and_dtype(cfg)
    model = TuringNLGForCausalLM.from_pretrained(cfg.model, dtype=dtype).to(device)
    return model, tokenizer


def evaluate_perplexity(cfg: EvaluateConfig) -> dict[str, Any]:
    model, tokenizer = _load_decoder(cfg)
    tokens, n_bytes, what = perplexity_tokens(cfg, tokenizer)
    if cfg.max_tokens is not None:
        if n_bytes is not None and cfg.max_tokens < len(tokens):
            n_bytes = None  # the byte count no longer matches the scored tokens
        tokens = tokens[: cfg.max_tokens]
    context = int(model.config.max_position_embeddings)
    max_length = cfg.max_length or context
    if max_length > context:
        raise UsageError(f"max_length {max_length} exceeds the model's context of {context} tokens")
    stride = cfg.stride or max(1, max_length // 2)
    r = sliding_window_perplexity(model, tokens, max_length=max_length, stride=stride, batch_size=cfg.batch_size)
    metrics: dict[str, Any] = {
        "perplexity": r.perplexity,
        "nll": r.nll,
        "tokens": r.tokens,
        "windows": r.windows,
        "max_length": max_length,
        "stride": stride,
        "data": what,
    }
    if n_bytes:
        # every token but the first is scored: count the bytes of the whole text (standard practice)
        metrics["bits_per_byte"] = r.nll_sum / math.log(2) / n_bytes
    return metrics


# --------------------------------------------------------------------------------------------
# Fine-tuned tasks
# --------------------------------------------------------------------------------------------


HEAD_SUFFIXES = {"qa": "ForQuestionAnswering", "classification": "ForSequenceClassification"}


def _check_head(cfg: EvaluateConfig, task: str) -> None:
    """A fine-tuned folder must carry the task's head (its config.json names its architecture)."""
    from transformers import PretrainedConfig

    raw, _ = PretrainedConfig.get_config_dict(cfg.model)
    architectures = raw.get("architectures") or []
    if architectures and not any(a.endswith(HEAD_SUFFIXES[task]) for a in architectures):
        other = next((t for t, suffix in HEAD_SUFFIXES.items() if any(a.endswith(suffix) for a in architectures)), None)
        hint = f"; evaluate it with --task {other}" if other else "; fine-tune it first with recipes/finetune.py"
        raise UsageError(f"{cfg.model} is a {architectures[0]} checkpoint, not a {task} model{hint}")


def _load_encoder(cfg: EvaluateConfig, task: str):
    from turing_models.tasks.models import _head_class, check_family, load_task_tokenizer, read_model_type

    check_family(task, read_model_type(cfg.model), cfg.model)
    _check_head(cfg, task)
    tokenizer = load_task_tokenizer(task, cfg.model, cfg.tokenizer)
    device, dtype = _device_and_dtype(cfg)
    model = _head_class(task).from_pretrained(cfg.model, dtype=dtype).to(device)
    return model, tokenizer


def _uses_token_types(model) -> Optional[bool]:
    types = getattr(model.config, "type_vocab_size", None)
    return None if types is None else types > 1


def evaluate_qa(cfg: EvaluateConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    from turing_models.tasks import qa

    model, tokenizer = _load_encoder(cfg, "qa")
    examples, report = qa.load_squad(resolve_data_path(cfg.data), split=cfg.split or "validation", for_training=False)
    if cfg.max_examples is not None:
        examples = examples[: cfg.max_examples]
    o = cfg.qa
    version_2 = o.version_2 if o.version_2 is not None else (report.has_unanswerable or bool(getattr(model.config, "qa_version_2", False)))
    threshold = o.null_threshold
    if threshold is None:  # the threshold saved by finetune.py (tuned on its eval set when asked)
        threshold = float(getattr(model.config, "qa_null_threshold", 0.0) or 0.0)
    kw = dict(max_length=o.max_length, doc_stride=o.doc_stride, max_query_length=o.max_query_length, token_type_ids=_uses_token_types(model))
    features = qa.prepare_eval_features(examples, tokenizer, **kw)
    starts, ends = predict_qa(model, tokenizer, features, cfg.batch_size)
    post = dict(n_best=o.n_best, max_answer_length=o.max_answer_length, version_2=version_2)
    result = qa.postprocess_predictions(examples, features, starts, ends, null_threshold=threshold, **post)
    metrics = qa.evaluate_predictions(examples, result, version_2=version_2, null_threshold=threshold)
    if version_2 and o.tune_null_threshold:
        threshold = float(metrics["best_f1_thresh"])
        result = qa.postprocess_predictions(examples, features, starts, ends, null_threshold=threshold, **post)
        metrics = qa.evaluate_predictions(examples, result, version_2=True, null_threshold=threshold)
    metrics["null_threshold"] = threshold if version_2 else None
    outputs = {"predictions.json": result.predictions}
    if version_2:
        outputs["null_scores.json"] = result.null_scores
    return metrics, outputs


def evaluate_classification(cfg: EvaluateConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    from turing_models.tasks import classification as cls_task

    model, tokenizer = _load_encoder(cfg, "classification")
    labels = cls_task.LabelSpace.from_config(model.config)
    o = cfg.classification
    columns = cls_task.Columns(o.text_column, o.text_pair_column, o.label_column)
    examples = cls_task.load_classification(
        [resolve_data_path(p.strip()) for p in cfg.data.split(",")], columns=columns, header=o.header, split=cfg.split or "validation"
    )
    if cfg.max_examples is not None:
        examples = examples[: cfg.max_examples]
    features = cls_task.prepare_features(
        examples, tokenizer, labels, max_length=o.max_length, source=cfg.data, token_type_ids=_uses_token_types(model)
    )
    if any("labels" not in f for f in features):
        raise UsageError(f"{cfg.data}: some examples have no label; metrics need labelled data")
    preds, scores = predict_classification(model, tokenizer, features, labels.is_regression, cfg.batch_size)
    metrics = cls_task.compute_metrics(labels, [f["labels"] for f in features], preds)
    rows = [
        {"text": ex.text, **({"text_pair": ex.text_pair} if ex.text_pair is not None else {}),
         "label": ex.label, "prediction": p if labels.is_regression else labels.labels[p]}
        for ex, p in zip(examples, preds)
    ]
    return metrics, {"predictions.jsonl": rows}


def evaluate_sft(cfg: EvaluateConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    from turing_models.tasks import sft

    model, tokenizer = _load_decoder(cfg)
    examples = sft.load_sft(resolve_data_path(cfg.data), template=cfg.sft.template, split=cfg.split or "validation", for_training=False)
    if cfg.max_examples is not None:
        examples = examples[: cfg.max_examples]
    generations = sft.generate_completions(
        model, tokenizer, [ex.prompt for ex in examples], max_new_tokens=cfg.sft.max_new_tokens, max_length=cfg.sft.max_length
    )
    metrics = sft.evaluate_generations(examples, generations)
    rows = [{"id": ex.id, "prediction": g, "references": ex.references or [ex.completion]} for ex, g in zip(examples, generations)]
    return metrics, {"predictions.jsonl": rows}


def run_evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    """Evaluate as ``cfg`` says; writes ``metrics.json`` (+ predictions) into ``cfg.output`` when set."""
    if not cfg.model:
        raise UsageError("--model is required: a checkpoint folder (or Hub id)")
    if not cfg.data:
        raise UsageError("--data is required: the text / labelled data to evaluate on")
    if cfg.batch_size < 1:
        raise UsageError(f"batch_size must be positive, got {cfg.batch_size}")
    outputs: dict[str, Any] = {}
    if cfg.task == "perplexity":
        metrics = evaluate_perplexity(cfg)
    elif cfg.task == "qa":
        metrics, outputs = evaluate_qa(cfg)
    elif cfg.task == "classification":
        metrics, outputs = evaluate_classification(cfg)
    elif cfg.task == "sft":
        metrics, outputs = evaluate_sft(cfg)
    else:
        raise UsageError(f"unknown task {cfg.task!r}; choose perplexity, qa, classification or sft")
    metrics = {**metrics, "task": cfg.task, "model": cfg.model}
    if cfg.output:
        out = Path(cfg.output)
        for name, content in outputs.items():
            (write_jsonl if name.endswith(".jsonl") else write_json)(out / name, content)
        write_json(out / "metrics.json", metrics)
    return metrics
