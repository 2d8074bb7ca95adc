"""Fine-tuning on the shared Trainer: the configs and the run behind ``recipes/finetune.py``.

A run is: tokenizer + data -> features (the task's preprocessing) -> model with the task's head
-> :class:`~turing_models.training.Trainer` ``fit()`` -> eval loss -> predictions on the eval set
(the task's postprocessing) -> metrics. It writes, under ``train.output_dir/train.run_name``::

    final/              save_pretrained folder: model (+ the task's settings in config.json) and tokenizer
    metrics.json        the eval metrics, the eval loss and the training summary
    predictions.json    qa: {question id: answer}; null_scores.json (v2) and nbest.json beside it
    predictions.jsonl   classification / sft: one row per eval example
    config.yaml         the exact config of the run
    metrics.jsonl       the Trainer's log (loss, lr, tokens/s, MFU per logged step)
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
from turing_models.tasks import classification as cls_task
from turing_models.tasks import qa as qa_task
from turing_models.tasks import sft as sft_task
from turing_models.tasks.common import ListDataset, resolve_data_path, seeded_split, write_json, write_jsonl
from turing_models.tasks.models import build_model, check_model_source, load_task_tokenizer
from turing_models.training.config import TrainerConfig

logger = logging.getLogger(__name__)

Task = Literal["qa", "classification", "sft"]

DEFAULT_DATA = {
    "qa": "recipes/data/qa/xquad.en.json",
    "classification": "recipes/data/classification/uci_sentiment",
    "sft": "recipes/data/qa/xquad.en.json",
}


@dataclass
class QAOptions:
    """Extractive QA settings (SQuAD v1.1 / v2.0)."""

    max_length: int = 384
    """Tokens per window (question + context + special tokens)."""
    doc_stride: int = 128
    """Overlap between consecutive windows of a long context, in tokens."""
    max_query_length: int = 64
    """Questions are cut to this many tokens."""
    n_best: int = 20
    """Start and end candidates per window in postprocessing."""
    max_answer_length: int = 30
    """Longest answer span, in tokens."""
    version_2: Optional[bool] = None
    """Allow "no answer" (SQuAD v2.0); default: when the data has unanswerable questions."""
    null_threshold: Optional[float] = None
    """v2: answer "" when null score - best span score > this (default 0; evaluate.py: the
    threshold saved with the model)."""
    tune_null_threshold: bool = False
    """v2: replace null_threshold by the one that maximises F1 on the eval set (saved with the model)."""


@dataclass
class ClassificationOptions:
    """Sequence classification / regression settings."""

    max_length: int = 128
    text_column: Optional[str] = None
    """Column of the (first) text; default: sentence, text, sentence1, question, ... or the first column."""
    text_pair_column: Optional[str] = None
    """Column of the second text of a pair; default: sentence2, question2, hypothesis, ... if present."""
    label_column: Optional[str] = None
    """Column of the label; default: label, labels, score, ... or the last column."""
    header: Optional[bool] = None
    """Whether TSV/CSV files have a header line; default: detected."""
    problem_type: Literal["auto", "single_label_classification", "regression"] = "auto"
    """auto: regression when the labels are numbers that are not all whole."""


@dataclass
class SFTOptions:
    """Generative fine-tuning settings (decoders)."""

    max_length: int = 512
    """Tokens of prompt + completion; longer prompts lose tokens from the left."""
    template: str = sft_task.QA_TEMPLATE
    """Prompt built from QA data ({context}, {question})."""
    max_new_tokens: int = 32
    """Generation length for the eval metric."""
    max_generate: Optional[int] = None
    """Generate for at most this many eval examples (None: all)."""


@dataclass
class FinetuneConfig:
    """Fine-tune an encoder (qa, classification) or a decoder (sft) on the shared Trainer.

    Encoders: TuringNLU, BERT, RoBERTa, XLM-R. Decoders: TuringNLG, GPT-2.
    """

    task: Task = "qa"
    model: str = "tiny"
    """A scale name (random init), a checkpoint folder or a Hub id."""
    tokenizer: Optional[str] = None
    """Tokenizer folder, built-in name or Hub id; default: the checkpoint's (or the family's for a scale name)."""
    data: Optional[str] = None
    """Training data: a file, a folder, comma-separated files, or a datasets name; default: the bundled set."""
    eval_data: Optional[str] = None
    """Eval data; default: split off the training data (by article for QA)."""
    eval_fraction: float = 0.2
    split_seed: int = 0
    train_split: str = "train"
    """Split name when data is a datasets name."""
    eval_split: str = "validation"
    max_train_examples: Optional[int] = None
    max_eval_examples: Optional[int] = None
    model_overrides: dict[str, Any] = field(default_factory=dict)
    """Config fields to set on the model: shapes for a scale name, dropouts for any model."""
    eval_batch_size: int = 32
    resume: Optional[str] = None
    """"auto" (the newest checkpoint of this run, if any) or a checkpoint folder."""
    qa: QAOptions = field(default_factory=QAOptions)
    classification: ClassificationOptions = field(default_factory=ClassificationOptions)
    sft: SFTOptions = field(default_factory=SFTOptions)
    train: TrainerConfig = field(default_factory=TrainerConfig)


# --------------------------------------------------------------------------------------------
# Prediction loops (run on the unwrapped model, outside the Trainer)
# --------------------------------------------------------------------------------------------


def _batches(features: list[dict[str, Any]], collate, batch_size: int, device):
    for i in range(0, len(features), batch_size):
        batch = collate([{k: v for k, v in f.items() if k not in ("labels", "start_positions", "end_positions")} for f in features[i : i + batch_size]])
        yield i, {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def predict_qa(model, tokenizer, features: qa_task.EvalFeatures, batch_size: int = 32):
    """Start / end logits of every eval window, trimmed to the window's length."""
    from transformers import DataCollatorWithPadding

    collate = DataCollatorWithPadding(tokenizer)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    starts, ends = [], []
    for i, batch in _batches(features.inputs, collate, batch_size, device):
        out = model(**batch)
        for j in range(out.start_logits.shape[0]):
            n = len(features.inputs[i + j]["input_ids"])
            starts.append(out.start_logits[j, :n].float().cpu().numpy())
            ends.append(out.end_logits[j, :n].float().cpu().numpy())
    model.train(was_training)
    return starts, ends


