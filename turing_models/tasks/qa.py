"""Extractive question answering (SQuAD v1.1 / v2.0).

The task in four parts:

* **data**: :func:`load_squad` reads the official SQuAD JSON (v1.1 and v2.0 with
  ``is_impossible``), Hugging Face style flat JSON / JSONL records, or a ``datasets`` name; answers
  whose text is not found at ``answer_start`` are counted, reported in one warning and skipped
  for training; questions with an empty context are skipped the same way.
  :func:`split_by_article` makes a train/eval split in which no article is on both sides.
* **preprocessing**: :func:`prepare_train_features` / :func:`prepare_eval_features` cut long
  contexts into windows of ``max_length`` tokens that overlap by ``doc_stride`` tokens (fast
  tokenizers' overflowing tokens), and map character answers to token start/end positions through
  the offset mapping; a window that does not hold the whole answer (and every window of an
  unanswerable question) points at the CLS token.
* **head**: a span head over an encoder, ``TuringNLUForQuestionAnswering`` (from TuringNLU, BERT,
  RoBERTa and XLM-R checkpoints).
* **predict + postprocessing**: :func:`predict_logits` runs the eval windows;
  :func:`postprocess_predictions` takes the ``n_best`` start/end logits of every window, keeps
  spans of at most ``max_answer_length`` tokens inside the context, and for v2 answers "" when the
  null (CLS) score beats the best span by more than the null threshold, as transformers'
  ``utils_qa.py`` does.
* **metric**: :func:`turing_models.tasks.metrics.squad_evaluate` is the official EM/F1 with the
  HasAns/NoAns breakdown and the best null threshold.
* **the null threshold** (v2): ``qa.null_threshold`` (default 0.0), or with
  ``qa.tune_null_threshold`` the threshold that maximises F1 on a share of the *training*
  articles held out from training (``qa.null_tune_fraction``), never on the eval set. Either is
  saved with the model and logged with where it came from.

:class:`QATask` ties these together for ``recipes/finetune.py`` and ``recipes/evaluate.py``.
"""

from __future__ import annotations

import collections
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch

from turing_models.errors import UsageError
from turing_models.tasks.base import DataSpec, Task
from turing_models.tasks.common import evaluating, input_keys, padded_batches, seeded_split, uses_token_types
from turing_models.tasks.metrics import normalize_answer, squad_evaluate

logger = logging.getLogger(__name__)


@dataclass
class QAExample:
    """One question over one context. ``answers`` is empty for an unanswerable question."""

    id: str
    question: str
    context: str
    answers: list[str] = field(default_factory=list)
    answer_starts: list[int] = field(default_factory=list)
    title: str = ""

    @property
    def is_impossible(self) -> bool:
        return not self.answers


@dataclass
class LoadReport:
    """What :func:`load_squad` skipped, and why."""

    questions: int = 0
    kept: int = 0
    empty_context: int = 0
    misplaced_answer: int = 0
    version: str = "1.1"

    @property
    def has_unanswerable(self) -> bool:
        return self.version.startswith("2")


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _answer_at_start(context: str, text: str, start: int) -> bool:
    return 0 <= start and context[start : start + len(text)] == text and bool(text)


def _records_from_squad_json(obj: dict, source: str) -> tuple[list[dict], str]:
    data = obj.get("data")
    if not isinstance(data, list):
        raise UsageError(
            f"{source} is not SQuAD JSON: expected an object with a 'data' list of articles "
            "({'data': [{'title', 'paragraphs': [{'context', 'qas': [...]}]}]})"
        )
    version = str(obj.get("version", "1.1")).lstrip("vV")  # official files say "1.1" / "v2.0"
    records = []
    for article in data:
        title = str(article.get("title", ""))
        paragraphs = article.get("paragraphs")
        if not isinstance(paragraphs, list):
            raise UsageError(f"{source}: article {title!r} has no 'paragraphs' list; is this SQuAD JSON?")
        for paragraph in paragraphs:
            context = paragraph.get("context", "")
            for qa in paragraph.get("qas", []):
                if "id" not in qa or "question" not in qa:
                    raise UsageError(f"{source}: a question in article {title!r} lacks 'id' or 'question'")
                impossible = bool(qa.get("is_impossible", False))
                if impossible and not version.startswith("2"):
                    version = "2.0"
                answers = [] if impossible else qa.get("answers", [])
                records.append(
                    {
                        "id": str(qa["id"]),
                        "title": title,
                        "context": context if isinstance(context, str) else "",
                        "question": qa["question"],
                        "answers": {
                            "text": [a["text"] for a in answers],
                            "answer_start": [int(a["answer_start"]) for a in answers],
                        },
                    }
                )
    return records, version


