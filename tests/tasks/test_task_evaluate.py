"""Sliding-window perplexity against a straightforward reference, and recipes/evaluate.py on it."""

import json
import math

import pytest
import torch


@pytest.fixture(scope="module")
def decoder_folder(tmp_path_factory):
    """A tiny random TuringNLG (context 32) with a small byte-level BPE tokenizer, saved."""
    from turing_models.data.tokenizer import train_tokenizer
    from turing_models.nlg import TuringNLGConfig, TuringNLGForCausalLM

    root = tmp_path_factory.mktemp("ppl")
    text = "the quick brown fox jumps over the lazy dog. " * 20
    tok = train_tokenizer([text] * 3, kind="bpe", vocab_size=300, min_frequency=1)
    config = TuringNLGConfig(vocab_size=len(tok), real_vocab_size=len(tok), max_position_embeddings=32, hidden_size=32,
                             num_hidden_layers=2, num_attention_heads=2, hidden_dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    model = TuringNLGForCausalLM(config)
    folder = root / "model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, model.eval(), tok


def _reference_nll(model, ids: torch.Tensor, max_length: int, stride: int) -> tuple[float, int]:
    """Each window through the model's own labels loss, one at a time (HF's documented recipe)."""
    total, count, prev_end = 0.0, 0, 0
    for begin in range(0, ids.numel(), stride):
        end = min(begin + max_length, ids.numel())
        window = ids[begin:end][None]
        labels = window.clone()
        labels[:, : -(end - prev_end)] = -100
        with torch.no_grad():
            loss = model(input_ids=window, labels=labels).loss
        n = int((labels[:, 1:] != -100).sum())
        total += float(loss) * n
        count += n
        prev_end = end
        if end == ids.numel():
            break
    return total, count


@pytest.mark.parametrize("max_length, stride", [(32, 32), (32, 8), (16, 5), (32, 31)])
def test_sliding_window_matches_the_reference(decoder_folder, max_length, stride):
    from turing_models.tasks.perplexity import sliding_window_perplexity

    _, model, _ = decoder_folder
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, model.config.real_vocab_size, (101,), generator=g)
    r = sliding_window_perplexity(model, ids, max_length=max_length, stride=stride, batch_size=3)
    ref_total, ref_count = _reference_nll(model, ids, max_length, stride)
    # with overlap every token but the first is scored exactly once; without, each window's first is not
    assert r.tokens == ref_count == (100 if stride < max_length else 101 - r.windows)
    assert r.nll_sum == pytest.approx(ref_total, rel=1e-5)
    assert r.perplexity == pytest.approx(math.exp(ref_total / ref_count), rel=1e-5)
    one = sliding_window_perplexity(model, ids, max_length=max_length, stride=stride, batch_size=1)
    assert one.nll_sum == pytest.approx(r.nll_sum, rel=1e-5)


def test_one_window_is_the_plain_loss(decoder_folder):
    from turing_models.tasks.perplexity import sliding_window_perplexity

    _, model, _ = decoder_folder
    ids = torch.randint(0, model.config.real_vocab_size, (20,))
    with torch.no_grad():
        loss = float(model(input_ids=ids[None], labels=ids[None]).loss)
    r = sliding_window_perplexity(model, ids, max_length=32, stride=4)
    assert r.windows == 1 and r.nll == pytest.approx(loss, rel=1e-5)
    with pytest.raises(ValueError, match="stride"):
        sliding_window_perplexity(model, ids, max_length=8, stride=9)


def test_evaluate_recipe_on_text_and_token_shards(decoder_folder, tmp_path, recipe, capsys):
    from turing_models.data import tokenize_corpus

    folder, model, tok = decoder_folder
    text = tmp_path / "corpus.txt"
    text.write_text("the lazy dog sleeps.\n\nthe quick fox runs over the dog.\n" * 10)
    out = tmp_path / "out"
    m = recipe("evaluate").main(["--task", "perplexity", "--model", str(folder), "--data", str(text),
                                  "--max_length", "32", "--stride", "16", "--output", str(out)])
    ids = tok(text.read_text(), add_special_tokens=False)["input_ids"]
    assert m["tokens"] == len(ids) - 1 and m["stride"] == 16
    assert m["bits_per_byte"] == pytest.approx(m["nll"] * m["tokens"] / math.log(2) / len(text.read_bytes()), rel=1e-6)
    assert json.loads((out / "metrics.json").read_text())["perplexity"] == pytest.approx(m["perplexity"])
    assert "perplexity" in capsys.readouterr().out

    shards = tokenize_corpus([str(text)], tmp_path / "shards", tokenizer=str(folder), val_fraction=0.5, num_proc=1, progress=False)
    m = recipe("evaluate").main(["--task", "perplexity", "--model", str(folder), "--data", str(shards), "--split", "train"])
    assert m["tokens"] > 10 and math.isfinite(m["perplexity"]) and m["max_length"] == 32

    with pytest.raises(SystemExit) as exc:  # the window may not exceed the model's context
        recipe("evaluate").main(["--task", "perplexity", "--model", str(folder), "--data", str(text), "--max_length", "64"])
    assert exc.value.code == 2
    assert "exceeds the model's context of 32" in capsys.readouterr().err
