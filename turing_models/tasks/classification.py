"""Sequence classification and regression (single sentences and sentence pairs).

* **data**: :func:`load_classification` reads TSV / CSV / JSONL / JSON files, a folder of them, or
  a ``datasets`` name (``name`` or ``name:config``, e.g. ``nyu-mll/glue:mrpc``). Delimited files
  may have a header line (detected when it names a column) or not; without one the first column
  is the text, the last the label and a middle one, if any, the second sentence.
* **labels**: :class:`LabelSpace` is inferred from the training labels: numbers that are not all
  whole are a regression target, anything else is a set of classes (sorted numerically when they
  are integers). It goes into the model config as ``id2label`` / ``label2id`` / ``problem_type``,
  so the saved model knows its labels. An eval label that training never saw is an error.
* **head**: ``TuringNLUForSequenceClassification`` (from TuringNLU, BERT, RoBERTa and XLM-R
  checkpoints).
* **predict + metric**: :func:`predict_labels` gives class ids and their probabilities (or
  regression values); accuracy, F1 and MCC, or Pearson / Spearman for regression (:mod:`.metrics`).

:class:`ClassificationTask` ties these together for ``recipes/finetune.py`` and ``recipes/evaluate.py``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import torch

from turing_models.errors import UsageError
from turing_models.tasks.base import Task
from turing_models.tasks.common import evaluating, input_keys, padded_batches, resolve_data_path, seeded_split, uses_token_types
from turing_models.tasks.metrics import classification_metrics, regression_metrics

logger = logging.getLogger(__name__)

TEXT_COLUMNS = ("sentence", "text", "sentence1", "question", "question1", "premise", "review", "content")
PAIR_COLUMNS = ("sentence2", "question2", "hypothesis", "text_pair", "text2")
LABEL_COLUMNS = ("label", "labels", "score", "target", "sentiment")
FILE_SUFFIXES = (".tsv", ".txt", ".csv", ".jsonl", ".json")


@dataclass
class ClassificationExample:
    text: str
    label: Any  # the raw label as read: a string, a number, or None when unlabelled
    text_pair: Optional[str] = None


@dataclass
class Columns:
    """Which fields hold the text, the optional second text and the label (None = guess)."""

    text: Optional[str] = None
    text_pair: Optional[str] = None
    label: Optional[str] = None


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _pick(names: Sequence[str], wanted: Optional[str], candidates: Sequence[str], what: str, source: str, required: bool) -> Optional[str]:
    if wanted is not None:
        if wanted not in names:
            raise UsageError(f"{source} has no {what} column {wanted!r} (columns: {list(names)}); set the right column name")
        return wanted
    for c in candidates:
        if c in names:
            return c
    if required:
        raise UsageError(
            f"{source}: cannot tell which column is the {what} (columns: {list(names)}); "
            f"name it with --{'text_column' if what == 'text' else what + '_column'}"
        )
    return None


def _examples_from_records(records: list[dict], columns: Columns, source: str) -> list[ClassificationExample]:
    if not records:
        return []
    names = list(records[0].keys())
    text = _pick(names, columns.text, TEXT_COLUMNS, "text", source, True)
    pair = _pick(names, columns.text_pair, PAIR_COLUMNS, "text_pair", source, False)
    label = _pick(names, columns.label, LABEL_COLUMNS, "label", source, False)
    out = []
    for i, r in enumerate(records):
        if text not in r:
            raise UsageError(f"{source}: record {i + 1} lacks the {text!r} field")
        out.append(ClassificationExample(str(r[text]), r.get(label) if label else None, str(r[pair]) if pair and r.get(pair) is not None else None))
    return out


def _is_header(row: list[str], columns: Columns) -> bool:
    known = {c for c in (columns.text, columns.text_pair, columns.label) if c}
    known |= set(TEXT_COLUMNS) | set(PAIR_COLUMNS) | set(LABEL_COLUMNS)
    return any(field.strip().lower() in known or field.strip() in known for field in row)


def _read_delimited(path: Path, columns: Columns, header: Optional[bool]) -> list[ClassificationExample]:
    delimiter = "," if path.suffix == ".csv" else "\t"
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
    with path.open(encoding="utf-8", newline="") as f:
        rows = [row for row in csv.reader(f, delimiter=delimiter, quoting=quoting) if row and any(x.strip() for x in row)]
    if not rows:
        return []
    if header is None:
        header = _is_header(rows[0], columns)
    if header:
        names = [x.strip() for x in rows[0]]
        records = []
        for n, row in enumerate(rows[1:], start=2):
            if len(row) != len(names):
                raise UsageError(f"{path} line {n}: {len(row)} fields but the header has {len(names)}")
            records.append(dict(zip(names, row)))
        return _examples_from_records(records, columns, str(path))
    if any(c is not None for c in (columns.text, columns.text_pair, columns.label)):
        raise UsageError(f"{path} has no header line, so column names cannot be used; drop the *_column options or add a header")
    width = len(rows[0])
    if width not in (2, 3):
        raise UsageError(
            f"{path} line 1 has {width} fields; a file without a header needs 'text<TAB>label' or "
            "'text<TAB>text_pair<TAB>label' (or add a header line naming the columns)"
        )
    out = []
    for n, row in enumerate(rows, start=1):
        if len(row) != width:
            raise UsageError(f"{path} line {n}: {len(row)} fields, expected {width} like line 1")
        out.append(ClassificationExample(row[0].strip(), row[-1].strip(), row[1].strip() if width == 3 else None))
    return out


def _read_json(path: Path, columns: Columns) -> list[ClassificationExample]:
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            obj = json.loads(text)
            records = obj["data"] if isinstance(obj, dict) and "data" in obj else obj
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(records, list) or (records and not isinstance(records[0], dict)):
        raise UsageError(f"{path}: expected a list of records (objects with text and label fields)")
    return _examples_from_records(records, columns, str(path))


def _read_datasets(name: str, split: str, columns: Columns) -> list[ClassificationExample]:
    import datasets

    path, _, config = name.partition(":")
    try:
        ds = datasets.load_dataset(path, config or None, split=split)
    except Exception as exc:  # any failure means the same to the user: not loadable here
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(
            f"cannot load classification data {name!r} (split {split!r}) with datasets: {first}; "
            "give local TSV/CSV/JSONL files or a datasets name available offline"
        ) from None
    label_feature = None
    records = list(ds)
    examples = _examples_from_records(records, columns, name)
    label_col = _pick(ds.column_names, columns.label, LABEL_COLUMNS, "label", name, False)
    if label_col is not None:
        label_feature = ds.features[label_col]
    names = getattr(label_feature, "names", None)
    if names:  # a ClassLabel: use its names (-1 marks an unlabelled test row)
        for ex in examples:
            ex.label = None if ex.label is None or int(ex.label) < 0 else names[int(ex.label)]
    return examples


def _data_files(source: Path) -> list[Path]:
    files = sorted(p for p in source.iterdir() if p.is_file() and p.suffix in FILE_SUFFIXES)
    if not files:
        raise UsageError(f"{source} holds no data files ({', '.join(FILE_SUFFIXES)})")
    return files


def load_classification(
    sources: str | Path | Sequence[str | Path],
    *,
    columns: Optional[Columns] = None,
    header: Optional[bool] = None,
    split: str = "train",
) -> list[ClassificationExample]:
    """Read labelled texts from files, folders or a ``datasets`` name (see the module doc).

    Rows whose text is empty are skipped with one warning.
    """
    columns = columns or Columns()
    if isinstance(sources, (str, Path)):
        sources = [sources]
    examples: list[ClassificationExample] = []
    for source in sources:
        path = Path(source)
        files = _data_files(path) if path.is_dir() else [path] if path.is_file() else None
        if files is None:
            if path.suffix in FILE_SUFFIXES or str(source).startswith((".", "/")):
                raise UsageError(
                    f"classification data not found: {source} (give TSV/CSV/JSONL files, a folder of them, or a datasets name)"
                )
            examples += _read_datasets(str(source), split, columns)
            continue
        for file in files:
            if file.suffix in (".jsonl", ".json"):
                examples += _read_json(file, columns)
            else:
                examples += _read_delimited(file, columns, header)
    empty = sum(1 for ex in examples if not ex.text.strip())
    if empty:
        logger.warning("skipped %d of %d examples whose text is empty", empty, len(examples))
        examples = [ex for ex in examples if ex.text.strip()]
    if not examples:
        raise UsageError(f"no examples in {', '.join(map(str, sources))}")
    return examples


def split_examples(examples: Sequence[ClassificationExample], eval_fraction: float = 0.2, seed: int = 0):
    """A seeded shuffle split into (train, eval)."""
    return seeded_split(examples, eval_fraction, seed)


# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------


def _as_number(value: Any) -> Optional[float]:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        return None


def _label_name(value: Any) -> str:
    """Canonical string of a class label (``1``, ``1.0`` and ``"1"`` are the same class)."""
    number = _as_number(value)
    if number is not None and math.isfinite(number) and number == int(number):
        return str(int(number))
    return str(value).strip()


@dataclass
class LabelSpace:
    """The label set of a classification task, or a regression target."""

    problem_type: str  # "single_label_classification" or "regression"
    labels: list[str]  # class names by id; empty for regression

    @property
    def num_labels(self) -> int:
        return 1 if self.is_regression else len(self.labels)

    @property
    def is_regression(self) -> bool:
        return self.problem_type == "regression"

    @classmethod
    def infer(cls, examples: Sequence[ClassificationExample], problem_type: str = "auto") -> "LabelSpace":
        raw = [ex.label for ex in examples if ex.label is not None and str(ex.label).strip() != ""]
        if not raw:
            raise UsageError("the training data has no labels; give a label column")
        if problem_type not in ("auto", "single_label_classification", "regression"):
            raise UsageError(f"problem_type must be auto, single_label_classification or regression, got {problem_type!r}")
        numbers = [_as_number(v) for v in raw]
        all_numbers = all(n is not None and math.isfinite(n) for n in numbers)
        if problem_type == "regression" or (problem_type == "auto" and all_numbers and any(n != int(n) for n in numbers)):
            if not all_numbers:
                bad = next(v for v, n in zip(raw, numbers) if n is None)
                raise UsageError(f"regression needs numeric labels, found {bad!r}")
            return cls("regression", [])
        names = sorted({_label_name(v) for v in raw}, key=lambda s: (float(s), s) if _as_number(s) is not None else (math.inf, s))
        if len(names) < 2:
            raise UsageError(f"the training data has a single label ({names[0]!r}); classification needs at least two")
        return cls("single_label_classification", names)

    @classmethod
    def from_config(cls, config) -> "LabelSpace":
        """The label space a fine-tuned model saved in its config."""
        if getattr(config, "problem_type", None) == "regression":
            return cls("regression", [])
        id2label = {int(k): v for k, v in (config.id2label or {}).items()}
        return cls("single_label_classification", [id2label[i] for i in sorted(id2label)])

    def encode(self, label: Any, source: str = "the data") -> float | int:
        if self.is_regression:
            number = _as_number(label)
            if number is None:
                raise UsageError(f"{source}: regression label {label!r} is not a number")
            return number
        name = _label_name(label)
        try:
            return self.labels.index(name)
        except ValueError:
            raise UsageError(
                f"{source} has the label {name!r}, which the training data does not have "
                f"(training labels: {self.labels}); fix the label or train with examples of it"
            ) from None

    def update_config(self, config) -> None:
        """Write the label mapping and problem type into a model config (saved with the model)."""
        config.problem_type = self.problem_type
        config.num_labels = self.num_labels
        if not self.is_regression:
            config.id2label = {i: name for i, name in enumerate(self.labels)}
            config.label2id = {name: i for i, name in enumerate(self.labels)}


# --------------------------------------------------------------------------------------------
# Preprocessing, metric
# --------------------------------------------------------------------------------------------


def prepare_features(
    examples: Sequence[ClassificationExample],
    tokenizer,
    label_space: LabelSpace,
    *,
    max_length: int = 128,
    source: str = "the data",
    token_type_ids: Optional[bool] = None,
) -> list[dict[str, Any]]:
    """Tokenized model inputs with ``labels`` (left out for unlabelled examples).

    ``token_type_ids``: see :func:`turing_models.tasks.common.input_keys`.
    """
    pairs = any(ex.text_pair is not None for ex in examples)
    encoded = tokenizer(
        [ex.text for ex in examples],
        [ex.text_pair or "" for ex in examples] if pairs else None,
        truncation=True,
        max_length=max_length,
        padding=False,
        return_token_type_ids=True,
    )
    keys = input_keys(tokenizer, token_type_ids)
    features = []
    for i, ex in enumerate(examples):
        feature = {k: encoded[k][i] for k in keys}
        if ex.label is not None and str(ex.label).strip() != "":
            feature["labels"] = label_space.encode(ex.label, source)
        features.append(feature)
    return features


def compute_metrics(label_space: LabelSpace, labels: Sequence, predictions: Sequence) -> dict[str, float]:
    """Accuracy / F1 / MCC for classes (predictions = class ids), Pearson / Spearman for regression."""
    if label_space.is_regression:
        return regression_metrics(labels, predictions)
    return classification_metrics(labels, predictions, label_space.num_labels)


# --------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------


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


@torch.no_grad()
def predict_labels(model, tokenizer, features: Sequence[dict[str, Any]], regression: bool, batch_size: int = 32):
    """Class ids and their probabilities, or regression values (twice)."""
    preds, scores = [], []
    with evaluating(model) as device:
        for _, batch in padded_batches(features, tokenizer, batch_size, device):
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
    return preds, scores


class ClassificationTask(Task):
    """Sequence classification / regression: labelled texts, label space saved with the model."""

    name = "classification"
    family = "encoder"
    head = "TuringNLUForSequenceClassification"
    default_data = "recipes/data/classification/uci_sentiment"

    def __init__(self, options: ClassificationOptions, tokenizer):
        super().__init__(options, tokenizer)
        self.columns = Columns(options.text_column, options.text_pair_column, options.label_column)
        self.labels: Optional[LabelSpace] = None
        self.eval_source = "the eval split"

    # -- data
    def load(self, source: str, *, split: str, for_training: bool = False) -> list[ClassificationExample]:
        if not for_training:
            self.eval_source = source
        paths = [resolve_data_path(p.strip()) for p in source.split(",")]
        return load_classification(paths, columns=self.columns, header=self.o.header, split=split)

    def prepare(self, train, evaluation, spec):
        self.labels = LabelSpace.infer(train, self.o.problem_type)
        unlabelled = sum(1 for ex in evaluation if ex.label is None or str(ex.label).strip() == "")
        if unlabelled:
            raise UsageError(f"{unlabelled} eval examples have no label; metrics need labelled eval data")
        for ex in evaluation:  # an unseen label fails here, before training starts
            self.labels.encode(ex.label, self.eval_source)
        return train

    def describe(self) -> str:
        return ", regression" if self.labels.is_regression else f", labels {self.labels.labels}"

    # -- settings
    def head_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"num_labels": self.labels.num_labels, "problem_type": self.labels.problem_type}
        if not self.labels.is_regression:
            kwargs["id2label"] = {i: n for i, n in enumerate(self.labels.labels)}
            kwargs["label2id"] = {n: i for i, n in enumerate(self.labels.labels)}
        return kwargs

    def configure(self, model) -> None:
        self.labels = LabelSpace.from_config(model.config)

    # -- model inputs
    def features(self, model, examples, source: Optional[str] = None):
        return prepare_features(
            examples, self.tokenizer, self.labels, max_length=self.o.max_length,
            source=source or self.eval_source, token_type_ids=uses_token_types(model),
        )

    # -- predictions and metrics
    def predict(self, model, examples, batch_size):
        features = self.features(model, examples)
        if any("labels" not in f for f in features):
            raise UsageError(f"{self.eval_source}: some examples have no label; metrics need labelled data")
        preds, scores = predict_labels(model, self.tokenizer, features, self.labels.is_regression, batch_size)
        return [f["labels"] for f in features], preds, scores

    def metrics(self, examples, predictions):
        gold, preds, scores = predictions
        metrics = compute_metrics(self.labels, gold, preds)
        rows = []
        for ex, p, s in zip(examples, preds, scores):
            row = {"text": ex.text}
            if ex.text_pair is not None:
                row["text_pair"] = ex.text_pair
            if self.labels.is_regression:
                row.update(label=float(self.labels.encode(ex.label)), prediction=p)
            else:
                row.update(label=_label_name(ex.label), prediction=self.labels.labels[p], probability=s)
            rows.append(row)
        return metrics, {"predictions.jsonl": rows}


TASK = ClassificationTask
