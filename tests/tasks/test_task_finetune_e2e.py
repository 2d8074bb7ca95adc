"""End to end through recipes/finetune.py and recipes/evaluate.py on tiny models and learnable data."""

import json

import pytest

TINY_ENCODER = {
    "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 128,
    "max_position_embeddings": 64, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
}


def _train_args(tmp_path, run, steps, batch, lr):
    return [
        "--train.output_dir", str(tmp_path / "runs"), "--train.run_name", run, "--train.max_steps", str(steps),
        "--train.global_batch_size", str(batch), "--train.micro_batch_size", str(batch), "--train.lr", str(lr),
        "--train.warmup_steps", "10", "--train.weight_decay", "0.0", "--train.beta2", "0.99",
        "--train.progress", "false", "--train.log_every", "20",
    ]


@pytest.mark.slow
def test_qa_v2_learns_the_marker_task_and_evaluates(tmp_path, synthetic_squad, synthetic_wordpiece, recipe, one_thread):
    """SQuAD v2.0 files in the official layout, unanswerable questions included, end to end."""
    train, dev = tmp_path / "train-v2.0.json", tmp_path / "dev-v2.0.json"
    train.write_text(json.dumps(synthetic_squad(80, 0, unanswerable=0.3)))
    dev.write_text(json.dumps(synthetic_squad(20, 1, unanswerable=0.3)))
    argv = [
        "--task", "qa", "--model", "tiny", "--tokenizer", str(synthetic_wordpiece),
        "--data", str(train), "--eval_data", str(dev), "--model_overrides", json.dumps(TINY_ENCODER),
        "--qa.max_length", "48", "--qa.doc_stride", "16", "--qa.max_query_length", "10",
        *_train_args(tmp_path, "qa", 110, 16, 2e-3),
    ]
    result = recipe("finetune").main(argv)
    m = result["metrics"]
    assert m["total"] == 100 and 20 <= m["NoAns_total"] <= 45
    assert m["exact"] >= 90.0, m
    assert m["HasAns_exact"] >= 90.0 and m["NoAns_exact"] >= 90.0, m
    run = tmp_path / "runs" / "qa"
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["exact"] == pytest.approx(m["exact"])
    predictions = json.loads((run / "predictions.json").read_text())
    gold = {q["id"]: [a["text"] for a in q["answers"]] for a in json.loads(dev.read_text())["data"] for p in a["paragraphs"] for q in p["qas"]}
    assert set(predictions) == set(gold)
    right = sum((predictions[q] in g) if g else predictions[q] == "" for q, g in gold.items())
    assert right >= 90
    assert set(json.loads((run / "null_scores.json").read_text())) == set(gold)
    final = run / "final"
    assert (final / "model.safetensors").is_file() and (final / "tokenizer.json").is_file()
    config = json.loads((final / "config.json").read_text())
    assert config["qa_version_2"] is True and config["architectures"] == ["TuringNLUForQuestionAnswering"]

    # the saved folder evaluates to the same numbers with recipes/evaluate.py
    out = tmp_path / "eval"
    again = recipe("evaluate").main(["--task", "qa", "--model", str(final), "--data", str(dev),
                                     "--qa.max_length", "48", "--qa.doc_stride", "16", "--qa.max_query_length", "10",
                                     "--output", str(out)])
    assert again["exact"] == pytest.approx(m["exact"]) and again["NoAns_total"] == m["NoAns_total"]
    assert json.loads((out / "predictions.json").read_text()) == predictions


def _sentiment(n, seed):
    import random

    rng = random.Random(seed)
    good, bad = ["good", "great"], ["bad", "awful"]
    filler = "river stone cloud tree house road field light music paper".split()
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        words = [rng.choice(filler) for _ in range(rng.randint(3, 8))]
        words.insert(rng.randint(0, len(words)), rng.choice(good if label else bad))
        rows.append((" ".join(words), "positive" if label else "negative"))
    return rows


@pytest.mark.slow
def test_classification_learns_and_saves_its_labels(tmp_path, synthetic_wordpiece, recipe, one_thread):
    train, dev = tmp_path / "train.tsv", tmp_path / "dev.tsv"
    train.write_text("sentence\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in _sentiment(400, 0)))
    dev.write_text("sentence\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in _sentiment(100, 1)))
    argv = [
        "--task", "classification", "--model", "tiny", "--tokenizer", str(synthetic_wordpiece),
        "--data", str(train), "--eval_data", str(dev), "--model_overrides", json.dumps(TINY_ENCODER),
        "--classification.max_length", "32", *_train_args(tmp_path, "cls", 60, 16, 2e-3),
    ]
    m = recipe("finetune").main(argv)["metrics"]
    assert m["accuracy"] >= 0.9 and m["mcc"] >= 0.8, m
    final = tmp_path / "runs" / "cls" / "final"
    config = json.loads((final / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert config["problem_type"] == "single_label_classification"
    rows = [json.loads(line) for line in (tmp_path / "runs" / "cls" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 100 and {r["prediction"] for r in rows} <= {"negative", "positive"}
    # the HF pipeline reads the saved labels
    from transformers import pipeline

    import turing_models.nlu  # noqa: F401  (registers the Auto classes)

    clf = pipeline("text-classification", model=str(final), device="cpu")
    assert clf("the food was great river stone")[0]["label"] == "positive"
    assert clf("the food was awful river stone")[0]["label"] == "negative"
    again = recipe("evaluate").main(["--task", "classification", "--model", str(final), "--data", str(dev)])
    assert again["accuracy"] == pytest.approx(m["accuracy"])


@pytest.mark.slow
def test_sft_loss_falls_and_generation_returns_the_answer(tmp_path, recipe, one_thread):
    from turing_models.data.tokenizer import train_tokenizer

    facts = [("alice", "paris"), ("bob", "rome"), ("carol", "oslo"), ("dave", "lima"),
             ("erin", "cairo"), ("frank", "tokyo"), ("grace", "delhi"), ("heidi", "quito")]
    data = tmp_path / "facts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Where does {who} live?\nAnswer:", "completion": city}) + "\n" for who, city in facts))
    tok = tmp_path / "bpe"
    train_tokenizer([data.read_text()] * 5, kind="bpe", vocab_size=300, min_frequency=1, output_dir=tok)
    overrides = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2, "max_position_embeddings": 32,
                 "hidden_dropout": 0.0, "attention_dropout": 0.0}
    argv = [
        "--task", "sft", "--model", "tiny", "--tokenizer", str(tok), "--data", str(data), "--eval_data", str(data),
        "--model_overrides", json.dumps(overrides), "--sft.max_length", "32", "--sft.max_new_tokens", "6",
        *_train_args(tmp_path, "sft", 60, 8, 3e-3),
    ]
    result = recipe("finetune").main(argv)
    log = [json.loads(line) for line in (tmp_path / "runs" / "sft" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses[-1] < 0.5 * losses[0], losses
    m = result["metrics"]
    assert m["exact"] >= 87.5, m  # at least 7 of the 8 answers generated exactly
    rows = {r["id"]: r for r in map(json.loads, (tmp_path / "runs" / "sft" / "predictions.jsonl").read_text().splitlines())}
    assert sum(r["prediction"] == r["references"][0] for r in rows.values()) >= 7

    # the saved folder generates the trained answer through the HF API
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import turing_models.nlg  # noqa: F401

    final = tmp_path / "runs" / "sft" / "final"
    model, tokenizer = AutoModelForCausalLM.from_pretrained(final), AutoTokenizer.from_pretrained(final)
    ids = tokenizer("Where does alice live?\nAnswer:", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).split("\n")[0].strip() == "paris"
