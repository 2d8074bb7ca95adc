"""Shared fixtures of the data tests: small real text and tokenizers trained on it."""

from __future__ import annotations

from pathlib import Path

import pytest

CORPUS = Path(__file__).resolve().parents[2] / "recipes" / "data" / "tinyshakespeare.txt"


def paragraphs(n: int) -> list[str]:
    """The first ``n`` paragraphs of the bundled corpus."""
    text = CORPUS.read_text(encoding="utf-8")[:400_000]
    return [p for p in text.split("\n\n") if p.strip()][:n]


@pytest.fixture(scope="session")
def shakespeare_paragraphs() -> list[str]:
    return paragraphs(600)


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory, shakespeare_paragraphs) -> Path:
    """A text file of 300 paragraphs (about 25 k characters)."""
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_text("\n\n".join(shakespeare_paragraphs[:300]) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def wordpiece_tokenizer(shakespeare_paragraphs):
    from turing_models.data import train_tokenizer

    return train_tokenizer(shakespeare_paragraphs, kind="wordpiece", vocab_size=600, min_frequency=2)


@pytest.fixture(scope="session")
def unigram_tokenizer(shakespeare_paragraphs):
    from turing_models.data import train_tokenizer

    return train_tokenizer(shakespeare_paragraphs, kind="unigram", vocab_size=600)
