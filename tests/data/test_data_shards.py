"""Corpus -> token shards: content, formats, split, manifest, reuse, atomic writes, bad data."""

from __future__ import annotations

import functools
import gzip
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from turing_models.data import load_split, load_tokenizer, read_manifest, tokenize_corpus
from turing_models.io import sha256_file
from turing_models.data.shards import documents_of
from turing_models.errors import UsageError


@functools.cache
def gpt2():
    """The built-in GPT-2 BPE, loaded once for this module (loading takes about a second)."""
    return load_tokenizer("gpt2-bpe")


def prep(*args, **kwargs):
    kwargs.setdefault("tokenizer", gpt2())
    kwargs.setdefault("progress", False)
    return tokenize_corpus(*args, **kwargs)


def split_docs(path, split: str) -> list[list[int]]:
    tokens, index, _ = load_split(path, split)
    return [tokens[index[i]:index[i + 1]].tolist() for i in range(len(index) - 1)]


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".tmp" in p.name or ".old" in p.name]


def test_tokens_are_the_documents_with_eos(tmp_path, shakespeare_paragraphs):
    docs = shakespeare_paragraphs[:120]
    (tmp_path / "c.txt").write_text("\n\n\n".join(docs) + "\n", encoding="utf-8")
    out = prep(tmp_path / "c.txt", tmp_path / "out", val_fraction=0.2)
    train, val = split_docs(out, "train"), split_docs(out, "val")
    expected = documents_of(docs, gpt2())
    assert all(d[-1] == 50256 for d in train + val)
    # Every document lands in exactly one split, in corpus order within each split.
    assert sorted(train + val) == sorted(expected)
    assert train == [d for d in expected if d in train] and val == [d for d in expected if d in val]
    assert 0 < len(val) < len(train)
    tokens, _, m = load_split(out, "train")
    assert tokens.dtype == np.uint16 and m["dtype"] == "uint16"
    tok = load_tokenizer(out / "tokenizer")  # the folder carries its tokenizer
    assert tok.decode(train[0][:-1]) == [d for d in docs if documents_of([d], tok)[0] == train[0]][0]


def test_text_split_modes(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("a b\nc d\n\n\n e f\r\n\r\ng h\n", encoding="utf-8")
    tok = gpt2()
    counts = {}
    for mode in ("paragraph", "line", "file"):
        out = prep(f, tmp_path / mode, text_split=mode, val_fraction=0)
        counts[mode] = read_manifest(out)["splits"]["train"]["documents"]
    assert counts == {"paragraph": 3, "line": 4, "file": 1}
    para = split_docs(tmp_path / "paragraph", "train")
    assert [tok.decode(d[:-1]) for d in para] == ["a b\nc d", " e f", "g h"]


def test_process_count_does_not_change_the_output(tmp_path, monkeypatch, shakespeare_paragraphs):
    import turing_models.data.shards as shards

    monkeypatch.setattr(shards, "_BATCH_CHARS", 2000)  # many tasks, so order matters
    f = tmp_path / "c.txt"
    f.write_text("\n\n".join(shakespeare_paragraphs[:300]), encoding="utf-8")
    monkeypatch.setattr(shards, "_SMALL_INPUT_BYTES", 0)  # use the pool even for a small file
    one = prep(f, tmp_path / "one", num_proc=1)
    two = prep(f, tmp_path / "two", num_proc=2)
    for name in ("train.bin", "train.idx", "val.bin", "val.idx"):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    assert read_manifest(two)["num_proc"] == 2


def test_input_formats_give_the_same_tokens(tmp_path, shakespeare_paragraphs):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = shakespeare_paragraphs[:40]
    src = tmp_path / "src"
    (src / "nested").mkdir(parents=True)
    (src / "a.jsonl").write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs[:20])))
    with gzip.open(src / "nested" / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(json.dumps({"text": d}) for d in docs[20:30]) + "\n\n")
    pq.write_table(pa.table({"text": docs[30:], "n": list(range(10))}), src / "nested" / "c.parquet")
    (src / "notes.csv").write_text("ignored in folders")
    expected = documents_of(docs, gpt2())

    for inputs in ([src], [str(src / "*.jsonl"), str(src / "nested" / "*")]):
        out = prep(inputs, tmp_path / "out", val_fraction=0, overwrite=True)
        assert split_docs(out, "train") == expected
        m = read_manifest(out)
        assert [Path(i["path"]).name for i in m["inputs"]] == ["a.jsonl", "b.jsonl.gz", "c.parquet"]


