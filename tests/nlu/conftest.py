"""Fixtures of the TuringNLU tests."""

import pytest

from factories import make_hf


@pytest.fixture
def hf_folder(tmp_path):
    def build(kind: str, head: str, shape: str = "h32", **overrides):
        model = make_hf(kind, head, shape, **overrides)
        folder = tmp_path / f"{kind}-{head}-{shape}"
        model.save_pretrained(folder)
        return model, folder

    return build