@torch.no_grad()
def predict_classification(model, tokenizer, features: list[dict[str, Any]], regression: bool, batch_size: int = 32):
    """Class ids and their probabilities, or regression values."""
    from transformers import DataCollatorWithPadding

    collate = DataCollatorWithPadding(tokenizer)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    preds, scores = [], []
    for _, batch in _batches(features, collate, batch_size, device):
        logits = model(**batch).logits.float()
        if regression:
            values = logits.squeeze(-1).cpu().tolist()
            preds += values
            scores += values
        else:
            probs = logits.softmax(-1)
            best = probs.argmax(-1)
            preds += best.cpu().tolist()
            scores += probs.gather(-1, best[:, None]).squeeze(-1).cpu().tolist()
    model.train(was_training)
    return preds, scores


# --------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------


def _limit(items: list, n: Optional[int]) -> list:
    return items if n is None else items[: max(0, n)]


def _uses_token_types(model) -> Optional[bool]:
    types = getattr(model.config, "type_vocab_size", None)
    return None if types is None else types > 1


class _QARun:
    def __init__(self, cfg: FinetuneConfig, tokenizer):
        self.cfg, self.o, self.tokenizer = cfg, cfg.qa, tokenizer
        data = resolve_data_path(cfg.data or DEFAULT_DATA["qa"])
        # Load everything with every gold text; answers not at their answer_start are dropped
        # from the training side only (the metric needs just the texts).
        examples, report = qa_task.load_squad(data, split=cfg.train_split, for_training=False)
        if cfg.eval_data:
            train = examples
            evaluation, eval_report = qa_task.load_squad(resolve_data_path(cfg.eval_data), split=cfg.eval_split, for_training=False)
        else:
            train, evaluation = qa_task.split_by_article(examples, cfg.eval_fraction, cfg.split_seed)
            eval_report = report
        train = qa_task.training_examples(train, source=data)
        self.train = _limit(train, cfg.max_train_examples)
        self.eval = _limit(evaluation, cfg.max_eval_examples)
        if not self.train or not self.eval:
            raise UsageError("the QA train or eval set is empty; check data, eval_data and max_*_examples")
        version_2 = self.o.version_2
        if version_2 is None:
            version_2 = report.has_unanswerable or eval_report.has_unanswerable
        self.version_2 = bool(version_2)
        logger.info("qa: %d train / %d eval questions (SQuAD v%s)", len(self.train), len(self.eval), "2.0" if self.version_2 else "1.1")

    def head_kwargs(self) -> dict[str, Any]:
        return {}

    def datasets(self, model):
        kw = dict(max_length=self.o.max_length, doc_stride=self.o.doc_stride, max_query_length=self.o.max_query_length,
                  token_type_ids=_uses_token_types(model))
        self.kw = kw
        train = qa_task.prepare_train_features(self.train, self.tokenizer, **kw)
        eval_loss = qa_task.prepare_train_features(self.eval, self.tokenizer, **kw)
        return ListDataset(train), ListDataset(eval_loss)

    def collate_fn(self):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(self.tokenizer)

    def evaluate(self, model, out_dir: Path) -> dict[str, Any]:
        features = qa_task.prepare_eval_features(self.eval, self.tokenizer, **self.kw)
        starts, ends = predict_qa(model, self.tokenizer, features, self.cfg.eval_batch_size)
        threshold = self.o.null_threshold if self.o.null_threshold is not None else 0.0
        post = dict(n_best=self.o.n_best, max_answer_length=self.o.max_answer_length, version_2=self.version_2)
        result = qa_task.postprocess_predictions(self.eval, features, starts, ends, null_threshold=threshold, **post)
        metrics = qa_task.evaluate_predictions(self.eval, result, version_2=self.version_2, null_threshold=threshold)
        if self.version_2 and self.o.tune_null_threshold:
            threshold = float(metrics["best_f1_thresh"])
            result = qa_task.postprocess_predictions(self.eval, features, starts, ends, null_threshold=threshold, **post)
            metrics = qa_task.evaluate_predictions(self.eval, result, version_2=True, null_threshold=threshold)
        metrics["null_threshold"] = threshold if self.version_2 else None
        model.config.qa_version_2 = self.version_2
        model.config.qa_null_threshold = threshold
        write_json(out_dir / "predictions.json", result.predictions)
        write_json(out_dir / "nbest.json", result.nbest)
        if self.version_2:
            write_json(out_dir / "null_scores.json", result.null_scores)
        return metrics


