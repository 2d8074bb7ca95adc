"""Extractive QA: loading, the article split, windowing, postprocessing, bad input."""

import json
import logging

import numpy as np
import pytest

from turing_models.errors import UsageError
from turing_models.tasks import qa
from turing_models.tasks.qa import EvalFeatures, QAExample

CONTEXT = "The game was played at Levi's Stadium in Santa Clara, California, on February 7, 2016."


def _article(title, context, qas):
    return {"title": title, "paragraphs": [{"context": context, "qas": qas}]}


def test_load_squad_v2_official_layout(tmp_path, write_squad):
    start = CONTEXT.index("Santa Clara")
    path = write_squad(
        tmp_path / "dev-v2.0.json",
        [
            _article("Super_Bowl_50", CONTEXT, [
                {"id": "a", "question": "Where?", "is_impossible": False,
                 "answers": [{"text": "Santa Clara", "answer_start": start},
                             {"text": "Santa Clara, California", "answer_start": start}]},
                {"id": "b", "question": "Who sang?", "is_impossible": True, "answers": [],
                 "plausible_answers": [{"text": "Levi's Stadium", "answer_start": CONTEXT.index("Levi")}]},
            ])
        ],
    )
    examples, report = qa.load_squad(path)
    assert report.version == "2.0"
    assert report.has_unanswerable
    assert [e.id for e in examples] == ["a", "b"]
    assert examples[0].answers == ["Santa Clara", "Santa Clara, California"]
    assert examples[1].is_impossible and examples[1].answers == []  # plausible answers are not gold
    assert qa.references(examples) == {"a": ["Santa Clara", "Santa Clara, California"], "b": []}


def test_misplaced_answers_and_empty_contexts_are_counted_warned_skipped(tmp_path, caplog, write_squad):
    path = write_squad(
        tmp_path / "bad.json",
        [
            _article("A", CONTEXT, [
                {"id": "ok", "question": "q", "answers": [{"text": "Santa Clara", "answer_start": CONTEXT.index("Santa")}]},
                {"id": "off", "question": "q", "answers": [{"text": "Santa Clara", "answer_start": 3}]},
                {"id": "off2", "question": "q", "answers": [{"text": "Nowhere", "answer_start": 0}]},
            ]),
            _article("B", "   ", [{"id": "empty", "question": "q", "answers": []}]),
        ],
        version="1.1",
    )
    with caplog.at_level(logging.WARNING, logger="turing_models.tasks.qa"):
        train, report = qa.load_squad(path, for_training=True)
    assert [e.id for e in train] == ["ok"]
    assert (report.misplaced_answer, report.empty_context, report.questions) == (2, 1, 4)
    messages = [r.getMessage() for r in caplog.records]
    assert any("2 of 4 questions have an answer whose text is not at its answer_start" in m for m in messages)
    assert any("1 of 4 questions whose context is empty" in m for m in messages)
    # for evaluation the gold texts are still usable: the questions are kept
    evaluation, _ = qa.load_squad(path, for_training=False)
    assert [e.id for e in evaluation] == ["ok", "off", "off2"]


def test_load_squad_bad_files(tmp_path):
    with pytest.raises(UsageError, match="QA data file not found"):
        qa.load_squad(tmp_path / "missing.json")
    bad = tmp_path / "x.json"
    bad.write_text('{"version": "1.1", "articles": []}')
    with pytest.raises(UsageError, match="is not SQuAD JSON"):
        qa.load_squad(bad)
    bad.write_text("{not json")
    with pytest.raises(UsageError, match="not valid JSON"):
        qa.load_squad(bad)


