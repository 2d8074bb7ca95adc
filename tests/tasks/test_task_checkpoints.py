"""Public-format checkpoints (BERT, GPT-2 folders as the Hub serves them) fine-tune as they are."""

import json
import shutil

import pytest


def _args(tmp_path, run):
    return ["--train.output_dir", str(tmp_path / "runs"), "--train.run_name", run, "--train.max_steps", "3",
            "--train.global_batch_size", "4", "--train.micro_batch_size", "4", "--train.progress", "false",
            "--max_train_examples", "16", "--max_eval_examples", "8"]


@pytest.mark.slow
def test_bert_folder_fine_tunes_for_classification(tmp_path, synthetic_wordpiece, recipe, one_thread):
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    tok = AutoTokenizer.from_pretrained(synthetic_wordpiece)
    bert = tmp_path / "bert"
    BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=64)).save_pretrained(bert)
    tok.save_pretrained(bert)
    data = tmp_path / "d.tsv"
    data.write_text("".join(f"river good {i}\t1\nriver bad {i}\t0\n" for i in range(20)))
    result = recipe("finetune").main(["--task", "classification", "--model", str(bert), "--data", str(data),
                                      "--classification.max_length", "16", *_args(tmp_path, "bert")])
    config = json.loads((tmp_path / "runs" / "bert" / "final" / "config.json").read_text())
    assert config["model_type"] == "turing_nlu" and config["architectures"] == ["TuringNLUForSequenceClassification"]
    assert config["type_vocab_size"] == 2 and len(config["id2label"]) == 2
    assert 0.0 <= result["metrics"]["accuracy"] <= 1.0 and result["metrics"]["total"] == 8
    import yaml  # the run keeps its exact config (written through the trainer's shared helper)

    written = yaml.safe_load((tmp_path / "runs" / "bert" / "config.yaml").read_text())
    assert written["task"] == "classification" and written["data"] == str(data) and written["model"] == str(bert)
    assert written["train"]["max_steps"] == 3 and written["classification"]["max_length"] == 16


@pytest.mark.slow
def test_gpt2_folder_fine_tunes_with_sft(tmp_path, recipe, one_thread):
    from transformers import GPT2Config, GPT2LMHeadModel

    from turing_models.data.tokenizer import train_tokenizer

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"count {i}:", "completion": str(i + 1)}) + "\n" for i in range(20)))
    gpt2 = tmp_path / "gpt2"
    tok = train_tokenizer([data.read_text()] * 3, kind="bpe", vocab_size=280, min_frequency=1)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=32, n_embd=32, n_layer=2, n_head=2)).save_pretrained(gpt2)
    tok.save_pretrained(gpt2)
    result = recipe("finetune").main(["--task", "sft", "--model", str(gpt2), "--data", str(data), "--sft.max_length", "32",
                                      "--sft.max_new_tokens", "3", *_args(tmp_path, "gpt2")])
    final = tmp_path / "runs" / "gpt2" / "final"
    assert json.loads((final / "config.json").read_text())["model_type"] == "turing_nlg"
    assert result["metrics"]["total"] == 4  # 20 % of the 20 examples held out
    # a model folder without tokenizer files needs --tokenizer, said in one line
    bare = tmp_path / "bare"
    shutil.copytree(gpt2, bare)
    for f in bare.glob("tokenizer*"):
        f.unlink()
    with pytest.raises(SystemExit):
        recipe("finetune").main(["--task", "sft", "--model", str(bare), "--data", str(data)])
