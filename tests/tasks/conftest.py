"""Shared fixtures of the task tests: bundled data paths and small tokenizers trained here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
XQUAD = REPO / "recipes" / "data" / "qa" / "xquad.en.json"
UCI = REPO / "recipes" / "data" / "classification" / "uci_sentiment"


@pytest.fixture(scope="session")
def xquad_path() -> Path:
    return XQUAD


@pytest.fixture(scope="session")
def uci_dir() -> Path:
    return UCI


@pytest.fixture(scope="session")
def wordpiece():
    """A lower-cased WordPiece tokenizer (BERT scheme) trained on the bundled XQuAD texts."""
    from turing_models.data.tokenizer import train_tokenizer

    data = json.loads(XQUAD.read_text(encoding="utf-8"))["data"]
    texts = [p["context"] for a in data for p in a["paragraphs"]]
    texts += [q["question"] for a in data for p in a["paragraphs"] for q in p["qas"]]
    return train_tokenizer(texts, kind="wordpiece", vocab_size=4000, min_frequency=1, model_max_length=512)


def _write_squad(path: Path, articles: list[dict], version: str = "v2.0") -> Path:
    path.write_text(json.dumps({"version": version, "data": articles}), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def write_squad():
    """``write_squad(path, articles, version="v2.0")`` writes the official SQuAD JSON layout."""
    return _write_squad


# ---------------------------------------------------------------------------------- synthetic
FILLER = (
    "river stone cloud tree house road field light music paper glass water winter summer table "
    "garden window market letter bridge forest valley mountain ocean island city village station"
).split()
NAMES = "alice bob carol dave erin frank grace heidi ivan judy kevin laura nina oscar peggy quinn".split()
QUESTIONS = ["who comes after the marker ?", "which name follows the marker ?"]


def _synthetic_squad(n_articles: int, seed: int, unanswerable: float) -> dict:
    """A learnable QA set in the official SQuAD v2.0 layout: the answer is the word after
    "marker"; a context without a marker makes the question unanswerable."""
    import random

    rng = random.Random(seed)
    articles = []
    for a in range(n_articles):
        paragraphs = []
        for p in range(5):
            words = [rng.choice(FILLER) for _ in range(rng.randint(6, 18))]
            qa = {"id": f"s{seed}-{a}-{p}", "question": rng.choice(QUESTIONS)}
            if rng.random() < unanswerable:
                decoy = words[0]
                qa.update(is_impossible=True, answers=[], plausible_answers=[{"text": decoy, "answer_start": 0}])
            else:
                pos = rng.randint(0, len(words))
                name = rng.choice(NAMES)
                words[pos:pos] = ["marker", name]
                start = len(" ".join(words[: pos + 1])) + 1
                qa.update(is_impossible=False, answers=[{"text": name, "answer_start": start}])
            paragraphs.append({"context": " ".join(words), "qas": [qa]})
        articles.append({"title": f"Article_{seed}_{a}", "paragraphs": paragraphs})
    return {"version": "v2.0" if unanswerable else "1.1", "data": articles}


@pytest.fixture(scope="session")
def synthetic_squad():
    """``synthetic_squad(n_articles, seed, unanswerable=0.0)`` -> SQuAD JSON dict (5 questions per article)."""
    return lambda n_articles, seed, unanswerable=0.0: _synthetic_squad(n_articles, seed, unanswerable)


@pytest.fixture(scope="session")
def synthetic_wordpiece(tmp_path_factory):
    """A WordPiece tokenizer folder in which every synthetic word is one token."""
    from turing_models.data.tokenizer import train_tokenizer

    words = FILLER + NAMES + ["marker", "good", "great", "bad", "awful", "it", "was", "the", "food", "movie"]
    words += " ".join(QUESTIONS).split()
    path = tmp_path_factory.mktemp("tok") / "wordpiece"
    train_tokenizer([" ".join(words)] * 3, kind="wordpiece", vocab_size=200, min_frequency=1, output_dir=path)
    return path


@pytest.fixture
def one_thread():
    """Tiny models train fastest on one thread, and do not fight other tests for the cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def load_recipe(name: str):
    """Import ``recipes/<name>.py`` as a module (the recipes folder is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"recipe_{name}", REPO / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def recipe():
    """``recipe("finetune").main(argv)`` runs a recipe in-process."""
    return load_recipe