class _ClassificationRun:
    def __init__(self, cfg: FinetuneConfig, tokenizer):
        self.cfg, self.o, self.tokenizer = cfg, cfg.classification, tokenizer
        columns = cls_task.Columns(self.o.text_column, self.o.text_pair_column, self.o.label_column)
        data = [resolve_data_path(p.strip()) for p in (cfg.data or DEFAULT_DATA["classification"]).split(",")]
        train = cls_task.load_classification(data, columns=columns, header=self.o.header, split=cfg.train_split)
        if cfg.eval_data:
            evaluation = cls_task.load_classification(
                [resolve_data_path(p.strip()) for p in cfg.eval_data.split(",")], columns=columns, header=self.o.header, split=cfg.eval_split
            )
            self.eval_source = cfg.eval_data
        else:
            train, evaluation = seeded_split(train, cfg.eval_fraction, cfg.split_seed)
            self.eval_source = "the eval split"
        self.train = _limit(train, cfg.max_train_examples)
        self.eval = _limit(evaluation, cfg.max_eval_examples)
        self.labels = cls_task.LabelSpace.infer(self.train, self.o.problem_type)
        unlabelled = sum(1 for ex in self.eval if ex.label is None or str(ex.label).strip() == "")
        if unlabelled:
            raise UsageError(f"{unlabelled} eval examples have no label; metrics need labelled eval data")
        for ex in self.eval:  # an unseen label fails here, before training starts
            self.labels.encode(ex.label, self.eval_source)
        logger.info("classification: %d train / %d eval examples, %s", len(self.train), len(self.eval),
                    "regression" if self.labels.is_regression else f"labels {self.labels.labels}")

    def head_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"num_labels": self.labels.num_labels, "problem_type": self.labels.problem_type}
        if not self.labels.is_regression:
            kwargs["id2label"] = {i: n for i, n in enumerate(self.labels.labels)}
            kwargs["label2id"] = {n: i for i, n in enumerate(self.labels.labels)}
        return kwargs

    def datasets(self, model):
        self.kw = dict(max_length=self.o.max_length, token_type_ids=_uses_token_types(model))
        train = cls_task.prepare_features(self.train, self.tokenizer, self.labels, source="the training data", **self.kw)
        self.eval_features = cls_task.prepare_features(self.eval, self.tokenizer, self.labels, source=self.eval_source, **self.kw)
        return ListDataset(train), ListDataset(self.eval_features)

    def collate_fn(self):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(self.tokenizer)

    def evaluate(self, model, out_dir: Path) -> dict[str, Any]:
        preds, scores = predict_classification(model, self.tokenizer, self.eval_features, self.labels.is_regression, self.cfg.eval_batch_size)
        gold = [f["labels"] for f in self.eval_features]
        metrics = cls_task.compute_metrics(self.labels, gold, preds)
        rows = []
        for ex, p, s in zip(self.eval, preds, scores):
            row = {"text": ex.text}
            if ex.text_pair is not None:
                row["text_pair"] = ex.text_pair
            if self.labels.is_regression:
                row.update(label=float(self.labels.encode(ex.label)), prediction=p)
            else:
                row.update(label=cls_task._label_name(ex.label), prediction=self.labels.labels[p], probability=s)
            rows.append(row)
        write_jsonl(out_dir / "predictions.jsonl", rows)
        return metrics


