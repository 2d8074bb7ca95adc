"""Classification: file formats, label spaces, features, bad input."""

import json

import pytest

from turing_models.errors import UsageError
from turing_models.tasks import classification as cls
from turing_models.tasks.classification import ClassificationExample, Columns, LabelSpace


def test_bundled_uci_sentences(uci_dir):
    examples = cls.load_classification(uci_dir)
    assert len(examples) == 3000
    assert sum(1 for e in examples if e.label == "1") == 1500
    assert all(e.text_pair is None and e.text == e.text.strip() and e.text for e in examples)
    # imdb lines hold quotes and keep working without CSV quoting
    assert any('"' in e.text for e in examples)
    space = LabelSpace.infer(examples)
    assert space.problem_type == "single_label_classification" and space.labels == ["0", "1"]


def test_csv_with_header_and_pairs(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text('sentence1,sentence2,label\n"A man, walking",A person walks,entailment\nA cat,A dog,contradiction\n')
    examples = cls.load_classification(path)
    assert examples[0] == ClassificationExample("A man, walking", "entailment", "A person walks")
    space = LabelSpace.infer(examples)
    assert space.labels == ["contradiction", "entailment"]


def test_headerless_tsv_with_pairs_and_jsonl(tmp_path):
    tsv = tmp_path / "p.tsv"
    tsv.write_text("first one\tsecond one\t1\nthird\tfourth\t0\n")
    examples = cls.load_classification(tsv)
    assert examples[1] == ClassificationExample("third", "0", "fourth")
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps({"review": f"t{i}", "stars": i % 3}) for i in range(6)))
    examples = cls.load_classification(jsonl, columns=Columns(label="stars"))
    assert [e.label for e in examples[:3]] == [0, 1, 2] and examples[0].text == "t0"
    with pytest.raises(UsageError, match="no label column 'nope'"):
        cls.load_classification(jsonl, columns=Columns(label="nope"))


def test_bad_delimited_files(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\tc\td\n")
    with pytest.raises(UsageError, match="needs 'text<TAB>label'"):
        cls.load_classification(bad)
    bad.write_text("a\t1\nb\t0\textra\n")
    with pytest.raises(UsageError, match="line 2: 3 fields"):
        cls.load_classification(bad)
    with pytest.raises(UsageError, match="classification data not found"):
        cls.load_classification(tmp_path / "missing.tsv")


def test_label_space_inference_and_encoding():
    ints = [ClassificationExample("x", v) for v in ["10", "2", "2", "1"]]
    space = LabelSpace.infer(ints)
    assert space.labels == ["1", "2", "10"]  # numeric order, not string order
    assert space.encode("10") == 2 and space.encode(2) == 1 and space.encode("2.0") == 1
    with pytest.raises(UsageError, match="label '7', which the training data does not have"):
        space.encode("7", "eval.tsv")
    reg = LabelSpace.infer([ClassificationExample("x", v) for v in ["0.5", "3.8", "1"]])
    assert reg.is_regression and reg.num_labels == 1 and reg.encode("3.8") == pytest.approx(3.8)
    forced = LabelSpace.infer(ints, problem_type="regression")
    assert forced.is_regression
    with pytest.raises(UsageError, match="single label"):
        LabelSpace.infer([ClassificationExample("x", "a")] * 3)


def test_label_mapping_goes_into_the_config_and_back():
    from transformers import PretrainedConfig

    config = PretrainedConfig()
    space = LabelSpace("single_label_classification", ["negative", "neutral", "positive"])
    space.update_config(config)
    assert config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    assert config.label2id["positive"] == 2 and config.num_labels == 3
    assert LabelSpace.from_config(config) == space
    reg = LabelSpace("regression", [])
    reg.update_config(config)
    assert config.num_labels == 1 and LabelSpace.from_config(config).is_regression


def test_features_single_and_pairs(wordpiece):
    space = LabelSpace("single_label_classification", ["0", "1"])
    single = cls.prepare_features([ClassificationExample("the game was played", "1")], wordpiece, space, max_length=16)
    assert single[0]["labels"] == 1 and "token_type_ids" not in single[0]
    pair = cls.prepare_features(
        [ClassificationExample("the game", "0", "was played in california")], wordpiece, space, token_type_ids=True
    )[0]
    assert pair["token_type_ids"][0] == 0 and pair["token_type_ids"][-1] == 1
    assert pair["input_ids"].count(wordpiece.sep_token_id) == 2
    long = cls.prepare_features([ClassificationExample("game " * 100, "0")], wordpiece, space, max_length=16)
    assert len(long[0]["input_ids"]) == 16


def test_split_is_deterministic_and_disjoint(uci_dir):
    examples = cls.load_classification(uci_dir / "yelp_labelled.txt")
    train, evaluation = cls.split_examples(examples, 0.2, seed=0)
    assert len(evaluation) == 200 and len(train) == 800
    again = cls.split_examples(examples, 0.2, seed=0)[1]
    assert [e.text for e in again] == [e.text for e in evaluation]
    assert {id(e) for e in train}.isdisjoint({id(e) for e in evaluation})


def test_datasets_name_offline_is_one_clear_error():
    with pytest.raises(UsageError, match="cannot load classification data 'surely-not/a-dataset'"):
        cls.load_classification("surely-not/a-dataset")
