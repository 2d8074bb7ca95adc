"""recipes/prepare_data.py: the three commands, and exit status 2 with one line on bad input."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from turing_models.data import load_tokenizer, read_manifest

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "prepare_data.py"


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("recipe_prepare_data", RECIPE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and jsonargparse resolve annotations through it
    spec.loader.exec_module(module)
    return module


def run(recipe, capsys, *argv):
    try:
        recipe.main(list(map(str, argv)))
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_train_then_tokenize_then_info(recipe, capsys, tmp_path, small_corpus):
    code, out, _ = run(recipe, capsys, "tokenizer", "--input", small_corpus, "--kind", "unigram",
                       "--vocab-size", "500", "--output", tmp_path / "tok")
    assert code == 0 and "unigram tokenizer with 500 tokens on 300 documents" in out
    assert load_tokenizer(tmp_path / "tok").tokenize("citizens")[0].startswith("▁")

    code, out, _ = run(recipe, capsys, "tokenize", "-i", small_corpus, "--tokenizer", tmp_path / "tok",
                       "-o", tmp_path / "shards", "--val-fraction", "0.1", "--num-proc", "1", "--no-progress")
    assert code == 0
    m = read_manifest(tmp_path / "shards")
    assert m["settings"]["val_fraction"] == 0.1 and m["tokenizer"]["vocab_size"] == 500
    assert f"train: {m['splits']['train']['tokens']:,} tokens" in out

    code, out, _ = run(recipe, capsys, "info", tmp_path / "shards", "--json")
    assert code == 0 and json.loads(out)["splits"] == m["splits"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["tokenize", "-i", "{tmp}/missing.txt", "-o", "{tmp}/out"], "input path '{tmp}/missing.txt' does not exist"),
        (["tokenize", "-o", "{tmp}/out"], "nothing to tokenize"),
        (["tokenize", "-i", "{tmp}/bad.jsonl", "-o", "{tmp}/out"], "bad.jsonl:2: not valid JSON"),
        (["tokenize", "-i", "{tmp}/small.txt", "-o", "{tmp}/out", "--seq-len", "4096"], "fewer than one window"),
        (["tokenize", "-i", "{tmp}/small.txt", "-o", "{tmp}/out", "--tokenizer", "./nope"], "does not exist"),
        (["tokenizer", "-i", "{tmp}/small.txt", "-o", "{tmp}/out", "--vocab-size", "10"], "too small"),
        (["info", "{tmp}/missing"], "does not exist"),
    ],
)
def test_bad_input_exits_2_with_one_line(recipe, capsys, tmp_path, argv, message):
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": oops}\n')
    (tmp_path / "small.txt").write_text("A short corpus.\n\nTwo paragraphs.\n")
    code, _, err = run(recipe, capsys, *[a.format(tmp=tmp_path) for a in argv])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message.format(tmp=tmp_path) in lines[0]
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_runs_as_a_script(tmp_path):
    """The real command line: exit status and a single error line, no traceback."""
    result = subprocess.run([sys.executable, str(RECIPE), "tokenize", "-i", str(tmp_path / "none.txt")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: input path '{tmp_path / 'none.txt'}' does not exist; check the path"]


def test_info_on_a_file_says_it_is_a_file(recipe, capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("hello\n")
    code, _, err = run(recipe, capsys, "info", tmp_path / "notes.txt")
    assert code == 2
    assert err.strip() == (f"error: '{tmp_path / 'notes.txt'}' is a file, not a token folder; give the folder "
                           "written by `prepare_data.py tokenize` (its --output)")


@pytest.mark.parametrize("content", [bytes(range(256)) * 8, b"\xff\xfe caf\xe9 \xc3\x28 na\xefve\n" * 20])
def test_empty_train_split_is_an_error_at_tokenize_time(recipe, capsys, tmp_path, content):
    """Binary or invalid UTF-8 input that is one document which hashes into val: refused now,
    not later in pretraining; nothing is written."""
    (tmp_path / "blob.bin").write_bytes(content)
    code, _, err = run(recipe, capsys, "tokenize", "-i", tmp_path / "blob.bin", "-o", tmp_path / "out",
                       "--val-fraction", "0.999", "--no-progress")
    assert code == 2
    assert err.strip().splitlines()[-1].startswith(
        "error: the train split is empty: all 1 document(s) went to the validation split (val_fraction 0.999)")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_separate_validation_input(recipe, capsys, tmp_path, shakespeare_paragraphs):
    from turing_models.data import load_split

    train_docs, val_docs = shakespeare_paragraphs[:40], shakespeare_paragraphs[40:50]
    (tmp_path / "train.txt").write_text("\n\n".join(train_docs) + "\n")
    (tmp_path / "valid.txt").write_text("\n\n".join(val_docs) + "\n")
    code, out, err = run(recipe, capsys, "tokenize", "--input", tmp_path / "train.txt", "--val-input",
                         tmp_path / "valid.txt", "--output", tmp_path / "out", "--no-progress")
    assert code == 0, err
    m = read_manifest(tmp_path / "out")
    assert m["splits"]["train"]["documents"] == 40 and m["splits"]["val"]["documents"] == 10
    assert m["settings"]["val_fraction"] == 0.0 and m["settings"]["val_inputs"] == 1
    assert [i.get("role") for i in m["inputs"]] == [None, "validation"]
    tok = load_tokenizer("gpt2-bpe")
    val, index, _ = load_split(tmp_path / "out", "val")
    first = val[index[0]:index[1] - 1].tolist()  # without its EOS
    assert tok.decode(first) == val_docs[0]
    # the same call again reuses the folder; another validation file is another folder's job
    code, out, _ = run(recipe, capsys, "tokenize", "--input", tmp_path / "train.txt", "--val-input",
                       tmp_path / "valid.txt", "--output", tmp_path / "out", "--no-progress")
    assert code == 0
    (tmp_path / "valid2.txt").write_text(val_docs[0] + "\n")
    code, _, err = run(recipe, capsys, "tokenize", "--input", tmp_path / "train.txt", "--val-input",
                       tmp_path / "valid2.txt", "--output", tmp_path / "out", "--no-progress")
    assert code == 2 and "already holds token shards of other inputs or settings" in err
    code, _, err = run(recipe, capsys, "tokenize", "--input", tmp_path / "train.txt", "--val-dataset-split",
                       "validation", "--output", tmp_path / "out2")
    assert code == 2 and "val_dataset_split needs a dataset" in err


def test_stale_temporary_folders_of_a_killed_run_are_removed(recipe, capsys, tmp_path, small_corpus):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.tmp-{dead.pid}-0123abcd"
    (stale / "tokenizer").mkdir(parents=True)
    (stale / "train.bin").write_bytes(b"\0" * 64)
    alive = tmp_path / f".other.tmp-{os.getpid()}-89abcdef"  # a writer that still runs: kept
    alive.mkdir()
    code, _, err = run(recipe, capsys, "tokenize", "-i", small_corpus, "-o", tmp_path / "out", "--no-progress")
    assert code == 0, err
    assert not stale.exists() and alive.exists()


def test_help_and_bare_flags_come_from_one_library(recipe, capsys):
    code, out, _ = run(recipe, capsys, "tokenize", "--help")
    assert code == 0 and "--val-input" in out and "--no-progress" in out and "--val_fraction" in out
    code, _, err = run(recipe, capsys, "tokenise", "-i", "x")
    assert code == 2 and "unknown command 'tokenise'" in err and "did you mean 'tokenize'?" in err
    code, _, err = run(recipe, capsys, "tokenize", "-i", "x", "--val-fracton", "0.1")
    assert code == 2 and "did you mean 'val_fraction'?" in err
