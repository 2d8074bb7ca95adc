"""MLM collator: rates, 80/10/10, whole words, specials, padding, determinism."""

from __future__ import annotations

import pytest
import torch

from turing_models.data import DataCollatorForMLM
from turing_models.errors import UsageError


def encode(tok, texts):
    return [{"input_ids": tok(t)["input_ids"]} for t in texts]


@pytest.fixture(params=["wordpiece", "unigram"])
def tokenizer(request, wordpiece_tokenizer, unigram_tokenizer):
    return {"wordpiece": wordpiece_tokenizer, "unigram": unigram_tokenizer}[request.param]


def words_of(tok, ids):
    """Word number of each token, read from the pieces (None for special tokens): WordPiece
    continuations start with ##, SentencePiece words start with ▁."""
    wordpiece = tok.cls_token == "[CLS]"
    special = set(tok.all_special_ids)
    word, out = -1, []
    for piece, i in zip(tok.convert_ids_to_tokens(ids), ids):
        if i in special:
            out.append(None)
            continue
        starts = not piece.startswith("##") if wordpiece else piece.startswith("▁")
        if starts or not out or out[-1] is None:
            word += 1
        out.append(word)
    return out


@pytest.mark.parametrize("whole_word", [True, False])
def test_whole_words_are_masked_together(tokenizer, shakespeare_paragraphs, whole_word):
    collator = DataCollatorForMLM(tokenizer, seed=0, whole_word_mask=whole_word)
    examples = encode(tokenizer, shakespeare_paragraphs[:64])
    batch = collator(examples)
    split_words = chosen_split = partly = 0
    for row, ex in enumerate(examples):
        ids = ex["input_ids"]
        words = words_of(tokenizer, ids)
        chosen = (batch["labels"][row, :len(ids)] != -100).tolist()
        by_word: dict[int, set] = {}
        for w, c in zip(words, chosen):
            if w is None:
                assert not c  # special tokens are never chosen
            else:
                by_word.setdefault(w, set()).add(c)
        partly += sum(len(v) > 1 for v in by_word.values())
        multi = [w for w in set(words) if w is not None and words.count(w) > 1]
        split_words += len(multi)
        chosen_split += sum(by_word[w] == {True} for w in multi)
    assert split_words > 100  # the batch has many multi-piece words
    if whole_word:
        assert partly == 0 and chosen_split > 30  # all pieces of a word, or none
    else:
        assert partly > 10  # the check above does detect pieces masked apart


def test_rates_and_80_10_10(tokenizer, shakespeare_paragraphs):
    collator = DataCollatorForMLM(tokenizer, seed=1, whole_word_mask=False)
    examples = encode(tokenizer, shakespeare_paragraphs[:400])
    original = collator._pad(examples)
    special = original.pop("_special")
    batch = collator(examples)
    chosen = batch["labels"] != -100
    n = int((~special).sum())
    assert abs(int(chosen.sum()) / n - 0.15) < 0.02
    assert torch.equal(batch["labels"][chosen], original["input_ids"][chosen])
    masked = chosen & (batch["input_ids"] == tokenizer.mask_token_id)
    kept = chosen & (batch["input_ids"] == original["input_ids"])
    changed = chosen & ~masked & ~kept
    total = int(chosen.sum())
    assert abs(int(masked.sum()) / total - 0.8) < 0.04
    assert abs(int(kept.sum()) / total - 0.1) < 0.04  # (a random pick may equal the original)
    assert abs(int(changed.sum()) / total - 0.1) < 0.04
    assert not torch.isin(batch["input_ids"][changed], torch.tensor(tokenizer.all_special_ids)).any()
    assert torch.equal(batch["input_ids"][~chosen], original["input_ids"][~chosen])  # rest untouched


def test_padding_and_special_tokens_never_masked(wordpiece_tokenizer):
    tok = wordpiece_tokenizer
    collator = DataCollatorForMLM(tok, mlm_probability=0.99, mask_replace_prob=1.0, random_replace_prob=0.0,
                                  seed=0, pad_to_multiple_of=8)
    batch = collator(encode(tok, ["to be or not to be", "a horse"]))
    assert batch["input_ids"].shape[1] % 8 == 0
    assert batch["attention_mask"][1].tolist().count(1) == len(tok("a horse")["input_ids"])
    specials = torch.isin(batch["labels"], torch.tensor(tok.all_special_ids))
    assert not specials.any()
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    assert batch["input_ids"][0, 0] == tok.cls_token_id and (batch["input_ids"][1, -1] == tok.pad_token_id)


def test_deterministic_with_seed_and_resumable(wordpiece_tokenizer, shakespeare_paragraphs):
    examples = encode(wordpiece_tokenizer, shakespeare_paragraphs[:8])
    a = DataCollatorForMLM(wordpiece_tokenizer, seed=5)
    b = DataCollatorForMLM(wordpiece_tokenizer, seed=5)
    first = a(examples)
    assert torch.equal(first["input_ids"], b(examples)["input_ids"])
    state = a.state_dict()
    second = a(examples)
    assert not torch.equal(second["labels"], first["labels"])  # dynamic: new mask every call
    c = DataCollatorForMLM(wordpiece_tokenizer, seed=99)
    c.load_state_dict(state)
    assert torch.equal(c(examples)["labels"], second["labels"])


def test_works_on_packed_samples(tmp_path, small_corpus, unigram_tokenizer):
    from turing_models.data import PackedDataset, tokenize_corpus

    out = tokenize_corpus(small_corpus, tmp_path / "u", tokenizer=unigram_tokenizer, progress=False)
    ds = PackedDataset(out, seq_len=64, seed=0)
    collator = DataCollatorForMLM(unigram_tokenizer, seed=0)
    batch = collator([ds.window(0), ds.window(1)])
    assert batch["input_ids"].shape == (2, 64) and (batch["labels"] != -100).any()


def test_packed_collator_masks_windows_and_resumes(tmp_path, small_corpus, unigram_tokenizer):
    """PackedMLMCollator: packed windows (input_ids + shift_labels) in, a masked batch out; its
    state is the masking RNG, so a restored collator masks the next batch exactly alike."""
    from turing_models.data import PackedDataset, PackedMLMCollator, tokenize_corpus

    out = tokenize_corpus(small_corpus, tmp_path / "u", tokenizer=unigram_tokenizer, progress=False)
    ds = PackedDataset(out, seq_len=32, seed=0)
    windows = [ds.window(i) for i in range(4)]
    collator = PackedMLMCollator(DataCollatorForMLM(unigram_tokenizer, seed=3))
    first = collator(windows)
    assert "shift_labels" not in first  # the causal targets of the window are not passed on
    assert first["input_ids"].shape == (4, 32) and (first["labels"] != -100).any()
    state = collator.state_dict()
    second = collator(windows)
    restored = PackedMLMCollator(DataCollatorForMLM(unigram_tokenizer, seed=0))
    restored.load_state_dict(state)
    assert torch.equal(restored(windows)["labels"], second["labels"])


def test_bad_settings(wordpiece_tokenizer):
    from turing_models.data import load_tokenizer

    with pytest.raises(UsageError, match="no mask token"):
        DataCollatorForMLM(load_tokenizer("gpt2-bpe"))
    with pytest.raises(UsageError, match="mlm_probability"):
        DataCollatorForMLM(wordpiece_tokenizer, mlm_probability=0)
    with pytest.raises(UsageError, match="sum to at most 1"):
        DataCollatorForMLM(wordpiece_tokenizer, mask_replace_prob=0.9, random_replace_prob=0.2)
