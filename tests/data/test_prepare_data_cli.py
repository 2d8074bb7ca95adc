"""recipes/prepare_data.py: the three commands, and exit status 2 with one line on bad input."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from turing_models.data import load_tokenizer, read_manifest

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "prepare_data.py"


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("prepare_data", RECIPE)
    module = importlib.util.module_from_spec(spec)
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
