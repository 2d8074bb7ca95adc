"""Built-in GPT-2 BPE, load_tokenizer resolution and errors, tokenizer training."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from turing_models.data import builtin_tokenizers, load_tokenizer, train_tokenizer
from turing_models.data.tokenizer import BUILTIN_TOKENIZERS_DIR, is_continuation_table, word_start_scheme
from turing_models.errors import UsageError


def test_gpt2_bpe_is_the_real_gpt2_vocabulary():
    tok = load_tokenizer("gpt2-bpe")
    assert isinstance(tok, PreTrainedTokenizerFast)
    assert len(tok) == 50257
    assert tok.eos_token == tok.bos_token == "<|endoftext|>"
    assert tok.eos_token_id == 50256
    # Known GPT-2 ids (SOURCE.md): "Hello" = 15496, " world" = 995.
    assert tok("Hello world")["input_ids"] == [15496, 995]
    text = "Résumé: naïve café, 東京 🙂\n\ttabs"
    assert tok.decode(tok(text)["input_ids"]) == text  # byte-level: lossless on any text


def test_builtin_folder_ships_source_and_licence():
    folder = BUILTIN_TOKENIZERS_DIR / "gpt2-bpe"
    assert {"tokenizer.json", "SOURCE.md", "LICENSE-MIT-openai-whisper.txt"} <= {p.name for p in folder.iterdir()}
    assert "gpt2-bpe" in builtin_tokenizers()


def test_load_from_local_folder_and_passthrough(tmp_path):
    tok = load_tokenizer("gpt2-bpe")
    tok.save_pretrained(tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    assert again("to be or not")["input_ids"] == tok("to be or not")["input_ids"]
    assert load_tokenizer(again) is again


@pytest.mark.parametrize(
    "name, needle",
    [("./no/such/folder", "does not exist"), ("some-org/not-a-tokenizer", "Hub")],
)
def test_load_errors_are_one_clear_line(name, needle):
    with pytest.raises(UsageError) as err:
        load_tokenizer(name)
    message = str(err.value)
    assert needle in message and "gpt2-bpe" in message


def test_load_a_file_instead_of_folder(tmp_path):
    f = tmp_path / "tokenizer.json"
    f.write_text("{}")
    with pytest.raises(UsageError, match="is a file"):
        load_tokenizer(f)


@pytest.mark.parametrize("kind, scheme", [("bpe", "bytelevel"), ("unigram", "metaspace"), ("wordpiece", "wordpiece")])
def test_train_save_and_reload_each_kind(tmp_path, shakespeare_paragraphs, kind, scheme):
    out = tmp_path / kind
    tok = train_tokenizer(shakespeare_paragraphs[:200], kind=kind, vocab_size=400, output_dir=out)
    assert isinstance(tok, PreTrainedTokenizerFast)
    assert 300 <= len(tok) <= 400
    loaded = AutoTokenizer.from_pretrained(out)  # a plain transformers folder
    sample = "First Citizen: we are accounted poor citizens"
    assert loaded(sample)["input_ids"] == tok(sample)["input_ids"]
    assert word_start_scheme(loaded) == scheme
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary folder left behind
    if kind == "bpe":
        assert tok.eos_token == "<|endoftext|>"
        assert tok.decode(tok(sample)["input_ids"]) == sample
    else:
        assert tok.mask_token is not None and tok.pad_token is not None
        ids = tok(sample)["input_ids"]
        assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id


def test_word_conventions(wordpiece_tokenizer, unigram_tokenizer):
    pieces = wordpiece_tokenizer.tokenize("unaccountably citizens")
    assert any(p.startswith("##") for p in pieces)
    table = is_continuation_table(wordpiece_tokenizer)
    ids = wordpiece_tokenizer.convert_tokens_to_ids(pieces)
    assert [table[i] for i in ids] == [p.startswith("##") for p in pieces]
    pieces = unigram_tokenizer.tokenize("unaccountably citizens")
    assert pieces[0].startswith("▁")
    table = is_continuation_table(unigram_tokenizer)
    ids = unigram_tokenizer.convert_tokens_to_ids(pieces)
    assert [table[i] for i in ids] == [not p.startswith("▁") for p in pieces]


def test_training_errors():
    with pytest.raises(UsageError, match="no text"):
        train_tokenizer(["", ""], kind="bpe", vocab_size=400)
    with pytest.raises(UsageError, match="unknown tokenizer kind"):
        train_tokenizer(["a b"], kind="char", vocab_size=400)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="too small"):
        train_tokenizer(["a b"], kind="bpe", vocab_size=100)


def test_sentencepiece_library_model_converts_exactly(tmp_path, shakespeare_paragraphs):
    import sentencepiece as spm

    out = tmp_path / "spm"
    tok = train_tokenizer(shakespeare_paragraphs[:300], kind="sentencepiece", vocab_size=500, output_dir=out)
    sp = spm.SentencePieceProcessor(model_file=str(out / "spm.model"))
    assert len(tok) == sp.get_piece_size() > 300
    lines = [line for p in shakespeare_paragraphs[300:500] for line in p.split("\n")]
    lines += ["  Spaces   collapse  ", "ﬁ ligature ½ and 東京 unknown", "Tab\tinside"]
    for line in lines:
        assert tok(line, add_special_tokens=False)["input_ids"] == sp.encode(line), line
    assert [tok.pad_token_id, tok.mask_token_id] == [1, 4] and tok.mask_token == "<mask>"
    loaded = AutoTokenizer.from_pretrained(out)
    assert loaded("good morrow")["input_ids"] == tok("good morrow")["input_ids"]
    assert word_start_scheme(loaded) == "metaspace"


def test_unigram_collapses_runs_of_spaces_like_sentencepiece(unigram_tokenizer):
    """The trained unigram tokenizer normalizes as the SentencePiece one does: runs of spaces are one."""
    one = unigram_tokenizer("First Citizen: we are poor")["input_ids"]
    assert unigram_tokenizer("First   Citizen:  we are    poor")["input_ids"] == one
    assert unigram_tokenizer("  First Citizen: we are poor ")["input_ids"] == one
