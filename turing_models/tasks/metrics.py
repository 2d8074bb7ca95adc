"""Metrics of the fine-tuning tasks.

* Extractive QA: the official SQuAD v1.1 / v2.0 evaluation. Answers are normalised (lower case,
  punctuation and the articles a/an/the removed, whitespace collapsed); exact match and token F1
  are taken against the best of the gold answers; an unanswerable question (no gold answer) is
  right only when the prediction is empty. For v2 the scores are broken down into HasAns / NoAns,
  and the no-answer threshold that maximises EM and F1 is searched over the null-score differences
  (``best_exact_thresh``, ``best_f1_thresh``), as the official script does.
* Classification: accuracy, F1 (the positive class for two labels, macro otherwise) and the
  Matthews correlation coefficient (the multi-class form, which equals the binary MCC for two).
* Regression: Pearson and Spearman correlation (ties get their average rank) and the MSE.

Everything is plain Python / NumPy so that the numbers do not depend on an optional library.
"""

from __future__ import annotations

import collections
import math
import re
import string
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from turing_models.errors import UsageError

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


# --------------------------------------------------------------------------------------------
# Extractive QA (SQuAD)
# --------------------------------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _answer_tokens(text: str) -> list[str]:
    return normalize_answer(text).split() if text else []


def exact_match_score(prediction: str, gold: str) -> int:
    """1 when prediction and gold are equal after normalisation, else 0."""
    return int(normalize_answer(prediction) == normalize_answer(gold))


def f1_score_tokens(prediction: str, gold: str) -> float:
    """Token-overlap F1 of the normalised strings (1.0 when both are empty)."""
    pred_tokens, gold_tokens = _answer_tokens(prediction), _answer_tokens(gold)
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _gold_texts(answers: Iterable[str]) -> list[str]:
    """Gold answers that survive normalisation; ``[""]`` for an unanswerable question."""
    golds = [a for a in answers if normalize_answer(a)]
    return golds or [""]


def squad_scores(
    predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]
) -> tuple[dict[str, float], dict[str, float]]:
    """Per-question exact match (0/1) and F1 (0..1). A missing prediction scores 0."""
    exact, f1 = {}, {}
    for qid, answers in references.items():
        golds = _gold_texts(answers)
        pred = predictions.get(qid)
        if pred is None:
            exact[qid], f1[qid] = 0.0, 0.0
            continue
        exact[qid] = float(max(exact_match_score(pred, g) for g in golds))
        f1[qid] = max(f1_score_tokens(pred, g) for g in golds)
    return exact, f1


def _apply_no_answer_threshold(
    scores: Mapping[str, float],
    null_scores: Mapping[str, float],
    has_answer: Mapping[str, bool],
    threshold: float,
) -> dict[str, float]:
    out = {}
    for qid, score in scores.items():
        if null_scores[qid] > threshold:  # predicted "no answer"
            out[qid] = float(not has_answer[qid])
        else:
            out[qid] = score
    return out


def _best_threshold(
    predictions: Mapping[str, str],
    scores: Mapping[str, float],
    null_scores: Mapping[str, float],
    has_answer: Mapping[str, bool],
) -> tuple[float, float]:
    """Sweep the threshold over the observed null scores (official v2 script's search).

    Start from "every question unanswered" (all NoAns right) and lower the threshold one question
    at a time, in order of increasing null score: the best running total wins.
    """
    current = best = float(sum(1 for qid in scores if not has_answer[qid]))
    best_threshold = 0.0
    for qid in sorted(scores, key=lambda q: null_scores[q]):
        if has_answer[qid]:
            delta = scores[qid]
        else:
            delta = -1.0 if predictions.get(qid) else 0.0
        current += delta
        if current > best:
            best, best_threshold = current, null_scores[qid]
    return 100.0 * best / max(len(scores), 1), best_threshold


