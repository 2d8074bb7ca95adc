"""Fixtures for the TuringNLG tests (the models come from tests/factories.py)."""

from __future__ import annotations

import pytest
from factories import GPT2_SHAPES, build_tokenizer, nlg_model, save_gpt2


@pytest.fixture(scope="session")
def gpt2_folders(tmp_path_factory):
    """{name: (folder, GPT2LMHeadModel)} for every GPT2_SHAPES entry, saved once per session."""
    out = {}
    for i, (name, shape) in enumerate(GPT2_SHAPES.items()):
        folder = tmp_path_factory.mktemp(f"gpt2-{name}")
        out[name] = (folder, save_gpt2(folder, seed=i, **shape))
    return out


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def nlg_folder(tmp_path_factory, tokenizer):
    """A saved tiny TuringNLG checkpoint with a tokenizer beside it."""
    folder = tmp_path_factory.mktemp("nlg-tiny")
    model = nlg_model(vocab_size=len(tokenizer), real_vocab_size=len(tokenizer),
                       pad_token_id=tokenizer.pad_token_id, eos_token_id=None)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
