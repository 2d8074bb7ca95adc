"""The task interface: the registry, heads, the v2 null threshold (fixed or tuned on held-out
training data, never on the eval set), and agreement with the reference written in
benchmarks/finetune_parity.py the way transformers' examples are."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from turing_models.errors import UsageError
from turing_models.tasks import qa
from turing_models.tasks.base import DataSpec, finetune_tasks, get_task

REPO = Path(__file__).resolve().parents[2]


def _parity_module():
    spec = importlib.util.spec_from_file_location("finetune_parity", REPO / "benchmarks" / "finetune_parity.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


def test_registry_names_every_task_and_its_head():
    assert finetune_tasks() == ["qa", "classification", "sft"]
    heads = {name: get_task(name).head_class().__name__ for name in ("qa", "classification", "sft", "perplexity")}
    assert heads == {"qa": "TuringNLUForQuestionAnswering", "classification": "TuringNLUForSequenceClassification",
                     "sft": "TuringNLGForCausalLM", "perplexity": "TuringNLGForCausalLM"}
    assert {get_task(n).family for n in ("qa", "classification")} == {"encoder"}
    with pytest.raises(UsageError, match="unknown task 'ner'; choose one of qa, classification, sft, perplexity"):
        get_task("ner")
    get_task("qa").check_head(["BertForQuestionAnswering"], "m")  # a public QA head is fine
    with pytest.raises(UsageError, match="evaluate it with --task classification"):
        get_task("qa").check_head(["TuringNLUForSequenceClassification"], "m")


def _predict_from_gold(task, examples):
    """Fake predictions: span logits on the gold answer, CLS logits from a seeded coin, so the
    best threshold differs between question sets."""
    features = qa.prepare_eval_features(examples, task.tokenizer, max_length=128, doc_stride=32, max_query_length=16)
    rng = np.random.default_rng(len(examples))
    starts, ends = [], []
    for inputs, index, offsets in zip(features.inputs, features.example_index, features.offsets):
        n = len(inputs["input_ids"])
        s, e = np.full(n, -5.0), np.full(n, -5.0)
        ex = examples[index]
        if ex.answers:
            a, b = ex.answer_starts[0], ex.answer_starts[0] + len(ex.answers[0])
            for t, o in enumerate(offsets):
                if o is not None and o[0] <= a < o[1]:
                    s[t] = 2.0
                if o is not None and o[0] < b <= o[1]:
                    e[t] = 2.0
        s[0] = e[0] = rng.normal(1.5, 1.5)
        starts.append(s)
        ends.append(e)
    return features, starts, ends


def test_tuned_null_threshold_comes_from_held_out_training_articles(tmp_path, synthetic_squad, wordpiece, caplog):
    train, dev = tmp_path / "train.json", tmp_path / "dev.json"
    train.write_text(json.dumps(synthetic_squad(30, 0, unanswerable=0.4)))
    dev.write_text(json.dumps(synthetic_squad(8, 1, unanswerable=0.4)))
    task = get_task("qa")(qa.QAOptions(tune_null_threshold=True, null_tune_fraction=0.2), wordpiece)
    fit, evaluation = task.load_finetune(DataSpec(str(train), str(dev)))
    tune_ids, fit_ids, eval_ids = ({ex.id for ex in xs} for xs in (task.tune, fit, evaluation))
    assert len(task.tune) == 30 and len(fit) == 120  # 6 of 30 articles (5 questions each) held out
    assert not tune_ids & fit_ids and not tune_ids & eval_ids
    assert {ex.title for ex in task.tune}.isdisjoint({ex.title for ex in fit})

    seen = []
    task.predict = lambda model, examples, batch_size: seen.append([ex.id for ex in examples]) or _predict_from_gold(task, examples)
    with caplog.at_level("INFO", logger="turing_models.tasks.qa"):
        metrics, outputs = task.evaluate(None, evaluation, 8)
    assert [set(ids) for ids in seen] == [tune_ids, eval_ids]  # tuned first, on the held-out training questions
    expected = qa.evaluate_predictions(task.tune, task._postprocess(task.tune, _predict_from_gold(task, task.tune), 0.0), version_2=True)
    assert metrics["null_threshold"] == expected["best_f1_thresh"] != 0.0
    assert metrics["null_threshold_source"] == "tuned on 30 held-out training questions"
    assert "tuned on 30 held-out training questions" in caplog.text
    oracle = qa.evaluate_predictions(evaluation, task._postprocess(evaluation, _predict_from_gold(task, evaluation), 0.0), version_2=True)
    assert oracle["best_f1_thresh"] != metrics["null_threshold"]  # the eval set's own best is not what was used
    assert set(outputs["null_scores.json"]) == eval_ids

    class Config:
        pass

    config = Config()
    task.save_settings(config)
    assert config.qa_version_2 is True and config.qa_null_threshold == metrics["null_threshold"]


def test_fixed_null_threshold_and_no_tuning_on_the_evaluated_data(tmp_path, synthetic_squad, wordpiece):
    dev = tmp_path / "dev.json"
    dev.write_text(json.dumps(synthetic_squad(4, 1, unanswerable=0.5)))
    task = get_task("qa")(qa.QAOptions(), wordpiece)
    examples = task.load_eval(str(dev))
    task.predict = lambda model, xs, batch_size: _predict_from_gold(task, xs)
    metrics, _ = task.evaluate(None, examples, 8)
    assert (metrics["null_threshold"], metrics["null_threshold_source"]) == (0.0, "default")
    task.o.null_threshold = -0.5
    assert task.evaluate(None, examples, 8)[0]["null_threshold_source"] == "qa.null_threshold"

    class Model:
        class config:
            qa_version_2, qa_null_threshold = True, 1.25

    saved = get_task("qa")(qa.QAOptions(), wordpiece)
    saved.configure(Model)
    assert saved.null_threshold() == (1.25, "saved with the model")
    with pytest.raises(UsageError, match="never on the data being evaluated"):
        get_task("qa")(qa.QAOptions(tune_null_threshold=True), wordpiece).configure(Model)


def test_postprocessing_and_metric_agree_with_the_reference(xquad_path, wordpiece):
    """Same windows and logits: ours and the utils_qa.py-style reference give the same answers,
    and the same EM / F1 with the HasAns / NoAns breakdown."""
    parity = _parity_module()
    examples, _ = qa.load_squad(xquad_path, for_training=False)
    examples = examples[:60]
    for ex in examples[::3]:  # make a third unanswerable
        ex.answers, ex.answer_starts = [], []
    features = qa.prepare_eval_features(examples, wordpiece, max_length=96, doc_stride=32, max_query_length=24)
    assert len(features.inputs) > len(examples)  # several windows per question
    rng = np.random.default_rng(0)
    starts = [rng.normal(size=len(f["input_ids"])) for f in features.inputs]
    ends = [rng.normal(size=len(f["input_ids"])) for f in features.inputs]
    for threshold in (0.0, 1.0, -1.0):
        ours = qa.postprocess_predictions(examples, features, starts, ends, n_best=20, max_answer_length=30,
                                          version_2=True, null_threshold=threshold)
        ref_examples = [{"id": ex.id, "context": ex.context} for ex in examples]
        ref_examples = _Rows(ref_examples)
        ref_features = [{"example_id": examples[i].id, "offset_mapping": o} for i, o in zip(features.example_index, features.offsets)]
        reference, best_spans = parity.postprocess_qa_predictions(
            ref_examples, ref_features, (starts, ends), version_2_with_negative=True, n_best_size=20,
            max_answer_length=30, null_score_diff_threshold=threshold)
        assert reference == ours.predictions and best_spans == ours.best_spans
        golds = qa.references(examples)
        assert parity.squad_v2_metric(reference, golds) == pytest.approx(
            {k: v for k, v in qa.evaluate_predictions(examples, ours, version_2=True, null_threshold=threshold).items()
             if k in ("exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1")})


class _Rows(list):
    """A list of dicts that also answers ``rows["column"]``, as a datasets.Dataset does."""

    def __getitem__(self, key):
        if isinstance(key, str):
            return [row[key] for row in self]
        return super().__getitem__(key)


def test_reference_metric_on_hand_cases():
    parity = _parity_module()
    golds = {"a": ["Santa Clara"], "b": [], "c": ["the Broncos", "Denver Broncos"]}
    m = parity.squad_v2_metric({"a": "santa clara!", "b": "", "c": "Broncos win"}, golds)
    assert m["HasAns_exact"] == 50.0 and m["NoAns_exact"] == 100.0
    assert m["HasAns_f1"] == pytest.approx(100 * (1 + 2 * 0.5 * 1 / 1.5) / 2)


@pytest.mark.slow
def test_parity_benchmark_quick(tmp_path):
    """benchmarks/finetune_parity.py --quick end to end: data, a tiny MLM checkpoint, both sides."""
    parity = _parity_module()
    results = parity.main(["--quick", "--cache", str(tmp_path), "--output", str(tmp_path / "r.json"), "--threads", "1"])
    for task in ("qa", "classification"):
        for side in ("ours", "reference"):
            figures = results[task][side]
            assert figures["wall_s"] > 0 and np.isfinite(figures["f1"])
    assert results["qa"]["ours"]["NoAns_f1"] >= 0 and "HasAns_f1" in results["qa"]["reference"]
    assert json.loads((tmp_path / "r.json").read_text())["seeds"] == {"qa": [0], "classification": [0]}
    config = json.loads((tmp_path / "bert-mlm-quick" / "config.json").read_text())
    assert config["model_type"] == "bert" and config["architectures"] == ["BertForMaskedLM"]
