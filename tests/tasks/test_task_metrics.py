"""The task metrics against hand-computed cases (and SciPy / scikit-learn where present)."""

import math

import numpy as np
import pytest

from turing_models.tasks.metrics import (
    classification_metrics,
    exact_match_score,
    f1_score_tokens,
    matthews_corrcoef,
    normalize_answer,
    pearson,
    regression_metrics,
    spearman,
    squad_evaluate,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The Cat!", "cat"),
        ("an apple, a pear and THE plum.", "apple pear and plum"),
        ("  Denver   Broncos ", "denver broncos"),
        ("theatre", "theatre"),  # articles only as whole words
        ("Levi's Stadium", "levis stadium"),
        ("A", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_exact_and_f1_by_hand():
    assert exact_match_score("the Broncos", "Broncos.") == 1
    assert exact_match_score("Broncos", "Denver Broncos") == 0
    # pred {big, cat} vs gold {big, cat, sat}: precision 1, recall 2/3 -> F1 0.8
    assert f1_score_tokens("the big cat", "big cat sat") == pytest.approx(0.8)
    # repeated tokens count with multiplicity: 'x x y' vs 'x y y'
    # overlap = min(2,1) + min(1,2) = 2, precision 2/3, recall 2/3 -> 2/3
    assert f1_score_tokens("x x y", "x y y") == pytest.approx(2 / 3)
    assert f1_score_tokens("", "") == 1.0
    assert f1_score_tokens("something", "") == 0.0
    assert f1_score_tokens("dog", "cat") == 0.0


def _v2_case():
    refs = {
        "q1": ["Denver Broncos", "the Broncos"],
        "q2": ["Carolina Panthers"],
        "q3": [],
        "q4": [],
    }
    return refs


def test_squad_v2_breakdown_without_null_scores():
    refs = _v2_case()
    preds = {"q1": "Broncos", "q2": "Panthers team", "q3": "", "q4": "Levi's Stadium"}
    r = squad_evaluate(preds, refs)
    # q1: EM 1 (matches the second gold), q2: EM 0 F1 .5, q3: right (empty), q4: wrong
    assert r["exact"] == pytest.approx(50.0)
    assert r["f1"] == pytest.approx(62.5)
    assert (r["HasAns_exact"], r["HasAns_f1"], r["HasAns_total"]) == (pytest.approx(50.0), pytest.approx(75.0), 2)
    assert (r["NoAns_exact"], r["NoAns_f1"], r["NoAns_total"]) == (pytest.approx(50.0), pytest.approx(50.0), 2)
    assert r["total"] == 4 and r["missing"] == 0
    assert "best_f1" not in r


def test_squad_v2_null_threshold_and_best_threshold_search():
    refs = _v2_case()
    spans = {"q1": "Broncos", "q2": "Carolina Panthers", "q3": "Santa Clara", "q4": "Levi's Stadium"}
    null = {"q1": -2.0, "q2": 1.0, "q3": 3.0, "q4": 2.0}
    r = squad_evaluate(spans, refs, null, threshold=0.0)
    # threshold 0: q1 answered (right), q2 "no answer" (wrong), q3 and q4 "no answer" (right)
    assert r["exact"] == pytest.approx(75.0)
    assert r["f1"] == pytest.approx(75.0)
    # sweep in null order q1, q2, q4, q3 from 2 (all NoAns right): 3, 4, 3, 2 -> best 4/4 at 1.0
    assert r["best_exact"] == pytest.approx(100.0)
    assert r["best_exact_thresh"] == pytest.approx(1.0)
    assert r["best_f1"] == pytest.approx(100.0)
    r1 = squad_evaluate(spans, refs, null, threshold=1.0)
    assert r1["exact"] == pytest.approx(100.0)


def test_squad_missing_predictions_score_zero():
    r = squad_evaluate({"a": "x"}, {"a": ["x"], "b": ["y"]})
    assert r["exact"] == pytest.approx(50.0) and r["missing"] == 1
    with pytest.raises(ValueError):
        squad_evaluate({}, {})
    with pytest.raises(ValueError, match="null_scores"):
        squad_evaluate({"a": "x"}, {"a": ["x"]}, {})


def test_classification_metrics_by_hand():
    y = [1, 1, 1, 1, 0, 0, 0]
    p = [1, 1, 1, 0, 1, 0, 0]
    m = classification_metrics(y, p, 2)
    assert m["accuracy"] == pytest.approx(5 / 7)
    assert m["f1"] == pytest.approx(0.75)  # tp 3, fp 1, fn 1
    assert m["macro_f1"] == pytest.approx((0.75 + 4 / 6) / 2)
    assert m["mcc"] == pytest.approx(5 / 12)  # (3*2 - 1*1) / sqrt(4*4*3*3)
    assert matthews_corrcoef([0, 0, 1, 1], [0, 0, 0, 0]) == 0.0  # undefined -> 0
    assert matthews_corrcoef([0, 1, 2], [0, 1, 2]) == pytest.approx(1.0)


def test_classification_metrics_match_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    p = np.where(rng.random(200) < 0.6, y, rng.integers(0, 3, 200))
    m = classification_metrics(y, p, 3)
    assert m["mcc"] == pytest.approx(sk.matthews_corrcoef(y, p))
    assert m["f1"] == pytest.approx(sk.f1_score(y, p, average="macro"))
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(y, p))


def test_regression_metrics_by_hand_and_against_scipy():
    # perfectly monotone but not linear: Spearman 1, Pearson < 1
    x, y = [1, 2, 3, 4], [1, 4, 9, 16]
    assert spearman(x, y) == pytest.approx(1.0)
    assert pearson(x, y) < 1.0
    # ties: ranks of [1, 2, 2, 3] are [1, 2.5, 2.5, 4]
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(np.corrcoef([1, 2.5, 2.5, 4], [1, 2, 3, 4])[0, 1])
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    a = rng.integers(0, 5, 50).astype(float)
    b = a + rng.normal(size=50)
    m = regression_metrics(a, b)
    assert m["pearson"] == pytest.approx(stats.pearsonr(b, a)[0])
    assert m["spearman"] == pytest.approx(stats.spearmanr(b, a)[0])
    assert m["mse"] == pytest.approx(float(np.mean((a - b) ** 2)))
    assert not math.isnan(pearson([1, 1, 1], [1, 2, 3]))