def _read_records(source: str | Path, split: str) -> tuple[list[dict], str]:
    """Records with id/title/context/question/answers{text, answer_start} and the format version."""
    path = Path(source)
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            try:
                records = [json.loads(line) for line in text.splitlines() if line.strip()]
            except json.JSONDecodeError as exc:
                raise UsageError(f"{path} line {exc.lineno}: not valid JSON Lines ({exc.msg})") from None
            return records, "auto"
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
        if isinstance(obj, dict) and "data" in obj and isinstance(obj["data"], list) and obj["data"] and "paragraphs" in obj["data"][0]:
            return _records_from_squad_json(obj, str(path))
        if isinstance(obj, dict) and isinstance(obj.get("data"), list):
            return obj["data"], "auto"
        if isinstance(obj, list):
            return obj, "auto"
        return _records_from_squad_json(obj, str(path))  # raises the format error
    if path.exists():
        raise UsageError(f"{path} is a folder; give the SQuAD JSON file inside it")
    if path.suffix in (".json", ".jsonl") or "/" in str(source) and not _looks_like_hub_name(str(source)):
        raise UsageError(f"QA data file not found: {source} (give a SQuAD JSON file or a datasets name such as squad_v2)")
    return _records_from_datasets(str(source), split), "auto"


def _looks_like_hub_name(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/"))


def _records_from_datasets(name: str, split: str) -> list[dict]:
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as exc:  # the datasets library raises many kinds; all mean "cannot load it"
        raise UsageError(
            f"cannot load QA data {name!r} (split {split!r}) with datasets: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; "
            "give a local SQuAD JSON file or a datasets name available offline"
        ) from None
    missing = {"id", "question", "context", "answers"} - set(ds.column_names)
    if missing:
        raise UsageError(f"datasets {name!r} lacks the SQuAD columns {sorted(missing)} (it has {ds.column_names})")
    return list(ds)


def load_squad(source: str | Path, *, split: str = "train", for_training: bool = True) -> tuple[list[QAExample], LoadReport]:
    """Read QA examples from SQuAD JSON, flat JSON/JSONL records, or a ``datasets`` name.

    Questions with an empty context are skipped. Answers whose text is not at its
    ``answer_start`` are dropped; for training (``for_training=True``) a question left without a
    usable answer is skipped, while for evaluation it is kept (the metric needs only the gold
    texts). Each kind of skip is counted and reported in one warning line.
    """
    records, version = _read_records(source, split)
    report = LoadReport(questions=len(records))
    examples: list[QAExample] = []
    has_impossible = False
    for record in records:
        try:
            qid, question = str(record["id"]), record["question"]
            context = record.get("context") or ""
            answers = record.get("answers") or {"text": [], "answer_start": []}
        except (KeyError, TypeError):
            raise UsageError(
                f"{source}: a record lacks 'id', 'question' or 'context'; QA records need "
                "id, question, context and answers {text: [...], answer_start: [...]}"
            ) from None
        if isinstance(answers, list):  # SQuAD-style list of {text, answer_start}
            answers = {"text": [a["text"] for a in answers], "answer_start": [a["answer_start"] for a in answers]}
        if not context.strip():
            report.empty_context += 1
            continue
        texts, starts = list(answers["text"]), [int(s) for s in answers["answer_start"]]
        if not texts:
            has_impossible = True
            examples.append(QAExample(qid, question, context, [], [], str(record.get("title", ""))))
            continue
        good = [(t, s) for t, s in zip(texts, starts) if _answer_at_start(context, t, s)]
        if len(good) < len(texts):
            report.misplaced_answer += 1
            if for_training and not good:
                continue
        if for_training:
            texts, starts = [t for t, _ in good], [s for _, s in good]
        examples.append(QAExample(qid, question, context, texts, starts, str(record.get("title", ""))))
    if version == "auto":
        version = "2.0" if has_impossible else "1.1"
    elif has_impossible and not version.startswith("2"):
        version = "2.0"
    report.version = version
    report.kept = len(examples)
    if report.empty_context:
        logger.warning("%s: skipped %d of %d questions whose context is empty", source, report.empty_context, report.questions)
    if report.misplaced_answer:
        action = "skipped those questions" if for_training else "kept them for their gold texts"
        logger.warning(
            "%s: %d of %d questions have an answer whose text is not at its answer_start; %s",
            source, report.misplaced_answer, report.questions, action,
        )
    if not examples:
        raise UsageError(f"{source}: no usable QA examples ({report.questions} questions read; empty contexts or misplaced answers)")
    return examples, report


def training_examples(examples: Sequence[QAExample], source: str = "the data") -> list[QAExample]:
    """The examples usable for training: answers whose text is not at ``answer_start`` are
    dropped, and so is a question left without one (counted in one warning)."""
    out, skipped = [], 0
    for ex in examples:
        good = [(t, s) for t, s in zip(ex.answers, ex.answer_starts) if _answer_at_start(ex.context, t, s)]
        if ex.answers and not good:
            skipped += 1
            continue
        out.append(QAExample(ex.id, ex.question, ex.context, [t for t, _ in good], [s for _, s in good], ex.title))
    if skipped:
        logger.warning("%s: skipped %d of %d training questions whose answer text is not at its answer_start", source, skipped, len(examples))
    if not out:
        raise UsageError(f"{source}: no usable training questions")
    return out


def split_by_article(examples: Sequence[QAExample], eval_fraction: float = 0.2, seed: int = 0) -> tuple[list[QAExample], list[QAExample]]:
    """Split by article title so that no article is in both the training and the eval set."""
    if not 0.0 < eval_fraction < 1.0:
        raise UsageError(f"eval_fraction must be between 0 and 1 (exclusive), got {eval_fraction}")
    titles = sorted({ex.title for ex in examples})
    if len(titles) < 2:
        raise UsageError(
            f"cannot split by article: the data has {len(titles)} article title(s); give a separate eval file (eval_data)"
        )
    random.Random(seed).shuffle(titles)
    n_eval = min(len(titles) - 1, max(1, round(len(titles) * eval_fraction)))
    eval_titles = set(titles[:n_eval])
    train = [ex for ex in examples if ex.title not in eval_titles]
    evaluation = [ex for ex in examples if ex.title in eval_titles]
    return train, evaluation


# --------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------


def _check_tokenizer(tokenizer) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise UsageError(
            f"extractive QA needs a fast tokenizer (offset mapping); {type(tokenizer).__name__} is not one"
        )


def _truncate_question(tokenizer, question: str, max_query_length: int) -> str:
    question = question.lstrip()
    enc = tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    if len(offsets) <= max_query_length:
        return question
    return question[: offsets[max_query_length - 1][1]]


def _tokenize_windows(tokenizer, examples: Sequence[QAExample], max_length: int, doc_stride: int, max_query_length: int):
    _check_tokenizer(tokenizer)
    n_special = tokenizer.num_special_tokens_to_add(pair=True)
    if max_length - max_query_length - n_special <= doc_stride:
        raise UsageError(
            f"doc_stride ({doc_stride}) must be smaller than the context room of a window "
            f"(max_length {max_length} - max_query_length {max_query_length} - {n_special} special tokens); "
            "lower doc_stride or max_query_length, or raise max_length"
        )
    questions = [_truncate_question(tokenizer, ex.question, max_query_length) for ex in examples]
    contexts = [ex.context for ex in examples]
    pad_right = tokenizer.padding_side == "right"
    encoded = tokenizer(
        questions if pad_right else contexts,
        contexts if pad_right else questions,
        truncation="only_second" if pad_right else "only_first",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
        return_token_type_ids=True,
    )
    return encoded, (1 if pad_right else 0)


def _context_bounds(sequence_ids: list[Optional[int]], context_index: int) -> tuple[int, int]:
    start = 0
    while sequence_ids[start] != context_index:
        start += 1
    end = len(sequence_ids) - 1
    while sequence_ids[end] != context_index:
        end -= 1
    return start, end


def _cls_index(input_ids: list[int], tokenizer) -> int:
    cls_id = tokenizer.cls_token_id
    if cls_id is not None and cls_id in input_ids:
        return input_ids.index(cls_id)
    return 0


def prepare_train_features(
    examples: Sequence[QAExample],
    tokenizer,
    *,
    max_length: int = 384,
    doc_stride: int = 128,
    max_query_length: int = 64,
    token_type_ids: Optional[bool] = None,
) -> list[dict[str, Any]]:
    """Training windows with ``start_positions`` / ``end_positions`` (CLS when the window lacks the answer).

    ``token_type_ids``: see :func:`turing_models.tasks.common.input_keys`.
    """
    encoded, context_index = _tokenize_windows(tokenizer, examples, max_length, doc_stride, max_query_length)
    keys = input_keys(tokenizer, token_type_ids)
    features = []
    for i, example_index in enumerate(encoded["overflow_to_sample_mapping"]):
        example = examples[example_index]
        input_ids = encoded["input_ids"][i]
        offsets = encoded["offset_mapping"][i]
        cls = _cls_index(input_ids, tokenizer)
        start_pos = end_pos = cls
        if example.answers:
            start_char = example.answer_starts[0]
            end_char = start_char + len(example.answers[0])
            ctx_start, ctx_end = _context_bounds(encoded.sequence_ids(i), context_index)
            if offsets[ctx_start][0] <= start_char and offsets[ctx_end][1] >= end_char:
                token = ctx_start
                while token <= ctx_end and offsets[token][0] <= start_char:
                    token += 1
                start_pos = token - 1
                token = ctx_end
                while token >= ctx_start and offsets[token][1] >= end_char:
                    token -= 1
                end_pos = token + 1
        feature = {k: encoded[k][i] for k in keys}
        feature["start_positions"] = start_pos
        feature["end_positions"] = end_pos
        features.append(feature)
    return features


@dataclass
class EvalFeatures:
    """Model inputs of the eval windows and what postprocessing needs to map them back."""

    inputs: list[dict[str, Any]]
    example_index: list[int]
    offsets: list[list[Optional[tuple[int, int]]]]  # None outside the context
    cls_index: list[int]


def prepare_eval_features(
    examples: Sequence[QAExample],
    tokenizer,
    *,
    max_length: int = 384,
    doc_stride: int = 128,
    max_query_length: int = 64,
    token_type_ids: Optional[bool] = None,
) -> EvalFeatures:
    """Eval windows; offsets outside the context are ``None`` so that no span can land there."""
    encoded, context_index = _tokenize_windows(tokenizer, examples, max_length, doc_stride, max_query_length)
    keys = input_keys(tokenizer, token_type_ids)
    out = EvalFeatures([], [], [], [])
    for i, example_index in enumerate(encoded["overflow_to_sample_mapping"]):
        sequence_ids = encoded.sequence_ids(i)
        out.inputs.append({k: encoded[k][i] for k in keys})
        out.example_index.append(example_index)
        out.offsets.append(
            [tuple(o) if sequence_ids[t] == context_index else None for t, o in enumerate(encoded["offset_mapping"][i])]
        )
        out.cls_index.append(_cls_index(encoded["input_ids"][i], tokenizer))
    return out


@dataclass
class RoundTripReport:
    """How many answers the preprocessing maps to a token span whose text is the answer."""

    answers: int = 0
    exact: int = 0
    normalized: int = 0
    outside_windows: int = 0
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (id, gold, recovered)

    @property
    def exact_share(self) -> float:
        return self.exact / self.answers if self.answers else 0.0

    @property
    def normalized_share(self) -> float:
        return self.normalized / self.answers if self.answers else 0.0


def answer_roundtrip(
    examples: Sequence[QAExample], tokenizer, *, max_length: int = 384, doc_stride: int = 128, max_query_length: int = 64
) -> RoundTripReport:
    """Check every answer: the text under its token span (via offsets) against the gold text.

    An answer counts as exact when some window's span reproduces it character for character,
    as normalized when it is equal after SQuAD normalisation (e.g. a span that starts inside a
    word picks up the whole first word).
    """
    answerable = [ex for ex in examples if ex.answers]
    features = prepare_train_features(
        answerable, tokenizer, max_length=max_length, doc_stride=doc_stride, max_query_length=max_query_length
    )
    encoded, _ = _tokenize_windows(tokenizer, answerable, max_length, doc_stride, max_query_length)
    recovered: dict[int, list[str]] = collections.defaultdict(list)
    for i, feature in enumerate(features):
        example_index = encoded["overflow_to_sample_mapping"][i]
        cls = _cls_index(feature["input_ids"], tokenizer)
        if feature["start_positions"] == cls and feature["end_positions"] == cls:
            continue
        offsets = encoded["offset_mapping"][i]
        context = answerable[example_index].context
        recovered[example_index].append(context[offsets[feature["start_positions"]][0] : offsets[feature["end_positions"]][1]])
    report = RoundTripReport(answers=len(answerable))
    for index, example in enumerate(answerable):
        texts = recovered.get(index, [])
        gold = example.answers[0]
        if not texts:
            report.outside_windows += 1
            report.failures.append((example.id, gold, ""))
            continue
        if gold in texts:
            report.exact += 1
            report.normalized += 1
        elif any(normalize_answer(t) == normalize_answer(gold) for t in texts):
            report.normalized += 1
            report.failures.append((example.id, gold, texts[0]))
        else:
            report.failures.append((example.id, gold, texts[0]))
    return report


# --------------------------------------------------------------------------------------------
# Postprocessing
# --------------------------------------------------------------------------------------------


@dataclass
class QAPredictions:
    """Answers per question id, the null-score differences (v2) and the n-best lists.

    ``predictions`` is the final answer ("" = no answer for v2); ``best_spans`` is the best
    non-null span whatever the null score says (what the threshold search needs).
    """

    predictions: dict[str, str]
    null_scores: dict[str, float]
    nbest: dict[str, list[dict[str, Any]]]
    best_spans: dict[str, str]


def _softmax(scores: np.ndarray) -> np.ndarray:
    exp = np.exp(scores - scores.max())
    return exp / exp.sum()


def postprocess_predictions(
    examples: Sequence[QAExample],
    features: EvalFeatures,
    start_logits: Sequence[np.ndarray],
    end_logits: Sequence[np.ndarray],
    *,
    n_best: int = 20,
    max_answer_length: int = 30,
    version_2: bool = False,
    null_threshold: float = 0.0,
) -> QAPredictions:
    """Turn per-window start/end logits into one answer per question.

    For every window the ``n_best`` top start and end positions are paired; a pair is kept when
    both lie in the context and ``start <= end < start + max_answer_length``; its score is the sum
    of the two logits. The null score of a question is the smallest CLS score over its windows.
    With ``version_2``, the answer is "" when ``null - best_span > null_threshold``; the difference
    is returned in ``null_scores`` for the threshold search of :func:`squad_evaluate`.
    """
    if len(start_logits) != len(features.inputs) or len(end_logits) != len(features.inputs):
        raise ValueError(f"{len(features.inputs)} windows but {len(start_logits)} / {len(end_logits)} logit rows")
    by_example: dict[int, list[int]] = collections.defaultdict(list)
    for feature_index, example_index in enumerate(features.example_index):
        by_example[example_index].append(feature_index)

    predictions, null_scores, nbest_out, best_spans = {}, {}, {}, {}
    for example_index, example in enumerate(examples):
        null_score = None
        candidates = []
        for feature_index in by_example.get(example_index, []):
            starts = np.asarray(start_logits[feature_index], dtype=np.float64)
            ends = np.asarray(end_logits[feature_index], dtype=np.float64)
            offsets = features.offsets[feature_index]
            length = min(len(offsets), len(starts))
            cls = features.cls_index[feature_index]
            feature_null = starts[cls] + ends[cls]
            if null_score is None or feature_null < null_score:
                null_score = feature_null
            top_starts = np.argsort(starts[:length])[::-1][:n_best]
            top_ends = np.argsort(ends[:length])[::-1][:n_best]
            for s in top_starts:
                if offsets[s] is None:
                    continue
                for e in top_ends:
                    if offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                        continue
                    candidates.append(
                        {
                            "text": example.context[offsets[s][0] : offsets[e][1]],
                            "score": float(starts[s] + ends[e]),
                            "start": int(offsets[s][0]),
                        }
                    )
        candidates.sort(key=lambda c: c["score"], reverse=True)
        candidates = candidates[:n_best]
        if null_score is None:
            null_score = 0.0
        best = candidates[0] if candidates else {"text": "", "score": float("-inf"), "start": -1}
        listing = list(candidates)
        if version_2:
            listing.append({"text": "", "score": float(null_score), "start": -1})
            listing.sort(key=lambda c: c["score"], reverse=True)
            listing = listing[: max(n_best, 1)]
        if listing:
            probs = _softmax(np.array([c["score"] for c in listing]))
            for c, p in zip(listing, probs):
                c["probability"] = float(p)
        nbest_out[example.id] = listing
        best_spans[example.id] = best["text"]
        diff = float(null_score - best["score"]) if candidates else float("inf")
        null_scores[example.id] = diff if np.isfinite(diff) else 1e9
        if version_2 and (not candidates or diff > null_threshold):
            predictions[example.id] = ""
        else:
            predictions[example.id] = best["text"]
    return QAPredictions(predictions, null_scores, nbest_out, best_spans)


def references(examples: Iterable[QAExample]) -> dict[str, list[str]]:
    """Gold answer texts per question id (empty for an unanswerable question)."""
    return {ex.id: list(ex.answers) for ex in examples}


def evaluate_predictions(
    examples: Sequence[QAExample], result: QAPredictions, *, version_2: bool, null_threshold: float = 0.0
) -> dict[str, float]:
    """Official EM/F1 (+ HasAns/NoAns and best thresholds for v2) of postprocessed predictions.

    For v2 the metric gets the best spans and the null scores, as the official script gets a
    prediction and a no-answer probability per question: at ``null_threshold`` it scores exactly
    ``result.predictions``, and the threshold search can also turn "no answer" back into spans.
    """
    if not version_2:
        return squad_evaluate(result.predictions, references(examples))
    return squad_evaluate(result.best_spans, references(examples), result.null_scores, null_threshold)


# --------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------


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
    """v2: answer "" when null score - best span score > this (default 0.0, as transformers'
    run_qa.py; evaluate.py: the threshold saved with the model)."""
    tune_null_threshold: bool = False
    """v2, fine-tuning: replace null_threshold by the one that maximises F1 on training articles
    held out from training (never the eval set); saved with the model."""
    null_tune_fraction: float = 0.1
    """Share of the training articles held out to tune the null threshold."""


@torch.no_grad()
def predict_logits(model, tokenizer, features: EvalFeatures, batch_size: int = 32) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Start / end logits of every eval window, trimmed to the window's length."""
    starts, ends = [], []
    with evaluating(model) as device:
        for i, batch in padded_batches(features.inputs, tokenizer, batch_size, device):
            out = model(**batch)
            for j in range(out.start_logits.shape[0]):
                n = len(features.inputs[i + j]["input_ids"])
                starts.append(out.start_logits[j, :n].float().cpu().numpy())
                ends.append(out.end_logits[j, :n].float().cpu().numpy())
    return starts, ends


def _split_for_tuning(train: list[QAExample], fraction: float, seed: int) -> tuple[list[QAExample], list[QAExample]]:
    """(train, held out to tune the null threshold): by article when there are several."""
    if len({ex.title for ex in train}) >= 2:
        return split_by_article(train, fraction, seed)
    return seeded_split(train, fraction, seed)


class QATask(Task):
    """Extractive QA: SQuAD data, windows, span head, n-best postprocessing, EM/F1."""

    name = "qa"
    family = "encoder"
    head = "TuringNLUForQuestionAnswering"
    default_data = "recipes/data/qa/xquad.en.json"

    def __init__(self, options: QAOptions, tokenizer):
        super().__init__(options, tokenizer)
        self.reports: list[LoadReport] = []
        self.saved_version_2 = False
        self.saved_threshold: Optional[float] = None
        self.tune: list[QAExample] = []
        self.tuned_threshold: Optional[float] = None
        self.token_type_ids: Optional[bool] = None

    # -- data
    def load(self, source: str, *, split: str, for_training: bool = False) -> list[QAExample]:
        # every gold text is kept: training_examples() drops misplaced answers from the training side
        examples, report = load_squad(source, split=split, for_training=False)
        self.reports.append(report)
        return examples

    def split(self, examples, eval_fraction, seed):
        return split_by_article(examples, eval_fraction, seed)

    def training_examples(self, examples, source):
        return training_examples(examples, source=source)

    @property
    def version_2(self) -> bool:
        if self.o.version_2 is not None:
            return bool(self.o.version_2)
        return any(r.has_unanswerable for r in self.reports) or self.saved_version_2

    def prepare(self, train, evaluation, spec: DataSpec):
        if self.o.tune_null_threshold:
            if not self.version_2:
                logger.warning("qa.tune_null_threshold is ignored: the data is SQuAD v1.1 (no unanswerable questions)")
            else:
                train, self.tune = _split_for_tuning(train, self.o.null_tune_fraction, spec.split_seed)
        return train

    def describe(self) -> str:
        text = f", SQuAD v{'2.0' if self.version_2 else '1.1'}"
        if self.tune:
            text += f"; {len(self.tune)} training questions held out to tune the null threshold"
        return text

    # -- settings
    def configure(self, model) -> None:
        if self.o.tune_null_threshold:
            raise UsageError(
                "qa.tune_null_threshold tunes on held-out training data while fine-tuning, never on the data being "
                "evaluated; evaluate uses the threshold saved with the model, or give --qa.null_threshold"
            )
        self.saved_version_2 = bool(getattr(model.config, "qa_version_2", False))
        saved = getattr(model.config, "qa_null_threshold", None)
        self.saved_threshold = None if saved is None else float(saved)

    def null_threshold(self) -> tuple[float, str]:
        """The threshold in use and where it comes from."""
        if self.tuned_threshold is not None:
            return self.tuned_threshold, f"tuned on {len(self.tune)} held-out training questions"
        if self.o.null_threshold is not None:
            return float(self.o.null_threshold), "qa.null_threshold"
        if self.saved_threshold is not None:
            return self.saved_threshold, "saved with the model"
        return 0.0, "default"

    def save_settings(self, config) -> None:
        config.qa_version_2 = self.version_2
        config.qa_null_threshold = self.null_threshold()[0]

    # -- model inputs
    def _window_kwargs(self, model) -> dict[str, Any]:
        return dict(max_length=self.o.max_length, doc_stride=self.o.doc_stride, max_query_length=self.o.max_query_length,
                    token_type_ids=uses_token_types(model))

    def features(self, model, examples):
        return prepare_train_features(examples, self.tokenizer, **self._window_kwargs(model))

    # -- predictions and metrics
    def predict(self, model, examples, batch_size):
        features = prepare_eval_features(examples, self.tokenizer, **self._window_kwargs(model))
        starts, ends = predict_logits(model, self.tokenizer, features, batch_size)
        return features, starts, ends

    def _postprocess(self, examples, predictions, threshold: float) -> QAPredictions:
        features, starts, ends = predictions
        return postprocess_predictions(
            examples, features, starts, ends, n_best=self.o.n_best, max_answer_length=self.o.max_answer_length,
            version_2=self.version_2, null_threshold=threshold,
        )

    def evaluate(self, model, examples, batch_size):
        if self.tune and self.version_2 and self.tuned_threshold is None:
            result = self._postprocess(self.tune, self.predict(model, self.tune, batch_size), 0.0)
            tuned = evaluate_predictions(self.tune, result, version_2=True)
            self.tuned_threshold = float(tuned["best_f1_thresh"])
        return super().evaluate(model, examples, batch_size)

    def metrics(self, examples, predictions):
        threshold, source = self.null_threshold()
        result = self._postprocess(examples, predictions, threshold)
        metrics = evaluate_predictions(examples, result, version_2=self.version_2, null_threshold=threshold)
        outputs: dict[str, Any] = {"predictions.json": result.predictions, "nbest.json": result.nbest}
        if self.version_2:
            logger.info("qa: no answer when null score - best span score > %.4g (%s)", threshold, source)
            metrics.update(null_threshold=threshold, null_threshold_source=source)
            outputs["null_scores.json"] = result.null_scores
        else:
            metrics["null_threshold"] = None
        return metrics, outputs


TASK = QATask
