"""SFT preprocessing: loss on the completion only, truncation, collation, loading."""

import json

import pytest

from turing_models.data import load_tokenizer
from turing_models.errors import UsageError
from turing_models.tasks import sft
from turing_models.tasks.sft import SFTCollator, SFTExample


@pytest.fixture(scope="module")
def gpt2():
    return load_tokenizer("gpt2-bpe")


def test_labels_cover_only_the_completion(gpt2):
    ex = SFTExample("1", "Paris is in France.\nQuestion: Where is Paris?\nAnswer:", "France")
    (f,) = sft.prepare_features([ex], gpt2, max_length=64)
    prompt_len = len(gpt2(ex.prompt)["input_ids"])
    assert f["labels"][:prompt_len] == [-100] * prompt_len
    target = f["labels"][prompt_len:]
    assert target[-1] == gpt2.eos_token_id
    assert gpt2.decode(target[:-1]) == " France"
    assert f["input_ids"][prompt_len:] == target
    assert len(f["input_ids"]) == len(f["labels"]) == len(f["attention_mask"])


def test_long_prompts_lose_their_start(gpt2, caplog):
    ex = SFTExample("1", "word " * 100 + "Question: why?\nAnswer:", "because")
    (f,) = sft.prepare_features([ex], gpt2, max_length=20)
    assert len(f["input_ids"]) == 20
    assert gpt2.decode(f["input_ids"]).endswith("Question: why?\nAnswer: because<|endoftext|>")
    assert "lost tokens from the left" in caplog.text
    with pytest.raises(UsageError, match="raise max_length"):
        sft.prepare_features([SFTExample("2", "p", "a b c d e f g")], gpt2, max_length=4)


def test_collator_pads_with_ignored_labels(gpt2):
    feats = sft.prepare_features([SFTExample("1", "a", "b"), SFTExample("2", "a longer prompt", "b c")], gpt2)
    batch = SFTCollator(gpt2)(feats)
    n0 = len(feats[0]["input_ids"])
    assert batch["input_ids"].shape == batch["labels"].shape == (2, len(feats[1]["input_ids"]))
    assert (batch["labels"][0, n0:] == -100).all() and (batch["attention_mask"][0, n0:] == 0).all()
    assert (batch["input_ids"][0, n0:] == gpt2.eos_token_id).all()  # GPT-2 has no pad token


def test_load_from_squad_and_records(tmp_path, xquad_path):
    examples = sft.load_sft(xquad_path)
    assert len(examples) == 1190
    first = examples[0]
    assert first.prompt.startswith("The Panthers defense") and first.prompt.endswith("\nAnswer:")
    assert "\nQuestion: " in first.prompt and first.completion == "308"
    path = tmp_path / "d.jsonl"
    path.write_text(
        json.dumps({"prompt": "2+2=", "completion": " 4"}) + "\n"
        + json.dumps({"instruction": "Say hi", "input": "to Bob", "output": "Hi Bob"}) + "\n"
    )
    a, b = sft.load_sft(path)
    assert (a.prompt, a.completion) == ("2+2=", "4")
    assert (b.prompt, b.completion) == ("Say hi\nto Bob", "Hi Bob")
    path.write_text(json.dumps({"text": "x"}) + "\n")
    with pytest.raises(UsageError, match="sft records need prompt \\+ completion"):
        sft.load_sft(path)


def test_generation_metric_is_squad_em_f1():
    examples = [SFTExample("a", "p", "Santa Clara", ["Santa Clara", "Santa Clara, California"]), SFTExample("b", "p", "1990")]
    m = sft.evaluate_generations(examples, ["santa clara.", "1991"])
    assert m["exact"] == pytest.approx(50.0) and m["total"] == 2