def squad_evaluate(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    null_scores: Optional[Mapping[str, float]] = None,
    threshold: float = 0.0,
) -> dict[str, float]:
    """The official SQuAD evaluation (percentages).

    Args:
        predictions: question id -> predicted answer text ("" = no answer).
        references: question id -> gold answer texts (empty for an unanswerable question).
        null_scores: question id -> how strongly the model prefers "no answer" (the null-score
            difference ``null - best span``). When given, a question whose null score is above
            ``threshold`` counts as answered "no answer", and the best thresholds are searched.
        threshold: see ``null_scores``.

    Returns ``exact``, ``f1``, ``total``; ``HasAns_*`` / ``NoAns_*`` when the references hold
    both kinds of question (or any unanswerable one); ``best_exact``, ``best_exact_thresh``,
    ``best_f1``, ``best_f1_thresh`` when ``null_scores`` is given; ``missing`` predictions.
    """
    if not references:
        raise UsageError("no questions to evaluate: the reference set is empty; give a data file with at least one question")
    exact, f1 = squad_scores(predictions, references)
    has_answer = {qid: bool(answers) for qid, answers in references.items()}
    if null_scores is not None:
        missing_null = [qid for qid in references if qid not in null_scores]
        if missing_null:
            raise UsageError(
                f"null_scores lacks {len(missing_null)} question ids (e.g. {missing_null[0]!r}): "
                "give a null score for every question or none"
            )
        exact_t = _apply_no_answer_threshold(exact, null_scores, has_answer, threshold)
        f1_t = _apply_no_answer_threshold(f1, null_scores, has_answer, threshold)
    else:
        exact_t, f1_t = exact, f1

    def block(ids: list[str], prefix: str = "") -> dict[str, float]:
        n = len(ids)
        return {
            f"{prefix}exact": 100.0 * sum(exact_t[q] for q in ids) / n,
            f"{prefix}f1": 100.0 * sum(f1_t[q] for q in ids) / n,
            f"{prefix}total": n,
        }

    ids = list(references)
    result = block(ids)
    has_ids = [q for q in ids if has_answer[q]]
    no_ids = [q for q in ids if not has_answer[q]]
    if no_ids:
        if has_ids:
            result.update(block(has_ids, "HasAns_"))
        result.update(block(no_ids, "NoAns_"))
    if null_scores is not None:
        result["best_exact"], result["best_exact_thresh"] = _best_threshold(predictions, exact, null_scores, has_answer)
        result["best_f1"], result["best_f1_thresh"] = _best_threshold(predictions, f1, null_scores, has_answer)
    result["missing"] = sum(1 for q in ids if q not in predictions)
    return result


# --------------------------------------------------------------------------------------------
# Classification and regression
# --------------------------------------------------------------------------------------------


def _confusion(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, preds), 1)
    return matrix


def matthews_corrcoef(labels: Sequence[int], preds: Sequence[int]) -> float:
    """Matthews correlation coefficient, multi-class form (0 when undefined)."""
    y, p = np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)
    k = int(max(y.max(initial=0), p.max(initial=0))) + 1
    c = _confusion(y, p, k).astype(np.float64)
    s = c.sum()
    correct = np.trace(c)
    true_counts, pred_counts = c.sum(axis=1), c.sum(axis=0)
    cov_yp = correct * s - true_counts @ pred_counts
    cov_yy = s * s - true_counts @ true_counts
    cov_pp = s * s - pred_counts @ pred_counts
    denom = math.sqrt(cov_yy * cov_pp)
    return float(cov_yp / denom) if denom > 0 else 0.0


def f1_per_class(labels: Sequence[int], preds: Sequence[int], num_classes: int) -> np.ndarray:
    """F1 of each class (0 for a class neither predicted nor present)."""
    c = _confusion(np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64), num_classes)
    tp = np.diag(c).astype(np.float64)
    denom = c.sum(axis=0) + c.sum(axis=1)  # (tp + fp) + (tp + fn)
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def classification_metrics(labels: Sequence[int], preds: Sequence[int], num_classes: int) -> dict[str, float]:
    """``accuracy``, ``f1`` (positive class 1 when binary, macro otherwise), ``macro_f1``, ``mcc``."""
    if len(labels) != len(preds):
        raise ValueError(f"{len(labels)} labels but {len(preds)} predictions")
    if len(labels) == 0:
        raise UsageError("no examples to evaluate: the evaluation set is empty; give a data file with at least one example")
    y, p = np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)
    per_class = f1_per_class(y, p, num_classes)
    macro = float(per_class.mean())
    return {
        "accuracy": float((y == p).mean()),
        "f1": float(per_class[1]) if num_classes == 2 else macro,
        "macro_f1": macro,
        "mcc": matthews_corrcoef(y, p),
        "total": int(len(y)),
    }


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    return ranks


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation (0 when either side is constant)."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation: Pearson of the average ranks."""
    return pearson(_average_ranks(np.asarray(x, dtype=np.float64)), _average_ranks(np.asarray(y, dtype=np.float64)))


def regression_metrics(labels: Sequence[float], preds: Sequence[float]) -> dict[str, float]:
    """``pearson``, ``spearman``, ``mse``."""
    if len(labels) != len(preds):
        raise ValueError(f"{len(labels)} labels but {len(preds)} predictions")
    if len(labels) == 0:
        raise UsageError("no examples to evaluate: the evaluation set is empty; give a data file with at least one example")
    y, p = np.asarray(labels, dtype=np.float64), np.asarray(preds, dtype=np.float64)
    return {
        "pearson": pearson(p, y),
        "spearman": spearman(p, y),
        "mse": float(((p - y) ** 2).mean()),
        "total": int(len(y)),
    }