class _SFTRun:
    def __init__(self, cfg: FinetuneConfig, tokenizer):
        self.cfg, self.o, self.tokenizer = cfg, cfg.sft, tokenizer
        if tokenizer.eos_token_id is None:
            raise UsageError("sft needs a tokenizer with an eos_token; pass --tokenizer")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token  # saved with the model: batched generation needs one
        data = resolve_data_path(cfg.data or DEFAULT_DATA["sft"])
        if cfg.eval_data:
            train = sft_task.load_sft(data, template=self.o.template, split=cfg.train_split)
            evaluation = sft_task.load_sft(resolve_data_path(cfg.eval_data), template=self.o.template, split=cfg.eval_split, for_training=False)
        elif _is_qa_data(data):
            qa_examples, _ = qa_task.load_squad(data, split=cfg.train_split)
            qa_train, qa_eval = qa_task.split_by_article(qa_examples, cfg.eval_fraction, cfg.split_seed)
            train, evaluation = sft_task.from_qa(qa_train, self.o.template), sft_task.from_qa(qa_eval, self.o.template)
        else:
            train, evaluation = seeded_split(sft_task.load_sft(data, template=self.o.template, split=cfg.train_split), cfg.eval_fraction, cfg.split_seed)
        self.train = _limit(train, cfg.max_train_examples)
        self.eval = _limit(evaluation, cfg.max_eval_examples)
        logger.info("sft: %d train / %d eval examples", len(self.train), len(self.eval))

    def head_kwargs(self) -> dict[str, Any]:
        return {}

    def datasets(self, model):
        limit = getattr(model.config, "max_position_embeddings", None)
        if limit is not None and self.o.max_length > limit:
            raise UsageError(f"sft.max_length {self.o.max_length} exceeds the model's context of {limit} tokens; lower sft.max_length")
        train = sft_task.prepare_features(self.train, self.tokenizer, max_length=self.o.max_length)
        eval_loss = sft_task.prepare_features(self.eval, self.tokenizer, max_length=self.o.max_length)
        return ListDataset(train), ListDataset(eval_loss)

    def collate_fn(self):
        return sft_task.SFTCollator(self.tokenizer)

    def evaluate(self, model, out_dir: Path) -> dict[str, Any]:
        examples = _limit(self.eval, self.o.max_generate)
        generations = sft_task.generate_completions(
            model, self.tokenizer, [ex.prompt for ex in examples], max_new_tokens=self.o.max_new_tokens, max_length=self.o.max_length
        )
        metrics = sft_task.evaluate_generations(examples, generations)
        rows = [{"id": ex.id, "prediction": g, "references": ex.references or [ex.completion]} for ex, g in zip(examples, generations)]
        write_jsonl(out_dir / "predictions.jsonl", rows)
        return metrics


