"""Bad input ends in one line on stderr and exit status 2, before any training."""

import json

import pytest


def _fails(recipe_main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        recipe_main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: "), err
    return err[-1]


def _checkpoint(path, model_type):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": model_type}))
    return str(path)


def test_decoder_checkpoint_for_an_encoder_task(tmp_path, recipe, capsys):
    gpt2 = _checkpoint(tmp_path / "gpt2", "gpt2")
    line = _fails(recipe("finetune").main, ["--task", "qa", "--model", gpt2], capsys)
    assert "is a decoder (GPT-2), but the qa task takes encoders (TuringNLU, BERT, RoBERTa, XLM-R)" in line
    assert "--task sft" in line
    line = _fails(recipe("finetune").main, ["--task", "classification", "--model", gpt2], capsys)
    assert "classification task takes encoders" in line


def test_encoder_checkpoint_for_sft_and_unknown_models(tmp_path, recipe, capsys):
    bert = _checkpoint(tmp_path / "bert", "bert")
    line = _fails(recipe("finetune").main, ["--task", "sft", "--model", bert], capsys)
    assert "is an encoder (BERT), but the sft task takes decoders (TuringNLG, GPT-2)" in line
    t5 = _checkpoint(tmp_path / "t5", "t5")
    assert "model_type 't5'" in _fails(recipe("finetune").main, ["--task", "qa", "--model", t5], capsys)
    line = _fails(recipe("finetune").main, ["--task", "qa", "--model", str(tmp_path / "nothing-here")], capsys)
    assert "cannot read the model" in line


def test_eval_label_unseen_in_training(tmp_path, recipe, capsys):
    train, dev = tmp_path / "train.tsv", tmp_path / "dev.tsv"
    train.write_text("good one\tpositive\nbad one\tnegative\n")
    dev.write_text("meh\tneutral\n")
    line = _fails(recipe("finetune").main, ["--task", "classification", "--data", str(train), "--eval_data", str(dev)], capsys)
    assert "has the label 'neutral', which the training data does not have" in line
    assert "['negative', 'positive']" in line


def test_bad_arguments_and_data(tmp_path, recipe, capsys):
    finetune = recipe("finetune").main
    line = _fails(finetune, ["--task", "qa", "--qa.doc_strid", "3"], capsys)
    assert "qa.doc_stride" in line
    line = _fails(finetune, ["--task", "translate"], capsys)  # the config library names the choices
    assert "translate" in line and "'qa', 'classification', 'sft'" in line
    line = _fails(finetune, ["--task", "qa", "--data", str(tmp_path / "missing.json")], capsys)
    assert "QA data file not found" in line
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": "", "qas": [{"id": "1", "question": "q", "answers": []}]}]}]}))
    assert "no usable QA examples" in _fails(finetune, ["--task", "qa", "--data", str(empty)], capsys)
    line = _fails(finetune, ["--task", "qa", "--qa.doc_stride", "10000", "--train.output_dir", str(tmp_path)], capsys)
    assert "doc_stride (10000) must be smaller" in line


def test_evaluate_refuses_the_wrong_head(tmp_path, recipe, capsys):
    folder = tmp_path / "qa-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "turing_nlu", "architectures": ["TuringNLUForQuestionAnswering"]}))
    data = tmp_path / "d.tsv"
    data.write_text("x\t1\n")
    line = _fails(recipe("evaluate").main, ["--task", "classification", "--model", str(folder), "--data", str(data)], capsys)
    assert "is a TuringNLUForQuestionAnswering checkpoint, not a classification model; evaluate it with --task qa" in line
    assert "--model is required" in _fails(recipe("evaluate").main, ["--task", "perplexity"], capsys)