def test_flat_jsonl_records(tmp_path):
    path = tmp_path / "qa.jsonl"
    rows = [
        {"id": "1", "title": "t", "context": CONTEXT, "question": "Where?",
         "answers": {"text": ["Santa Clara"], "answer_start": [CONTEXT.index("Santa")]}},
        {"id": "2", "title": "t", "context": CONTEXT, "question": "Who?", "answers": {"text": [], "answer_start": []}},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    examples, report = qa.load_squad(path)
    assert report.version.startswith("2") and examples[1].is_impossible


def test_bundled_xquad_loads_and_splits_by_article(xquad_path):
    examples, report = qa.load_squad(xquad_path)
    assert (report.questions, report.kept, report.misplaced_answer, report.empty_context) == (1190, 1190, 0, 0)
    assert report.version == "1.1"
    train, evaluation = qa.split_by_article(examples, eval_fraction=0.2, seed=0)
    train_titles, eval_titles = {e.title for e in train}, {e.title for e in evaluation}
    assert not train_titles & eval_titles
    assert len(train) + len(evaluation) == 1190
    assert len(train_titles) + len(eval_titles) == 48 and len(eval_titles) == 10
    again = qa.split_by_article(examples, eval_fraction=0.2, seed=0)[1]
    assert [e.id for e in again] == [e.id for e in evaluation]
    assert {e.title for e in qa.split_by_article(examples, eval_fraction=0.2, seed=1)[1]} != eval_titles
    with pytest.raises(UsageError, match="cannot split by article"):
        qa.split_by_article([e for e in examples if e.title == examples[0].title])


def test_train_features_single_window(wordpiece):
    start = CONTEXT.index("Santa Clara")
    ex = QAExample("a", "Where was the game played?", CONTEXT, ["Santa Clara"], [start])
    (feature,) = qa.prepare_train_features(
        [ex], wordpiece, max_length=64, doc_stride=16, max_query_length=16, token_type_ids=True
    )
    s, e = feature["start_positions"], feature["end_positions"]
    assert 0 < s <= e
    assert wordpiece.decode(feature["input_ids"][s : e + 1]) == "santa clara"
    assert feature["input_ids"][0] == wordpiece.cls_token_id
    assert set(feature) == {"input_ids", "token_type_ids", "attention_mask", "start_positions", "end_positions"}


def test_train_features_windows_with_stride(wordpiece):
    filler = " ".join(f"word{i}" for i in range(60))
    context = f"{filler} the answer is Santa Clara today. {filler}"
    start = context.index("Santa Clara")
    ex = QAExample("a", "where?", context, ["Santa Clara"], [start])
    features = qa.prepare_train_features([ex], wordpiece, max_length=48, doc_stride=16, max_query_length=8)
    assert "token_type_ids" not in features[0]  # not asked, and not in this tokenizer's model inputs
    assert len(features) > 3
    with_answer = [f for f in features if f["start_positions"] != 0]
    assert with_answer and len(with_answer) < len(features)  # windows lacking the answer point at CLS
    for f in with_answer:
        assert wordpiece.decode(f["input_ids"][f["start_positions"] : f["end_positions"] + 1]) == "santa clara"
    for f in features:
        assert len(f["input_ids"]) <= 48
        if f["start_positions"] == 0:
            assert f["end_positions"] == 0


def test_unanswerable_points_at_cls_and_question_is_truncated(wordpiece):
    long_question = " ".join(["where"] * 100)
    ex = QAExample("u", long_question, CONTEXT)
    (f,) = qa.prepare_train_features([ex], wordpiece, max_length=64, doc_stride=8, max_query_length=10, token_type_ids=True)
    assert (f["start_positions"], f["end_positions"]) == (0, 0)
    assert f["token_type_ids"].count(0) == 1 + 10 + 1  # [CLS] 10 question tokens [SEP]


def test_doc_stride_too_large_is_a_usage_error(wordpiece):
    ex = QAExample("a", "q", CONTEXT, ["Santa Clara"], [CONTEXT.index("Santa")])
    with pytest.raises(UsageError, match="doc_stride"):
        qa.prepare_train_features([ex], wordpiece, max_length=64, doc_stride=60, max_query_length=16)


@pytest.mark.parametrize("tokenizer", ["bert-wordpiece", "trained"])
def test_bundled_answers_round_trip_through_token_spans(xquad_path, wordpiece, tokenizer):
    from turing_models.data import load_tokenizer

    tok = wordpiece if tokenizer == "trained" else load_tokenizer(tokenizer)
    examples, _ = qa.load_squad(xquad_path)
    report = qa.answer_roundtrip(examples, tok, max_length=256, doc_stride=96)
    assert report.answers == 1190
    assert report.outside_windows == 0
    assert report.exact_share >= 0.99, report.failures[:5]
    # the residue: gold answers that end inside a token of the context
    for _, gold, recovered in report.failures:
        assert recovered.startswith(gold) or gold in recovered


def _features(context_offsets, example_index=0):
    # [CLS] q [SEP] ctx... [SEP]: offsets None outside the context
    offsets = [None, None, None] + context_offsets + [None]
    return offsets


def test_postprocess_hand_case():
    context = "alpha beta gamma delta"
    offsets = _features([(0, 5), (6, 10), (11, 16), (17, 22)])
    feats = EvalFeatures(inputs=[{"input_ids": [0] * 8}], example_index=[0], offsets=[offsets], cls_index=[0])
    ex = QAExample("q", "?", context, ["beta gamma"], [6])
    start = np.full(8, -5.0)
    end = np.full(8, -5.0)
    start[4], end[5] = 3.0, 2.0  # "beta gamma"
    start[1], end[1] = 10.0, 10.0  # best overall, but in the question: never a span
    start[6], end[3] = 2.9, 1.0  # end before start: never a span
    r = qa.postprocess_predictions([ex], feats, [start], [end], n_best=5, max_answer_length=30)
    assert r.predictions == {"q": "beta gamma"}
    assert r.nbest["q"][0]["text"] == "beta gamma"
    assert sum(c["probability"] for c in r.nbest["q"]) == pytest.approx(1.0)
    r = qa.postprocess_predictions([ex], feats, [start], [end], n_best=5, max_answer_length=1)
    assert r.predictions["q"] in {"beta", "gamma"}
    # v2: the null (CLS) score 2 + 2 = 4 against the best span 3 + 2 = 5
    start[0], end[0] = 2.0, 2.0
    r = qa.postprocess_predictions([ex], feats, [start], [end], version_2=True)
    assert r.predictions["q"] == "beta gamma" and r.null_scores["q"] == pytest.approx(-1.0)
    r = qa.postprocess_predictions([ex], feats, [start], [end], version_2=True, null_threshold=-1.5)
    assert r.predictions["q"] == "" and r.best_spans["q"] == "beta gamma"


def test_postprocess_picks_the_best_window_and_min_null():
    context = "one two three four five six"
    w1 = _features([(0, 3), (4, 7), (8, 13)])
    w2 = _features([(8, 13), (14, 18), (19, 23)])
    feats = EvalFeatures(inputs=[{}, {}], example_index=[0, 0], offsets=[w1, w2], cls_index=[0, 0])
    s1, e1, s2, e2 = (np.zeros(7) for _ in range(4))
    s1[3], e1[3] = 1.0, 1.0  # "one": 2
    s2[4], e2[5] = 2.0, 2.0  # "four five": 4
    s1[0], e1[0], s2[0], e2[0] = 5.0, 5.0, 1.0, 1.0  # null: min(10, 2) = 2
    ex = QAExample("q", "?", context, ["four five"], [14])
    r = qa.postprocess_predictions([ex], feats, [s1, s2], [e1, e2], version_2=True)
    assert r.predictions["q"] == "four five"
    assert r.null_scores["q"] == pytest.approx(2.0 - 4.0)
    m = qa.evaluate_predictions([ex], r, version_2=True)
    assert m["exact"] == 100.0