def _is_qa_data(source: str) -> bool:
    path = Path(source)
    if not path.is_file() or path.suffix != ".json":
        return False
    import json

    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return False
    return isinstance(obj, dict) and isinstance(obj.get("data"), list) and bool(obj["data"]) and isinstance(obj["data"][0], dict) and "paragraphs" in obj["data"][0]


TASK_RUNS = {"qa": _QARun, "classification": _ClassificationRun, "sft": _SFTRun}


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def _clean(obj: Any) -> Any:
    """JSON-safe metrics: NaN/inf as None, NumPy scalars as Python numbers."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def run_finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune and evaluate as ``cfg`` says; returns ``{"metrics", "summary", "run_dir", "final"}``."""
    from turing_models.training import Trainer

    if cfg.task not in TASK_RUNS:
        raise UsageError(f"unknown task {cfg.task!r}; choose one of {', '.join(TASK_RUNS)}")
    if cfg.eval_batch_size < 1:
        raise UsageError(f"eval_batch_size must be positive, got {cfg.eval_batch_size}")
    cfg.train.validate()
    check_model_source(cfg.task, cfg.model)
    tokenizer = load_task_tokenizer(cfg.task, cfg.model, cfg.tokenizer)
    run = TASK_RUNS[cfg.task](cfg, tokenizer)
    model = build_model(cfg.task, cfg.model, tokenizer, config_overrides=cfg.model_overrides, head_kwargs=run.head_kwargs())
    train_ds, eval_ds = run.datasets(model)
    run_dir = Path(cfg.train.output_dir) / cfg.train.run_name
    trainer = Trainer(model, train_ds, eval_ds, config=cfg.train, collate_fn=run.collate_fn(), tokenizer=tokenizer, run_dir=run_dir)
    summary = trainer.fit(resume=cfg.resume, run_config=cfg)  # also writes run_dir/config.yaml
    result: dict[str, Any] = {"summary": summary, "run_dir": str(run_dir), "metrics": {}, "final": None}
    if summary.get("status") != "completed":
        logger.warning("training was interrupted at step %s; resume with --resume auto", summary.get("step"))
        return result
    eval_loss = trainer.evaluate(max_batches=math.ceil(len(eval_ds) / cfg.train.micro_batch_size))
    model = trainer.unwrapped_model
    metrics: dict[str, Any] = {}
    if trainer.accelerator.is_main_process:
        metrics = run.evaluate(model, run_dir)
    metrics = _clean({**metrics, "eval_loss": eval_loss["eval_loss"], "task": cfg.task, "model": cfg.model, "train": summary})
    final = trainer.save_final()
    if trainer.accelerator.is_main_process:
        write_json(run_dir / "metrics.json", metrics)
        write_json(final / "eval_results.json", metrics)
    result.update(metrics=metrics, final=str(final))
    return result


PERCENT_KEYS = ("exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1", "best_exact", "best_f1")
HEADLINE_KEYS = (
    "exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1", "best_f1", "best_f1_thresh",
    "accuracy", "macro_f1", "mcc", "pearson", "spearman", "mse", "eval_loss", "perplexity", "bits_per_byte", "total",
)


def format_metrics(metrics: dict[str, Any], task: str) -> str:
    """One readable line of the headline metrics (SQuAD-style scores are percentages)."""
    percent = task in ("qa", "sft")
    parts = []
    for key in HEADLINE_KEYS:
        value = metrics.get(key)
        if key == "f1" and not percent and value is not None:
            parts.append(f"f1 {value:.4f}")
        elif isinstance(value, float):
            parts.append(f"{key} {value:.2f}" if percent and key in PERCENT_KEYS else f"{key} {value:.4f}")
        elif value is not None:
            parts.append(f"{key} {value}")
    return ", ".join(parts)