def test_datasets_name_streaming_and_not(tmp_path, shakespeare_paragraphs):
    docs = shakespeare_paragraphs[:30]
    ds_dir = tmp_path / "my_dataset"
    ds_dir.mkdir()
    (ds_dir / "train.jsonl").write_text("".join(json.dumps({"content": d}) + "\n" for d in docs))
    expected = documents_of(docs, gpt2())
    for streaming in (True, False):
        out = prep(
            dataset=str(ds_dir), field="content", streaming=streaming, output_dir=tmp_path / f"o{streaming}",
            val_fraction=0, dataset_kwargs={"cache_dir": str(tmp_path / "hf")},
        )
        assert split_docs(out, "train") == expected
        assert read_manifest(out)["inputs"][0]["dataset"] == str(ds_dir)
    # another split of the dataset as the validation set: no hash split then
    held_out = shakespeare_paragraphs[30:36]
    (ds_dir / "validation.jsonl").write_text("".join(json.dumps({"content": d}) + "\n" for d in held_out))
    out = prep(dataset=str(ds_dir), field="content", streaming=True, val_dataset_split="validation",
               output_dir=tmp_path / "split", dataset_kwargs={"cache_dir": str(tmp_path / "hf")})
    assert split_docs(out, "train") == expected and split_docs(out, "val") == documents_of(held_out, gpt2())
    assert [i["split"] for i in read_manifest(out)["inputs"]] == ["train", "validation"]
    with pytest.raises(UsageError, match="no column 'text'"):
        prep(dataset=str(ds_dir), streaming=True, output_dir=tmp_path / "bad")
    with pytest.raises(UsageError, match="could not load dataset"):
        prep(dataset="no-such-org/no-such-dataset", output_dir=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_split_is_by_content_hash(tmp_path, shakespeare_paragraphs):
    docs = shakespeare_paragraphs[:200]
    (tmp_path / "a.txt").write_text("\n\n".join(docs))
    (tmp_path / "b.txt").write_text("\n\n".join(list(reversed(docs)) + docs[:50]))  # reordered + duplicates
    a = prep(tmp_path / "a.txt", tmp_path / "A", val_fraction=0.3)
    b = prep(tmp_path / "b.txt", tmp_path / "B", val_fraction=0.3)
    val_a, val_b = split_docs(a, "val"), split_docs(b, "val")
    assert set(map(tuple, val_a)) == set(map(tuple, val_b))  # order-independent, duplicates together
    assert 0.15 < len(val_a) / len(docs) < 0.45
    c = prep(tmp_path / "a.txt", tmp_path / "C", val_fraction=0.3, seed=1)
    assert set(map(tuple, split_docs(c, "val"))) != set(map(tuple, val_a))  # the seed keys the hash


def test_manifest_records_what_made_the_shards(tmp_path, small_corpus):
    out = prep(small_corpus, tmp_path / "out")
    m = read_manifest(out)
    assert m["complete"] is True and m["format_version"] == 1
    (inp,) = m["inputs"]
    assert inp["sha256"] == sha256_file(small_corpus) and inp["size"] == small_corpus.stat().st_size
    assert inp["documents"] == 300 == m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"]
    for split, info in m["splits"].items():
        assert (out / info["file"]).stat().st_size == 2 * info["tokens"]
        assert (out / info["index"]).stat().st_size == 8 * (info["documents"] + 1)
    from turing_models.data import tokenizer_fingerprint

    assert m["tokenizer"]["sha256"] == tokenizer_fingerprint(gpt2())
    assert m["tokenizer"]["vocab_size"] == 50257 and m["tokens_per_s"] > 0


def test_reuse_complete_output_but_never_partial(tmp_path, small_corpus):
    out = tmp_path / "out"
    prep(small_corpus, out)
    stamp = (out / "manifest.json").stat().st_mtime_ns
    assert prep(small_corpus, out) == out
    assert (out / "manifest.json").stat().st_mtime_ns == stamp  # reused, not rewritten

    # Same content, new mtime: hashes match, still reused.
    os.utime(small_corpus, ns=(stamp, stamp + 10**9))
    prep(small_corpus, out)
    assert (out / "manifest.json").stat().st_mtime_ns == stamp

    # Truncated token file: not mistaken for complete.
    with open(out / "train.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(UsageError, match="already holds"):
        prep(small_corpus, out)
    with pytest.raises(UsageError, match="do not match its manifest"):
        load_split(out, "train")
    prep(small_corpus, out, overwrite=True)
    assert read_manifest(out)["splits"]["train"]["tokens"] * 2 == (out / "train.bin").stat().st_size

    # A manifest without "complete" (as if written by a crashed run) is not complete.
    m = json.loads((out / "manifest.json").read_text())
    m["complete"] = False
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UsageError, match="not a complete token folder"):
        read_manifest(out)


def test_default_output_is_cached_by_content(tmp_path, small_corpus):
    first = prep(small_corpus, cache_dir=tmp_path / "cache")
    second = prep(small_corpus, cache_dir=tmp_path / "cache")
    assert first == second and first.parent == tmp_path / "cache" and first.name.startswith("small-gpt2-bpe-")
    other = prep(small_corpus, cache_dir=tmp_path / "cache", val_fraction=0.5)
    assert other != first


def test_changed_input_needs_overwrite(tmp_path, small_corpus):
    f = tmp_path / "c.txt"
    f.write_text(small_corpus.read_text())
    out = prep(f, tmp_path / "out")
    f.write_text(small_corpus.read_text() + "\n\nA new paragraph.\n")
    with pytest.raises(UsageError, match="overwrite"):
        prep(f, out)
    prep(f, out, overwrite=True)
    assert read_manifest(out)["inputs"][0]["sha256"] == sha256_file(f)


@pytest.mark.parametrize("num_proc", [1, 2])
def test_failure_mid_run_leaves_nothing(tmp_path, shakespeare_paragraphs, monkeypatch, num_proc):
    import turing_models.data.shards as shards

    monkeypatch.setattr(shards, "_BATCH_DOCS", 10)  # some batches are written before the bad line
    monkeypatch.setattr(shards, "_SMALL_INPUT_BYTES", 0)
    lines = [json.dumps({"text": d}) for d in shakespeare_paragraphs[:100]]
    lines.insert(57, '{"text": "unterminated')
    f = tmp_path / "c.jsonl"
    f.write_text("\n".join(lines))
    with pytest.raises(UsageError) as err:
        prep(f, tmp_path / "out", num_proc=num_proc)
    assert "c.jsonl:58:" in str(err.value) and "not valid JSON" in str(err.value)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------
# Bad data: one clear line each, nothing on disk
# ------------------------------------------------------------------------------------------


def _bad(tmp_path, match, *args, **kwargs):
    with pytest.raises(UsageError, match=match) as err:
        prep(*args, output_dir=tmp_path / "out", **kwargs)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_empty_file(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    _bad(tmp_path, r"empty.txt' is empty", tmp_path / "empty.txt")
    (tmp_path / "blank.txt").write_text("\n  \n\t\n")
    _bad(tmp_path, "hold no documents", tmp_path / "blank.txt")
    (tmp_path / "text.txt").write_text("Some words.\n")
    _bad(tmp_path, "blank.txt' holds no text", [tmp_path / "text.txt", tmp_path / "blank.txt"])


def test_missing_paths(tmp_path):
    _bad(tmp_path, "does not exist", tmp_path / "nope.txt")
    _bad(tmp_path, "matched no files", str(tmp_path / "*.jsonl"))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.csv").write_text("a,b")
    _bad(tmp_path, "holds no .txt", tmp_path / "d")


def test_bad_jsonl_lines(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text('{"text": "fine"}\n\n{"body": "no text field"}\n')
    _bad(tmp_path, r"a.jsonl:3: no field 'text' in this record \(it has: body\)", f)
    f.write_text('{"text": "fine"}\n[1, 2]\n')
    _bad(tmp_path, r"a.jsonl:2: no field 'text'", f)
    f.write_text('{"text": "fine"}\n{"text": 7}\n')
    _bad(tmp_path, r"a.jsonl:2: field 'text' is a int", f)


def test_parquet_without_the_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "a.parquet")
    _bad(tmp_path, r"no column 'text' \(columns: body\)", tmp_path / "a.parquet")


def test_undecodable_bytes_are_replaced_counted_and_warned_once(tmp_path, caplog):
    f = tmp_path / "latin1.txt"
    # Latin-1 bytes (é, è, ï are invalid UTF-8 here), then a genuine U+FFFD that must not count.
    f.write_bytes("café crème\n\nnaïve résumé  kept\n".encode("latin-1") + "\n\nreal \ufffd stays\n".encode())
    with caplog.at_level(logging.WARNING, logger="turing_models.data"):
        out = prep(f, tmp_path / "out", val_fraction=0)
    warnings = [r for r in caplog.records if "undecodable" in r.getMessage()]
    assert len(warnings) == 1 and "replaced 5 undecodable" in warnings[0].getMessage()
    m = read_manifest(out)
    assert m["replaced_chars"] == 5 and m["inputs"][0]["replaced_chars"] == 5
    tok = gpt2()
    texts = [tok.decode(d[:-1]) for d in split_docs(out, "train")]
    assert texts == ["caf\ufffd cr\ufffdme", "na\ufffdve r\ufffdsum\ufffd  kept", "real \ufffd stays"]


def test_vocabulary_over_uint16_uses_uint32(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(70000)}
    vocab["[EOS]"] = 70000
    backend = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="[EOS]")
    (tmp_path / "c.txt").write_text("w1 w65535 w65536 w69999\n\nw3\n")
    out = prep(tmp_path / "c.txt", tmp_path / "out", tokenizer=tok, val_fraction=0)
    tokens, _, m = load_split(out, "train")
    assert m["dtype"] == "uint32" and tokens.dtype == np.uint32
    assert tokens.tolist() == [1, 65535, 65536, 69999, 70000, 3, 70000]


def test_corpus_smaller_than_one_window(tmp_path):
    (tmp_path / "c.txt").write_text("Only a few words here.\n")
    _bad(tmp_path, r"fewer than one window of seq_len \+ 1 = 1025", tmp_path / "c.txt", seq_len=1024, val_fraction=0)


def test_bad_settings(tmp_path, small_corpus):
    _bad(tmp_path, "val_fraction", small_corpus, val_fraction=1.5)
    _bad(tmp_path, "unknown text split", small_corpus, text_split="sentence")
    _bad(tmp_path, "unknown input format", small_corpus, format="csv")
    _bad(tmp_path, "no inputs", [])


def test_token_dtype_boundary():
    from turing_models.data import token_dtype

    assert token_dtype(50257) == token_dtype(65536) == np.uint16  # ids 0..65535 fit
    assert token_dtype(65537) == np.uint32
